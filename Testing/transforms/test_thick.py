"""Thick slices (the ``thick`` task): the slice profile, the coarse sampling and the coarse geometry,
checked against computations written independently here (numpy, scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from LatentSRLib.errors import InputError
from LatentSRLib.io import MedicalImage
from LatentSRLib.transforms import AddNoise, ThickSlices, ThickSlicesd, make_degradation, task_degradation
from LatentSRLib.transforms.grids import fine_image
from LatentSRLib.transforms.tasks import DEGRADATION_MODES, parse_task
from LatentSRLib.transforms.thick import simulate_thick_slices, thick_downsample


def _edge_extended(x: np.ndarray, scale: int) -> np.ndarray:
    """``x`` (..., H, W) with its last row repeated up to a multiple of ``scale`` rows."""
    missing = -x.shape[-2] % scale
    return np.concatenate([x, np.repeat(x[..., -1:, :], missing, axis=-2)], axis=-2)


def _sigma(scale: int) -> float:
    return scale / (2 * math.sqrt(2 * math.log(2)))  # FWHM = scale


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).random((2, 1, 23, 7))  # 23 rows: not a multiple of any scale below


# ------------------------------------------------------------------------------------- the coarse part
@pytest.mark.parametrize("scale", [2, 3, 4, 5])
def test_box_profile_is_the_mean_of_each_block_of_rows(image, scale):
    blocks = _edge_extended(image, scale)
    expected = blocks.reshape(2, 1, -1, scale, 7).mean(axis=3)
    out = thick_downsample(torch.from_numpy(image), scale, "box")
    assert out.dtype == torch.float64 and out.shape == (2, 1, math.ceil(23 / scale), 7)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("scale", [3, 5, 7])
def test_gaussian_profile_odd_scale_is_scipys_gaussian_sampled_at_the_centre_rows(image, scale):
    # scipy: sampled Gaussian truncated at 4 sigma, edge values repeated ("nearest") beyond the image
    blurred = gaussian_filter1d(_edge_extended(image, scale), _sigma(scale), axis=-2, mode="nearest", truncate=4.0)
    expected = blurred[..., (scale - 1) // 2 :: scale, :]
    out = thick_downsample(torch.from_numpy(image), scale, "gaussian")
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 4, 6])
def test_gaussian_profile_even_scale_is_centred_between_two_rows(image, scale):
    # the definition, row by row: the Gaussian of FWHM s centred at k*s + (s-1)/2, evaluated at
    # every fine row within 4 sigma + 1/2, normalised; rows beyond the image repeat the edge row
    sigma, rows = _sigma(scale), image.shape[-2]
    coarse = []
    for k in range(math.ceil(rows / scale)):
        centre = k * scale + (scale - 1) / 2
        taps = [i for i in range(int(centre) - 20, int(centre) + 21) if abs(i - centre) <= 4 * sigma + 0.5]
        weights = np.array([math.exp(-((i - centre) ** 2) / (2 * sigma**2)) for i in taps])
        values = np.stack([image[..., min(max(i, 0), rows - 1), :] for i in taps], axis=-1)
        coarse.append((values * weights).sum(-1) / weights.sum())
    expected = np.stack(coarse, axis=-2)
    np.testing.assert_allclose(thick_downsample(torch.from_numpy(image), scale).numpy(), expected, atol=1e-12)
    # a ramp is sampled exactly at the coarse centres, away from the edges (symmetric profile)
    ramp = torch.arange(60, dtype=torch.float64).reshape(1, 1, 60, 1)
    for profile in ("gaussian", "box"):
        sampled = thick_downsample(ramp, scale, profile)[0, 0, :, 0].numpy()
        centres = np.arange(len(sampled)) * scale + (scale - 1) / 2
        inner = (centres > 4 * sigma + 1) & (centres < 60 - 4 * sigma - 1)
        np.testing.assert_allclose(sampled[inner], centres[inner], atol=1e-9)


# ------------------------------------------------------------------------------------- the training degradation
def test_thick_slices_keeps_the_coarse_samples_at_their_centres_and_leaves_columns_alone(image):
    scale = 5
    out = ThickSlices(scale, profile="box")(image)
    assert isinstance(out, np.ndarray) and out.shape == image.shape and out.dtype == np.float64
    # cubic interpolation passes through its nodes: at the coarse centres the fine result is the block mean
    block_means = _edge_extended(image, scale).reshape(2, 1, -1, scale, 7).mean(axis=3)
    np.testing.assert_allclose(out[..., (scale - 1) // 2 :: scale, :], block_means[..., : len(range(2, 23, 5)), :],
                               atol=1e-6)
    assert np.all(out >= image.min(axis=(-2, -1), keepdims=True) - 1e-12)  # clipped to the input's range
    assert np.all(out <= image.max(axis=(-2, -1), keepdims=True) + 1e-12)
    # each column is degraded on its own; an image constant along the rows is unchanged
    changed = image.copy()
    changed[..., 3] += 1.0
    other = ThickSlices(scale, profile="box", clip=False)(changed)
    np.testing.assert_allclose(np.delete(other, 3, axis=-1), np.delete(ThickSlices(scale, "box", False)(image), 3, axis=-1),
                               atol=1e-6)
    constant_rows = np.repeat(image[..., :1, :], 23, axis=-2)
    np.testing.assert_allclose(ThickSlices(scale)(constant_rows), constant_rows, atol=1e-6)


def test_the_thick_task_builds_through_the_factory_with_its_options(image):
    assert "thick" in DEGRADATION_MODES and "\n" not in DEGRADATION_MODES["thick"]
    task = parse_task("thick5")
    assert (task.mode, task.scale, task.name) == ("thick", 5, "thick5")
    x = torch.from_numpy(image).float()
    np.testing.assert_array_equal(task_degradation(task)(x), ThickSlices(5)(x))
    np.testing.assert_array_equal(make_degradation("thick", 4, profile="box")(x), ThickSlices(4, "box")(x))
    noisy = make_degradation("thick", 5, noise=0.01, seed=3)(x)  # noise after, as for every mode
    np.testing.assert_array_equal(noisy, AddNoise(0.01, seed=3)(ThickSlices(5)(x)))
    pair = ThickSlicesd("hr", scale=5, output_keys="lr")({"hr": x[0]})
    np.testing.assert_array_equal(pair["lr"], ThickSlices(5)(x[0]))
    with pytest.raises(ValueError, match="profile"):
        ThickSlices(5, profile="sinc")
    with pytest.raises(ValueError, match="larger than"):
        ThickSlices(30)(x)


# ------------------------------------------------------------------------------------- a volume on its coarse grid
_DIRECTIONS = {
    "LPS": np.eye(3),
    "RAI (flipped, k inferior)": np.diag([-1.0, -1.0, -1.0]),
    "k along x, i along z": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
}


@pytest.mark.parametrize("name", list(_DIRECTIONS))
def test_simulated_thick_slices_put_a_marker_in_the_coarse_slice_around_it(name):
    direction = _DIRECTIONS[name]
    spacing, origin, scale, rows = (0.9, 0.8, 1.0), (10.0, -20.0, 30.0), 5, 47
    thick_axis = MedicalImage(np.zeros((3, 3, 3)), spacing, origin, direction).array_axis_for_plane("axial")
    array = np.full(tuple(rows if a == thick_axis else 9 for a in range(3)), 100, dtype=np.int16)
    source = MedicalImage(array, spacing, origin, direction)
    d = 2 - thick_axis  # the index axis of the thick array axis
    for marker in (6, 23, 31):  # one bright fine slice
        marked = np.moveaxis(array.copy(), thick_axis, 0)
        marked[marker] = 1000
        volume = source.with_array(np.moveaxis(marked, 0, thick_axis))
        out = simulate_thick_slices(volume, scale)
        assert out.array.dtype == np.int16 and out.shape[thick_axis] == math.ceil(rows / scale)
        assert np.allclose(out.direction, direction)
        index = np.zeros(4)
        index[3] = 1.0
        brightest = int(np.argmax(np.moveaxis(out.array, thick_axis, 0).reshape(out.shape[thick_axis], -1).max(1)))
        index[d] = brightest
        centre_z = (out.index_to_world() @ index)[2]
        marker_index = np.zeros(4)
        marker_index[3], marker_index[d] = 1.0, marker
        marker_z = (volume.index_to_world() @ marker_index)[2]
        assert abs(centre_z - marker_z) <= scale * spacing[d] / 2 + 1e-6, (name, marker, brightest)  # half a coarse slice
        assert brightest == marker // scale
    # geometry: spacing x s along the thick axis, origin moved (s-1)/2 fine spacings along it
    expected_spacing = list(spacing)
    expected_spacing[d] *= scale
    np.testing.assert_allclose(out.spacing, expected_spacing)
    np.testing.assert_allclose(out.origin, np.array(origin) + direction[:, d] * spacing[d] * (scale - 1) / 2, atol=1e-9)
    # and its fine grid is the source's grid, extended to a multiple of s
    fine = fine_image(out, [thick_axis], scale)
    assert fine.shape[thick_axis] == math.ceil(rows / scale) * scale
    np.testing.assert_allclose(fine.spacing, spacing, atol=1e-9)
    np.testing.assert_allclose(fine.origin, origin, atol=1e-9)


def test_simulated_thick_slices_box_profile_values_noise_and_refusals():
    rng = np.random.default_rng(1)
    array = rng.uniform(-50.0, 250.0, (21, 6, 5)).astype(np.float32)
    volume = MedicalImage(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    out = simulate_thick_slices(volume, 4, profile="box")
    assert out.array.dtype == np.float32 and out.shape == (6, 6, 5)
    rows_first = _edge_extended(np.moveaxis(array, 0, -2).astype(np.float64), 4)  # (6, 24, 5): rows = thick axis
    expected = np.moveaxis(rows_first.reshape(6, 6, 4, 5).mean(axis=2), 1, 0)  # block means, thick axis first
    np.testing.assert_allclose(out.array, expected, atol=1e-3)  # source units, float32 rounding
    assert out.metadata["degradation"]["mode"] == "thick" and out.metadata["degradation"]["profile"] == "box"
    # noise is the measurement's: added to the coarse slices, as AddNoise with the same seed draws it
    noisy = simulate_thick_slices(volume, 4, profile="box", noise=0.02, seed=7)
    width = float(array.max() - array.min())
    drawn = (noisy.array.astype(np.float64) - out.array) / width  # (6, 6, 5): thick axis first
    batch = np.moveaxis(np.zeros((6, 6, 5), np.float32), 0, 1)[:, None]  # as simulate batches it
    reference = np.moveaxis(np.asarray(AddNoise(0.02, seed=7)(torch.from_numpy(np.ascontiguousarray(batch))))[:, 0], 1, 0)
    np.testing.assert_allclose(drawn, reference, atol=1e-5)
    with pytest.raises(InputError, match="need a volume"):
        simulate_thick_slices(MedicalImage(array[0], (1.0, 1.0), (0.0, 0.0), np.eye(2)), 4)
    with pytest.raises(InputError, match="larger than"):
        simulate_thick_slices(volume, 30)
    with pytest.raises(InputError, match="profile"):
        simulate_thick_slices(volume, 4, profile="sinc")


def test_bspline_through_plane_passes_through_the_slice_centres_and_keeps_a_ramp():
    from LatentSRLib.transforms.thick import bspline_through_plane

    rng = np.random.default_rng(3)
    coarse = rng.random((4, 9, 5))  # 9 thick slices along axis 1
    fine = bspline_through_plane(coarse, axis=1, scale=5, size=45)
    assert fine.shape == (4, 45, 5)
    # an interpolating spline: at each coarse centre (fine index 5k + 2) it is the measured slice
    np.testing.assert_allclose(fine[:, 2::5], coarse, atol=1e-9)
    # a cubic spline follows a linear ramp between the centres (away from the ends, where the edge
    # condition bends it), not stepping like nearest-neighbour slices
    ramp = np.broadcast_to(np.arange(9, dtype=float)[None, :, None] * 0.1, (2, 9, 3))
    line = bspline_through_plane(ramp, axis=1, scale=5, size=45)
    inside = np.arange(17, 28)
    np.testing.assert_allclose(line[:, inside], np.broadcast_to(((inside - 2) / 5 * 0.1)[None, :, None], (2, 11, 3)),
                               atol=2e-3)
    # beyond the end centres it levels off near the edge slice instead of extrapolating the ramp
    np.testing.assert_allclose(line[:, :2], 0.0, atol=0.01)
    np.testing.assert_allclose(line[:, 43:], 0.8, atol=0.01)
