"""`latentsr demo` and the shipped reference model: the newcomer's first command, end to end."""

from __future__ import annotations

import importlib.util
import json

import pytest

from LatentSRLib.cli import main
from LatentSRLib.demo import DEMO_CASES, default_demo_model, run_demo, run_demos
from conftest import REPO_ROOT

MODELS = REPO_ROOT / "Training" / "models"
needs_nilearn = pytest.mark.skipif(importlib.util.find_spec("nilearn") is None,
                                   reason="the demo's default scan ships with nilearn (pip install nilearn)")


def card(name: str) -> dict:
    return json.loads((MODELS / name / "card.json").read_text())


def test_every_shipped_model_has_a_card_and_stays_small():
    folders = sorted(p.parent for p in MODELS.glob("*/config.json"))
    assert folders, "no reference model in Training/models"
    # the reference-model issue's budget for every shipped model and autoencoder together
    total = sum(p.stat().st_size for root in (MODELS, MODELS.parent / "autoencoders") for p in root.rglob("*") if p.is_file())
    assert total <= 40 * 2**20, f"shipped models and autoencoders take {total / 2**20:.1f} MB (budget 40 MB)"
    for folder in folders:
        info = card(folder.name)
        text = (folder / "README.md").read_text()
        for heading in ("## Data and licences", "## Training", "## Metrics", "## Intended use"):
            assert heading in text, f"{folder.name}/README.md lacks {heading!r}"
        assert info["demo"]["psnr_sr"] and info["demo"]["psnr_lr"]
    assert default_demo_model().parent == MODELS
    assert {c.model for c in DEMO_CASES.values()} <= {f.name for f in folders}


def run_like_card(info: dict, out) -> dict:
    """The demo run a card's ``demo`` entry records, on that model; returns its reference metrics."""
    demo = info["demo"]
    result = run_demo(out, model=MODELS / info["model"], case=demo.get("case", "brain"), slices=demo.get("slices", 12),
                      crop=demo.get("crop", 0), steps=demo["steps"], samples=demo["samples"],
                      data_consistency=demo.get("data_consistency", False), device="cpu")
    return result.metrics["reference"]


@needs_nilearn
@pytest.mark.slow
def test_demo_end_to_end_reproduces_the_model_cards(tmp_path, capsys):
    brain, chest = card(DEMO_CASES["brain"].model)["demo"], card(DEMO_CASES["chest"].model)["demo"]
    assert (brain["steps"], brain["samples"]) == (chest["steps"], chest["samples"])  # one command runs both
    # each case at its own operating point, the one its card records
    assert brain["data_consistency"] == DEMO_CASES["brain"].data_consistency
    assert chest["data_consistency"] == DEMO_CASES["chest"].data_consistency
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--case", "brain", "--case", "chest", "--slices", str(brain["slices"]), "--crop", str(chest["crop"]),
                 "--samples", str(brain["samples"]), "--steps", str(brain["steps"])]) == 0
    printed = capsys.readouterr().out
    assert printed.count("montage:") == 2 and "| LatentSR (brain-sr4 + data consistency) |" in printed and "| LatentSR (cxr-sr4 + data consistency) |" in printed
    assert (out / "metrics.md").is_file()
    for case, recorded in (("brain", brain), ("chest", chest)):
        folder = out / DEMO_CASES[case].name
        names = {p.name for p in folder.iterdir()}
        assert {"hr.nii.gz", "lr.nii.gz", "sr.nii.gz", "uncertainty.nii.gz", "consistency.nii.gz", "difference.nii.gz",
                "hallucination.nii.gz", "metrics.json", "metrics.md", "montage.png"} <= names
        review = json.loads((folder / "metrics.json").read_text())["reference"]
        # the model card's numbers, reproduced (sampling is seeded; only float rounding may differ)
        assert review["psnr_sr"] == pytest.approx(recorded["psnr_sr"], abs=0.05), case
        assert review["psnr_lr"] == pytest.approx(recorded["psnr_lr"], abs=0.01), case
        assert review["psnr_sr"] > review["psnr_lr"], f"{case}: the SR must beat its low-resolution input"
    # the radiograph keeps its own pixels (a tile model): the SR image is the size of the input crop
    assert json.loads((out / "chest-xray" / "metrics.json").read_text())["demo"]["shape"] == [chest["crop"]] * 2
    # a second run replaces the demo folder; a folder of other files is refused
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["demo", "-o", str(tmp_path / "mine"), "--slices", "1", "--case", "brain"]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # nor one that holds the input scan
    assert main(["demo", "-o", str(out), "--case", "brain", "--input", str(out / "brain" / "hr.nii.gz"), "--slices", "1"]) == 2
    assert "holds the input" in capsys.readouterr().err and (out / "brain" / "hr.nii.gz").exists()
    # another scan needs to say which case it replaces
    assert main(["demo", "-o", str(tmp_path / "x"), "--input", str(out / "brain" / "hr.nii.gz")]) == 2
    assert "--case" in capsys.readouterr().err


# every model whose card run the end-to-end demo test does not make (the thick-slice case's included)
OTHER_MODELS = sorted(p.parent.name for p in MODELS.glob("*/card.json")
                      if p.parent.name not in {DEMO_CASES[c].model for c in ("brain", "chest")})


@needs_nilearn
@pytest.mark.parametrize("name", OTHER_MODELS)
def test_other_shipped_models_reproduce_their_cards(name, tmp_path):
    info = card(name)
    review = run_like_card(info, tmp_path / name)
    assert review["psnr_sr"] == pytest.approx(info["demo"]["psnr_sr"], abs=0.05)
    assert review["psnr_lr"] == pytest.approx(info["demo"]["psnr_lr"], abs=0.01)
    assert review["psnr_ae_ceiling"] == pytest.approx(info["demo"]["psnr_ae_ceiling"], abs=0.05)
    assert review["psnr_sr"] > review["psnr_lr"]


def test_an_older_one_case_demo_folder_is_replaced_but_never_an_input_inside_it(tmp_path, capsys):
    old = tmp_path / "latentsr-demo"
    old.mkdir()
    for name in ("montage.png", "metrics.md", "hr.nii.gz"):
        (old / name).write_text("from an earlier version")
    assert main(["demo", "-o", str(old), "--case", "brain", "--input", str(old / "hr.nii.gz")]) == 2
    assert "holds the input" in capsys.readouterr().err and (old / "hr.nii.gz").is_file()
    with pytest.raises(Exception, match="unknown demo case"):
        run_demos(old, ["knee"])
    assert (old / "montage.png").is_file()  # nothing removed before the run could start
