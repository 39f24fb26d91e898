"""Reading and writing every non-DICOM format with its geometry, and the bad-input cases."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from LatentSRLib.errors import InputError, OutputError
from LatentSRLib.io import MedicalImage, check_pixels, detect_format, read_image, require_volume, write_image
from conftest import registry_dicom, shared_path


@pytest.fixture(scope="module")
def oblique_t1() -> MedicalImage:
    """A real oblique RAS-stored T1 head scan, cropped to keep the tests fast."""
    image = read_image(shared_path("brain", "niivue-otsu-t1.nii.gz"))
    crop = image.array[60:90, 80:150, 50:120]
    origin = image.index_to_world() @ np.array([50, 80, 60, 1.0])
    return MedicalImage(crop, image.spacing, origin[:3], image.direction, metadata=dict(image.metadata))


def _assert_same_as_itk(image: MedicalImage, path) -> None:
    itk = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(itk))
    np.testing.assert_allclose(image.spacing, itk.GetSpacing())
    np.testing.assert_allclose(image.origin, itk.GetOrigin())
    np.testing.assert_allclose(image.direction.ravel(), itk.GetDirection())


def test_nifti_geometry_matches_simpleitk(brats_flair):
    image = read_image(brats_flair)
    _assert_same_as_itk(image, brats_flair)
    assert image.shape == (155, 240, 240) and image.array.dtype == np.int16
    assert image.orientation() == "LPS" and image.acquisition_plane() == "axial"
    assert image.metadata["format"] == "nifti"


def test_oblique_ras_nifti_orientation():
    path = shared_path("brain", "niivue-otsu-t1.nii.gz")
    image = read_image(path)
    _assert_same_as_itk(image, path)
    # nibabel reads the same file in RAS: the axis codes must agree
    assert image.orientation() == "".join(nib.aff2axcodes(nib.load(str(path)).affine))
    assert abs(image.direction[0, 2]) > 0.05  # really oblique


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz", "vol.nrrd", "vol.nhdr", "vol.mha", "vol.mhd", "vol.mgz"])
def test_volume_round_trip_keeps_geometry(tmp_path, oblique_t1, name):
    out = write_image(oblique_t1, tmp_path / name)
    back = read_image(out)
    np.testing.assert_array_equal(back.array, oblique_t1.array)
    assert back.array.dtype == oblique_t1.array.dtype
    assert back.has_same_geometry(oblique_t1, atol=1e-4), (back, oblique_t1)
    # no temporary files are left beside the output
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_mgz_written_by_nibabel_reads_like_the_nifti_through_itk(tmp_path):
    nifti = shared_path("brain", "niivue-flair.nii.gz")
    source = nib.load(str(nifti))
    mgz = tmp_path / "flair.mgz"
    nib.save(nib.MGHImage(np.asanyarray(source.dataobj).astype(np.float32), source.affine), str(mgz))
    from_mgz, from_itk = read_image(mgz), read_image(nifti)
    np.testing.assert_array_equal(from_mgz.array, from_itk.array.astype(np.float32))
    assert from_mgz.has_same_geometry(from_itk, atol=1e-3)


def test_npy_stack_has_unit_geometry(tmp_path, brats_flair):
    stack = read_image(brats_flair).array[70:74]
    np.save(tmp_path / "stack.npy", stack)
    image = read_image(tmp_path / "stack.npy")
    np.testing.assert_array_equal(image.array, stack)
    assert image.spacing == (1.0, 1.0, 1.0) and any("no geometry" in n for n in image.metadata["notes"])


def test_png_8bit_matches_pillow(cxr_png):
    image = read_image(cxr_png)
    assert image.ndim == 2 and image.array.dtype == np.uint8
    np.testing.assert_array_equal(image.array, np.asarray(Image.open(cxr_png).convert("L")))


def test_png_16bit_and_tiff_round_trip(tmp_path, cxr_png):
    pixels = np.asarray(Image.open(cxr_png).convert("L")).astype(np.uint16) * 257  # full 16-bit range
    png16 = tmp_path / "cxr16.png"
    Image.fromarray(pixels).save(png16)
    image = read_image(png16)
    assert image.array.dtype == np.uint16
    np.testing.assert_array_equal(image.array, pixels)
    for name in ("copy.png", "copy.tif"):
        back = read_image(write_image(image, tmp_path / name))
        np.testing.assert_array_equal(back.array, pixels)
        assert back.array.dtype == np.uint16


def test_jpeg_and_rgb_png_become_grayscale(tmp_path, cxr_png):
    gray = np.asarray(Image.open(cxr_png).convert("L"))
    Image.fromarray(gray).save(tmp_path / "cxr.jpg", quality=95)
    jpeg = read_image(tmp_path / "cxr.jpg")
    assert jpeg.ndim == 2 and jpeg.shape == gray.shape and jpeg.array.dtype == np.uint8
    assert np.abs(jpeg.array.astype(int) - gray).mean() < 3  # lossy but close

    rgb = np.stack([gray, np.roll(gray, 3, axis=1), gray // 2], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    image = read_image(tmp_path / "rgb.png")
    assert image.ndim == 2 and image.array.dtype == np.uint8
    assert any("grayscale" in n for n in image.metadata["notes"])


def test_multipage_tiff_is_a_volume(tmp_path, brats_flair):
    stack = read_image(brats_flair).array[60:63].astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(stack), str(tmp_path / "stack.tif"))
    image = read_image(tmp_path / "stack.tif")
    assert image.ndim == 3
    np.testing.assert_array_equal(image.array, stack)


def test_extensionless_dicom_is_detected(tmp_path):
    target = tmp_path / "IMAGE0001"
    target.write_bytes(registry_dicom("MR_small.dcm").read_bytes())
    assert detect_format(target) == "dicom"


# --------------------------------------------------------------------------------------- bad input
def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="no such file") as info:
        read_image(tmp_path / "absent.nii.gz")
    assert "absent.nii.gz" in str(info.value)


def test_unknown_format(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match="unknown image format"):
        read_image(path)


def test_corrupt_nifti(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header" * 10))
    with pytest.raises(InputError, match="not a NIfTI file") as info:
        read_image(path)
    assert "broken.nii.gz" in str(info.value) and "\n" not in str(info.value)


def test_4d_nifti_is_refused_and_singleton_4d_is_squeezed(tmp_path):
    data = np.random.default_rng(0).integers(0, 100, size=(8, 9, 10, 2)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "fmri.nii.gz"))
    with pytest.raises(InputError, match="4D"):
        read_image(tmp_path / "fmri.nii.gz")
    nib.save(nib.Nifti1Image(data[..., :1], np.eye(4)), str(tmp_path / "one.nii.gz"))
    assert read_image(tmp_path / "one.nii.gz").shape == (10, 9, 8)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((0, 5), np.float32), "empty"),
        (np.full((4, 4), 7.0), "constant"),
        (np.array([[0.0, np.nan], [1.0, np.inf]]), "NaN/Inf"),
    ],
)
def test_unusable_pixels(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(InputError, match=message) as info:
        check_pixels(read_image(tmp_path / "bad.npy"))
    assert "bad.npy" in str(info.value)


def test_2d_where_volume_expected(cxr_png):
    with pytest.raises(InputError, match="3D volume is expected"):
        require_volume(read_image(cxr_png))


def test_one_dimensional_npy(tmp_path):
    np.save(tmp_path / "line.npy", np.arange(10.0))
    with pytest.raises(InputError, match="shape"):
        read_image(tmp_path / "line.npy")


# --------------------------------------------------------------------------------------- writing
def test_never_overwrites_the_input(tmp_path, brats_flair):
    image = read_image(brats_flair)
    with pytest.raises(OutputError, match="overwrite an input"):
        write_image(image, brats_flair)


def test_failed_write_keeps_previous_output(tmp_path, cxr_png):
    image = read_image(cxr_png)
    target = tmp_path / "out.png"
    write_image(image, target)
    before = target.read_bytes()
    with pytest.raises(OutputError, match="uint8"):
        write_image(image.with_array(image.array.astype(np.float32)), target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_output_name_without_format(tmp_path, cxr_png):
    with pytest.raises(OutputError, match="output format"):
        write_image(read_image(cxr_png), tmp_path / "result.xyz")
