"""Anatomical slicing resolved from the direction matrix, exact reassembly, and the model grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LatentSRLib.io import MedicalImage, read_image
from LatentSRLib.transforms.slicing import ModelGrid, SliceLayout
from conftest import shared_path

PLANES = ("axial", "coronal", "sagittal")


@pytest.fixture(scope="module")
def brats(brats_flair) -> MedicalImage:
    return read_image(brats_flair)


def _reoriented(image: MedicalImage, code: str) -> MedicalImage:
    """The same scan stored in another orientation (SimpleITK's DICOMOrient does the resampling-free flip/permute)."""
    return MedicalImage.from_sitk(sitk.DICOMOrient(image.to_sitk(), code))


@pytest.mark.parametrize("plane", PLANES)
def test_reassembly_is_exact(brats, plane):
    layout = SliceLayout.for_image(brats, plane)
    slices = layout.extract(brats.array)
    assert slices.shape == (layout.num_slices, *layout.slice_shape)
    rebuilt = layout.assemble(slices)
    assert rebuilt.dtype == brats.array.dtype
    np.testing.assert_array_equal(rebuilt, brats.array)


@pytest.mark.parametrize("code", ["RAS", "LAI", "ASL", "SRP"])
@pytest.mark.parametrize("plane", PLANES)
def test_slices_do_not_depend_on_storage_order(brats, code, plane):
    # Stored axial (LPS) or as if acquired sagittal/coronal with flipped axes: the anatomy of each
    # plane is the same, so the upright slices must be identical, in the same order up to reversal.
    other = _reoriented(brats, code)
    assert other.orientation() != brats.orientation()
    ref = SliceLayout.for_image(brats, plane).extract(brats.array)
    got = SliceLayout.for_image(other, plane).extract(other.array)
    assert got.shape == ref.shape
    if not np.array_equal(got, ref):
        np.testing.assert_array_equal(got[::-1], ref)


def test_sagittal_acquisition_gives_axial_slices_from_an_in_plane_axis(brats):
    sagittal = _reoriented(brats, "ASL")  # rows/cols/slices permuted: k now runs left-right
    assert sagittal.acquisition_plane() == "sagittal"
    assert sagittal.array_axis_for_plane("axial") != 0
    assert sagittal.array_axis_for_plane("sagittal") == 0


def test_oblique_volume_resolves_each_plane_once():
    image = read_image(shared_path("brain", "niivue-otsu-t1.nii.gz"))
    axes = {plane: image.array_axis_for_plane(plane) for plane in PLANES}
    assert sorted(axes.values()) == [0, 1, 2]
    for plane in PLANES:
        layout = SliceLayout.for_image(image, plane)
        np.testing.assert_array_equal(layout.assemble(layout.extract(image.array)), image.array)


def test_axial_slices_are_upright(brats):
    # anterior at the top: the frontal lobes (upper half) sit above the occipital lobes, and the
    # BraTS volume is stored LPS, so no flip is needed; a RAS copy must flip both in-plane axes.
    assert SliceLayout.for_image(brats, "axial").flips == (False, False)
    assert SliceLayout.for_image(_reoriented(brats, "RAS"), "axial").flips == (True, True)


def test_2d_image_is_one_slice(cxr_png):
    image = read_image(cxr_png)
    layout = SliceLayout.for_image(image, "axial")
    slices = layout.extract(image.array)
    assert slices.shape == (1, *image.shape)
    np.testing.assert_array_equal(layout.assemble(slices), image.array)


def test_model_grid_round_trip_is_close(brats):
    layout = SliceLayout.for_image(brats, "axial")
    slices = layout.extract(brats.array)[60:100].astype(np.float32) / brats.array.max()
    grid = ModelGrid((256, 256), fit="pad", mode="bicubic")
    model = grid.to_model(slices, layout.pixel_spacing)
    assert tuple(model.shape) == (40, 256, 256)
    back = grid.from_model(model, layout.slice_shape, layout.pixel_spacing).numpy()
    mse = float(np.mean((back - slices) ** 2))
    assert 10 * np.log10(1.0 / mse) > 40  # 240 -> 256 -> 240 loses next to nothing


def test_pad_fit_keeps_physical_aspect():
    # a knee-like coronal slice: 80 slices of 1.5 mm by 512 pixels of 0.3125 mm = 120 x 160 mm
    grid = ModelGrid((256, 256), fit="pad")
    top, left, height, width = grid.content_box((80, 512), (1.5, 0.3125))
    assert width == 256 and abs(height / width - 120 / 160) < 0.01
    assert top == (256 - height) // 2 and left == 0
    slices = np.random.default_rng(0).random((3, 80, 512)).astype(np.float32)
    model = grid.to_model(slices, (1.5, 0.3125))
    assert float(model[:, :top].abs().max()) == 0.0  # padding above the content
    assert tuple(grid.from_model(model, (80, 512), (1.5, 0.3125)).shape) == (3, 80, 512)


def test_stretch_fills_the_grid():
    grid = ModelGrid((64, 64), fit="stretch")
    assert grid.content_box((80, 512), (1.5, 0.3125)) == (0, 0, 64, 64)


def test_bad_plane(brats):
    with pytest.raises(ValueError, match="unknown plane"):
        SliceLayout.for_image(brats, "oblique")
