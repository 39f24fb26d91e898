"""Calibrating a model on a prepared dataset: the workflow behind ``latentsr calibrate``.

A tiny untrained model (its errors are large, which is what the intervals must then cover) on a
dataset made by ``latentsr prepare`` from two synthetic subjects; the result is checked against the
conformal rule (and the bound) recomputed here from the maps, with the width's structure term written
out here slice by slice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from LatentSRLib.cli import main
from LatentSRLib.data.dataset import PreparedDataset
from LatentSRLib.errors import InputError
from LatentSRLib.evaluation.calibration import calibrate_maps, calibrate_model, calibration_maps
from LatentSRLib.io import MedicalImage, write_image
from scipy import ndimage

from LatentSRLib.metrics.calibration import (
    CALIBRATION_FILE,
    HEURISTIC,
    METHOD_CRC,
    METHOD_RCPS,
    Calibration,
    hoeffding_bentkus_ucb,
)
from LatentSRLib.model.folder import load_sr_model
from conftest import make_tiny_sr_model


def phantom(seed: int, shape=(28, 40, 40)) -> np.ndarray:
    """A smooth blob with texture, in [0, 1000], every axial slice with anatomy."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    volume = 800 * np.exp(-3 * (x**2 + y**2)) + 150 * np.sin(6 * x + 2 * z) ** 2 + 30 * rng.random(shape)
    return volume.astype(np.float32)


def make_dataset(root: Path, size: int = 64, subjects: int = 2) -> Path:
    """``latentsr prepare`` on synthetic subjects ``s0``, ``s1``, ...: ``s1`` is the validation subject."""
    inputs = []
    for number in range(subjects):
        path = root / f"s{number}.nii.gz"
        write_image(MedicalImage(phantom(number), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3)), path)
        inputs.append(str(path))
    assert main(["prepare", *inputs, "-o", str(root / "dataset"), "--task", "sr4", "--size", str(size),
                 "--val", "s1", "--test-fraction", "0"]) == 0
    return root / "dataset"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    return make_tiny_sr_model(root, grid=64), make_dataset(root)


def structure_by_slice(sr: np.ndarray) -> np.ndarray:
    """Each slice's 2D Sobel gradient magnitude / 8, then its 3 x 3 maximum (the width's structure term)."""
    out = []
    for image in sr.astype(np.float64):
        magnitude = np.hypot(ndimage.sobel(image, 0), ndimage.sobel(image, 1)) / 8
        out.append(ndimage.maximum_filter(magnitude, 3))
    return np.stack(out)


def risk_at(maps, calibration, structure: bool):
    foreground = maps.hr > calibration.foreground_level
    spread = maps.std.astype(float) ** 2 + maps.consistency.astype(float) ** 2
    if structure:
        spread = spread + (calibration.structure_weight * structure_by_slice(maps.sr)) ** 2

    def mean_risk(lam: float) -> float:
        width = lam * (np.sqrt(spread) + calibration.floor)
        outside = (np.abs(maps.hr.astype(float) - maps.sr) > width) & foreground
        return float(np.mean(outside.sum(axis=(1, 2)) / foreground.sum(axis=(1, 2))))

    return mean_risk


def test_calibrate_model_records_the_conformal_lambda(setup, tmp_path):
    model_folder, dataset_dir = setup
    model = tmp_path / "model"
    shutil.copytree(model_folder, model)
    calibration = calibrate_model(model, dataset_dir, samples=2, steps=2, device="cpu", seed=1)
    recorded = json.loads((model / CALIBRATION_FILE).read_text())
    assert Calibration.load(model) == calibration
    assert {k: recorded[k] for k in ("split", "images", "dataset", "samples", "steps", "seed", "alpha", "delta",
                                     "method", "heuristic", "structure_weight")} == {
        "split": "val", "images": 28, "dataset": "dataset", "samples": 2, "steps": 2, "seed": 1, "alpha": 0.1,
        "delta": None, "method": METHOD_CRC, "heuristic": HEURISTIC, "structure_weight": 0.25}
    assert calibration.lam > 0

    # recompute the risk of every validation slice at lam directly from the model's maps
    maps = calibration_maps(load_sr_model(model), PreparedDataset(dataset_dir), "val", samples=2, steps=2, seed=1)
    mean_risk = risk_at(maps, calibration, structure=True)
    n = 28
    assert (n * mean_risk(calibration.lam) + 1) / (n + 1) <= 0.1
    assert (n * mean_risk(0.97 * calibration.lam) + 1) / (n + 1) > 0.1  # the smallest that passes
    assert calibrate_maps(maps, alpha=0.1)[0] == calibration.lam
    assert calibrate_maps(maps, alpha=0.2)[0] < calibration.lam


def test_calibrate_model_with_rcps_records_a_lambda_that_the_bound_certifies(setup, tmp_path):
    model_folder, dataset_dir = setup
    model = tmp_path / "model"
    shutil.copytree(model_folder, model)
    calibration = calibrate_model(model, dataset_dir, samples=2, steps=2, device="cpu", seed=1, method=METHOD_RCPS)
    assert (calibration.method, calibration.delta) == (METHOD_RCPS, 0.1)
    assert calibration.coverage >= 0.9
    maps = calibration_maps(load_sr_model(model), PreparedDataset(dataset_dir), "val", samples=2, steps=2, seed=1)
    mean_risk = risk_at(maps, calibration, structure=True)
    assert hoeffding_bentkus_ucb(mean_risk(calibration.lam), 28, 0.1) <= 0.1
    assert hoeffding_bentkus_ucb(mean_risk(0.97 * calibration.lam), 28, 0.1) > 0.1
    assert calibrate_maps(maps, alpha=0.1, delta=0.1, method=METHOD_RCPS)[0] == calibration.lam
    # conformal risk control has no confidence margin: its lam is smaller
    assert calibrate_maps(maps, alpha=0.1)[0] < calibration.lam
    with pytest.raises(InputError, match="delta is for risk-controlling"):
        calibrate_model(model, dataset_dir, delta=0.1, device="cpu")


def test_the_model_and_dataset_must_match_and_the_split_be_large_enough(setup, tmp_path):
    model_folder, dataset_dir = setup
    with pytest.raises(InputError, match="too small.*at least 22"):
        calibrate_model(model_folder, dataset_dir, samples=1, steps=1, limit=10, device="cpu", method=METHOD_RCPS)
    with pytest.raises(InputError, match="too small.*at least 9"):
        calibrate_model(model_folder, dataset_dir, samples=1, steps=1, limit=5, device="cpu")
    assert not (model_folder / CALIBRATION_FILE).exists()
    with pytest.raises(InputError, match="no test slices"):
        calibrate_model(model_folder, dataset_dir, split="test", device="cpu")
    other = make_tiny_sr_model(tmp_path, grid=32)
    with pytest.raises(InputError, match="32x32 grid"):
        calibrate_model(other, dataset_dir, device="cpu")
