"""Where in frequency a method's error sits: Haar wavelet subband PSNR and the radial power spectrum.

The paper's diagnostic: a 3-level Haar decomposition (``pywt.wavedec2(image, "haar", level=3)``,
PyWavelets' default ``"symmetric"`` mode) of prediction and TRUE high-resolution image, and one PSNR
per subband. Level 1 is the finest, level 3 the coarsest; ten bands, coarse to fine::

    LL3, LH3, HL3, HH3, LH2, HL2, HH2, LH1, HL1, HH1

Naming convention (fixed here, because conventions differ between texts): PyWavelets returns the
details of each level as ``(cH, cV, cD)``, "horizontal, vertical, diagonal". We name them in that
order ``LH, HL, HH``, the first letter being the filter along the image width (x, columns) and the
second the filter along the height (y, rows):

* ``LH`` = pywt ``cH``: low-pass along x, high-pass along y -> responds to HORIZONTAL edges
  (intensity changing from row to row);
* ``HL`` = pywt ``cV``: high-pass along x, low-pass along y -> responds to VERTICAL edges;
* ``HH`` = pywt ``cD``: high-pass along both -> diagonal detail.

Peak used for each band's PSNR (``peak="theoretical"``, the default): the range that the band's
coefficients can span for images in ``[0, R]`` (``R = data_range``). PyWavelets' Haar is
orthonormal (filters ``(1, 1)/sqrt(2)`` and ``(1, -1)/sqrt(2)``), so each level multiplies the
approximation range by 2: ``LL_l`` lies in ``[0, 2**l * R]`` and every detail band of level ``l``
in ``[-2**(l-1) * R, 2**(l-1) * R]``; both span ``2**l * R``. The peak of every band of level ``l``
is therefore ``2**l * R`` (LL3, LH3, HL3, HH3: ``8R``; level 2: ``4R``; level 1: ``2R``). Why this
one:

* it is fixed by the data range alone, identical for every image, method and VAE, so absolute band
  PSNRs are comparable across images and datasets, not only within a pair;
* it makes a band's PSNR the PSNR that the whole image would have if its only error were that
  band's error (band MSE divided by ``4**l``, the number of pixels one coefficient summarises);
  hence, for sizes divisible by ``2**levels``, ``10**(-PSNR/10) = sum over bands of
  10**(-PSNR_band/10)`` exactly: the bands add up to the pixel-space PSNR (Parseval).

``peak="target_max"`` reproduces the paper's stated convention instead ("the maximum value of the
HR subband as the reference range"): a per-image peak, the maximum of the true image's band
coefficients (NaN where that maximum is not positive). Paired differences between two methods on
the same image are the same under both conventions (the peak depends only on the target); only
absolute values differ.

Parseval (and the peaks above) hold exactly when ``H`` and ``W`` are divisible by ``2**levels``;
other sizes are decomposed with PyWavelets' symmetric boundary extension, as in the paper.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pywt

from LatentSRLib.metrics.quality import as_image_batch, as_image_pair, check_data_range

__all__ = [
    "SUBBANDS",
    "haar_subband_psnr",
    "haar_subbands",
    "radial_power_spectrum",
    "subband_names",
]

WAVELET = "haar"
#: PyWavelets' detail tuple (cH, cV, cD) carries these names, in this order (see the module docstring).
DETAIL_NAMES = ("LH", "HL", "HH")


def subband_names(levels: int = 3) -> tuple[str, ...]:
    """Band names coarse to fine: ``LL{levels}``, then ``LH{l}, HL{l}, HH{l}`` for ``l = levels .. 1``."""
    if int(levels) != levels or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    names = [f"LL{levels}"]
    for level in range(levels, 0, -1):
        names += [f"{d}{level}" for d in DETAIL_NAMES]
    return tuple(names)


#: The paper's ten bands of a 3-level decomposition, coarsest (LL3) to finest (HH1).
SUBBANDS: tuple[str, ...] = subband_names(3)


def _band_level(name: str) -> int:
    return int(name[2:])


def _as_numpy_batch(images, name: str) -> np.ndarray:
    """Any accepted image batch -> float64 numpy ``(B, H, W)``."""
    return as_image_batch(images, name)[:, 0].cpu().numpy()


def haar_subbands(images, levels: int = 3) -> dict[str, np.ndarray]:
    """Orthonormal Haar decomposition of each image: ``{band name: (B, h, w) coefficients}``.

    ``images``: ``(B, 1, H, W)``, ``(B, H, W)`` or ``(H, W)``, ``H, W >= 2**levels``. Bands are
    ordered as :func:`subband_names`; a level-``l`` band is about ``H / 2**l`` by ``W / 2**l``.
    """
    names = subband_names(levels)
    batch = _as_numpy_batch(images, "images")
    if min(batch.shape[-2:]) < 2**levels:
        raise ValueError(
            f"a {levels}-level decomposition needs at least {2**levels}x{2**levels} pixels, "
            f"got {batch.shape[-2]}x{batch.shape[-1]}"
        )
    coeffs = pywt.wavedec2(batch, WAVELET, level=levels, axes=(-2, -1))
    bands = {names[0]: coeffs[0]}
    for level, details in zip(range(levels, 0, -1), coeffs[1:], strict=True):
        for detail_name, array in zip(DETAIL_NAMES, details, strict=True):  # (cH, cV, cD) -> LH, HL, HH
            bands[f"{detail_name}{level}"] = array
    return bands


def haar_subband_psnr(
    prediction,
    target,
    levels: int = 3,
    data_range: float = 1.0,
    peak: Literal["theoretical", "target_max"] = "theoretical",
) -> dict[str, np.ndarray]:
    """PSNR of each Haar subband of ``prediction`` against the TRUE image ``target``, per image.

    Args:
        prediction: the method's output, ``(B, 1, H, W)`` / ``(B, H, W)`` on ``[0, data_range]``.
        target: the true high-resolution image, same shape.
        levels: decomposition depth (the paper: 3, giving :data:`SUBBANDS`).
        data_range: intensity scale ``R`` of the images.
        peak: ``"theoretical"`` (default): ``2**l * R`` for every band of level ``l``;
            ``"target_max"``: the paper's per-image maximum of the true band (see the module docstring).

    Returns:
        ``{band: (B,) float64 dB}`` in the order of :func:`subband_names`; ``+inf`` where a band of
        the prediction equals the target's exactly.
    """
    if peak not in ("theoretical", "target_max"):
        raise ValueError(f"peak must be 'theoretical' or 'target_max', got {peak!r}")
    p, t = as_image_pair(prediction, target)
    data_range = check_data_range(data_range)
    pred_bands = haar_subbands(p, levels)
    true_bands = haar_subbands(t, levels)
    result: dict[str, np.ndarray] = {}
    for name, true_band in true_bands.items():
        mse = np.mean((pred_bands[name] - true_band) ** 2, axis=(-2, -1))
        if peak == "theoretical":
            band_peak = np.full(mse.shape, data_range * 2.0 ** _band_level(name))
        else:
            band_peak = true_band.max(axis=(-2, -1))
            band_peak = np.where(band_peak > 0, band_peak, np.nan)
        with np.errstate(divide="ignore"):
            result[name] = 10.0 * np.log10(band_peak**2 / mse)
    return result


def radial_power_spectrum(images, n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthally averaged power spectrum of each image (numpy FFT, no window).

    Power is ``|FFT(image)|**2 / (H * W)`` (so it sums to ``sum(image**2)``), averaged over rings of
    radial frequency ``sqrt(fx**2 + fy**2)`` in cycles/pixel. Rings are ``1 / min(H, W)`` wide and
    centred on ``k / min(H, W)``, ``k = 0 .. n_bins - 1``; by default up to the Nyquist frequency
    0.5 (the corners beyond it are left out). The DC term (mean intensity) is bin 0.

    Args:
        images: ``(B, 1, H, W)``, ``(B, H, W)`` or ``(H, W)``.
        n_bins: number of rings (default ``min(H, W) // 2 + 1``, up to 0.5 cycles/pixel).

    Returns:
        ``(frequencies, power)``: ``(n_bins,)`` ring centres in cycles/pixel and ``(B, n_bins)``
        mean power per ring (NaN for a ring holding no FFT sample). Average ``power`` over axis 0
        for a method's curve.
    """
    batch = _as_numpy_batch(images, "images")
    height, width = batch.shape[-2:]
    size = min(height, width)
    if n_bins is None:
        n_bins = size // 2 + 1
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    power = np.abs(np.fft.fft2(batch, axes=(-2, -1))) ** 2 / (height * width)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    ring = np.rint(np.sqrt(fx**2 + fy**2) * size).astype(np.int64).ravel()  # nearest ring centre k / size
    keep = ring < n_bins
    counts = np.bincount(ring[keep], minlength=n_bins).astype(np.float64)
    flat = power.reshape(batch.shape[0], -1)[:, keep]
    sums = np.stack([np.bincount(ring[keep], weights=row, minlength=n_bins) for row in flat])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_power = np.where(counts > 0, sums / counts, np.nan)
    frequencies = np.arange(n_bins) / size
    return frequencies, mean_power
