"""The domain-adapted autoencoders in ``Training/autoencoders``: they load, keep TAESD's MIT notice with
the weights, store float16, and reproduce, slice by slice, the ceiling their card's screen recorded."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import REPO_ROOT, shared_path

AUTOENCODERS = sorted(p for p in (REPO_ROOT / "Training" / "autoencoders").iterdir() if (p / "config.json").is_file())


def test_an_adapted_autoencoder_ships():
    assert AUTOENCODERS, "no autoencoder in Training/autoencoders"


@pytest.mark.parametrize("folder", AUTOENCODERS, ids=[p.name for p in AUTOENCODERS])
def test_shipped_autoencoder_keeps_its_licence_and_card(folder):
    import torch

    from LatentSRLib.autoencoders import load_autoencoder
    from LatentSRLib.autoencoders.diffusers_tiny import TAESD_MIT_NOTICE

    config = json.loads((folder / "config.json").read_text())
    assert config["derived_from"]["licence"] == "MIT" and (folder / "LICENSE").read_text() == TAESD_MIT_NOTICE
    assert config["weights_dtype"] == "float16"
    for role in ("encoder", "decoder"):
        state = torch.load(folder / config[role], map_location="cpu", weights_only=True)
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    autoencoder = load_autoencoder(f"tiny:{folder}")
    assert autoencoder.info["derived_from"]["sha256"] == config["derived_from"]["sha256"]
    text = (folder / "README.md").read_text()
    for heading in ("## Data and licences", "## Training", "## Metrics", "## Intended use"):
        assert heading in text, f"{folder.name}/README.md lacks {heading!r}"


@pytest.mark.shared_data
@pytest.mark.parametrize("folder", AUTOENCODERS, ids=[p.name for p in AUTOENCODERS])
def test_shipped_autoencoder_reproduces_its_screened_ceiling(folder, tmp_path):
    """The screen's rows of one held-out file, remade now from the shipped weights: each slice's PSNR
    within 0.05 dB of the saved one (the card's table is made from those rows)."""
    from LatentSRLib.data.slice_source import SliceSelection
    from LatentSRLib.evaluation.screening import screen_autoencoders

    summary = json.loads((folder / "results" / "screen" / "summary.json").read_text())
    spec = next(s for s in summary["autoencoders"] if (REPO_ROOT / s.partition(":")[2]).resolve() == folder.resolve())
    source = sorted(summary["sources"])[-1]
    scan = shared_path(*source.split("/")[-2:])
    recorded = {row["id"]: float(row["psnr"]) for row in csv.DictReader((folder / "results" / "screen" / "per_image.csv").open())
                if row["vae"] == spec and row["source"] == source}
    assert recorded
    fields = {k: v for k, v in summary["selection"].items() if k in SliceSelection.__dataclass_fields__}
    selection = SliceSelection(**{**fields, "size": tuple(fields["size"])})
    result = screen_autoencoders([scan], [f"tiny:{folder}"], tmp_path / "screen", selection=selection, lpips=False,
                                 device="cpu", log=lambda message: None, progress=lambda *args: None)
    remade = {row["id"]: float(row["psnr"]) for row in csv.DictReader((tmp_path / "screen" / "per_image.csv").open())}
    assert remade.keys() == recorded.keys()
    for slice_id, psnr in recorded.items():
        assert remade[slice_id] == pytest.approx(psnr, abs=0.05), slice_id
    assert result is not None
