"""The ``latentsr`` command as a user runs it: info, degrade, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from LatentSRLib.cli import main
from LatentSRLib.io import read_image
from conftest import registry_dicom

LATENTSR = Path(sys.executable).with_name("latentsr")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_console_script_help():
    assert LATENTSR.exists(), "the latentsr console script is installed with the package"
    for args in ([], ["info"], ["degrade"]):
        done = subprocess.run([str(LATENTSR), *args, "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "usage: latentsr" in done.stdout


def test_info_json_on_nifti(capsys, brats_flair):
    code, out, _ = run_cli(capsys, "info", brats_flair, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["size_ijk"] == [240, 240, 155]
    assert info["spacing_mm"] == [1.0, 1.0, 1.0]
    assert info["orientation"] == "LPS" and info["acquisition_plane"] == "axial"
    assert info["slices"]["axial"] == {"array_axis": 0, "count": 155}
    assert info["dtype"] == "int16" and info["intensity"]["max"] > info["intensity"]["min"]


def test_info_text_on_dicom_series(capsys, knee_dicom_dir):
    code, out, _ = run_cli(capsys, "info", knee_dicom_dir)
    assert code == 0
    assert "dicom-series" in out and "modality      MR" in out
    assert "acquired sagittal" in out


def test_info_on_registry_dicom_and_png(capsys, cxr_png):
    code, out, _ = run_cli(capsys, "info", registry_dicom("CT_small.dcm"), cxr_png, "--json")
    assert code == 0
    ct, png = json.loads(out)
    assert ct["modality"] == "CT" and ct["intensity"]["min"] < 0  # Hounsfield units after rescale
    assert png["format"] == "png" and png["dimensions"] == 2


def test_degrade_nifti_keeps_grid_units_and_dtype(capsys, tmp_path, brats_flair):
    out = tmp_path / "lr.nii.gz"
    code, stdout, _ = run_cli(capsys, "degrade", brats_flair, "-o", out, "--scale", "4")
    assert code == 0 and str(out) in stdout
    hr, lr = read_image(brats_flair), read_image(out)
    assert lr.has_same_geometry(hr) and lr.array.dtype == hr.array.dtype
    assert abs(float(lr.array.mean()) - float(hr.array.mean())) < 0.02 * float(hr.array.max())
    mse = np.mean((lr.array.astype(float) - hr.array) ** 2)
    assert 0 < mse  # really degraded, yet close: PSNR on the volume's range is moderate
    assert 20 < 10 * np.log10(float(hr.array.max()) ** 2 / mse) < 45


@pytest.mark.parametrize("mode, extra", [("refine", ["--scale", "2"]), ("kspace", ["--taper", "hamming"]),
                                         ("sr", ["--noise", "0.02", "--noise-kind", "rician", "--seed", "3"])])
def test_degrade_png_modes(capsys, tmp_path, cxr_png, mode, extra):
    out = tmp_path / f"{mode}.png"
    code, _, err = run_cli(capsys, "degrade", cxr_png, "-o", out, "--mode", mode, *extra)
    assert code == 0, err
    hr, lr = read_image(cxr_png), read_image(out)
    assert lr.shape == hr.shape and lr.array.dtype == np.uint8
    assert not np.array_equal(lr.array, hr.array)


def test_degrade_noise_is_reproducible_with_a_seed(capsys, tmp_path, cxr_png):
    outs = []
    for name, seed in (("a.png", 5), ("b.png", 5), ("c.png", 6)):
        run_cli(capsys, "degrade", cxr_png, "-o", tmp_path / name, "--noise", "0.05", "--seed", seed)
        outs.append(read_image(tmp_path / name).array)
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


def test_degrade_dicom_series_to_derived_series(capsys, tmp_path, t1_3slice_dir):
    source = tmp_path / "source"
    shutil.copytree(t1_3slice_dir, source)
    before = _tree_digest(source)
    out = tmp_path / "lowres"
    code, _, err = run_cli(capsys, "degrade", source, "-o", out, "--mode", "refine", "--scale", "2")
    assert code == 0, err
    assert _tree_digest(source) == before  # the source is never touched
    hr, lr = read_image(source), read_image(out)
    assert lr.has_same_geometry(hr, atol=1e-3)
    assert lr.metadata["study_instance_uid"] == hr.metadata["study_instance_uid"]
    assert lr.metadata["series_instance_uid"] != hr.metadata["series_instance_uid"]
    assert "low resolution" in lr.metadata["series_description"]


def test_degrade_coarse_grid_writes_the_scan_a_scanner_would_store(capsys, tmp_path, brats_flair):
    from PIL import Image

    from LatentSRLib.transforms.grids import fine_image

    hr = read_image(brats_flair)  # 240 x 240 x 155 at 1 mm
    out = tmp_path / "lr4.nii.gz"
    code, stdout, err = run_cli(capsys, "degrade", brats_flair, "-o", out, "--coarse-grid")
    assert code == 0, err
    assert "60 x 60 x 155 voxels of 4 x 4 x 1 mm" in stdout
    lr = read_image(out)
    assert lr.shape == (155, 60, 60) and lr.array.dtype == hr.array.dtype
    # same field of view: its 4x finer grid is the input's grid
    assert fine_image(lr, [1, 2], 4).has_same_geometry(hr, atol=1e-4)
    # each axial slice is the antialiased bicubic reduction (PIL's, computed independently), rounded to int16
    middle = hr.array[77].astype(np.float32)
    expected = np.asarray(Image.fromarray(middle, "F").resize((60, 60), Image.BICUBIC))
    assert np.abs(lr.array[77] - expected).max() <= 0.5 + 1e-3
    # it is noise-free in-plane SR only
    code, _, err = run_cli(capsys, "degrade", brats_flair, "-o", tmp_path / "x.nii.gz", "--coarse-grid", "--noise", "0.1")
    _assert_one_line_error(code, err, "--coarse-grid")


# --------------------------------------------------------------------------------------- thick slices
def test_degrade_thick_writes_the_coarse_grid_whose_fine_grid_is_the_input(capsys, tmp_path, brats_flair):
    from LatentSRLib.transforms.grids import fine_image

    hr = read_image(brats_flair)  # 240 x 240 x 155, 1 mm, LPS: the axial normal is array axis 0
    out = tmp_path / "thick.nii.gz"
    code, _, err = run_cli(capsys, "degrade", brats_flair, "-o", out, "--mode", "thick", "--scale", "5")
    assert code == 0, err
    lr = read_image(out)
    assert lr.shape == (31, 240, 240) and lr.array.dtype == hr.array.dtype  # ceil(155 / 5) thick slices
    np.testing.assert_allclose(lr.spacing, (1.0, 1.0, 5.0), atol=1e-6)
    # coarse slice 0 is centred on fine slice 2 (the middle of fine slices 0..4)
    np.testing.assert_allclose(lr.origin, np.array(hr.origin) + 2.0 * hr.direction[:, 2], atol=1e-4)
    np.testing.assert_allclose(lr.direction, hr.direction, atol=1e-6)
    # the fine grid of the output, cropped to the input's 155 slices, is the input grid exactly
    fine = fine_image(lr, [0], 5)
    cropped = type(fine)(fine.array[: hr.shape[0]], fine.spacing, fine.origin, fine.direction)
    assert cropped.shape == hr.shape and cropped.has_same_geometry(hr, atol=1e-4)
    # the box profile: each thick slice is the mean of its 5 fine slices, in the source's units
    box = tmp_path / "box.nrrd"
    code, _, err = run_cli(capsys, "degrade", brats_flair, "-o", box, "--mode", "thick", "--scale", "5",
                           "--profile", "box")
    assert code == 0, err
    means = hr.array.astype(np.float64).reshape(31, 5, 240, 240).mean(axis=1)
    assert np.abs(read_image(box).array - means).max() <= 0.5 + 1e-3  # rounded back to int16
    # the Gaussian profile (FWHM 5) is close to it but reaches into the neighbouring slices
    gaussian = lr.array.astype(np.float64)
    assert 0 < np.abs(gaussian - means).mean() < 0.05 * float(hr.array.max())


def test_degrade_thick_dicom_series_keeps_the_study_and_the_coarse_geometry(capsys, tmp_path):
    from LatentSRLib.io import MedicalImage, write_image

    array = (np.arange(22 * 12 * 10).reshape(22, 12, 10) % 300).astype(np.int16)
    write_image(MedicalImage(array, (0.8, 0.8, 1.0), (5.0, -3.0, -40.0), np.eye(3), metadata={"modality": "MR"}),
                tmp_path / "source", format="dicom")
    code, _, err = run_cli(capsys, "degrade", tmp_path / "source", "-o", tmp_path / "thick", "--mode", "thick",
                           "--scale", "4", "--profile", "box")
    assert code == 0, err
    hr, lr = read_image(tmp_path / "source"), read_image(tmp_path / "thick")
    assert lr.shape == (6, 12, 10)  # ceil(22 / 4)
    np.testing.assert_allclose(lr.spacing, (0.8, 0.8, 4.0), atol=1e-4)
    np.testing.assert_allclose(lr.origin, (5.0, -3.0, -40.0 + 1.5), atol=1e-4)
    assert lr.metadata["study_instance_uid"] == hr.metadata["study_instance_uid"]
    assert lr.metadata["series_instance_uid"] != hr.metadata["series_instance_uid"]
    assert "thick slices" in lr.metadata["series_description"]
    padded = np.concatenate([array, array[-1:], array[-1:]]).astype(np.float64)  # edge-extended to 24
    assert np.abs(lr.array - padded.reshape(6, 4, 12, 10).mean(axis=1)).max() <= 0.5 + 1e-3


def test_degrade_thick_refuses_a_2d_image(capsys, tmp_path, cxr_png):
    code, _, err = run_cli(capsys, "degrade", cxr_png, "-o", tmp_path / "x.png", "--mode", "thick", "--scale", "5")
    _assert_one_line_error(code, err, "need a volume")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------- errors
def _assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip() and "warning" not in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_error_missing_input(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", tmp_path / "nope.nii.gz")
    _assert_one_line_error(code, err, "nope.nii.gz", "no such file")


def test_error_unknown_format(capsys, tmp_path):
    (tmp_path / "scan.xyz").write_bytes(b"\x00" * 300)
    code, _, err = run_cli(capsys, "degrade", tmp_path / "scan.xyz", "-o", tmp_path / "o.nii.gz")
    _assert_one_line_error(code, err, "scan.xyz", "unknown image format")


def test_error_empty_dicom_folder(capsys, tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "readme.txt").write_text("no images here")
    code, _, err = run_cli(capsys, "info", tmp_path / "series")
    _assert_one_line_error(code, err, "series", "no DICOM images")


def test_error_constant_and_nan_images(capsys, tmp_path):
    np.save(tmp_path / "flat.npy", np.ones((32, 32), np.float32))
    code, _, err = run_cli(capsys, "degrade", tmp_path / "flat.npy", "-o", tmp_path / "o.npy")
    _assert_one_line_error(code, err, "flat.npy", "constant")
    bad = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    bad[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    code, _, err = run_cli(capsys, "degrade", tmp_path / "nan.npy", "-o", tmp_path / "o.npy")
    _assert_one_line_error(code, err, "nan.npy", "NaN")
    assert not (tmp_path / "o.npy").exists()


def test_error_output_over_input_leaves_input_intact(capsys, tmp_path, cxr_png):
    target = tmp_path / "cxr.png"
    shutil.copy(cxr_png, target)
    before = target.read_bytes()
    code, _, err = run_cli(capsys, "degrade", target, "-o", target)
    _assert_one_line_error(code, err, "cxr.png", "overwrite an input")
    assert target.read_bytes() == before


def test_error_scale_too_large(capsys, tmp_path):
    np.save(tmp_path / "tiny.npy", np.random.default_rng(0).random((6, 6)).astype(np.float32))
    code, _, err = run_cli(capsys, "degrade", tmp_path / "tiny.npy", "-o", tmp_path / "o.npy", "--scale", "16")
    _assert_one_line_error(code, err, "tiny.npy")


def test_error_from_the_installed_command(tmp_path):
    done = subprocess.run([str(LATENTSR), "info", str(tmp_path / "missing.dcm")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "missing.dcm" in done.stderr


# ------------------------------------------------------------------------------- every format
@pytest.fixture(scope="module")
def small_volume(tmp_path_factory, brats_flair):
    """A real 3D crop of the BraTS FLAIR (int16, 1 mm), small enough to convert to every format."""
    from LatentSRLib.io import MedicalImage

    image = read_image(brats_flair)
    crop = image.array[70:76, 40:200, 40:200]
    origin = image.index_to_world() @ np.array([40, 40, 70, 1.0])
    return MedicalImage(crop, image.spacing, origin[:3], image.direction)


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.nrrd", "v.mha", "v.mhd", "v.mgz", "v.tif", "v.npy"])
def test_info_and_degrade_on_every_volume_format(capsys, tmp_path, small_volume, name):
    from LatentSRLib.io import write_image

    source = write_image(small_volume, tmp_path / name)
    code, out, err = run_cli(capsys, "info", source, "--json")
    assert code == 0, err
    assert json.loads(out)["size_ijk"] == [160, 160, 6]
    target = tmp_path / f"lr-{name}"
    code, _, err = run_cli(capsys, "degrade", source, "-o", target, "--scale", "4")
    assert code == 0, err
    hr, lr = read_image(source), read_image(target)
    assert lr.has_same_geometry(hr, atol=1e-4) and lr.array.dtype == hr.array.dtype
    assert not np.array_equal(lr.array, hr.array)


@pytest.mark.parametrize("name, output", [("MR_small.dcm", "lr.dcm"), ("CT_small.dcm", "lr.nii.gz"),
                                          ("emri_small.dcm", "lr-series"), ("RG1_UNCI.dcm", "lr.png"),
                                          ("emri_small_jpeg_2k_lossless.dcm", "lr.nrrd")])
def test_info_and_degrade_on_dicom_files(capsys, tmp_path, name, output):
    source = registry_dicom(name)
    code, out, err = run_cli(capsys, "info", source, "--json")
    assert code == 0, err
    assert "modality" in json.loads(out)
    code, _, err = run_cli(capsys, "degrade", source, "-o", tmp_path / output, "--scale", "2")
    if output.endswith(".png"):  # 15-bit CR: PNG cannot hold its int dtype unless it is uint8/uint16
        hr = read_image(source)
        if hr.array.dtype not in (np.uint8, np.uint16):
            _assert_one_line_error(code, err, "lr.png")
            return
    assert code == 0, err
    hr, lr = read_image(source), read_image(tmp_path / output)
    assert lr.shape == hr.shape
    assert lr.has_same_geometry(hr, atol=1e-3) or hr.ndim == 2
