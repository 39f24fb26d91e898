"""Bland-Altman agreement of a per-image quantity between a method and the TRUE image.

The paper (Fig. 7c, Table S9) compares each image's mean intensity of the SR output with that of
the HR image: per image, the mean ``(m + r) / 2`` and the difference ``m - r`` (method minus
reference, i.e. SR - HR); then

* ``bias`` = mean of the differences (a systematic intensity offset when far from 0);
* ``sd_difference`` = their sample SD (``ddof = 1``, Bland and Altman's estimate);
* 95% limits of agreement ``bias +- z * sd_difference`` with ``z = Phi^-1(0.975) = 1.95996`` (the
  paper's "1.96", to four figures; other coverages through ``coverage``).

Images are paired by id (rule 2 (docs/science.md)) with :func:`.statistics.pair_by_id`, which refuses two sets
of different images. Non-finite values are refused unless ``nonfinite="drop"`` (the count is kept).
Any per-image scalar works, not only the mean intensity (:func:`mean_intensities` computes that one).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from LatentSRLib.metrics.quality import as_image_batch
from LatentSRLib.metrics.plotting import new_figure, save_png
from LatentSRLib.metrics.statistics import NonFinite, _finite_mask, _handle_nonfinite, pair_by_id

__all__ = ["BlandAltman", "bland_altman", "mean_intensities", "save_bland_altman_figure"]


@dataclass(frozen=True)
class BlandAltman:
    """Agreement of a method with the reference over ``n`` paired images (differences are method - reference).

    ``ids``, ``means`` and ``differences`` are per image, in the same (sorted id) order; ``n_dropped``
    counts pairs left out as non-finite (``nonfinite="drop"``).
    """

    n: int
    bias: float
    sd_difference: float
    loa_low: float
    loa_high: float
    coverage: float
    z: float
    ids: list[Hashable] = field(repr=False)
    means: np.ndarray = field(repr=False)
    differences: np.ndarray = field(repr=False)
    n_dropped: int = 0
    method_label: str = "SR"
    reference_label: str = "HR"

    def to_dict(self, per_image: bool = False) -> dict[str, Any]:
        """Summary as a JSON-ready dict; ``per_image`` adds ids, means and differences as lists."""
        out: dict[str, Any] = {
            "n": self.n,
            "bias": self.bias,
            "sd_difference": self.sd_difference,
            "loa_low": self.loa_low,
            "loa_high": self.loa_high,
            "coverage": self.coverage,
            "z": self.z,
            "n_dropped": self.n_dropped,
            "method_label": self.method_label,
            "reference_label": self.reference_label,
        }
        if per_image:
            out.update(ids=list(self.ids), means=self.means.tolist(), differences=self.differences.tolist())
        return out


def mean_intensities(images: Mapping[Hashable, Any]) -> dict[Hashable, float]:
    """``{image id: mean pixel intensity}`` of single images (``(H, W)`` or a batch of one)."""
    out: dict[Hashable, float] = {}
    for image_id, image in images.items():
        batch = as_image_batch(image, f"image {image_id!r}")
        if batch.shape[0] != 1:
            raise ValueError(f"image {image_id!r}: one image per id expected, got a batch of {batch.shape[0]}")
        out[image_id] = float(batch.mean())
    return out


def bland_altman(
    method: Mapping[Hashable, float],
    reference: Mapping[Hashable, float],
    *,
    coverage: float = 0.95,
    nonfinite: NonFinite = "raise",
    method_label: str = "SR",
    reference_label: str = "HR",
) -> BlandAltman:
    """Bland-Altman statistics of ``method`` against ``reference``, paired by image id.

    Args:
        method: ``{image id: value}`` of the method (e.g. the SR image's mean intensity).
        reference: ``{image id: value}`` of the TRUE images, the same ids.
        coverage: share of differences the limits of agreement should cover (0.95).
        nonfinite: ``"raise"`` or ``"drop"`` pairs with a non-finite value.
        method_label, reference_label: names used in figures.

    Returns:
        :class:`BlandAltman`.

    Raises:
        ValueError: different id sets (from :func:`.statistics.pair_by_id`), fewer than 2 pairs,
            a non-finite value (unless dropped) or a coverage outside (0, 1).
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
    ids, m, r = pair_by_id(method, reference)
    keep = _finite_mask(m, r)
    dropped = _handle_nonfinite(keep, nonfinite, "pairs")
    ids = [i for i, k in zip(ids, keep, strict=True) if k]
    m, r = m[keep], r[keep]
    if m.size < 2:
        raise ValueError(f"Bland-Altman needs at least 2 pairs (for the SD of the differences), got {m.size}")
    differences = m - r
    bias = float(differences.mean())
    sd = float(differences.std(ddof=1))
    z = float(stats.norm.ppf(0.5 + coverage / 2))
    return BlandAltman(
        n=int(m.size),
        bias=bias,
        sd_difference=sd,
        loa_low=bias - z * sd,
        loa_high=bias + z * sd,
        coverage=float(coverage),
        z=z,
        ids=ids,
        means=(m + r) / 2,
        differences=differences,
        n_dropped=dropped,
        method_label=method_label,
        reference_label=reference_label,
    )


def save_bland_altman_figure(
    path: str | os.PathLike,
    results: BlandAltman | Mapping[str, BlandAltman] | Sequence[BlandAltman],
    *,
    quantity: str = "mean intensity",
    dpi: int = 100,
) -> Path:
    """Bland-Altman plot(s) written atomically as PNG: one panel per result, side by side.

    Each panel: per-image difference against per-image mean, the bias (solid line), the limits of
    agreement (dashed), n in the title. ``results`` may be one result, a sequence, or a mapping
    ``{panel title: result}`` (e.g. one per dataset or method).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if isinstance(results, BlandAltman):
        panels = [(f"{results.method_label} vs {results.reference_label}", results)]
    elif isinstance(results, Mapping):
        panels = [(str(title), result) for title, result in results.items()]
    else:
        panels = [(f"{r.method_label} vs {r.reference_label}", r) for r in results]
    if not panels:
        raise ValueError("no Bland-Altman results to plot")

    fig = new_figure(4.5 * len(panels), 4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, result) in zip(axes, panels, strict=True):
        ax.scatter(result.means, result.differences, s=14, alpha=0.6, color="#3366aa", linewidths=0)
        ax.axhline(result.bias, color="black", linestyle="-", label=f"bias {result.bias:+.4f}")
        pct = f"{100 * result.coverage:g}%"
        limits = f"{pct} LoA [{result.loa_low:+.4f}, {result.loa_high:+.4f}]"
        ax.axhline(result.loa_high, color="gray", linestyle="--", label=limits)
        ax.axhline(result.loa_low, color="gray", linestyle="--")
        ax.axhline(0.0, color="#bbbbbb", linewidth=0.8, zorder=0)
        ax.set_title(f"{title} (n = {result.n})")
        ax.set_xlabel(f"{quantity}: mean of {result.method_label} and {result.reference_label}")
        ax.set_ylabel(f"{quantity}: {result.method_label} - {result.reference_label}")
        ax.legend(fontsize=8, loc="best")
    return save_png(fig, path, dpi)
