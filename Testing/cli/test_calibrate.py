"""``latentsr calibrate``: writes the model's calibration.json and prints its coverage; refuses bad
requests in one line, before torch is imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from LatentSRLib.cli import main
from conftest import make_tiny_sr_model, shared_path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate-cli")
    return make_tiny_sr_model(root, grid=64), root


def test_calibrate_on_real_slices_writes_calibration_json(setup, tmp_path, capsys):
    model_folder, _ = setup
    flair = shared_path("brain", "BraTS-GLI-00001-000-t2f.nii.gz")
    t1 = shared_path("brain", "BraTS-GLI-00001-000-t1n.nii.gz")
    dataset = tmp_path / "brats"
    # two real scans, both in the validation split (the untrained model never saw either)
    assert main(["prepare", str(flair), str(t1), "-o", str(dataset), "--task", "sr4", "--size", "64",
                 "--max-slices", "12", "--val", "BraTS*"]) == 0
    model = tmp_path / "model"
    shutil.copytree(model_folder, model)
    capsys.readouterr()
    assert main(["calibrate", str(model), "--dataset", str(dataset), "--alpha", "0.2", "--method", "rcps",
                 "--delta", "0.2", "--samples", "2", "--steps", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    recorded = json.loads((model / "calibration.json").read_text())
    assert recorded["images"] == 24 and recorded["split"] == "val" and recorded["dataset"] == "brats"
    assert (recorded["samples"], recorded["steps"], recorded["alpha"], recorded["delta"]) == (2, 1, 0.2, 0.2)
    assert recorded["method"] == "rcps-hoeffding-bentkus"
    assert f"coverage {recorded['coverage']:.3f} (nominal 0.80)" in out
    assert f"mean half-width {recorded['mean_half_width']:.4f}" in out and "with confidence 0.8" in out
    assert recorded["coverage"] >= 0.8
    rcps_lam = recorded["lam"]
    # the default: conformal risk control, no delta, a smaller lam on the same maps (no confidence margin)
    assert main(["calibrate", str(model), "--dataset", str(dataset), "--alpha", "0.2", "--samples", "2",
                 "--steps", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    recorded = json.loads((model / "calibration.json").read_text())
    assert (recorded["method"], recorded["delta"], recorded["structure_weight"]) == ("conformal-risk-control", None, 0.25)
    assert recorded["lam"] < rcps_lam and "(conformal risk control)" in out


@pytest.mark.parametrize(("argv", "says"), [
    (["--alpha", "0"], "--alpha must lie strictly between 0 and 1"),
    (["--method", "rcps", "--delta", "1"], "--delta must lie strictly between 0 and 1"),
    (["--delta", "0.1"], "--delta is for --method rcps"),
])
def test_levels_outside_zero_one_are_refused(setup, argv, says, capsys):
    model_folder, root = setup
    (root / "ds").mkdir(exist_ok=True)
    (root / "ds" / "dataset.json").write_text("{}")
    assert main(["calibrate", str(model_folder), "--dataset", str(root / "ds"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


def test_refusals_come_in_one_line_before_torch_is_imported(setup, tmp_path):
    model_folder, _ = setup
    (tmp_path / "not-a-dataset").mkdir()
    code = ("import sys; from LatentSRLib.cli import main\n"
            f"status = [main(argv) for argv in (['calibrate', 'missing-model', '--dataset', {str(tmp_path)!r}],"
            f" ['calibrate', {str(model_folder)!r}, '--dataset', 'missing-dataset'],"
            f" ['calibrate', {str(model_folder)!r}, '--dataset', {str(tmp_path / 'not-a-dataset')!r}])]\n"
            "print(status, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.stdout.split() == ["[2,", "2,", "2]", "False"], done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3
    assert "missing-model: no such model folder" in lines[0]
    assert "missing-dataset: no such dataset folder" in lines[1]
    assert "not-a-dataset: not a LatentSR dataset" in lines[2]


def test_the_cli_names_the_library_methods():
    from LatentSRLib.cli import calibrate as cli
    from LatentSRLib.metrics.calibration import METHODS

    from LatentSRLib.metrics.calibration import DEFAULT_STRUCTURE_WEIGHT

    assert tuple(METHODS) == cli.METHOD_NAMES  # named in the CLI so that parsing needs no numpy or scipy
    assert cli.CALIBRATE_DEFAULTS["structure_weight"] == DEFAULT_STRUCTURE_WEIGHT
