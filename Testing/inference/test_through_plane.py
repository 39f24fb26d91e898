"""Through-plane SR with a thick-slice model: the slice axis refined s-fold, both orthogonal planes
super-resolved and fused, on the exact fine grid."""

from __future__ import annotations

import numpy as np
import pytest

from LatentSRLib.inference import SRSettings, super_resolve_volume
from LatentSRLib.io import MedicalImage, read_image, write_image
from LatentSRLib.model.folder import load_sr_model
from conftest import install_pooling_model, make_tiny_sr_model


@pytest.fixture(scope="module")
def thick_folder(tmp_path_factory):
    return make_tiny_sr_model(tmp_path_factory.mktemp("thick"), grid=32, fit="tile", task="thick5")


@pytest.fixture()
def pooling_thick(thick_folder, monkeypatch):
    return install_pooling_model(load_sr_model(thick_folder), monkeypatch, decode_mode="bicubic")


def thick_volume(direction: np.ndarray) -> MedicalImage:
    """Eight 5 mm slices of 1 mm pixels with a bright block in slices 3-4."""
    array = np.full((8, 24, 20), 100, dtype=np.int16)
    array[:, 4:20, 3:17] = 300
    array[3:5, 8:16, 6:14] = 1200
    return MedicalImage(array, (1.0, 1.0, 5.0), (-5.0, 12.0, 40.0), direction)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, -1.0])], ids=["LPS", "RAS-flipped"])
