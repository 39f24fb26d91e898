"""PSNR and SSIM inside the regions of a segmentation (e.g. the tumour) and in the background.

The paper's Table S10 scores BraTS SR inside the tumour mask and outside it. Definitions here,
always against the TRUE high-resolution image (rule 1 (docs/science.md)):

* PSNR of a region: ``10 log10(data_range**2 / MSE)`` with the MSE taken over the region's pixels
  only (float64); ``+inf`` when the region is reproduced exactly.
* SSIM of a region: the full SSIM map of the WHOLE image is computed once (torchmetrics
  ``structural_similarity_index_measure(..., return_full_image=True)``, the same Gaussian 11 px /
  sigma 1.5 window, constants and float32 arithmetic as :func:`.metrics.ssim`), and its values are
  averaged over the region's pixels. The SSIM at a pixel describes the window around it, which near
  a region's edge also covers neighbouring pixels; SSIM of a small region (a few windows across)
  therefore mixes in its surroundings. Cropping the images to the region instead would change the
  statistics at every cut edge. With a mask covering the whole image the region SSIM equals
  :func:`.metrics.ssim` (torchmetrics averages the same map).

Regions of a mask (integer labels, 0 = background):

* ``"inside"``: every pixel with one of the analysed labels (all non-zero labels by default);
* ``"label_<v>"``: each label ``v`` on its own, only when there are several labels;
* ``"background"``: pixels with label 0 (the air around the anatomy included).

The analysed labels are the same for every image of a batch (the non-zero labels found in the
whole batch, or ``labels``), so every image yields the same rows. A region with no pixel in an image
(a slice without tumour) gives NaN scores and a ``reason``, never an exception.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from LatentSRLib.metrics.quality import SSIM_KERNEL_SIZE, as_image_pair, check_data_range

__all__ = ["RegionScore", "region_metrics", "scores_by_region", "ssim_map"]


@dataclass(frozen=True)
class RegionScore:
    """PSNR and SSIM of one region of one image.

    Attributes:
        image_id: the image's id (its batch index unless ids were given).
        region: ``"inside"``, ``"label_<v>"`` or ``"background"``.
        labels: the mask values the region covers (``(0,)`` for the background).
        n_pixels: pixels in the region.
        psnr: dB over the region's pixels (NaN when empty, ``+inf`` when exact).
        ssim: mean of the SSIM map over the region's pixels (NaN when empty).
        reason: why the scores are NaN, else ``None``.
    """

    image_id: Hashable
    region: str
    labels: tuple[int, ...]
    n_pixels: int
    psnr: float
    ssim: float
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["labels"] = list(self.labels)
        return out


def ssim_map(prediction, target, data_range: float = 1.0) -> np.ndarray:
    """Per-pixel SSIM map ``(B, H, W)`` float64 of each image (torchmetrics, as :func:`.metrics.ssim`).

    torchmetrics pads the images by reflection so the map has one value per pixel; its mean over
    all pixels is :func:`.metrics.ssim`. Images need at least 11x11 pixels.
    """
    p, t = as_image_pair(prediction, target)
    peak = check_data_range(data_range)
    _, full = structural_similarity_index_measure(
        p.float(),
        t.float(),
        data_range=peak,
        kernel_size=SSIM_KERNEL_SIZE,
        sigma=1.5,
        reduction="none",
        return_full_image=True,
    )
    return full[:, 0].detach().to("cpu", torch.float64).numpy()


def _mask_batch(mask, shape: tuple[int, int, int]) -> np.ndarray:
    """Integer label masks as int64 ``(B, H, W)`` for images of ``shape`` ``(B, H, W)``."""
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim == 2 and m.shape == shape[1:]:
        m = np.broadcast_to(m, shape)  # one mask for every image
    if m.shape != shape:
        raise ValueError(f"mask of shape {tuple(np.shape(mask))} does not fit images of shape {shape}")
    if m.dtype == np.bool_:
        return m.astype(np.int64)
    if not np.issubdtype(m.dtype, np.integer):
        # an interpolated (resampled) mask has fractional values: its regions would be ambiguous
        if not np.isfinite(m).all() or not np.array_equal(m, np.round(m)):
            raise ValueError("mask must hold integer labels (resample masks with nearest-neighbour interpolation)")
    return m.astype(np.int64)


def region_metrics(
    prediction,
    target,
    mask,
    *,
    data_range: float = 1.0,
    labels: Sequence[int] | None = None,
    image_ids: Sequence[Hashable] | None = None,
) -> list[RegionScore]:
    """PSNR and SSIM of each region of each image against the TRUE image (module docstring).

    Args:
        prediction: the method's output, ``(B, 1, H, W)`` / ``(B, H, W)`` / ``(H, W)`` in ``[0, data_range]``.
        target: the true high-resolution images, same shape.
        mask: integer (or boolean) labels, 0 = background: ``(H, W)`` for all images, or
            ``(B, H, W)`` / ``(B, 1, H, W)``, on the images' grid.
        data_range: intensity scale (PSNR peak and SSIM constants).
        labels: the non-zero labels to analyse (default: every non-zero label in ``mask``).
        image_ids: one id per image for the rows (default: the batch index).

    Returns:
        Rows image by image, each image in the order ``inside``, ``label_<v>`` (ascending, only with
        several labels), ``background``.
    """
    p, t = as_image_pair(prediction, target)
    peak = check_data_range(data_range)
    batch = p.shape[0]
    masks = _mask_batch(mask, (batch, *p.shape[-2:]))
    if image_ids is None:
        image_ids = list(range(batch))
    elif len(image_ids) != batch:
        raise ValueError(f"{len(image_ids)} image ids for {batch} images")
    if labels is None:
        chosen = sorted(int(v) for v in np.unique(masks) if v != 0)
    else:
        chosen = sorted({int(v) for v in labels})
        if 0 in chosen:
            raise ValueError("label 0 is the background; list only the labels of the regions to analyse")

    regions: list[tuple[str, tuple[int, ...]]] = [("inside", tuple(chosen))]
    if len(chosen) > 1:
        regions += [(f"label_{v}", (v,)) for v in chosen]
    regions.append(("background", (0,)))

    squared = (p - t)[:, 0].square().cpu().numpy()  # float64 squared errors, (B, H, W)
    ssim_values = ssim_map(p, t, peak)
    rows: list[RegionScore] = []
    for i in range(batch):
        for name, region_labels in regions:
            inside = np.isin(masks[i], region_labels)
            n = int(inside.sum())
            if n == 0:
                reason = (
                    "empty region: the mask has no non-zero label in any image" if not region_labels
                    else f"empty region: no pixel with label {', '.join(map(str, region_labels))} in this image"
                )
                rows.append(RegionScore(image_ids[i], name, region_labels, 0, np.nan, np.nan, reason))
                continue
            mse = float(squared[i][inside].mean())
            with np.errstate(divide="ignore"):
                region_psnr = float(10.0 * np.log10(peak**2 / mse)) if mse > 0 else np.inf
            rows.append(
                RegionScore(image_ids[i], name, region_labels, n, region_psnr, float(ssim_values[i][inside].mean()))
            )
    return rows


def scores_by_region(rows: Sequence[RegionScore], metric: str = "psnr") -> dict[str, dict[Hashable, float]]:
    """``{region: {image id: score}}`` from :func:`region_metrics` rows, ready for
    :func:`.statistics.compare_by_id` (two methods' rows of the same region, paired by image id).

    ``metric``: ``"psnr"`` or ``"ssim"``. Empty regions stay NaN: the statistics refuse them, or
    leave them out with a count when asked (``nonfinite="drop"``).
    """
    if metric not in ("psnr", "ssim"):
        raise ValueError(f"metric must be 'psnr' or 'ssim', got {metric!r}")
    table: dict[str, dict[Hashable, float]] = {}
    for row in rows:
        scores = table.setdefault(row.region, {})
        if row.image_id in scores:
            raise ValueError(f"image id {row.image_id!r} appears twice in region {row.region!r}")
        scores[row.image_id] = getattr(row, metric)
    return table
