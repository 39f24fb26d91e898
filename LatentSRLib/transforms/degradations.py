"""Simulated low-resolution inputs: the degradations that turn a high-resolution image into the
model's input, on the high-resolution grid (rule 5 (docs/science.md): every VAE sees the same information).

All transforms work in-plane on the LAST TWO axes of an array of shape ``(..., H, W)``: a 2D image
``(H, W)``, a channel-first MONAI item ``(C, H, W)``, a batch ``(N, 1, H, W)`` or a volume
``(K, J, I)`` degraded slice by slice in the axial plane. Leading axes are treated as independent
images. Input may be a numpy array or a torch tensor (MetaTensor metadata is kept); the output is
the same type and shape, float32 (float64 stays float64). They are meant for windowed images in
``[0, 1]`` but do not require it.

Modes (see :data:`DEGRADATION_MODES`):

* ``"sr"``: :class:`BicubicDownUp`, the paper's BraTS / chest X-ray 4x task;
* ``"refine"``: :class:`BlurDownUp`, the paper's knee (MRNet) refinement task;
* ``"kspace"``: :class:`KSpaceTruncation`, an MRI-physical low resolution (truncated k-space);
* ``"thick"``: :class:`ThickSlices`, thick slices along the ROWS only (through-plane low resolution:
  a slice of a plane that contains the thick axis, rows running along it);

optionally followed by :class:`AddNoise`. :func:`make_degradation` builds the chain.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import Compose, MapTransform, Randomizable, RandGaussianNoise, RandRicianNoise, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple
from scipy.signal import windows as _windows

from LatentSRLib.transforms.grids import upsample
from LatentSRLib.transforms.tasks import DEGRADATION_MODES, Task
from LatentSRLib.transforms.thick import PROFILES, thick_downsample

__all__ = [
    "DEGRADATION_MODES",
    "AddNoise",
    "AddNoised",
    "BicubicDownUp",
    "BicubicDownUpd",
    "BlurDownUp",
    "BlurDownUpd",
    "KSpaceTruncation",
    "KSpaceTruncationd",
    "ThickSlices",
    "ThickSlicesd",
    "make_degradation",
    "task_degradation",
]


NOISE_KINDS = ("gaussian", "rician")
TAPERS = (None, "hamming", "tukey")


# ------------------------------------------------------------------------------------- helpers
def _check_scale(scale: Any) -> int:
    """``scale`` as an int >= 1; integral floats (4.0 from a JSON config) are accepted."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    if isinstance(scale, numbers.Integral):
        value = int(scale)
    elif float(scale).is_integer():
        value = int(scale)
    else:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    if value < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    return value


def _check_sigma(sigma: Any, name: str = "sigma") -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {sigma!r}")
    return float(sigma)


def _as_image_batch(img: NdarrayOrTensor) -> torch.Tensor:
    """``(..., H, W)`` -> plain float tensor ``(B, 1, H, W)`` (float64 kept, anything else float32)."""
    t = convert_to_tensor(img, track_meta=False)
    if t.ndim < 2:
        raise ValueError(f"an image of at least 2 dimensions (..., H, W) is expected, got shape {tuple(t.shape)}")
    if t.is_complex():
        raise ValueError("complex-valued images are not supported; give a magnitude image")
    if t.numel() == 0:
        raise ValueError(f"empty image of shape {tuple(t.shape)}")
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.to(dtype).reshape(-1, 1, *t.shape[-2:])


def _restore(out: torch.Tensor, img: NdarrayOrTensor) -> NdarrayOrTensor:
    """``(B, 1, H, W)`` float result back to ``img``'s shape and array type (float dtype kept)."""
    out = out.reshape(tuple(img.shape))
    result, *_ = convert_to_dst_type(out, dst=img, dtype=out.dtype)
    return result


def _check_fits(scale: int, height: int, width: int, what: str) -> None:
    if scale > min(height, width):
        raise ValueError(f"{what}: scale {scale} is larger than the image ({height}x{width})")


