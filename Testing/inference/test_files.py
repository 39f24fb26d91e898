"""A scan file in, an output folder out (`latentsr sr` and the bundle's inference entry): the same
engine behind both, and output folders that are checked first and replaced as a whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from LatentSRLib.inference import SRSettings, super_resolve_volume
from LatentSRLib.inference.files import super_resolve_file
from LatentSRLib.io import MedicalImage, read_image, write_image
from LatentSRLib.model.folder import load_sr_model
from conftest import REPO_ROOT, make_tiny_sr_model

CONFIGS = REPO_ROOT / "Training" / "configs"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_tiny_sr_model(tmp_path_factory.mktemp("model"), grid=32)


@pytest.fixture()
def scan(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    array = np.zeros((4, 40, 36), dtype=np.int16)
    array[:, 8:32, 6:30] = 300 + rng.integers(0, 200, (4, 24, 24))
    path = tmp_path / "scan.nii.gz"
    write_image(MedicalImage(array, (0.9, 0.9, 3.0), (5.0, -3.0, 12.0), np.eye(3)), path)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bundle_inference_runs_the_engine_of_latentsr_sr(model_folder, scan, tmp_path):
    from monai.bundle import run

    run("inference", meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.yaml"),
        logging_file=str(CONFIGS / "logging.conf"), input=str(scan), output_dir=str(tmp_path / "bundle"),
        model=str(model_folder), steps=2, samples=2, seed=3, device="cpu", simulate_scale=4)
    metrics = json.loads((tmp_path / "bundle" / "metrics.json").read_text())
    assert sorted(metrics["outputs"]) == ["consistency", "difference", "hallucination", "lr", "sr", "uncertainty"]
    assert metrics["settings"]["data_consistency"] is True  # the bundle's default is the fidelity end, as the CLI's
    # the library call with the same settings gives the same volume
    direct = super_resolve_volume(load_sr_model(model_folder), read_image(scan), simulate=True, device="cpu",
                                  settings=SRSettings(steps=2, samples=2, seed=3, data_consistency=True))
    written = read_image(tmp_path / "bundle" / "sr.nii.gz")
    assert written.has_same_geometry(direct.sr)
    np.testing.assert_array_equal(written.array, direct.sr.array)
    assert metrics["reference"]["psnr_sr"] == pytest.approx(direct.metrics["reference"]["psnr_sr"])


def test_a_rerun_replaces_every_map(model_folder, scan, tmp_path):
    out = tmp_path / "out"
    super_resolve_file(scan, out, model_folder, settings=SRSettings(steps=1), simulate_scale=4, device="cpu")
    assert {"difference.nii.gz", "hallucination.nii.gz", "lr.nii.gz"} <= {p.name for p in out.iterdir()}
    super_resolve_file(scan, out, model_folder, settings=SRSettings(steps=1), device="cpu")
    assert sorted(p.name for p in out.iterdir()) == ["consistency.nii.gz", "metrics.json", "sr.nii.gz",
                                                     "uncertainty.nii.gz"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folders left behind"


def test_a_failed_write_leaves_the_previous_folder(model_folder, scan, tmp_path, monkeypatch):
    import LatentSRLib.inference.files as files

    out = tmp_path / "out"
    super_resolve_file(scan, out, model_folder, settings=SRSettings(steps=1), device="cpu")
    before = snapshot(out)
    calls = []

    def failing_write(image, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the outputs are written
        return write_image(image, path, **kwargs)

    monkeypatch.setattr(files, "write_image", failing_write)
    with pytest.raises(KeyboardInterrupt):
        super_resolve_file(scan, out, model_folder, settings=SRSettings(steps=1, seed=9), simulate_scale=4,
                           device="cpu")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "scan.nii.gz"]


def test_wrong_output_folders_are_refused_before_any_work(scan, tmp_path, capsys):
    from LatentSRLib.cli import main

    missing_model = tmp_path / "no-such-model"  # never reached: the folder is checked first
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["sr", str(scan), "-o", str(foreign), "--model", str(missing_model)]) == 2
    assert "not a previous `latentsr sr` output folder" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"
    inside = tmp_path / "series"
    inside.mkdir()
    assert main(["sr", str(inside), "-o", str(inside / "out"), "--model", str(missing_model)]) == 2
    assert "inside the input folder" in capsys.readouterr().err and not (inside / "out").exists()
    file_in_the_way = tmp_path / "a-file"
    file_in_the_way.write_text("x")
    assert main(["sr", str(scan), "-o", str(file_in_the_way), "--model", str(missing_model)]) == 2
    assert "a file is in the way" in capsys.readouterr().err
