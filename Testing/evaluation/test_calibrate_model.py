"""Calibrating a model on a prepared dataset: the workflow behind ``latentsr calibrate``.

A tiny untrained model (its errors are large, which is what the intervals must then cover) on a
dataset made by ``latentsr prepare`` from two synthetic subjects; the result is checked against the
bound recomputed here from the maps."""

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
from LatentSRLib.metrics.calibration import CALIBRATION_FILE, Calibration, hoeffding_bentkus_ucb
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


def test_calibrate_model_records_a_lambda_that_the_bound_certifies(setup, tmp_path):
    model_folder, dataset_dir = setup
    model = tmp_path / "model"
    shutil.copytree(model_folder, model)
    calibration = calibrate_model(model, dataset_dir, samples=2, steps=2, device="cpu", seed=1)
    recorded = json.loads((model / CALIBRATION_FILE).read_text())
    assert Calibration.load(model) == calibration
    assert {k: recorded[k] for k in ("split", "images", "dataset", "samples", "steps", "seed", "alpha", "delta")} == {
        "split": "val", "images": 28, "dataset": "dataset", "samples": 2, "steps": 2, "seed": 1, "alpha": 0.1,
        "delta": 0.1}
    assert calibration.lam > 0 and calibration.coverage >= 0.9

    # recompute the risk of every validation slice at lam directly from the model's maps
    maps = calibration_maps(load_sr_model(model), PreparedDataset(dataset_dir), "val", samples=2, steps=2, seed=1)
    foreground = maps.hr > calibration.foreground_level

    def mean_risk(lam: float) -> float:
        width = lam * (np.sqrt(maps.std.astype(float) ** 2 + maps.consistency.astype(float) ** 2) + calibration.floor)
        outside = (np.abs(maps.hr.astype(float) - maps.sr) > width) & foreground
        return float(np.mean(outside.sum(axis=(1, 2)) / foreground.sum(axis=(1, 2))))

    assert hoeffding_bentkus_ucb(mean_risk(calibration.lam), 28, 0.1) <= 0.1
    assert hoeffding_bentkus_ucb(mean_risk(0.97 * calibration.lam), 28, 0.1) > 0.1  # the smallest that passes
    # the recorded settings reproduce lam; a looser level gives narrower intervals
    assert calibrate_maps(maps, alpha=0.1, delta=0.1)[0] == calibration.lam
    assert calibrate_maps(maps, alpha=0.2, delta=0.1)[0] < calibration.lam


def test_the_model_and_dataset_must_match_and_the_split_be_large_enough(setup, tmp_path):
    model_folder, dataset_dir = setup
    with pytest.raises(InputError, match="too small.*at least 22"):
        calibrate_model(model_folder, dataset_dir, samples=1, steps=1, limit=10, device="cpu")
    assert not (model_folder / CALIBRATION_FILE).exists()
    with pytest.raises(InputError, match="no test slices"):
        calibrate_model(model_folder, dataset_dir, split="test", device="cpu")
    other = make_tiny_sr_model(tmp_path, grid=32)
    with pytest.raises(InputError, match="32x32 grid"):
        calibrate_model(other, dataset_dir, device="cpu")