def test_the_slice_axis_is_refined_on_the_exact_fine_grid(pooling_thick, direction):
    lr = thick_volume(direction)
    result = super_resolve_volume(pooling_thick, lr, settings=SRSettings(batch_size=8, samples=2), device="cpu")
    sr = result.sr
    assert sr.shape == (40, 24, 20) and np.allclose(sr.spacing, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(sr.origin, np.array(lr.origin) - direction[:, 2] * 2.0, atol=1e-6)  # (5 - 1) / 2 fine
    assert result.metrics["plane"] == "coronal+sagittal"
    assert result.metrics["thick_axis_spacing"] == [5.0, 1.0]
    for output in result.outputs().values():
        assert output.has_same_geometry(sr)
    # the bright block's physical centre along the slice axis stays where it was measured (half a fine slice)
    def centre_along_k(image):
        profile = np.clip(image.array.astype(float) - 650, 0, None).sum(axis=(1, 2))
        k = (profile * np.arange(len(profile))).sum() / profile.sum()
        return float((image.index_to_world() @ np.array([0, 0, k, 1.0]))[2])

    assert abs(centre_along_k(sr) - centre_along_k(lr)) <= 0.5
    assert float(result.uncertainty.array.max()) >= 0.0


def test_a_thick_degraded_real_volume_comes_back_on_its_1mm_grid(pooling_thick, brats_flair, tmp_path):
    from LatentSRLib.transforms.thick import simulate_thick_slices

    volume = read_image(brats_flair)
    crop = MedicalImage(volume.array[:, 100:136, 100:132], volume.spacing,
                        tuple((volume.index_to_world() @ np.array([100, 100, 0, 1.0]))[:3]), volume.direction)
    thick = simulate_thick_slices(crop, 5, plane="axial")
    write_image(thick, tmp_path / "thick.nii.gz")
    thick = read_image(tmp_path / "thick.nii.gz")
    assert thick.shape == (31, 36, 32) and np.isclose(thick.spacing[2], 5.0)
    result = super_resolve_volume(pooling_thick, thick, settings=SRSettings(batch_size=16), device="cpu")
    assert result.sr.has_same_geometry(crop)  # the 1 mm grid exactly: 155 slices, spacing, origin, direction
    # and with the truth as a reference the maps and scores come out on it
    scored = super_resolve_volume(pooling_thick, thick, reference=crop, settings=SRSettings(batch_size=16),
                                  device="cpu")
    assert scored.metrics["reference"]["psnr_lr"] > 15 and scored.difference.has_same_geometry(crop)


def test_measure_thick_scores_what_latentsr_sr_gives_against_cubic_bspline(thick_folder, brats_flair, tmp_path):
    """``measure_thick.py`` on 30 real 1 mm slices: every axial slice with anatomy is scored, the SR's
    PSNR is that of the engine's output for the same thick scan, the baseline's that of cubic B-spline
    interpolation written out here with scipy; the card block reads the saved rows."""
    import json
    import shutil

    from scipy import ndimage

    from LatentSRLib.transforms.thick import simulate_thick_slices
    from conftest import load_script

    image = read_image(brats_flair)
    crop = MedicalImage(np.ascontiguousarray(image.array[60:90, 80:144, 70:134]), image.spacing, image.origin,
                        image.direction)
    path = tmp_path / "crop.nii.gz"
    write_image(crop, path)
    model = tmp_path / "model"
    shutil.copytree(thick_folder, model)
    shutil.copytree(thick_folder.parent / "vae", tmp_path / "vae")
    assert load_script("measure_thick").main([str(model), "--scan", f"flair={path}", "--device", "cpu"]) == 0
    results = json.loads((model / "results" / "thick_scans.json").read_text())
    assert results["settings"]["scale"] == 5 and set(results["scans"]["flair"]["runs"]) == {"dc", "no_dc"}

    truth_image = read_image(path)
    thick = simulate_thick_slices(truth_image, 5, plane="axial")
    axis = truth_image.array_axis_for_plane("axial")
    sr = super_resolve_volume(load_sr_model(model), thick, reference=truth_image, settings=SRSettings(
        data_consistency=True), device="cpu")
    window = sr.metrics["window"]

    def windowed(array):
        return np.moveaxis(np.clip((np.asarray(array, float) - window["lower"]) / (window["upper"] - window["lower"]),
                                   0, 1), axis, 0)

    coarse = np.moveaxis(np.asarray(thick.array, float), axis, 0)
    centres = (np.arange(30) - 2.0) / 5.0  # fine slice j of coarse slice k = (j - 2) / 5
    grid = np.meshgrid(centres, np.arange(coarse.shape[1]), np.arange(coarse.shape[2]), indexing="ij")
    bspline = windowed(np.moveaxis(ndimage.map_coordinates(coarse, grid, order=3, mode="nearest"), 0, axis))
    truth, sr_slices = windowed(truth_image.array), windowed(sr.sr.array)
    rows = results["scans"]["flair"]["runs"]["dc"]["per_slice"]
    assert [row["slice"] for row in rows] == [i for i in range(30) if truth[i].max() > 0.05]
    for row in rows:
        i = row["slice"]
        assert row["psnr_sr"] == pytest.approx(10 * np.log10(1 / np.mean((sr_slices[i] - truth[i]) ** 2)), abs=1e-4)
        assert row["psnr_bspline"] == pytest.approx(10 * np.log10(1 / np.mean((bspline[i] - truth[i]) ** 2)), abs=1e-4)

    block = load_script("write_card").thick_scans_block(results)
    mean_sr = np.mean([row["psnr_sr"] for row in rows])
    assert f"| flair | {len(rows)} |" in block and f"{mean_sr:.2f} / " in block
    assert "thick-slice, defaults: PSNR >= cubic B-spline + 2 dB" in block


def test_the_demo_shows_a_thick_slice_model_in_a_coronal_slice(thick_folder, brats_flair, tmp_path):
    from LatentSRLib.demo import run_demo

    result = run_demo(tmp_path / "demo", model=thick_folder, scan=brats_flair, case="brain", slices=20, steps=1,
                      samples=1, data_consistency=True, device="cpu")
    assert result.montage.is_file() and sorted(result.metrics["demo"]["shape"]) == [20, 240, 240]
    assert read_image(tmp_path / "demo" / "sr.nii.gz").shape == read_image(tmp_path / "demo" / "hr.nii.gz").shape
    assert read_image(tmp_path / "demo" / "lr.nii.gz").shape.count(4) == 1  # 20 fine slices in 4 thick ones
