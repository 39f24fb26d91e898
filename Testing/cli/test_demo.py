"""`latentsr demo` and the shipped reference model: the newcomer's first command, end to end."""

from __future__ import annotations

import importlib.util
import json

import pytest

from LatentSRLib.cli import main
from LatentSRLib.demo import default_demo_model
from conftest import REPO_ROOT

MODELS = REPO_ROOT / "Training" / "models"
needs_nilearn = pytest.mark.skipif(importlib.util.find_spec("nilearn") is None,
                                   reason="the demo's default scan ships with nilearn (pip install nilearn)")


def card(name: str) -> dict:
    return json.loads((MODELS / name / "card.json").read_text())


def test_every_shipped_model_has_a_card_and_stays_small():
    folders = sorted(p.parent for p in MODELS.glob("*/config.json"))
    assert folders, "no reference model in Training/models"
    total = sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file())
    assert total <= 30 * 2**20, f"shipped models take {total / 2**20:.1f} MB (budget 30 MB)"
    for folder in folders:
        info = card(folder.name)
        text = (folder / "README.md").read_text()
        for heading in ("## Data and licences", "## Training", "## Metrics", "## Intended use"):
            assert heading in text, f"{folder.name}/README.md lacks {heading!r}"
        assert info["demo"]["psnr_sr"] and info["demo"]["psnr_lr"]
    assert default_demo_model().parent == MODELS


@needs_nilearn
@pytest.mark.slow
def test_demo_end_to_end_reproduces_the_model_card(tmp_path, capsys):
    recorded = card("brain-sr4")["demo"]
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--slices", str(recorded["slices"]), "--samples", str(recorded["samples"]),
                 "--steps", str(recorded["steps"])]) == 0
    printed = capsys.readouterr().out
    assert "montage:" in printed and "| LatentSR (brain-sr4) |" in printed
    names = {p.name for p in out.iterdir()}
    assert {"hr.nii.gz", "lr.nii.gz", "sr.nii.gz", "uncertainty.nii.gz", "consistency.nii.gz", "difference.nii.gz",
            "hallucination.nii.gz", "metrics.json", "metrics.md", "montage.png"} <= names
    review = json.loads((out / "metrics.json").read_text())["reference"]
    # the model card's numbers, reproduced (sampling is seeded; only float rounding may differ)
    assert review["psnr_sr"] == pytest.approx(recorded["psnr_sr"], abs=0.05)
    assert review["psnr_lr"] == pytest.approx(recorded["psnr_lr"], abs=0.01)
    assert review["psnr_sr"] > review["psnr_lr"], "the SR must beat its low-resolution input"
    # a second run replaces the demo folder; a folder of other files is refused
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["demo", "-o", str(tmp_path / "mine"), "--slices", "1"]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # nor one that holds the input scan
    assert main(["demo", "-o", str(out), "--input", str(out / "hr.nii.gz"), "--slices", "1"]) == 2
    assert "holds the input" in capsys.readouterr().err and (out / "hr.nii.gz").exists()