def _bicubic_down_up(batch: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic resize of ``(B, 1, H, W)`` to ``round(H/scale) x round(W/scale)`` and back."""
    height, width = batch.shape[-2:]
    # sizes rounded half up (not Python's banker's rounding), never below one pixel
    small = (max(1, math.floor(height / scale + 0.5)), max(1, math.floor(width / scale + 0.5)))
    if small == (height, width):
        return batch.clone()
    # antialias=True in both directions selects PyTorch's PIL-compatible kernel (Keys cubic with
    # a = -0.5, widened by the scale factor when shrinking): this matches PIL's
    # Image.resize(..., BICUBIC) to float rounding, the resize the paper's pipeline used.
    low = F.interpolate(batch, size=small, mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(low, size=(height, width), mode="bicubic", antialias=True, align_corners=False)


def _clip_to_input_range(out: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Clip each image (each ``(H, W)`` plane) to its own input min/max: removes bicubic overshoot.

    Per plane, so a volume degraded at once equals its slices degraded one by one.
    """
    low = batch.amin(dim=(-2, -1), keepdim=True)
    high = batch.amax(dim=(-2, -1), keepdim=True)
    return torch.clamp(out, min=low, max=high)


class _InPlaneTransform(Transform):
    """Shared plumbing: ``(..., H, W)`` numpy/torch in, same type and shape out."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def _degrade(self, batch: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, 1, H, W)
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return _restore(self._degrade(_as_image_batch(img)), img)


# ------------------------------------------------------------------------------------- transforms
class BicubicDownUp(_InPlaneTransform):
    """Bicubic down-sampling by ``scale`` then bicubic up-sampling back to the input grid.

    The paper's low-resolution input for BraTS and chest X-ray (256 -> 64 -> 256 at 4x). The down
    step is antialiased (``torch.nn.functional.interpolate(mode="bicubic", antialias=True,
    align_corners=False)``), which matches PIL's bicubic ``Image.resize`` to float rounding; the
    reduced size is ``round(H / scale) x round(W / scale)`` (half up, at least 1).

    Input: ``(..., H, W)`` numpy array or torch tensor, any real dtype, typically in ``[0, 1]``;
    ``scale <= min(H, W)``. Output: same type and shape, float32 (float64 kept). Deterministic.

    Args:
        scale: integer down-sampling factor >= 1 (1 returns the input as float).
        clip: clip each ``(H, W)`` plane to its input's min/max, removing bicubic overshoot (so an
            image in ``[0, 1]`` stays in ``[0, 1]``).
    """

    def __init__(self, scale: int = 4, clip: bool = True) -> None:
        self.scale = _check_scale(scale)
        self.clip = bool(clip)

    def _degrade(self, batch: torch.Tensor) -> torch.Tensor:
        _check_fits(self.scale, *batch.shape[-2:], type(self).__name__)
        out = _bicubic_down_up(batch, self.scale)
        return _clip_to_input_range(out, batch) if self.clip else out


class BlurDownUp(_InPlaneTransform):
    """Gaussian blur, then bicubic down-sampling by ``scale`` and up-sampling back.

    The paper's knee (MRNet) "refinement" task: blur sigma = 1 pixel, 2x down, back up to 256x256.
    The blur is in-plane only (MONAI's sampled, normalised ``gaussian_1d`` kernel, truncated at
    4 sigma like scipy's ``gaussian_filter``, applied with ``separable_filtering`` and mirror padding
    so borders are not darkened); the resampling is the same as :class:`BicubicDownUp`.

    Input: ``(..., H, W)`` numpy array or torch tensor, any real dtype, typically in ``[0, 1]``;
    ``scale <= min(H, W)``. Output: same type and shape, float32 (float64 kept). Deterministic.

    Args:
        sigma: Gaussian standard deviation in pixels (>= 0; 0 skips the blur).
        scale: integer down-sampling factor >= 1.
        clip: clip each ``(H, W)`` plane to its input's min/max (bicubic overshoot).
    """

    def __init__(self, sigma: float = 1.0, scale: int = 2, clip: bool = True) -> None:
        self.sigma = _check_sigma(sigma)
        self.scale = _check_scale(scale)
        self.clip = bool(clip)

    def _blur(self, batch: torch.Tensor) -> torch.Tensor:
        if self.sigma == 0:
            return batch
        kernel = gaussian_1d(torch.tensor(self.sigma), truncated=4.0, approx="sampled", normalize=True)
        radius = (kernel.numel() - 1) // 2
        # torch's reflect padding needs the pad narrower than the image; tiny images replicate instead
        mode = "reflect" if radius < min(batch.shape[-2:]) else "replicate"
        return separable_filtering(batch, [kernel, kernel], mode=mode)

    def _degrade(self, batch: torch.Tensor) -> torch.Tensor:
        _check_fits(self.scale, *batch.shape[-2:], type(self).__name__)
        out = _bicubic_down_up(self._blur(batch), self.scale)
        return _clip_to_input_range(out, batch) if self.clip else out


class KSpaceTruncation(_InPlaneTransform):
    """MRI-like low resolution: keep only the central ``1/scale`` of k-space, return the magnitude.

    Per ``(H, W)`` plane: 2D FFT; keep the ``round(H/scale) x round(W/scale)`` central frequencies
    (the lines a scanner acquiring the low-resolution matrix would sample: for an even count ``n``
    the signed frequencies ``-n/2 .. n/2 - 1``), optionally weighted by a taper window; zero the
    rest; inverse FFT; magnitude. This is a zero-filled reconstruction as the scanner would produce
    it, with Gibbs ringing unless tapered.

    Input: ``(..., H, W)`` numpy array or torch tensor, real, non-negative (a magnitude image, e.g.
    windowed to ``[0, 1]``); ``scale <= min(H, W)``. Output: same type and shape, float32 (float64
    kept), non-negative. ``scale=1`` without taper returns the input (up to FFT rounding).
    Deterministic.

    Args:
        scale: integer factor >= 1 by which the sampled k-space extent shrinks along each axis.
        taper: ``None`` (sharp cut-off, Gibbs ringing), ``"hamming"`` or ``"tukey"`` (scipy.signal
            windows over the kept band, peak 1 at the centre of k-space so mean intensity is kept;
            the periodic Tukey window of an even band is 0 on its outermost negative line).
        tukey_alpha: fraction of the Tukey window inside its cosine tapers (0 = box, 1 = Hann).
    """

    # Written by hand: MONAI's k-space masks (monai.apps.reconstruction RandomKspaceMask,
    # EquispacedKspaceMask) keep a centre fraction plus random or equispaced outer lines, with no
    # taper and along one axis only; no library truncates both in-plane axes with a taper. torch
    # gives the FFT and scipy the windows: only the few lines gluing them are ours.

    def __init__(self, scale: int = 4, taper: str | None = None, tukey_alpha: float = 0.5) -> None:
        self.scale = _check_scale(scale)
        if taper not in TAPERS:
            raise ValueError(f"taper must be one of {TAPERS}, got {taper!r}")
        if not 0.0 <= float(tukey_alpha) <= 1.0:
            raise ValueError(f"tukey_alpha must lie in [0, 1], got {tukey_alpha!r}")
        self.taper = taper
        self.tukey_alpha = float(tukey_alpha)

    def _band_1d(self, n: int) -> np.ndarray:
        """Weights of the ``n`` frequencies in centred order (DC at index ``n // 2``)."""
        keep = max(1, math.floor(n / self.scale + 0.5))
        # centred on DC at n//2; an even band has one more negative than positive frequency
        start = n // 2 - keep // 2
        # periodic windows for an even band and symmetric for an odd one put the peak (1.0) at
        # index keep//2, i.e. exactly on DC
        sym = keep % 2 == 1
        if self.taper == "hamming":
            band = _windows.hamming(keep, sym=sym)
        elif self.taper == "tukey":
            band = _windows.tukey(keep, alpha=self.tukey_alpha, sym=sym)
        else:
            band = np.ones(keep)
        weights = np.zeros(n)
        weights[start : start + keep] = band
        return weights

    def weights(self, height: int, width: int) -> np.ndarray:
        """k-space weights ``(height, width)`` in ``numpy.fft.fft2`` order (DC at ``[0, 0]``): zero outside the band."""
        centred = np.outer(self._band_1d(height), self._band_1d(width))
        return np.fft.ifftshift(centred)

    def _band_limited(self, batch: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) real -> complex
        height, width = batch.shape[-2:]
        _check_fits(self.scale, height, width, type(self).__name__)
        weights = torch.as_tensor(self.weights(height, width), dtype=batch.dtype, device=batch.device)
        return torch.fft.ifft2(torch.fft.fft2(batch) * weights)

    def complex_image(self, img: NdarrayOrTensor) -> torch.Tensor:
        """The band-limited complex image before the magnitude: complex torch tensor of ``img``'s shape."""
        return self._band_limited(_as_image_batch(img)).reshape(tuple(img.shape))

    def _degrade(self, batch: torch.Tensor) -> torch.Tensor:
        return self._band_limited(batch).abs()


class ThickSlices(_InPlaneTransform):
    """Thick slices along the rows: the through-plane low resolution of a thick-slice acquisition.

    For a slice whose rows run along the thick axis (a coronal or sagittal slice of thick axial
    slices: rows superior -> inferior), each column is what the thick acquisition measures along
    it, brought back onto the fine grid:

    1. the slice profile (:mod:`LatentSRLib.transforms.thick`: a Gaussian of FWHM ``scale`` fine rows,
       or the ``"box"`` mean of the ``scale`` rows a coarse slice covers) sampled at the coarse
       centres, fine row ``k*scale + (scale - 1) / 2``, after edge-extending the rows to a multiple
       of ``scale`` (:func:`~LatentSRLib.transforms.thick.thick_downsample`);
    2. bicubic up-sampling of those coarse rows onto the fine rows
       (:func:`~LatentSRLib.transforms.grids.upsample`, the one coarse-to-fine resampling, rule 11),
       cropped to the input's rows.

    Each column is degraded on its own (nothing mixes across columns). The result is the cubic
    interpolation of the thick slices: the model's low-resolution input on the high-resolution grid
    (rule 5).

    Input: ``(..., H, W)`` numpy array or torch tensor, any real dtype, typically in ``[0, 1]``;
    ``scale <= H``. Output: same type and shape, float32 (float64 kept). Deterministic.

    Args:
        scale: slice thickness and spacing in fine rows (integer >= 1).
        profile: ``"gaussian"`` or ``"box"``.
        clip: clip each ``(H, W)`` plane to its input's min/max (bicubic overshoot).
    """

    def __init__(self, scale: int = 5, profile: str = "gaussian", clip: bool = True) -> None:
        self.scale = _check_scale(scale)
        if profile not in PROFILES:
            raise ValueError(f"slice profile must be one of {PROFILES}, got {profile!r}")
        self.profile = profile
        self.clip = bool(clip)

    def _degrade(self, batch: torch.Tensor) -> torch.Tensor:
        height, width = batch.shape[-2:]
        if self.scale > height:
            raise ValueError(f"{type(self).__name__}: scale {self.scale} is larger than the image's {height} rows")
        coarse = thick_downsample(batch, self.scale, self.profile)
        out = upsample(coarse, self.scale, dims=(-2,), size=(height, width)).to(batch.dtype)
        return _clip_to_input_range(out, batch) if self.clip else out


class AddNoise(Randomizable, Transform):
    """Add Gaussian or Rician noise of fixed standard deviation ``sigma`` (seeded).

    Uses MONAI's ``RandGaussianNoise`` / ``RandRicianNoise`` with ``prob=1`` and a fixed
    (not sampled) std, drawing from this transform's generator ``self.R``. A transform built with
    the same ``seed`` (or reset with :meth:`set_random_state`) adds the same noise to the same-shaped
    input; successive calls draw new noise. ``seed=None`` seeds from the operating system.

    ``sigma`` is in the units of the image: on images windowed to ``[0, 1]`` it is a fraction of the
    window (0.01 = 1 % of the window). Rician noise is the magnitude of the image plus complex
    Gaussian noise (MRI magnitude noise): non-negative, biased upwards in dark regions. Gaussian
    noise is not clipped.

    Input: ``(..., H, W)`` (any shape) numpy array or torch tensor, any real dtype. Output: same
    type and shape, float32 (float64 kept).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, sigma: float, kind: str = "gaussian", seed: int | None = None) -> None:
        self.sigma = _check_sigma(sigma)
        if kind not in NOISE_KINDS:
            raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
        self.kind = kind
        # dtype=None: keep the dtype of the (already float) input
        if kind == "gaussian":
            self._noise: RandGaussianNoise | RandRicianNoise = RandGaussianNoise(
                prob=1.0, mean=0.0, std=self.sigma, dtype=None, sample_std=False
            )
        else:
            self._noise = RandRicianNoise(prob=1.0, mean=0.0, std=self.sigma, dtype=None, sample_std=False)
        self.set_random_state(seed=seed)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> AddNoise:
        super().set_random_state(seed=seed, state=state)
        self._noise.set_random_state(state=self.R)  # one generator, shared with the MONAI transform
        return self

    def randomize(self, data: Any = None) -> None:
        """Nothing to pre-draw: the MONAI noise transform draws from ``self.R`` when called."""

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        t = convert_to_tensor(img, track_meta=False)
        if t.ndim < 1 or t.numel() == 0:
            raise ValueError(f"cannot add noise to an empty image of shape {tuple(t.shape)}")
        t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
        out = t.clone() if self.sigma == 0 else convert_to_tensor(self._noise(t), track_meta=False)
        result, *_ = convert_to_dst_type(out, dst=img, dtype=out.dtype)
        return result


# ------------------------------------------------------------------------------------- dictionary forms
class _DegradeKeysd(MapTransform):
    """Apply an array degradation to ``data[key]``, writing to ``output_keys`` (default: in place).

    ``output_keys`` lets ``{"hr": x}`` become ``{"hr": x, "lr": degraded}``: that is how training
    pairs are made without losing the high-resolution image.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: Callable[[NdarrayOrTensor], NdarrayOrTensor],
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform
        self.output_keys = self.keys if output_keys is None else ensure_tuple(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"{len(self.keys)} keys but {len(self.output_keys)} output keys")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.transform(d[key])
        return d


class BicubicDownUpd(_DegradeKeysd):
    """Dictionary form of :class:`BicubicDownUp` (``output_keys``: where results go, default in place)."""

    def __init__(
        self,
        keys: KeysCollection,
        scale: int = 4,
        clip: bool = True,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, BicubicDownUp(scale=scale, clip=clip), output_keys, allow_missing_keys)


class BlurDownUpd(_DegradeKeysd):
    """Dictionary form of :class:`BlurDownUp` (``output_keys``: where results go, default in place)."""

    def __init__(
        self,
        keys: KeysCollection,
        sigma: float = 1.0,
        scale: int = 2,
        clip: bool = True,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, BlurDownUp(sigma=sigma, scale=scale, clip=clip), output_keys, allow_missing_keys)


class KSpaceTruncationd(_DegradeKeysd):
    """Dictionary form of :class:`KSpaceTruncation` (``output_keys``: where results go, default in place)."""

    def __init__(
        self,
        keys: KeysCollection,
        scale: int = 4,
        taper: str | None = None,
        tukey_alpha: float = 0.5,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        transform = KSpaceTruncation(scale=scale, taper=taper, tukey_alpha=tukey_alpha)
        super().__init__(keys, transform, output_keys, allow_missing_keys)


class ThickSlicesd(_DegradeKeysd):
    """Dictionary form of :class:`ThickSlices` (``output_keys``: where results go, default in place)."""

    def __init__(
        self,
        keys: KeysCollection,
        scale: int = 5,
        profile: str = "gaussian",
        clip: bool = True,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, ThickSlices(scale=scale, profile=profile, clip=clip), output_keys, allow_missing_keys)


class AddNoised(Randomizable, _DegradeKeysd):
    """Dictionary form of :class:`AddNoise`; each key gets its own draw from the shared generator."""

    def __init__(
        self,
        keys: KeysCollection,
        sigma: float,
        kind: str = "gaussian",
        seed: int | None = None,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        _DegradeKeysd.__init__(self, keys, AddNoise(sigma, kind=kind, seed=seed), output_keys, allow_missing_keys)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> AddNoised:
        self.transform.set_random_state(seed=seed, state=state)
        self.R = self.transform.R
        return self

    def randomize(self, data: Any = None) -> None:
        """Nothing to pre-draw (see :class:`AddNoise`)."""


# ------------------------------------------------------------------------------------- factory
def make_degradation(
    mode: str,
    scale: int,
    noise: float = 0.0,
    seed: int | None = None,
    noise_kind: str = "gaussian",
    **kw: Any,
) -> Compose:
    """The degradation chain for ``mode`` (a key of :data:`DEGRADATION_MODES`), as a MONAI ``Compose``.

    Args:
        mode: ``"sr"`` (:class:`BicubicDownUp`), ``"refine"`` (:class:`BlurDownUp`), ``"kspace"``
            (:class:`KSpaceTruncation`) or ``"thick"`` (:class:`ThickSlices`, along the rows).
        scale: the integer factor of that degradation.
        noise: std of added noise in image units (0 adds none); see :class:`AddNoise`.
        seed: seed of the noise generator.
        noise_kind: ``"gaussian"`` or ``"rician"``.
        kw: further arguments of the degradation class (``clip``, ``sigma``, ``taper``, ``tukey_alpha``,
            ``profile``).

    Raises:
        ValueError: unknown mode (the message lists the valid ones) or invalid arguments.
    """
    builders: dict[str, Callable[..., Transform]] = {
        "sr": BicubicDownUp,
        "refine": BlurDownUp,
        "kspace": KSpaceTruncation,
        "thick": ThickSlices,
    }
    if mode not in builders:
        raise ValueError(f"unknown degradation mode {mode!r}; valid modes: {', '.join(DEGRADATION_MODES)}")
    try:
        chain: list[Transform] = [builders[mode](scale=scale, **kw)]
    except TypeError as err:  # an option the mode does not have
        raise ValueError(f"degradation mode {mode!r}: {err}") from err
    noise_step = AddNoise(noise, kind=noise_kind, seed=seed) if _check_sigma(noise, "noise") > 0 else None
    if noise_step is not None:
        chain.append(noise_step)
    composed = Compose(chain)
    if noise_step is not None and seed is not None:
        # Compose.__init__ reseeds its randomisable members from the global seed: put ours back so
        # make_degradation(..., seed=s) draws exactly what AddNoise(..., seed=s) draws
        noise_step.set_random_state(seed=seed)
    return composed


def task_degradation(task: Task, *, noise: bool = True, seed: int | None = None) -> Compose:
    """The MONAI ``Compose`` that applies ``task`` to ``(..., H, W)`` images in [0, 1].

    Args:
        task: the degradation, factor and noise.
        noise: ``False`` gives the task's noise-free forward operator: what the data-consistency
            projection and the consistency map compare with the measurement (rule 11; noise is a
            property of the measurement, not of the operator that explains it).
        seed: the noise seed (default: the task's).
    """
    return make_degradation(task.mode, int(task.scale), noise=task.noise if noise else 0.0,
                            seed=task.seed if seed is None else seed, noise_kind=task.noise_kind, **task.options)
