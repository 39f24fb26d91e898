"""Hallucination and loss maps: where a super-resolved image departs from the truth beyond the VAE's own error.

The paper's definition (section 4.6), scored against the TRUE high-resolution image (rule 1 (docs/science.md)):

* ``D = SR - HR``, the signed error of the method;
* the noise floor of the method's own autoencoder, per image: ``tau = mean(|AE - HR|) + k * std(|AE - HR|)``
  with ``AE`` the encode-then-decode reconstruction of ``HR`` by the same VAE the method works in, and
  ``k = 2`` by default (the paper checks 1 and 3 as well). ``std`` is the population SD (``ddof = 0``,
  numpy's default): it describes the pixels of this one image, it does not estimate anything;
* hallucinated pixels: ``D > tau`` (brighter than the truth by more than the VAE alone explains);
  lost pixels: ``D < -tau``. Comparisons are strict, so an exact reconstruction (``D = 0``) has no
  hallucinated or lost pixel even when ``tau = 0`` (an AE that reproduces HR exactly).

Analysed region (``foreground``). The paper counts every pixel of the image; on brain MRI two thirds
of a slice are air, which dilutes the fractions and makes them depend on the field of view. By
default (``foreground="auto"``) only the anatomy is analysed: pixels with ``HR > background_level``
(:data:`BACKGROUND_LEVEL` = 0.02 of the [0, 1] range), with enclosed holes filled so that dark
structures inside the anatomy (ventricles on FLAIR, lungs on a radiograph) still count. Both the
noise floor and the fractions are computed over that region, so they describe the same pixels.
A hallucination placed in the air around the anatomy is therefore NOT counted in this mode; pass
``foreground=None`` for the paper's whole-image definition, or an explicit boolean mask.

Inputs: ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` images in ``[0, 1]``, numpy or torch, all three
of the same shape; values are not clipped. Results are numpy (float64 scalars, int8 label maps).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage

from LatentSRLib.metrics.quality import as_image_batch
from LatentSRLib.metrics.plotting import new_figure, save_png

__all__ = [
    "BACKGROUND_LEVEL",
    "HallucinationResult",
    "foreground_mask",
    "hallucination_map",
    "hallucination_maps",
    "noise_floor",
    "save_hallucination_figure",
]

#: Default intensity (images in [0, 1]) at or below which a pixel of the TRUE image counts as background.
BACKGROUND_LEVEL = 0.02

#: Values of the label map.
HALLUCINATED, LOST, NEITHER = 1, -1, 0

Foreground = Literal["auto"] | None | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class HallucinationResult:
    """One image's hallucination analysis.

    Attributes:
        tau: the noise floor ``noise_mean + k * noise_std`` (NaN when the analysed region is empty).
        noise_mean, noise_std: mean and population SD of ``|AE - HR|`` over the analysed region.
        k: the multiplier used.
        hallucinated_fraction: share of analysed pixels with ``SR - HR > tau``, in ``[0, 1]``.
        lost_fraction: share of analysed pixels with ``SR - HR < -tau``, in ``[0, 1]``.
        mean_abs_difference: mean ``|SR - HR|`` over the analysed region.
        n_pixels: number of analysed pixels (0: every other number is NaN).
        labels: ``(H, W)`` int8 map, +1 hallucinated, -1 lost, 0 otherwise (and outside the region).
        foreground: ``(H, W)`` bool, the analysed region.
    """

    tau: float
    noise_mean: float
    noise_std: float
    k: float
    hallucinated_fraction: float
    lost_fraction: float
    mean_abs_difference: float
    n_pixels: int
    labels: np.ndarray
    foreground: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """The scalar fields as a JSON-ready dict (the maps are left out)."""
        return {
            "tau": self.tau,
            "noise_mean": self.noise_mean,
            "noise_std": self.noise_std,
            "k": self.k,
            "hallucinated_fraction": self.hallucinated_fraction,
            "lost_fraction": self.lost_fraction,
            "mean_abs_difference": self.mean_abs_difference,
            "n_pixels": self.n_pixels,
        }


def _as_numpy(images, name: str) -> np.ndarray:
    """Any accepted image batch -> float64 numpy ``(B, H, W)``."""
    return as_image_batch(images, name)[:, 0].cpu().numpy()


def _check_k(k: float) -> float:
    value = float(k)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"k must be a finite number >= 0, got {k!r}")
    return value


def foreground_mask(hr, background_level: float = BACKGROUND_LEVEL) -> np.ndarray:
    """The anatomy of each TRUE image: ``HR > background_level``, enclosed holes filled.

    Args:
        hr: ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` in ``[0, 1]``.
        background_level: intensity at or below which a pixel is background.

    Returns:
        ``(B, H, W)`` bool.
    """
    images = _as_numpy(hr, "hr")
    level = float(background_level)
    if not np.isfinite(level):
        raise ValueError(f"background_level must be finite, got {background_level!r}")
    # fill holes image by image: a 3D fill would connect holes across the batch axis
    return np.stack([ndimage.binary_fill_holes(image > level) for image in images])


def _region_masks(foreground: Foreground, hr: np.ndarray, background_level: float) -> np.ndarray:
    """The analysed region of each image as ``(B, H, W)`` bool."""
    if isinstance(foreground, str):
        if foreground != "auto":
            raise ValueError(f"foreground must be 'auto', None or a mask, got {foreground!r}")
        return foreground_mask(hr, background_level)
    if foreground is None:
        return np.ones(hr.shape, dtype=bool)
    mask = foreground.detach().cpu().numpy() if isinstance(foreground, torch.Tensor) else np.asarray(foreground)
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim == 2 and mask.shape == hr.shape[1:]:
        mask = np.broadcast_to(mask, hr.shape)  # one mask shared by every image
    if mask.shape != hr.shape:
        raise ValueError(f"foreground mask of shape {tuple(mask.shape)} does not fit images of shape {hr.shape}")
    return mask != 0


def noise_floor(ae, hr, k: float = 2.0, region: np.ndarray | None = None) -> tuple[float, float, float]:
    """``(tau, mean, sd)`` of ``|AE - HR|`` for ONE image: ``tau = mean + k * sd`` (population SD).

    Args:
        ae: the autoencoder reconstruction of ``hr``, ``(H, W)`` (or a batch of one).
        hr: the true image, same shape.
        k: multiplier of the SD (>= 0).
        region: optional ``(H, W)`` bool, the pixels to use (all by default).

    Returns:
        Three floats; all NaN when ``region`` is empty.
    """
    a, t = _as_numpy(ae, "ae"), _as_numpy(hr, "hr")
    if a.shape != t.shape or a.shape[0] != 1:
        raise ValueError(f"noise_floor takes one image: ae {a.shape} and hr {t.shape} must both be (1, H, W)")
    k = _check_k(k)
    error = np.abs(a[0] - t[0])
    if region is not None:
        error = error[np.asarray(region, dtype=bool)]
    if error.size == 0:
        return np.nan, np.nan, np.nan
    mean, sd = float(error.mean()), float(error.std())
    return mean + k * sd, mean, sd


def _analyse(sr: np.ndarray, hr: np.ndarray, ae: np.ndarray, region: np.ndarray, k: float) -> HallucinationResult:
    """One image: ``(H, W)`` arrays and the ``(H, W)`` bool region."""
    n = int(region.sum())
    labels = np.zeros(sr.shape, dtype=np.int8)
    if n == 0:  # e.g. an all-background slice: nothing to analyse, no number to invent
        nan = float("nan")
        return HallucinationResult(nan, nan, nan, k, nan, nan, nan, 0, labels, region.copy())
    tau, mean, sd = noise_floor(ae, hr, k, region)
    difference = sr - hr
    hallucinated = region & (difference > tau)
    lost = region & (difference < -tau)
    labels[hallucinated] = HALLUCINATED
    labels[lost] = LOST
    return HallucinationResult(
        tau=tau,
        noise_mean=mean,
        noise_std=sd,
        k=k,
        hallucinated_fraction=float(hallucinated.sum()) / n,
        lost_fraction=float(lost.sum()) / n,
        mean_abs_difference=float(np.abs(difference[region]).mean()),
        n_pixels=n,
        labels=labels,
        foreground=region.copy(),
    )


def hallucination_maps(
    sr,
    hr,
    ae,
    *,
    k: float = 2.0,
    foreground: Foreground = "auto",
    background_level: float = BACKGROUND_LEVEL,
) -> list[HallucinationResult]:
    """Hallucination analysis of each image of a batch (see the module docstring for the definitions).

    Args:
        sr: the method's output, ``(B, 1, H, W)`` / ``(B, H, W)`` / ``(H, W)`` in ``[0, 1]``.
        hr: the TRUE high-resolution images, same shape.
        ae: the method's own VAE reconstruction of ``hr`` (encode then decode), same shape.
        k: noise-floor multiplier, ``tau = mean + k * sd`` of ``|AE - HR|``.
        foreground: ``"auto"`` (``HR > background_level``, holes filled), ``None`` (every pixel, the
            paper's definition) or a boolean mask, ``(H, W)`` for all images or one per image.
        background_level: threshold of the ``"auto"`` foreground.

    Returns:
        One :class:`HallucinationResult` per image, in batch order.
    """
    s, t, a = _as_numpy(sr, "sr"), _as_numpy(hr, "hr"), _as_numpy(ae, "ae")
    if not s.shape == t.shape == a.shape:
        raise ValueError(f"sr {s.shape}, hr {t.shape} and ae {a.shape} must have the same shape")
    k = _check_k(k)
    regions = _region_masks(foreground, t, background_level)
    return [_analyse(s[i], t[i], a[i], regions[i], k) for i in range(s.shape[0])]


def hallucination_map(
    sr,
    hr,
    ae,
    *,
    k: float = 2.0,
    foreground: Foreground = "auto",
    background_level: float = BACKGROUND_LEVEL,
) -> HallucinationResult:
    """:func:`hallucination_maps` for ONE image (``(H, W)`` or a batch of one)."""
    results = hallucination_maps(sr, hr, ae, k=k, foreground=foreground, background_level=background_level)
    if len(results) != 1:
        raise ValueError(f"hallucination_map takes one image, got {len(results)}; use hallucination_maps")
    return results[0]


def save_hallucination_figure(
    path: str | os.PathLike,
    sr,
    hr,
    ae,
    *,
    k: float = 2.0,
    foreground: Foreground = "auto",
    background_level: float = BACKGROUND_LEVEL,
    image_ids: list[Any] | None = None,
    max_images: int = 4,
    dpi: int = 100,
) -> Path:
    """Montage ``HR | SR | D = SR - HR | label map``, one row per image, written atomically as PNG.

    ``D`` uses a diverging colormap with limits ``+-max|D|`` of that image, so zero is always white;
    the label map shows hallucinated pixels red, lost pixels blue, the rest grey (outside the
    analysed region: dark grey). At most ``max_images`` images (the first ones) are drawn.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap

    s, t = _as_numpy(sr, "sr"), _as_numpy(hr, "hr")
    results = hallucination_maps(sr, hr, ae, k=k, foreground=foreground, background_level=background_level)
    count = min(int(max_images), len(results))
    if count < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images!r}")
    if image_ids is not None and len(image_ids) != len(results):
        raise ValueError(f"{len(image_ids)} image ids for {len(results)} images")

    # label map with a fourth value (-2) for pixels outside the analysed region
    label_cmap = ListedColormap(["#404040", "#2166ac", "#d9d9d9", "#b2182b"])
    label_norm = BoundaryNorm([-2.5, -1.5, -0.5, 0.5, 1.5], label_cmap.N)

    fig = new_figure(12, 3.1 * count)
    axes = fig.subplots(count, 4, squeeze=False)
    for row in range(count):
        result = results[row]
        name = f"{image_ids[row]}" if image_ids is not None else f"image {row}"
        difference = s[row] - t[row]
        limit = max(float(np.abs(difference).max()), 1e-12)  # symmetric, so zero error is the centre colour
        shown_labels = np.where(result.foreground, result.labels, -2)
        axes[row, 0].imshow(t[row], cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"{name}: HR")
        axes[row, 1].imshow(s[row], cmap="gray", vmin=0, vmax=1)
        axes[row, 1].set_title("SR")
        im = axes[row, 2].imshow(difference, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[row, 2].set_title(f"D = SR - HR (tau = {result.tau:.3g})")
        fig.colorbar(im, ax=axes[row, 2], shrink=0.8)
        axes[row, 3].imshow(shown_labels, cmap=label_cmap, norm=label_norm, interpolation="nearest")
        axes[row, 3].set_title(
            f"hallucinated {100 * result.hallucinated_fraction:.1f}% (red), "
            f"lost {100 * result.lost_fraction:.1f}% (blue)",
            fontsize=8,
        )
        for ax in axes[row]:
            ax.set_axis_off()
    fig.suptitle(f"Hallucination maps, noise floor mean + {k:g} SD of |AE - HR|")
    return save_png(fig, path, dpi)
