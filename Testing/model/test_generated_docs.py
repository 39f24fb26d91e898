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
