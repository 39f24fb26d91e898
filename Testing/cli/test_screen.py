"""``latentsr screen`` on real slices with two real backends: outputs exist and agree with each other."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from LatentSRLib.cli import main
from conftest import shared_path


@pytest.fixture(scope="module")
def random_monai_vae(tmp_path_factory):
    """An untrained MONAI AutoencoderKL saved as this project saves trained ones (a weak baseline)."""
    from monai.networks.nets import AutoencoderKL

    from LatentSRLib.autoencoders import save_monai_autoencoder

    config = dict(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16, 16), latent_channels=2,
                  num_res_blocks=1, attention_levels=(False, False, False), norm_num_groups=8)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("monai-vae")
    save_monai_autoencoder(AutoencoderKL(**config), folder, config)
    return folder


@pytest.mark.slow
def test_screen_two_backends(tmp_path, capsys, brats_flair, random_monai_vae):
    taef2 = shared_path("weights", "taef2")
    out = tmp_path / "screen"
    code = main(["screen", str(brats_flair), "--vae", f"tiny:{taef2}", "--vae", f"monai:{random_monai_vae}",
                 "--max-slices", "3", "--size", "128", "--no-lpips", "--batch-size", "3", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for name in ("per_image.csv", "summary.json", "summary.md", "subband_fingerprint.png", "examples.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 6 and {r["vae"] for r in rows} == {f"tiny:{taef2}", f"monai:{random_monai_vae}"}
    assert {f"psnr_{b}" for b in ("LL3", "HH1")} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 3 and summary["lpips_network"] is None
    taef2_psnr = [float(r["psnr"]) for r in rows if r["vae"].startswith("tiny:")]
    entry = summary["autoencoders"][f"tiny:{taef2}"]["metrics"]["psnr"]
    assert entry["mean"] == pytest.approx(np.mean(taef2_psnr), abs=1e-3)  # summary comes from the rows
    assert entry["mean"] > 30  # a real pretrained AE reconstructs real brain slices well
    comparison = next(c for c in summary["comparisons"] if c["metric"] == "psnr")
    assert comparison["n"] == 3 and comparison["mean_difference"] > 5  # TAEF2 beats an untrained VAE
    assert "Paired comparisons" in printed and "images/s" in printed


def test_screen_refuses_a_foreign_folder(tmp_path, capsys, cxr_png):
    (tmp_path / "thesis.tex").write_text("precious")
    code = main(["screen", str(cxr_png), "--vae", "tiny:nowhere", "-o", str(tmp_path)])
    assert code == 2 and "holds other files" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_screen_counts_a_case_with_several_files_as_one_subject(tmp_path, capsys, brats_flair, random_monai_vae):
    """Two contrasts of one case are one subject with ``--subject-pattern``; each file's slices keep
    their own rows. Without it each file counts as a subject; a broken pattern is one line."""
    import shutil

    files = [tmp_path / f"case-007-{contrast}.nii.gz" for contrast in ("t1", "t2")]
    for path in files:
        shutil.copy(brats_flair, path)
    base = ["screen", *map(str, files), "--vae", f"monai:{random_monai_vae}", "--max-slices", "2", "--size", "64",
            "--no-lpips"]
    assert main([*base, "-o", str(tmp_path / "one"), "--subject-pattern", r"(case-\d+)"]) == 0
    assert main([*base, "-o", str(tmp_path / "two")]) == 0
    one, two = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "two"))
    assert (one["n_images"], one["n_subjects"]) == (4, 1) and (two["n_images"], two["n_subjects"]) == (4, 2)
    assert "from 1 subject(s)" in (tmp_path / "one" / "summary.md").read_text()
    rows = list(csv.DictReader((tmp_path / "one" / "per_image.csv").open()))
    assert len({r["id"] for r in rows}) == 4 and {r["subject"] for r in rows} == {"case-007"}
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "bad"), "--subject-pattern", "(case"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
