"""Numbers in the model cards, the READMEs and docs/ are generated from saved results (rule 9): each
generated block must equal what its script computes now from the files in the repository, so a hand
edit, or results changed without regenerating, fails here."""

from __future__ import annotations

import pytest

from conftest import REPO_ROOT, load_script as _script

# the SR models and the shipped autoencoders: each folder's card has generated blocks
MODELS = sorted(p for kind in ("models", "autoencoders") for p in (REPO_ROOT / "Training" / kind).iterdir()
                if (p / "config.json").is_file())


@pytest.mark.parametrize("folder", MODELS, ids=[p.name for p in MODELS])
def test_model_card_equals_what_its_saved_results_give(folder):
    assert "<!-- generated:" in (folder / "README.md").read_text()
    assert _script("write_card").card_text(folder) == (folder / "README.md").read_text(), \
        f"regenerate with: python Training/scripts/write_card.py {folder.relative_to(REPO_ROOT)}"


def test_readme_tables_equal_what_the_cards_give():
    for path, text in _script("write_card").readme_texts(REPO_ROOT).items():
        assert text == path.read_text(), "regenerate with: python Training/scripts/write_card.py --readme"


def test_paper_claims_report_equals_what_its_saved_rows_give():
    report = _script("write_paper_report")
    if not (report.RESULTS / "claims.json").is_file():
        pytest.skip("no saved paper-claims results in docs/results/paper-claims")
    text, _ = report.report_text(report.RESULTS, report.REPORT)
    assert text == report.REPORT.read_text(), "regenerate with: python Training/scripts/write_paper_report.py"


def test_an_autoencoders_screen_block_states_its_differences_from_its_own_side(tmp_path):
    """The screen lists each pair once, in its own order: the card turns a comparison "other - this"
    around, so "this autoencoder - other" has the opposite sign and the mirrored interval."""
    folder = REPO_ROOT / "Training" / "autoencoders" / "taef2-brain"
    spec_this, spec_other = "tiny:Training/autoencoders/taef2-brain", "tiny:elsewhere/generic"
    metric = {"mean": 1.0}
    summary = {"n_images": 3, "n_subjects": 1, "sources": ["a/scan.nii.gz"], "encoding": "posterior mean",
               "lpips_network": None,
               "selection": {"plane": "axial", "max_slices_per_source": 3, "fit": "pad", "size": [64, 64]},
               "autoencoders": {spec_other: {"metrics": {"psnr": metric}}, spec_this: {"metrics": {"psnr": metric}}},
               "comparisons": [{"a": spec_other, "b": spec_this, "metric": "psnr", "mean_difference": -1.5,
                                "ci_low": -2.0, "ci_high": -1.0, "p_value": 0.01, "n": 3},
                               {"a": spec_other, "b": spec_this, "metric": "ssim", "mean_difference": -0.1,
                                "ci_low": -0.2, "ci_high": -0.05, "p_value": 0.01, "n": 3}]}
    text = _script("write_card").screen_block(summary, folder)
    assert "| **this autoencoder** |" in text and "| `tiny:elsewhere/generic` |" in text
    assert "- this autoencoder - `tiny:elsewhere/generic`: PSNR +1.50 dB [95% CI +1.00, +2.00]" in text
    assert text.count("- this autoencoder - ") == 1  # PSNR differences only
