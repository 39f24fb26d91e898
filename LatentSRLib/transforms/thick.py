"""Thick slices: the through-plane low resolution of clinical MRI (1 x 1 x 5 mm voxels), simulated
from a finely sampled (e.g. 1 mm isotropic) volume.

A thick-slice acquisition measures, for each coarse slice, the fine signal weighted by the slice
profile around the slice centre. Along the thick axis the coarse and fine grids are the ones of
:mod:`LatentSRLib.transforms.grids` (rule 11): coarse slice ``k`` covers fine slices
``k*s .. k*s + s - 1`` and is centred at fine index ``k*s + (s - 1) / 2``; a fine axis whose length is
not a multiple of ``s`` is edge-extended at its far end first.

Profiles (``s`` = the factor, in fine slices):

* ``"gaussian"``: a Gaussian of FWHM ``s`` (sigma = ``s / (2 sqrt(2 ln 2))``), sampled at the fine
  slices' offsets from the coarse centre, truncated at 4 sigma (plus half a slice) and normalised,
  with the edge slice repeated beyond the volume;
* ``"box"``: the mean of the ``s`` fine slices a coarse slice covers (an ideal rectangular profile).

Each coarse slice is one weighted sum of fine slices whose weights are the profile evaluated at the
fine slices' distances from the coarse centre. For an odd ``s`` the centre is a fine slice and this
is the profile convolution sampled there; for an even ``s`` the centre falls between two fine
slices and the profile is sampled at half-slice offsets, which puts the centre exactly there (a
linear interpolation of the convolved image between the two neighbours would blur the profile a
little more). Both profiles have non-negative weights, so coarse values stay within the input range.

:func:`thick_downsample` is the coarse part (the training degradation
:class:`~LatentSRLib.transforms.degradations.ThickSlices` brings it back onto the fine grid);
:func:`simulate_thick_slices` degrades a whole volume and returns it on its coarse grid, as a
clinical thick-slice series would be stored (``latentsr degrade --mode thick``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F

from LatentSRLib.errors import InputError
from LatentSRLib.io import MedicalImage, check_pixels
from LatentSRLib.transforms.grids import coarse_image, coarse_size
from LatentSRLib.transforms.intensity import PercentileWindow

__all__ = ["PROFILES", "bspline_through_plane", "profile_weights", "simulate_thick_slices", "thick_downsample"]

#: the slice profiles along the thick axis
PROFILES = ("gaussian", "box")

#: Gaussian FWHM = this x sigma
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: the Gaussian profile is truncated this many sigmas from its centre (as scipy's and MONAI's)
_TRUNCATE = 4.0


def _check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not float(scale).is_integer() or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    return int(scale)


def _check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"slice profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    return profile


def profile_weights(scale: int, profile: str = "gaussian") -> tuple[int, np.ndarray]:
    """The weights of the fine slices in one coarse slice: ``(first, weights)``.

    Coarse slice ``k`` is ``sum_m weights[m] * fine[k*s + first + m]`` (fine indices beyond the
    volume take the edge slice). ``first`` is negative when the profile reaches into the previous
    coarse slice's fine slices. The weights sum to 1 (float64).
    """
    scale = _check_scale(scale)
    profile = _check_profile(profile)
    centre = (scale - 1) / 2.0  # offset of the coarse centre from the coarse slice's first fine slice
    if profile == "box":
        return 0, np.full(scale, 1.0 / scale)
    sigma = scale / _FWHM_PER_SIGMA
    reach = _TRUNCATE * sigma + 0.5  # odd scale: integer offsets up to int(4 sigma + 0.5), as scipy's
    first = math.ceil(centre - reach)
    last = math.floor(centre + reach)
    offsets = np.arange(first, last + 1, dtype=np.float64) - centre
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return first, weights / weights.sum()


def thick_downsample(x: torch.Tensor, scale: int, profile: str = "gaussian") -> torch.Tensor:
    """Fine ``(B, C, H, W)`` images -> their thick slices along rows: ``(B, C, coarse_size(H), W)``.

    Row ``k`` of the result is the slice profile centred at fine row ``k*s + (s - 1) / 2`` applied to
    the rows of ``x`` (edge rows repeated beyond the image). Float32 (float64 kept); not clipped (the
    weights are non-negative, so the result stays within the input's range).
    """
    scale = _check_scale(scale)
    first, weights = profile_weights(scale, profile)
    if x.ndim != 4:
        raise ValueError(f"thick_downsample expects (B, C, H, W) images, got shape {tuple(x.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, channels, height, width = x.shape
    flat = x.to(dtype).reshape(batch * channels, 1, height, width)
    n = coarse_size(height, scale)
    last = first + len(weights) - 1  # fine offset of the last weight from the coarse slice's start
    before = max(0, -first)
    after = n * scale - height + max(0, last - (scale - 1))  # up to a multiple of s, then the reach
    # replicate padding: the far end is edge-extended as the coarse grid defines; beyond either end
    # the profile sees the edge slice
    padded = F.pad(flat, (0, 0, before, after), mode="replicate")
    start = before + first  # where coarse slice 0's first weight falls in the padded rows
    kernel = torch.as_tensor(weights, dtype=dtype, device=x.device).reshape(1, 1, -1, 1)
    out = F.conv2d(padded[:, :, start:], kernel, stride=(scale, 1))[:, :, :n]
    return out.reshape(batch, channels, n, width)


def bspline_through_plane(coarse: np.ndarray, axis: int, scale: int, size: int) -> np.ndarray:
    """Cubic B-spline interpolation of thick slices back onto the fine grid: the through-plane baseline
    a thick-slice model is compared with (what a viewer or a resampling tool does with a thick series).

    ``coarse``: an array whose ``axis`` holds the thick slices; returns ``size`` fine slices there (the
    other axes unchanged), float64. Coarse slice ``k`` sits at fine index ``k*s + (s - 1) / 2`` (the
    grids of this module). ``scipy.ndimage.map_coordinates`` (order 3 with its spline prefilter, mode
    ``nearest``: the edge slices repeat beyond the volume, so the spline levels off there).
    """
    from scipy import ndimage

    scale = _check_scale(scale)
    moved = np.moveaxis(np.asarray(coarse, dtype=np.float64), axis, 0)
    positions = (np.arange(int(size), dtype=np.float64) - (scale - 1) / 2.0) / scale  # in coarse slice units
    points = np.meshgrid(positions, *(np.arange(n, dtype=np.float64) for n in moved.shape[1:]), indexing="ij")
    fine = ndimage.map_coordinates(moved, points, order=3, mode="nearest")
    return np.moveaxis(fine, 0, axis)


def _noise_step(sigma: float, kind: str, seed: int | None):
    """The noise of :class:`~LatentSRLib.transforms.degradations.AddNoise` (MONAI's Gaussian or
    Rician noise, fixed std, one seeded generator): the same draws for the same seed and shape.

    Built here rather than imported because ``degradations`` imports this module.
    """
    from monai.transforms import RandGaussianNoise, RandRicianNoise

    if kind not in ("gaussian", "rician"):
        raise ValueError(f"noise kind must be one of ('gaussian', 'rician'), got {kind!r}")
    cls = RandGaussianNoise if kind == "gaussian" else RandRicianNoise
    step = cls(prob=1.0, mean=0.0, std=float(sigma), dtype=None, sample_std=False)
    step.set_random_state(state=np.random.RandomState(seed))
    return step


def thick_volume(volume: np.ndarray, axis: int, scale: int, profile: str = "gaussian") -> np.ndarray:
    """A float32 volume's thick slices along array ``axis`` (:func:`thick_downsample` on every line
    along it): ``coarse_size(n, scale)`` slices there, the other axes unchanged. Not clipped."""
    moved = np.moveaxis(np.asarray(volume, dtype=np.float32), axis, 1)  # (other, thick, other): rows = thick
    thick = thick_downsample(torch.from_numpy(np.ascontiguousarray(moved))[:, None], scale, profile)
    return np.ascontiguousarray(np.moveaxis(thick[:, 0].numpy(), 1, axis))


def simulate_thick_slices(
    image: MedicalImage,
    scale: int,
    plane: str = "axial",
    profile: str = "gaussian",
    noise: float = 0.0,
    seed: int | None = None,
    noise_kind: str = "gaussian",
) -> MedicalImage:
    """A thick-slice acquisition of ``image``, on its coarse grid (what ``latentsr degrade --mode thick`` writes).

    The volume is windowed min-max to [0, 1] (no clipping, so the way back is exact), the thick axis
    (the normal of ``plane``, resolved from the direction matrix) gets the slice profile and every
    ``scale``-th slice (:func:`thick_downsample`), noise is added to the measured coarse slices, and
    the result returns to the source's units and dtype.

    Args:
        image: a 3D volume (any real dtype), typically 1 mm along the thick axis.
        scale: slice thickness and spacing in fine slices (5 makes 5 mm slices from 1 mm).
        plane: the plane of the thick slices (``"axial"``: thick axial slices, the coarse axis is
            the superior-inferior one).
        profile: ``"gaussian"`` (FWHM ``scale``) or ``"box"``.
        noise: standard deviation of the noise, as a fraction of the intensity range (0: none).
        seed: seed of the noise.
        noise_kind: ``"gaussian"`` or ``"rician"``.

    Returns:
        The coarse volume: ``coarse_size(n, scale)`` slices along the thick axis, spacing x ``scale``
        there, origin moved by ``(scale - 1) / 2`` fine spacings along that axis, same direction
        (:func:`~LatentSRLib.transforms.grids.coarse_image`); :func:`~LatentSRLib.transforms.grids.fine_image`
        of it is the input's grid (extended to a multiple of ``scale``).

    Raises:
        InputError: a 2D image, a scale larger than the thick axis, a bad profile or noise.
    """
    check_pixels(image)
    if image.ndim != 3:
        raise InputError("thick slices need a volume; this is a 2D image (use --mode sr, refine or kspace)", image.path)
    try:
        scale = _check_scale(scale)
        _check_profile(profile)
        axis = image.array_axis_for_plane(plane)
        if scale > image.shape[axis]:
            raise ValueError(f"scale {scale} is larger than the {image.shape[axis]} {plane} slices")
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"the noise level must be a finite number >= 0, got {noise!r}")
        noise_step = _noise_step(noise, noise_kind, seed) if noise > 0 else None
    except ValueError as exc:
        raise InputError(f"cannot simulate thick slices ({exc})", image.path) from None
    # min-max window (no clipping) so that the round trip to [0,1] and back is exact
    windowed, window = PercentileWindow(lower_percentile=0.0, upper_percentile=100.0, clip=False)(image.array)
    coarse = thick_volume(np.asarray(windowed, dtype=np.float32), axis, scale, profile)
    if noise_step is not None:  # drawn in thick_volume's (other, 1, thick, other) layout, line by line
        lines = torch.from_numpy(np.ascontiguousarray(np.moveaxis(coarse, axis, 1)))[:, None]
        noisy = torch.as_tensor(noise_step(lines), dtype=torch.float32)[:, 0].numpy()
        coarse = np.moveaxis(noisy, 1, axis)
    restored = window.invert(np.ascontiguousarray(coarse))
    out = coarse_image(image, [axis], scale, restored)
    degradation = {"mode": "thick", "scale": scale, "profile": profile, "noise": noise, "seed": seed, "plane": plane}
    if noise > 0:
        degradation["noise_kind"] = noise_kind
    return out.with_array(out.array, degradation=degradation)
