"""Scoring a model on real low-resolution scans (the coarse scan a scanner stores) through the engine."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from LatentSRLib.errors import InputError
from LatentSRLib.inference.real_scans import evaluate_real_scans, load_real_scans, slab_of, summarise
from LatentSRLib.io import MedicalImage, read_image, write_image
from conftest import make_tiny_sr_model


@pytest.fixture(scope="module")
def tile_model(tmp_path_factory):
    return make_tiny_sr_model(tmp_path_factory.mktemp("real-scans"), grid=32, fit="tile")


@pytest.fixture(scope="module")
def small_flair(tmp_path_factory, brats_flair):
    """A 64 x 64 in-plane crop of 12 axial slices through the tumour, 1 mm."""
    image = read_image(brats_flair)
    crop = image.array[70:82, 90:154, 60:124]
    origin = tuple((image.index_to_world() @ np.array([60, 90, 70, 1.0]))[:3])
    path = tmp_path_factory.mktemp("flair") / "flair.nii.gz"
    write_image(MedicalImage(np.ascontiguousarray(crop), image.spacing, origin, image.direction), path)
    return path


def test_slab_of_keeps_the_slices_world_positions(brats_flair):
    image = read_image(brats_flair)
    slab = slab_of(image, "axial", [10, 30, 50])
    assert slab.shape == (3, 240, 240) and np.array_equal(slab.array[1], image.array[30])
    np.testing.assert_allclose(slab.spacing, (1.0, 1.0, 20.0))
    # index k of the slab sits where slice 10 + 20 k of the volume sits
    for k, original in enumerate((10, 30, 50)):
        np.testing.assert_allclose(slab.index_to_world() @ [3, 4, k, 1], image.index_to_world() @ [3, 4, original, 1])
    with pytest.raises(InputError, match="evenly spaced"):
        slab_of(image, "axial", [1, 2, 4])
    with pytest.raises(InputError, match="outside"):
        slab_of(image, "axial", [150, 160])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_real_scans_score_the_coarse_scan_against_the_truth_and_bicubic(tile_model, small_flair, tmp_path):
    results = evaluate_real_scans(tile_model, {"flair": small_flair}, every=4, steps=2, device="cpu")
    entry = results["scans"]["flair"]
    assert entry["slices"] == [0, 4, 8]
    assert entry["lr_shape"] == [3, 16, 16]  # the model was fed the 4 mm scan, not the truth
    np.testing.assert_allclose(entry["lr_spacing"], (4.0, 4.0, 4.0))
    dc, no_dc = entry["runs"]["dc"], entry["runs"]["no_dc"]
    assert [r["slice"] for r in dc["per_slice"]] == [0, 4, 8]
    # the baseline is the same for both operating points; the SR is not
    assert [r["psnr_lr"] for r in dc["per_slice"]] == [r["psnr_lr"] for r in no_dc["per_slice"]]
    assert [r["psnr_sr"] for r in dc["per_slice"]] != [r["psnr_sr"] for r in no_dc["per_slice"]]
    # bicubic of the 16 x 16 measurement, recomputed independently with PIL (its bicubic kernel differs a
    # little from torch's): close to the recorded baseline, far from the truth itself
    hr = read_image(small_flair).array.astype(np.float32)
    window = dc["window"]
    for row in dc["per_slice"]:
        truth = hr[row["slice"]]
        coarse = Image.fromarray(truth, "F").resize((16, 16), Image.BICUBIC)
        bicubic = np.asarray(coarse.resize((64, 64), Image.BICUBIC))
        scaled = [np.clip((x - window["lower"]) / (window["upper"] - window["lower"]), 0, 1) for x in (bicubic, truth)]
        assert row["psnr_lr"] == pytest.approx(_psnr(*scaled), abs=0.5)
        assert row["psnr_lr"] < 40
    # LPIPS per slice, with the network named (rule 10)
    if results["lpips"] is not None:
        assert results["lpips"]["label"] and all(0 <= r["lpips_sr"] and 0 <= r["lpips_lr"] for r in dc["per_slice"])
    # the summary: means of the rows, and the paired difference SR - bicubic
    summary = summarise(results, "dc")
    assert summary["n"] == 3
    assert summary["psnr_sr"] == pytest.approx(np.mean([r["psnr_sr"] for r in dc["per_slice"]]))
    gain = summary["psnr_gain"]
    assert gain["mean_difference"] == pytest.approx(summary["psnr_sr"] - summary["psnr_lr"])
    # saved and read back; anything else is refused in one line
    import json

    (tmp_path / "r.json").write_text(json.dumps(results))
    assert load_real_scans(tmp_path / "r.json")["scans"].keys() == {"flair"}
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(InputError, match="not a real-scan results file"):
        load_real_scans(tmp_path / "bad.json")


def test_a_refinement_model_is_scored_on_the_scans_own_grid_against_its_degraded_input(small_flair, tmp_path):
    """A ``refine`` model keeps the scan's grid (the knee task): the measurement is the task's blur, 2x
    down and back up of the truth, the baseline that degraded input itself (recomputed with scipy's
    Gaussian filter and PIL's bicubic), and the card's table names it so."""
    from scipy.ndimage import gaussian_filter

    from conftest import load_script

    model = make_tiny_sr_model(tmp_path / "refine", grid=32, fit="tile", task="refine2")
    results = evaluate_real_scans(model, {"flair": small_flair}, every=4, steps=1, device="cpu", lpips=False)
    assert results["baseline"] == "input" and "own grid" in results["settings"]["measurement"]
    entry = results["scans"]["flair"]
    assert entry["lr_shape"] == [3, 64, 64]  # never a coarse grid
    dc = entry["runs"]["dc"]
    hr = read_image(small_flair).array.astype(np.float32)
    window = dc["window"]
    for row in dc["per_slice"]:
        truth = np.clip((hr[row["slice"]] - window["lower"]) / (window["upper"] - window["lower"]), 0, 1)
        blurred = gaussian_filter(truth.astype(np.float64), 1.0, mode="mirror", truncate=4.0).astype(np.float32)
        coarse = Image.fromarray(blurred, "F").resize((32, 32), Image.BICUBIC)
        degraded = np.clip(np.asarray(coarse.resize((64, 64), Image.BICUBIC)), truth.min(), truth.max())
        assert row["psnr_lr"] == pytest.approx(_psnr(degraded, truth), abs=0.5)
    # a thick-slice model is pointed to its own script
    with pytest.raises(InputError, match="measure_thick"):
        evaluate_real_scans(make_tiny_sr_model(tmp_path / "thick", grid=32, fit="tile", task="thick4"),
                            {"flair": small_flair}, device="cpu")
    # the card block reads the baseline from the results
    text = load_script("write_card").real_scans_block(results)
    assert "| scan | slices | input |" in text and "own grid (64 x 64 pixels of 1 x 1 mm" in text
    assert "axial slices 0, 4, ... 8" in text and "SR - input" in text


def test_measure_model_puts_a_volume_at_a_fixed_grid_models_resolution_in_plane(small_flair):
    """``--resample N`` with a volume: its in-plane field of view spans N pixels, the slices stay."""
    from conftest import load_script

    resample = load_script("measure_model")._resampled
    image = resample(str(small_flair), 32, "axial")
    assert image.shape == (12, 32, 32)
    np.testing.assert_allclose(image.spacing, (2.0, 2.0, 1.0))
    assert "resampled to 32 x 32 px in-plane" in image.path
    assert resample(str(small_flair), 64, "axial") == str(small_flair)  # already at or below the grid


def test_a_radiograph_is_scored_as_its_one_slice(tile_model, tmp_path):
    """A 2D image (a radiograph) is its own one slice: measured on its coarse grid, super-resolved, and
    scored against itself and against bicubic of the measurement (recomputed with PIL)."""
    from conftest import shared_path

    radiograph = read_image(shared_path("cxr", "nih-cxr14-4.png"))
    crop = np.ascontiguousarray(radiograph.array[400:466, 300:366])  # 66 x 66: cropped to 64 x 64 (whole 4s)
    path = tmp_path / "crop.nii.gz"
    write_image(MedicalImage(crop, radiograph.spacing, radiograph.origin, radiograph.direction), path)
    results = evaluate_real_scans(tile_model, {"chest": path}, steps=1, device="cpu", data_consistency=(False,), lpips=False)
    entry = results["scans"]["chest"]
    assert entry["slices"] == [0] and entry["lr_shape"] == [16, 16]
    (row,) = entry["runs"]["no_dc"]["per_slice"]
    window = entry["runs"]["no_dc"]["window"]
    truth = crop[:64, :64].astype(np.float32)
    coarse = Image.fromarray(truth, "F").resize((16, 16), Image.BICUBIC)
    bicubic = np.asarray(coarse.resize((64, 64), Image.BICUBIC))
    scaled = [np.clip((x - window["lower"]) / (window["upper"] - window["lower"]), 0, 1) for x in (bicubic, truth)]
    assert row["slice"] == 0 and row["psnr_lr"] == pytest.approx(_psnr(*scaled), abs=0.5)
    assert summarise(results, "no_dc")["n"] == 1


def test_radiographs_are_independent_units_in_the_summary_and_the_card(tile_model, tmp_path):
    """Several radiographs, one slice each: the paired bootstrap resamples the images (resampling within
    each image would pin every difference and give a zero-width interval), and the card's blocks speak
    of images and check the chest target (beat bicubic without data consistency) image by image."""
    from conftest import load_script, shared_path

    scans = {}
    for name, (row, column) in {"a": (400, 300), "b": (500, 600), "c": (300, 450)}.items():
        radiograph = read_image(shared_path("cxr", "nih-cxr14-4.png"))
        crop = np.ascontiguousarray(radiograph.array[row:row + 64, column:column + 64])
        scans[name] = tmp_path / f"{name}.nii.gz"
        write_image(MedicalImage(crop, radiograph.spacing, radiograph.origin, radiograph.direction), scans[name])
    results = evaluate_real_scans(tile_model, scans, steps=1, device="cpu", data_consistency=(False,), lpips=False)
    summary = summarise(results, "no_dc")
    differences = sorted(r["psnr_sr"] - r["psnr_lr"] for e in results["scans"].values() for r in e["runs"]["no_dc"]["per_slice"])
    gain = summary["psnr_gain"]
    assert summary["n"] == 3 and gain["mean_difference"] == pytest.approx(np.mean(differences))
    # the bootstrap draws whole images: its interval spans part of the range of the three differences
    assert differences[0] - 1e-9 <= gain["ci_low"] < gain["ci_high"] <= differences[-1] + 1e-9
    card = load_script("write_card")
    text = card.real_scans_block(results)
    assert "low-resolution radiographs" in text and "| scan | images | bicubic |" in text
    assert "n = 3 images, each an independent unit" in text
    targets = card.targets_block(results)
    above = sum(d >= 0 for d in differences)
    assert "detail end (no data consistency): PSNR >= bicubic" in targets
    assert f"at or above bicubic's on {above} of 3 images" in targets
    assert ("| met |" in targets) == (summary["psnr_sr"] >= summary["psnr_lr"])


def test_measure_model_script_says_what_is_wrong_in_one_line(tile_model, tmp_path, capsys):
    """The card-measuring script reports a missing model or an unreadable scan as one line, exit 2,
    and writes no results."""
    from conftest import load_script

    script = load_script("measure_model")
    assert script.main([str(tmp_path / "missing"), "--scan", f"a={tmp_path / 'a.nii.gz'}"]) == 2
    assert "missing: no such model folder" in capsys.readouterr().err
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a scan")
    assert script.main([str(tile_model), "--scan", f"a={broken}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.nii.gz" in err
    assert not (tile_model / "results" / "real_scans.json").exists()
