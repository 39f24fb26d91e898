"""Per-image fidelity metrics: PSNR, SSIM and MS-SSIM of a prediction against the true image.

rule 1 (docs/science.md): every score compares a method's output with the TRUE high-resolution image, never
with a VAE reconstruction of it; the arguments are therefore always ``(prediction, target)`` with
``target`` the real high-resolution image.

Inputs are batches of grayscale images, ``(B, 1, H, W)`` or ``(B, H, W)`` (a single ``(H, W)``
image is a batch of one), as numpy arrays or torch tensors, with intensities on a known scale:
``[0, data_range]``, ``[0, 1]`` by default (the paper's 10 log10(1 / MSE)). Values are NOT clipped:
a prediction that overshoots the range is scored as it is; clip before scoring if the pipeline
clips its output. Non-finite pixels are refused. The arithmetic runs on the input's device.

Every function returns a float64 numpy array of shape ``(B,)``, one score per image, computed with
``torchmetrics.functional`` (reduction ``"none"``), so the numbers agree with what the paper's
torchmetrics-based code reports. PSNR is computed in float64; SSIM and MS-SSIM in float32 (their
11x11 convolutions are about 15x faster than in float64 on a CPU; the scores agree to ~1e-6).

Identical images: PSNR is ``+inf`` (zero error). It is kept as ``inf`` rather than capped at an
arbitrary ceiling, so that no number is invented; the statistics in
:mod:`LatentSRLib.metrics.statistics` refuse non-finite values by default and can drop them
with a stated count (``nonfinite="drop"``). (Bicubic up-sampling of an all-background slice is
the realistic case.)
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

__all__ = [
    "MS_SSIM_SCALES",
    "SSIM_KERNEL_SIZE",
    "as_image_batch",
    "fidelity_metrics",
    "ms_ssim",
    "ms_ssim_min_size",
    "ms_ssim_size_problem",
    "psnr",
    "ssim",
]

#: Gaussian window of SSIM and MS-SSIM (Wang et al.: 11 px, sigma 1.5; torchmetrics' default).
SSIM_KERNEL_SIZE = 11
#: Scales of MS-SSIM with the standard weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333).
MS_SSIM_SCALES = 5


def as_image_batch(images: np.ndarray | torch.Tensor, name: str = "images") -> torch.Tensor:
    """``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` -> float64 tensor ``(B, 1, H, W)`` on the input's device.

    Raises:
        ValueError: another shape, more than one channel, complex, empty or non-finite values.
    """
    t = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else torch.as_tensor(images)
    if t.is_complex():
        raise ValueError(f"{name}: complex values are not supported; give magnitude images")
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    elif t.ndim == 4:
        if t.shape[1] != 1:
            raise ValueError(f"{name}: grayscale images (B, 1, H, W) are expected, got {t.shape[1]} channels")
    else:
        raise ValueError(f"{name}: expected (H, W), (B, H, W) or (B, 1, H, W), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: empty batch of shape {tuple(t.shape)}")
    t = t.detach().to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or infinite pixel values")
    return t


def as_image_pair(prediction, target) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs as ``(B, 1, H, W)`` float64 tensors on the prediction's device; shapes must match."""
    p = as_image_batch(prediction, "prediction")
    t = as_image_batch(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    return p, t.to(p.device)


def check_data_range(data_range: float) -> float:
    """``data_range`` as a positive finite float."""
    value = float(data_range)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return value


def _numpy(scores: torch.Tensor, batch: int) -> np.ndarray:
    # reduction "none" squeezes a batch of one to a 0-d tensor: always hand back shape (B,)
    return scores.detach().to("cpu", torch.float64).reshape(batch).numpy()


def psnr(prediction, target, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio per image, ``10 log10(data_range**2 / MSE)`` in dB.

    Args:
        prediction: the method's output, ``(B, 1, H, W)`` / ``(B, H, W)``, on ``[0, data_range]``.
        target: the TRUE high-resolution image, same shape.
        data_range: the intensity scale (peak), 1 for images in ``[0, 1]``.

    Returns:
        ``(B,)`` float64 in dB; ``+inf`` where prediction equals target exactly.
    """
    p, t = as_image_pair(prediction, target)
    peak = check_data_range(data_range)
    scores = peak_signal_noise_ratio(p, t, data_range=peak, reduction="none", dim=(1, 2, 3))
    return _numpy(scores, p.shape[0])


def ssim(prediction, target, data_range: float = 1.0) -> np.ndarray:
    """Structural similarity per image (Gaussian window 11 px, sigma 1.5, K1 = 0.01, K2 = 0.03).

    torchmetrics computes the SSIM map on the region the window fully covers and averages it.
    Images need at least 11x11 pixels. Returns ``(B,)`` float64, 1 for identical images.
    """
    p, t = as_image_pair(prediction, target)
    peak = check_data_range(data_range)
    scores = structural_similarity_index_measure(
        p.float(), t.float(), data_range=peak, kernel_size=SSIM_KERNEL_SIZE, sigma=1.5, reduction="none"
    )
    return _numpy(scores, p.shape[0])


def ms_ssim_min_size(kernel_size: int = SSIM_KERNEL_SIZE, scales: int = MS_SSIM_SCALES) -> int:
    """Smallest height and width that MS-SSIM accepts: 176 px for the defaults (11 px window, 5 scales).

    This is torchmetrics' own rule (``H // (scales - 1)**2 > kernel_size - 1`` and
    ``H >= 2**scales``); for 5 scales it coincides with the geometric one: the coarsest scale,
    ``H / 16``, must still hold one 11 px window.
    """
    divisor = max(1, scales - 1) ** 2
    return max(2**scales, kernel_size * divisor)


def ms_ssim_size_problem(height: int, width: int) -> str | None:
    """Why MS-SSIM (default settings) cannot be computed on ``height x width`` images, or ``None``."""
    need = ms_ssim_min_size()
    if height < need or width < need:
        return (
            f"MS-SSIM needs images of at least {need}x{need} pixels ({MS_SSIM_SCALES} scales, "
            f"{SSIM_KERNEL_SIZE} px window), got {height}x{width}"
        )
    return None


def ms_ssim(prediction, target, data_range: float = 1.0, warn: bool = True) -> np.ndarray:
    """Multi-scale SSIM per image: 5 scales, the standard weights, torchmetrics' defaults (as the paper).

    Needs images of at least 176x176 pixels (:func:`ms_ssim_min_size`). Smaller images give an
    all-NaN ``(B,)`` array instead of an error, with a ``UserWarning`` stating the reason (also
    available from :func:`ms_ssim_size_problem`), so a table can show "n/a" for that column.

    Returns:
        ``(B,)`` float64, 1 for identical images; NaN when the images are too small.
    """
    p, t = as_image_pair(prediction, target)
    peak = check_data_range(data_range)
    problem = ms_ssim_size_problem(*p.shape[-2:])
    if problem is not None:
        if warn:
            warnings.warn(f"{problem}; returning NaN", UserWarning, stacklevel=2)
        return np.full(p.shape[0], np.nan)
    scores = multiscale_structural_similarity_index_measure(p.float(), t.float(), data_range=peak, reduction="none")
    return _numpy(scores, p.shape[0])


def fidelity_metrics(prediction, target, data_range: float = 1.0) -> dict[str, np.ndarray]:
    """PSNR, SSIM and MS-SSIM of each image against the true image, as ``{"psnr", "ssim", "ms_ssim"}``.

    Each value is a ``(B,)`` float64 array (see the functions for inf/NaN: PSNR is ``inf`` for
    identical images, MS-SSIM NaN for images below 176 px, with a warning).
    """
    p, t = as_image_pair(prediction, target)
    return {
        "psnr": psnr(p, t, data_range),
        "ssim": ssim(p, t, data_range),
        "ms_ssim": ms_ssim(p, t, data_range),
    }
