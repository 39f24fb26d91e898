"""Assessing a stored calibration on held-out slices (``latentsr calibrate --assess``).

First on maps built by hand, where every number is known: coverage must be counted inside the
foreground only, the AUROC must point the right way, and the reliability curve must refit the stored
lam. Then end to end with a tiny untrained model on a dataset of three synthetic subjects (train,
val, test), against coverage and AUROC recomputed here from the model's maps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.classification import binary_auroc
from scipy import ndimage

from LatentSRLib.cli import main
from LatentSRLib.data.dataset import PreparedDataset
from LatentSRLib.errors import InputError, OutputError
from LatentSRLib.evaluation.calibration import CalibrationMaps, calibrate_maps, calibrate_model, calibration_maps
from LatentSRLib.evaluation.calibration_assessment import (
    ASSESSMENT_FILE,
    FIGURE_FILE,
    REPORT_FILE,
    assess_calibration,
    assess_maps,
    assessment_markdown,
    autoencoder_reconstructions,
)
from LatentSRLib.io import MedicalImage, write_image
from LatentSRLib.metrics.calibration import HEURISTIC_V1, METHOD_RCPS, Calibration, heuristic_width
from LatentSRLib.metrics.hallucination import hallucination_maps
from LatentSRLib.model.folder import load_sr_model
from conftest import make_tiny_sr_model


def hand_made_maps(seed: int, images: int = 24, size: int = 16):
    """Left half anatomy (0.5), right half air (0). In the anatomy a few pixels are off by +-0.3
    (beyond any noise floor) and carry a large std and no consistency residual; the others are off
    by 0.001 and carry a consistency residual of 0.1: std ranks the flagged pixels first,
    consistency last. In the air the SR is 0.3 with a floor-only width: outside its interval."""
    rng = np.random.default_rng(seed)
    shape = (images, size, size)
    hr = np.zeros(shape, np.float32)
    hr[:, :, : size // 2] = 0.5
    anatomy = hr > 0
    off = anatomy & (rng.random(shape) < 0.1)
    sign = np.where(rng.random(shape) < 0.5, 1.0, -1.0)
    sr = np.where(anatomy, hr + np.where(off, 0.3 * sign, 0.001), 0.3).astype(np.float32)
    std = np.where(off, 0.2, np.where(anatomy, rng.uniform(0, 0.05, shape), 0.0)).astype(np.float32)
    consistency = np.where(anatomy & ~off, 0.1, 0.0).astype(np.float32)
    ae = (hr + np.where(anatomy, rng.uniform(-0.01, 0.01, shape), 0.0)).astype(np.float32)
    maps = CalibrationMaps([f"s{seed}-{i % 2}/slice-{i}" for i in range(images)], sr, hr, std, consistency)
    return maps, ae, off, sign


def test_coverage_counts_the_foreground_and_the_auroc_points_the_right_way():
    maps, ae, off, sign = hand_made_maps(0)
    reference, _, _, _ = hand_made_maps(1, images=40)
    # the hand-made errors are spikes: the V1 width (no structure term) keeps the arithmetic below plain
    calibration = Calibration(lam=1.0, alpha=0.1, delta=0.1, samples=2, split="val", images=40,
                              heuristic=HEURISTIC_V1, method=METHOD_RCPS)
    tumour = np.zeros(maps.hr.shape, bool)
    tumour[:, 4:8, 2:6] = True
    summary = assess_maps(calibration, maps, reference, ae, levels=(0.5, 0.8), regions={"tumour": tumour})

    anatomy = maps.hr > calibration.foreground_level
    # inside the anatomy only the off pixels fall outside (error 0.3 > width 0.2 + 0.05); the air is all outside
    fg = summary["regions"]["foreground"]
    assert fg["pixels"] == anatomy.sum()
    assert fg["coverage"] == pytest.approx(1 - off.sum() / anatomy.sum())
    assert summary["coverage"]["pooled_pixels"] == fg["coverage"]
    by_image = 1 - off.sum(axis=(1, 2)) / anatomy.sum(axis=(1, 2))
    assert summary["coverage"]["mean_over_images"] == pytest.approx(by_image.mean())
    assert [row["coverage"] for row in summary["per_image"]] == pytest.approx(list(by_image))
    # per source scan (the id's first part): alternate slices come from two sources
    assert summary["by_source"]["s0-0"]["images"] == 12
    assert summary["by_source"]["s0-1"]["coverage"] == pytest.approx(by_image[1::2].mean())
    assert summary["regions"]["background"] == {"pixels": int((~anatomy).sum()), "coverage": 0.0,
                                                "mean_half_width": pytest.approx(0.05)}
    assert summary["regions"]["tumour"]["coverage"] == pytest.approx(1 - (off & tumour).sum() / tumour.sum())
    half = heuristic_width(maps.std, maps.consistency)
    assert fg["mean_half_width"] == pytest.approx(half[anatomy].mean())

    # the noise-floor rule flags exactly the off pixels: + hallucinated, - lost; the interval misses all of them
    h = summary["hallucination"]
    assert h["analysed_pixels"] == anatomy.sum() and h["flagged_fraction"] == pytest.approx(off.sum() / anatomy.sum())
    assert summary["regions"]["hallucinated"]["pixels"] == (off & (sign > 0)).sum()
    assert summary["regions"]["lost"]["pixels"] == (off & (sign < 0)).sum()
    assert summary["regions"]["flagged"]["coverage"] == 0.0 and summary["regions"]["unflagged"]["coverage"] == 1.0
    auroc = summary["auroc"]
    for target in ("flagged", "hallucinated", "lost"):
        assert auroc[target]["std"]["pooled"] == 1.0
        assert auroc[target]["calibrated_half_width"]["pooled"] == 1.0
        assert auroc[target]["consistency"]["pooled"] == 0.0  # high where nothing is wrong: a backwards score
        assert auroc[target]["structure"]["pooled"] > 0.7  # an isolated spike is an edge in the SR
    assert auroc["flagged"]["positives"] == off.sum() and auroc["flagged"]["pixels"] == anatomy.sum()
    assert auroc["flagged"]["std"]["per_slice_mean"] == 1.0 and auroc["flagged"]["std"]["slices"] == 24

    # the reliability curve refits the stored level on the reference maps as `latentsr calibrate` would
    reliability = summary["reliability"]
    assert [p["nominal"] for p in reliability["points"]] == [0.5, 0.8, 0.9]  # the stored level is added
    assert reliability["refitted_lam"] == calibrate_maps(reference, alpha=0.1, delta=0.1, method=METHOD_RCPS,
                                                         heuristic=HEURISTIC_V1)[0]
    assert reliability["method"] == METHOD_RCPS
    assert reliability["calibration_images"] == 40
    json.dumps(summary, allow_nan=False)  # strict JSON: nothing to measure is null, not NaN

    # the report lists the sources when there are several
    report = assessment_markdown({**summary, "model": "model", "dataset": "ds", "split": "test", "images": 24,
                                  "calibration_split": "val", "calibration": calibration.to_dict(), "notes": [],
                                  "sampling": {"samples": 2, "steps": 1, "sampler": "ddim", "seed": 0,
                                               "data_consistency": True}})
    entry = summary["by_source"]["s0-1"]
    assert f"| s0-1 | 12 | {entry['coverage']:.3f} |" in report and "rcps-hoeffding-bentkus, alpha 0.1, delta 0.1" in report


def phantom(seed: int, shape=(28, 40, 40)) -> np.ndarray:
    """A smooth blob with texture, in [0, 1000], every axial slice with anatomy."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    volume = 800 * np.exp(-3 * (x**2 + y**2)) + 150 * np.sin(6 * x + 2 * z) ** 2 + 30 * rng.random(shape)
    return volume.astype(np.float32)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny model calibrated on the val subject s1 of a dataset whose test subject is s2."""
    root = tmp_path_factory.mktemp("assessment")
    inputs = []
    for number in range(3):
        path = root / f"s{number}.nii.gz"
        write_image(MedicalImage(phantom(number), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3)), path)
        inputs.append(str(path))
    assert main(["prepare", *inputs, "-o", str(root / "dataset"), "--task", "sr4", "--size", "64",
                 "--val", "s1", "--test", "s2"]) == 0
    model = make_tiny_sr_model(root, grid=64)
    calibrate_model(model, root / "dataset", alpha=0.1, samples=2, steps=2, seed=1, device="cpu")
    return model, root / "dataset"


def test_assessment_on_the_test_split_matches_a_recomputation(calibrated, tmp_path):
    model_folder, dataset_dir = calibrated
    calibration = Calibration.load(model_folder)
    fractions = []
    result = assess_calibration(model_folder, dataset_dir, tmp_path / "report", limit=12, device="cpu",
                                progress=lambda done, message: fractions.append(done))
    summary = result.summary
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted([ASSESSMENT_FILE, REPORT_FILE, FIGURE_FILE])
    assert json.loads((tmp_path / "report" / ASSESSMENT_FILE).read_text()) == summary
    dataset = PreparedDataset(dataset_dir)
    assert summary["split"] == "test" and summary["calibration_split"] == "val"
    assert summary["ids"] == [item["id"] for item in dataset.items("test", limit=12)] and summary["images"] == 12
    assert summary["calibration_ids"] == [item["id"] for item in dataset.items("val")]
    assert not set(summary["ids"]) & set(summary["calibration_ids"])
    assert summary["sampling"] | {"sampler": None} == {"samples": 2, "steps": 2, "seed": 1, "sampler": None,
                                                       "data_consistency": False, "limit": 12, "calibration_limit": None}
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)

    # recompute from the model's own maps on the test slices, with the recorded sampling
    model = load_sr_model(model_folder)
    maps = calibration_maps(model, dataset, "test", samples=2, steps=2, seed=1, limit=12)
    structure = np.stack([ndimage.maximum_filter(np.hypot(ndimage.sobel(image, 0), ndimage.sobel(image, 1)) / 8, 3)
                          for image in maps.sr.astype(np.float64)])  # the structure term, slice by slice
    half = calibration.lam * (np.sqrt(maps.std.astype(float) ** 2 + maps.consistency.astype(float) ** 2
                                      + (calibration.structure_weight * structure) ** 2) + calibration.floor)
    inside = np.abs(maps.hr.astype(float) - maps.sr) <= half
    foreground = maps.hr > calibration.foreground_level
    per_image = (inside & foreground).sum(axis=(1, 2)) / foreground.sum(axis=(1, 2))
    assert summary["coverage"]["mean_over_images"] == pytest.approx(per_image.mean(), abs=1e-6)
    assert summary["regions"]["background"]["coverage"] == pytest.approx(inside[~foreground].mean(), abs=1e-6)
    # the AUROC of the width at flagging the noise-floor rule's pixels, by torchmetrics
    analysis = hallucination_maps(maps.sr, maps.hr, autoencoder_reconstructions(model, maps.hr))
    flagged = np.stack([r.labels for r in analysis]) != 0
    region = np.stack([r.foreground for r in analysis])
    assert flagged.any() and summary["auroc"]["flagged"]["positives"] == flagged.sum()
    for name, score in (("calibrated_half_width", half), ("std", maps.std), ("structure", structure)):
        expected = binary_auroc(torch.from_numpy(np.asarray(score, np.float64)[region]),
                                torch.from_numpy(flagged[region]).long())
        assert summary["auroc"]["flagged"][name]["pooled"] == pytest.approx(float(expected), abs=1e-6)

    # the report's tables come from the json; the figure is a PNG
    report = (tmp_path / "report" / REPORT_FILE).read_text()
    assert f"| {summary['auroc']['flagged']['std']['pooled']:.3f} |" in report
    assert f"{summary['coverage']['mean_over_images']:.3f}" in report and f"]({FIGURE_FILE})" in report
    assert Image.open(tmp_path / "report" / FIGURE_FILE).size[0] > 200
    # a rerun replaces the folder as a whole
    again = assess_calibration(model_folder, dataset_dir, tmp_path / "report", limit=4, device="cpu")
    assert json.loads((tmp_path / "report" / ASSESSMENT_FILE).read_text())["images"] == again.summary["images"] == 4


def test_the_assessed_split_must_not_be_the_calibration_split(calibrated, tmp_path):
    model_folder, dataset_dir = calibrated
    with pytest.raises(InputError, match="val split is the calibration split"):
        assess_calibration(model_folder, dataset_dir, tmp_path / "r", split="val", device="cpu")
    with pytest.raises(InputError, match="test split is the calibration split"):
        assess_calibration(model_folder, dataset_dir, tmp_path / "r", split="test", calibration_split="test")
    uncalibrated = tmp_path / "uncalibrated"
    shutil.copytree(model_folder, uncalibrated)
    (uncalibrated / "calibration.json").unlink()
    with pytest.raises(InputError, match="not calibrated"):
        assess_calibration(uncalibrated, dataset_dir, tmp_path / "r")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a previous calibration assessment"):
        assess_calibration(model_folder, dataset_dir, tmp_path / "other")
    assert not (tmp_path / "r").exists()


def test_cli_assess_writes_the_report_and_refuses_in_one_line(calibrated, tmp_path, capsys):
    model_folder, dataset_dir = calibrated
    from LatentSRLib.cli import calibrate as cli
    from LatentSRLib.evaluation import calibration_assessment

    assert cli.ASSESSMENT_FILE == calibration_assessment.ASSESSMENT_FILE  # the CLI checks the folder by this name
    capsys.readouterr()
    assert main(["calibrate", str(model_folder), "--dataset", str(dataset_dir), "--assess", "test",
                 "-o", str(tmp_path / "report"), "--limit", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "# Calibration assessment" in out and f"wrote {tmp_path / 'report'}" in out
    assert json.loads((tmp_path / "report" / ASSESSMENT_FILE).read_text())["images"] == 4
    # the card's place for it: MODEL/results/...; elsewhere inside the model folder is refused
    inside = model_folder / "results" / "calibration_assessment"
    assert main(["calibrate", str(model_folder), "--dataset", str(dataset_dir), "--assess", "test",
                 "-o", str(inside), "--limit", "2", "--device", "cpu"]) == 0
    assert json.loads((inside / ASSESSMENT_FILE).read_text())["images"] == 2
    capsys.readouterr()
    model_files = sorted(p.name for p in model_folder.iterdir())
    base = ["calibrate", str(model_folder), "--dataset", str(dataset_dir)]
    for argv, says in ((["--assess", "test", "-o", str(model_folder / "report")], "belongs under"),
                       (["--assess", "test", "-o", str(model_folder)], "input"),
                       (["--assess", "test", "-o", str(model_folder / "results")], "belongs under"),
                       (["--assess", "val", "-o", str(tmp_path / "r")], "--assess val: that is the split lam is fitted on"),
                       (["--assess", "train", "--split", "train", "-o", str(tmp_path / "r")], "--assess train"),
                       (["--assess", "test"], "--assess needs -o/--output"),
                       (["-o", str(tmp_path / "r")], "-o/--output is for --assess"),
                       (["--assess", "test", "-o", str(tmp_path / "r"), "--alpha", "0.2"], "--alpha is for calibrating"),
                       (["--assess", "test", "-o", str(tmp_path / "r"), "--method", "rcps"], "--method is for calibrating")):
        assert main(base + argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert sorted(p.name for p in model_folder.iterdir()) == model_files
    assert not (tmp_path / "r").exists()


def test_assess_refusals_come_before_torch_is_imported(calibrated, tmp_path):
    model_folder, dataset_dir = calibrated
    uncalibrated = tmp_path / "uncalibrated"
    shutil.copytree(model_folder, uncalibrated)
    (uncalibrated / "calibration.json").unlink()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    base = f"['calibrate', {{model!r}}, '--dataset', {str(dataset_dir)!r}, '--assess', {{split!r}}, '-o', {{out!r}}]"
    runs = [base.format(model=str(uncalibrated), split="test", out=str(tmp_path / "a")),
            base.format(model=str(model_folder), split="val", out=str(tmp_path / "b")),
            base.format(model=str(model_folder), split="test", out=str(tmp_path / "taken"))]
    code = ("import sys; from LatentSRLib.cli import main\n"
            f"status = [main(argv) for argv in ({', '.join(runs)})]\n"
            "print(status, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.stdout.split() == ["[2,", "2,", "2]", "False"], done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3
    assert "uncalibrated: the model is not calibrated (no calibration.json)" in lines[0]
    assert "--assess val: that is the split lam is fitted on" in lines[1]
    assert "taken: this folder holds other files and is not a previous calibration assessment" in lines[2]
