"""``latentsr sr`` with a calibrated model: the interval and trust maps on the SR grid, in the input's
units, and the calibration's coverage in metrics.json; an uncalibrated model says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from LatentSRLib.cli import main
from LatentSRLib.errors import InputError
from LatentSRLib.inference import SRSettings
from LatentSRLib.inference.files import super_resolve_file
from LatentSRLib.io import MedicalImage, read_image, write_image
from LatentSRLib.metrics.calibration import Calibration
from conftest import make_tiny_sr_model

CALIBRATION = Calibration(lam=1.7, alpha=0.1, delta=None, samples=2, split="val", images=30, dataset="ds", steps=1,
                          floor=0.02, structure_weight=0.5)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("intervals")
    plain = make_tiny_sr_model(root, grid=32)
    calibrated = root / "calibrated"
    shutil.copytree(plain, calibrated)
    CALIBRATION.save(calibrated)
    return plain, calibrated


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    array = np.zeros((3, 40, 36), dtype=np.int16)
    array[:, 8:32, 6:30] = 300 + rng.integers(0, 200, (3, 24, 24))
    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    write_image(MedicalImage(array, (0.9, 0.9, 3.0), (5.0, -3.0, 12.0), np.eye(3)), path)
    return path


@pytest.fixture(scope="module")
def mask(scan, tmp_path_factory) -> Path:
    labels = np.zeros((3, 40, 36), dtype=np.uint8)
    labels[:, 12:20, 10:20] = 1
    labels[:, 22:28, 10:26] = 2
    path = tmp_path_factory.mktemp("mask") / "mask.nii.gz"
    write_image(read_image(scan).with_array(labels), path)
    return path


def test_a_calibrated_model_writes_interval_and_trust_and_reports_coverage(models, scan, mask, tmp_path):
    _, calibrated = models
    out = tmp_path / "out"
    tolerance = 25.0
    metrics = super_resolve_file(scan, out, calibrated, settings=SRSettings(steps=1, samples=2), simulate_scale=4,
                                 mask=mask, tolerance=tolerance, device="cpu")
    sr, truth = read_image(out / "sr.nii.gz"), read_image(scan)
    interval, trust = read_image(out / "interval.nii.gz"), read_image(out / "trust.nii.gz")
    assert interval.has_same_geometry(sr) and trust.has_same_geometry(sr)
    # the half-width, recomputed from the written std, consistency and SR (all in intensity units):
    # lam * (sqrt(std^2 + consistency^2 + (w * structure)^2) + floor * window width), a width scaled by the window,
    # no offset; structure: each axial slice's Sobel magnitude / 8, maximum over 3 x 3 (linear in intensity)
    lower, upper = metrics["window"]["lower"], metrics["window"]["upper"]
    std, consistency = read_image(out / "uncertainty.nii.gz").array, read_image(out / "consistency.nii.gz").array
    structure = np.stack([ndimage.maximum_filter(np.hypot(ndimage.sobel(image, 0), ndimage.sobel(image, 1)) / 8, 3)
                          for image in sr.array.astype(np.float64)])
    spread = np.sqrt(std.astype(float) ** 2 + consistency.astype(float) ** 2
                     + (CALIBRATION.structure_weight * structure) ** 2)
    expected = CALIBRATION.lam * (spread + CALIBRATION.floor * (upper - lower))
    # (the SR is written in the scan's integer type: its rounding moves the recomputed structure by < 0.5)
    np.testing.assert_allclose(interval.array, expected, rtol=1e-3, atol=0.5)
    assert trust.array.dtype == np.uint8
    np.testing.assert_array_equal(trust.array, (interval.array <= tolerance).astype(np.uint8))

    entry = metrics["calibration"]
    assert entry["nominal"] == pytest.approx(0.9) and entry["lam"] == CALIBRATION.lam
    assert entry["tolerance"] == tolerance and entry["trusted_fraction"] == pytest.approx(trust.array.mean())
    # coverage: the (windowed) truth within SR +- interval, over the truth's foreground
    hr = np.clip(truth.array.astype(float), lower, upper)
    foreground = (hr - lower) / (upper - lower) > CALIBRATION.foreground_level
    inside = np.abs(hr - sr.array) <= interval.array + 1e-3
    assert entry["coverage"] == pytest.approx(inside[foreground].mean(), abs=2e-3)
    assert entry["mean_half_width"] == pytest.approx(interval.array[foreground].mean(), rel=1e-4)
    labels = read_image(mask).array
    assert sorted(entry["labels"]) == ["0", "1", "2"]
    assert entry["labels"]["1"]["pixels"] == int((labels == 1).sum())
    assert entry["labels"]["2"]["coverage"] == pytest.approx(inside[labels == 2].mean(), abs=2e-3)
    assert sorted(metrics["outputs"]) == ["consistency", "difference", "hallucination", "interval", "lr", "sr",
                                          "trust", "uncertainty"]


def test_the_interval_lies_on_the_fine_grid_of_a_real_low_resolution_scan(models, scan, tmp_path, capsys):
    _, calibrated = models
    assert main(["sr", str(scan), "-o", str(tmp_path / "out"), "--model", str(calibrated), "--steps", "1",
                 "--samples", "1", "--device", "cpu", "--tolerance", "10"]) == 0
    captured = capsys.readouterr()
    # the run takes another K than the calibration: said once, as a warning
    assert "calibrated with 2 sample(s) per slice but this run takes 1" in captured.err
    sr, interval = read_image(tmp_path / "out" / "sr.nii.gz"), read_image(tmp_path / "out" / "interval.nii.gz")
    assert sr.shape == (3, 160, 144) and interval.has_same_geometry(sr)
    assert read_image(tmp_path / "out" / "trust.nii.gz").has_same_geometry(sr)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "coverage" not in metrics["calibration"] and metrics["calibration"]["tolerance"] == 10
    assert float(interval.array.min()) > 0  # the floor: no zero-width interval even for K = 1


def test_an_uncalibrated_model_says_so_and_refuses_a_tolerance(models, scan, tmp_path, capsys):
    plain, _ = models
    metrics = super_resolve_file(scan, tmp_path / "out", plain, settings=SRSettings(steps=1), simulate_scale=4,
                                 device="cpu")
    assert metrics["calibration"] == "uncalibrated"
    assert not any(p.name.startswith(("interval", "trust")) for p in (tmp_path / "out").iterdir())
    with pytest.raises(InputError, match="calibrated model"):
        super_resolve_file(scan, tmp_path / "out2", plain, settings=SRSettings(steps=1), tolerance=1.0, device="cpu")
    capsys.readouterr()
    assert main(["sr", str(scan), "-o", str(tmp_path / "out3"), "--model", str(plain), "--tolerance", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tolerance needs a calibrated model" in err[0] and str(plain) in err[0]
    assert not (tmp_path / "out3").exists()


def test_a_packaged_model_keeps_its_calibration(models, tmp_path):
    _, calibrated = models
    assert main(["package", str(calibrated), "-o", str(tmp_path / "packaged")]) == 0
    assert Calibration.load(tmp_path / "packaged") == CALIBRATION
