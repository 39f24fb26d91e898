"""Calibrated per-pixel uncertainty: intervals ``SR +- lam * heuristic`` that hold the truth.

The raw maps of ``latentsr sr`` (the std across K samples, the consistency residual ``|A(SR) - LR|``)
say where the model is unsure, but not how far the truth may lie from the SR. This module turns a
heuristic width into an interval with a guarantee, by the risk-controlling prediction sets of

    A. N. Angelopoulos, A. P. Kohli, S. Bates, M. I. Jordan, J. Malik, T. Alshaabi, S. Upadhyayula,
    Y. Romano. "Image-to-Image Regression with Distribution-Free Uncertainty Quantification and
    Applications in Imaging." ICML 2022 (the im2im-uq method),

which rest on the Hoeffding-Bentkus bound of Bates, Angelopoulos, Lei, Malik and Jordan,
"Distribution-free, risk-controlling prediction sets" (JACM 2021), or, by conformal risk control,

    A. N. Angelopoulos, S. Bates, A. Fisch, L. Lei, T. Schuster. "Conformal Risk Control." ICLR 2024
    (arXiv 2208.02814, 2022).

Written here from the papers (no maintained library implements either for per-pixel image losses).

The method, per pixel ``p`` of image ``i``:

* interval ``[SR - lam * h, SR + lam * h]`` with ``h`` = :func:`heuristic_width` (> 0 everywhere);
* the risk of image ``i`` at ``lam`` is the fraction of its foreground pixels whose true value lies
  outside (``|HR - SR| > lam * h``), a loss in [0, 1], non-increasing in ``lam``;
* on n calibration images (exchangeable with the images the model will meet), ``lam`` is the
  smallest value of a grid such that

  - ``crc`` (:data:`METHOD_CRC`, the default): ``(n * mean_risk + 1) / (n + 1) <= alpha``
    (:func:`crc_lambda`). Then the expected fraction of a new image's foreground pixels outside its
    interval, over calibration sets and the new image together, is at most ``alpha``, and (the loss
    being continuous enough) at least ``alpha - 2 / (n + 1)``: tight, which is what lets the
    coverage meet its nominal value;
  - ``rcps`` (:data:`METHOD_RCPS`): the Hoeffding-Bentkus upper confidence bound of the mean risk is
    <= ``alpha`` at it and at every larger grid value (:func:`calibrate_lambda`). Then, with
    probability at least ``1 - delta`` over the calibration set, the expected fraction outside is at
    most ``alpha``: a stronger statement, paid for with wider intervals (several points of excess
    coverage at a few hundred images).

Everything works in the intensity window's [0, 1] units (the engine's); widths convert to intensity
units by the window's width alone (no offset). :class:`Calibration` is what a model folder records
(``calibration.json``). numpy and scipy only.

Assessing a calibration on images it was not fitted on (the evaluation behind ``latentsr calibrate
--assess``): :func:`image_coverage` (the quantity the bound controls), :func:`reliability_curve`
(nominal against empirical coverage over a range of levels) and :func:`width_auroc` (does a width map
rank the pixels that a ground-truth analysis flags above the others).

Heuristic (:data:`HEURISTIC`): ``sqrt(std**2 + consistency**2 + (w * structure)**2) + floor``, with
``structure`` the SR's local edge strength (:func:`structure_map`), ``w`` its weight
(:data:`DEFAULT_STRUCTURE_WEIGHT`, recorded with the calibration) and ``floor`` =
:data:`DEFAULT_FLOOR` of the window, so one sample (std = 0) still gives a width that is not zero
where the SR agrees with the measurement (:func:`heuristic_width` says how it was chosen).
Calibrations made before the structure term record :data:`HEURISTIC_V1` and are still read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, optimize, special, stats

__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_FLOOR",
    "DEFAULT_STRUCTURE_WEIGHT",
    "FOREGROUND_LEVEL",
    "HEURISTIC",
    "HEURISTICS",
    "HEURISTIC_V1",
    "METHOD",
    "METHODS",
    "METHOD_CRC",
    "METHOD_RCPS",
    "RELIABILITY_LEVELS",
    "Calibration",
    "ReliabilityPoint",
    "calibrate_lambda",
    "coverage",
    "crc_lambda",
    "fit_lambda",
    "heuristic_width",
    "hoeffding_bentkus_p_value",
    "hoeffding_bentkus_ucb",
    "image_coverage",
    "lambda_grid",
    "mean_half_width",
    "minimum_images",
    "named_width",
    "normalised_errors",
    "reliability_curve",
    "risk_table",
    "structure_map",
    "width_auroc",
]

CALIBRATION_FILE = "calibration.json"
#: the methods recorded in ``calibration.json``: conformal risk control (expected risk <= alpha) and
#: risk-controlling prediction sets with the Hoeffding-Bentkus bound (the same, with confidence 1 - delta)
METHOD_CRC = "conformal-risk-control"
METHOD_RCPS = "rcps-hoeffding-bentkus"
#: the default method
METHOD = METHOD_CRC
#: the command line's short names of the methods
METHODS = {"crc": METHOD_CRC, "rcps": METHOD_RCPS}
#: the name of :func:`heuristic_width`'s formula, recorded with the calibration
HEURISTIC = "sqrt(std^2 + consistency^2 + (structure_weight * structure)^2) + floor"
#: the formula of calibrations made before the structure term (read, and applied as recorded)
HEURISTIC_V1 = "sqrt(std^2 + consistency^2) + floor"
HEURISTICS = (HEURISTIC, HEURISTIC_V1)
#: the width floor, as a fraction of the intensity window (keeps K = 1, std = 0, usable; measured:
#: :func:`heuristic_width`)
DEFAULT_FLOOR = 0.05
#: the structure term's weight (measured: :func:`heuristic_width`)
DEFAULT_STRUCTURE_WEIGHT = 0.25
#: foreground pixels are those of the true image above this level of the window (the background
#: rule of :mod:`LatentSRLib.data.slice_source`): the empty field of view is not counted as covered
FOREGROUND_LEVEL = 0.05
#: the nominal coverages ``1 - alpha`` of a reliability diagram (:func:`reliability_curve`)
RELIABILITY_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99)


def structure_map(sr: np.ndarray) -> np.ndarray:
    """The SR's local edge strength: the Sobel gradient magnitude of each 2D image, divided by 8 (the Sobel
    kernel's weight, so a ramp of slope s per pixel gives s), then the largest value in each 3 x 3
    neighbourhood.

    Why: a latent SR model's errors sit on edges and fine structure (a misplaced or softened edge is
    a large error over a pixel or two), where neither the sample spread of a one-step model nor the
    consistency residual after the data-consistency projection is large; the 3 x 3 maximum reaches
    the pixel beside an edge, where a displaced edge errs. Computed in the image plane only.

    Args:
        sr: ``(..., H, W)`` the SR in window units (any leading axes: slices, batch).

    Returns:
        ``(..., H, W)`` float64 >= 0, window units per pixel.
    """
    sr = np.asarray(sr, dtype=np.float64)
    if sr.ndim < 2:
        raise ValueError(f"the structure map needs images of at least 2 dimensions, got shape {sr.shape}")
    rows, columns = sr.ndim - 2, sr.ndim - 1

    def sobel(along: int, across: int) -> np.ndarray:
        # ndimage.sobel would also smooth across the leading (slice) axes: the two 1D passes keep it in-plane
        derivative = ndimage.correlate1d(sr, [-1.0, 0.0, 1.0], axis=along, mode="reflect")
        return ndimage.correlate1d(derivative, [1.0, 2.0, 1.0], axis=across, mode="reflect")

    magnitude = np.hypot(sobel(rows, columns), sobel(columns, rows)) / 8.0
    size = [1] * (sr.ndim - 2) + [3, 3]  # in-plane neighbourhood only
    return ndimage.maximum_filter(magnitude, size=size)


def heuristic_width(std: np.ndarray, consistency: np.ndarray, floor: float = DEFAULT_FLOOR,
                    structure: np.ndarray | None = None) -> np.ndarray:
    """The un-calibrated width of each pixel's interval: ``sqrt(std**2 + consistency**2 + structure**2)
    + floor`` (:data:`HEURISTIC`, with ``structure`` the weighted :func:`structure_map`; without it,
    :data:`HEURISTIC_V1`).

    The std across K samples says where sampling is unsure; the consistency residual says where the
    SR, degraded, disagrees with what was measured (it is non-zero even for K = 1); the structure term
    (:func:`structure_map`) says where the SR has edges, where latent SR errs. They are added in
    quadrature as independent spreads. The floor keeps every width positive.

    How the structure term and its weight were chosen: the three shipped models (K = 1, data
    consistency on), the AUROC of ``sqrt(consistency**2 + (w * structure)**2)`` at flagging the pixels
    the autoencoder noise-floor rule marks as hallucinated or lost, on their validation tiles (the
    calibration split) / held-out test tiles, for w = 0, 0.25, 0.5, 1: ``brain-sr4`` 0.556 / 0.661,
    0.691 / 0.819, 0.690 / 0.818, 0.690 / 0.817; ``cxr-sr4`` 0.901 / 0.887, 0.964 / 0.954, 0.956 /
    0.946, 0.948 / 0.939; ``brain-refine2`` 0.872 / 0.838, 0.804 / 0.864, 0.751 / 0.844, 0.727 /
    0.834. The validation tiles of two of the three models put the best weight at 0.25
    (:data:`DEFAULT_STRUCTURE_WEIGHT`; the third's prefer none, its test tiles 0.25). The mean
    half-width at the calibrated level moves little with it (validation, w = 0 / 0.25: 0.144 / 0.142,
    0.0118 / 0.0117, 0.093 / 0.093 of the window). Other edge measures ranked no better (the 5 x 5 local
    std of the SR, the gradient without the 3 x 3 maximum) and the distance between the SR and its LR
    input worse.

    How the floor was chosen (before the structure term; a small real example, so read it as a
    sanity check, not a benchmark): the earlier 128-grid ``brain-sr4`` model, 10 DDIM steps, on 60
    axial slices of BraTS-GLI-00001-000 (30 FLAIR + 30 T1 slices, 128 px), calibrated on one sequence
    and tested on the other, both ways. In the large-n limit, at equal held-out coverage (0.89-0.90)
    the mean foreground half-width was, in window units, K = 4 / K = 1: constant width 0.122 / 0.123;
    std and consistency with floor 0.01 0.139 / 0.151, 0.02 0.127 / 0.133, 0.05 0.120 / 0.121, 0.08
    0.119 / 0.119. A small floor lets a few noisy pixels dictate ``lam`` and widens everything; 5% of
    the window is the smallest that beat a constant width: :data:`DEFAULT_FLOOR`.

    Args:
        std: ``(...)`` std across the K samples, window units (>= 0; zeros when K = 1).
        consistency: ``(...)`` same shape, ``|A(SR) - LR|`` in window units (>= 0).
        floor: > 0, window units.
        structure: ``(...)`` same shape, :func:`structure_map` of the SR, or None (the V1 formula).

    Returns:
        ``(...)`` float64 widths > 0, window units.
    """
    if not floor > 0:
        raise ValueError(f"the floor must be > 0, got {floor}")
    std = np.asarray(std, dtype=np.float64)
    consistency = np.asarray(consistency, dtype=np.float64)
    spread = np.hypot(std, consistency)
    if structure is not None:
        structure = np.asarray(structure, dtype=np.float64)
        if structure.shape != spread.shape:
            raise ValueError(f"the structure map has shape {structure.shape}, the std {spread.shape}")
        spread = np.hypot(spread, structure)
    return spread + float(floor)


def named_width(heuristic: str, std: np.ndarray, consistency: np.ndarray, sr: np.ndarray | None = None,
                floor: float = DEFAULT_FLOOR, structure: np.ndarray | None = None,
                structure_weight: float = DEFAULT_STRUCTURE_WEIGHT) -> np.ndarray:
    """:func:`heuristic_width` by the formula's recorded name (:data:`HEURISTICS`).

    Args:
        heuristic: :data:`HEURISTIC` or :data:`HEURISTIC_V1`.
        std, consistency: ``(..., H, W)`` window units.
        sr: ``(..., H, W)`` the SR in window units; :data:`HEURISTIC` takes its structure
            (:func:`structure_map`, in the last two axes' plane); :data:`HEURISTIC_V1` does not use it.
        floor: > 0, window units.
        structure: the (unweighted) structure map when the caller has it already (e.g. computed slice
            by slice in the plane the model worked in, then assembled into a volume); then ``sr`` is
            not needed.
        structure_weight: >= 0, the structure term's weight (0: no structure term).

    Returns:
        ``(..., H, W)`` float64 > 0, window units.
    """
    if heuristic == HEURISTIC_V1:
        return heuristic_width(std, consistency, floor)
    if heuristic != HEURISTIC:
        raise ValueError(f"unknown heuristic {heuristic!r}")
    if not structure_weight >= 0:
        raise ValueError(f"the structure weight must be >= 0, got {structure_weight}")
    if structure_weight == 0:
        return heuristic_width(std, consistency, floor)
    if structure is None:
        if sr is None:
            raise ValueError(f"the heuristic {heuristic!r} needs the SR")
        structure = structure_map(sr)
    return heuristic_width(std, consistency, floor, float(structure_weight) * np.asarray(structure, np.float64))


def normalised_errors(sr: np.ndarray, hr: np.ndarray, width: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Each pixel's smallest covering ``lam``: ``|HR - SR| / width`` (the truth is in the interval at
    ``lam`` exactly when this is <= ``lam``).

    Args:
        sr, hr, width: ``(H, W)`` (or any equal shapes); ``width`` > 0.
        mask: bool of the same shape, the pixels that count (default: all).

    Returns:
        ``(P,)`` float64, sorted ascending, over the masked pixels (P may be 0).
    """
    sr, hr, width = (np.asarray(a, dtype=np.float64) for a in (sr, hr, width))
    if not (sr.shape == hr.shape == width.shape):
        raise ValueError(f"shapes differ: sr {sr.shape}, hr {hr.shape}, width {width.shape}")
    scores = np.abs(hr - sr) / width
    if mask is not None:
        scores = scores[np.asarray(mask, dtype=bool)]
    return np.sort(scores.ravel())


def lambda_grid(scores: Sequence[np.ndarray], size: int = 1000) -> np.ndarray:
    """A grid of candidate ``lam``: 0, then ``size`` geometrically spaced values up to just above the
    largest score, where every image's risk is 0.

    Args:
        scores: per image, ``(P_i,)`` from :func:`normalised_errors`.
        size: number of positive grid values.

    Returns:
        ``(size + 1,)`` float64, ascending, starting at 0.
    """
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in scores] or [np.zeros(0)])
    positive = values[values > 0]
    if positive.size == 0:
        return np.concatenate([[0.0], np.geomspace(1e-6, 1.0, size)])
    low = max(float(np.quantile(positive, 0.01)) / 10, float(positive.max()) * 1e-6)
    return np.concatenate([[0.0], np.geomspace(low, float(positive.max()) * (1 + 1e-9), size)])


def risk_table(scores: Sequence[np.ndarray], lambdas: np.ndarray) -> np.ndarray:
    """Per image and ``lam``, the fraction of pixels outside the interval (score > ``lam``).

    Args:
        scores: per image, ``(P_i,)`` sorted ascending (:func:`normalised_errors`); an image with no
            pixels has risk 0.
        lambdas: ``(L,)`` candidate values, ascending.

    Returns:
        ``(n, L)`` float64 in [0, 1], non-increasing along ``L``.
    """
    lambdas = np.asarray(lambdas, dtype=np.float64)
    table = np.zeros((len(scores), lambdas.size))
    for i, s in enumerate(scores):
        if len(s):  # count of scores <= lam, by bisection of the sorted scores
            table[i] = 1.0 - np.searchsorted(s, lambdas, side="right") / len(s)
    return table


def hoeffding_bentkus_p_value(mean_risk: float, n: int, alpha: float) -> float:
    """The Hoeffding-Bentkus p-value of the null "the expected risk exceeds ``alpha``", given the
    mean ``mean_risk`` of n independent losses in [0, 1]:
    ``min(exp(-n h(min(mean_risk, alpha), alpha)), e * P(Binomial(n, alpha) <= ceil(n mean_risk)))``,
    with ``h(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b))`` (the Bernoulli relative entropy)."""
    if not 0 < alpha < 1:
        return 1.0 if alpha <= 0 else 0.0
    a = min(float(mean_risk), alpha)
    hoeffding = math.exp(-n * (special.rel_entr(a, alpha) + special.rel_entr(1 - a, 1 - alpha)))
    # n * mean_risk is a sum of losses; rounding noise must not push an integer sum up by one
    count = math.ceil(round(n * float(mean_risk), 9))
    bentkus = math.e * stats.binom.cdf(count, n, alpha)
    return float(min(1.0, hoeffding, bentkus))


def hoeffding_bentkus_ucb(mean_risk: float, n: int, delta: float) -> float:
    """Upper confidence bound (level ``1 - delta``) of the expected risk, from the mean of n losses in
    [0, 1]: the largest ``alpha`` whose Hoeffding-Bentkus p-value is still >= ``delta``.

    Returns:
        A value in [``mean_risk``, 1] (1 when no alpha below 1 is rejected).
    """
    if n < 1:
        raise ValueError("the bound needs at least one image")
    mean_risk = float(np.clip(mean_risk, 0.0, 1.0))
    if mean_risk >= 1.0:
        return 1.0
    top = 1.0 - 1e-10
    if hoeffding_bentkus_p_value(mean_risk, n, top) >= delta:
        return 1.0
    # p is >= delta at alpha = mean_risk (both tails are >= 1 there) and falls as alpha grows
    return float(optimize.brentq(lambda a: hoeffding_bentkus_p_value(mean_risk, n, a) - delta,
                                 mean_risk, top, xtol=1e-12))


def minimum_images(alpha: float, delta: float) -> int:
    """The fewest calibration images for which even zero observed risk certifies ``alpha`` at
    confidence ``1 - delta`` (0.1 and 0.1: 22 images)."""
    n = 1
    while hoeffding_bentkus_ucb(0.0, n, delta) > alpha:
        n += 1
    return n


def calibrate_lambda(risks: np.ndarray, lambdas: np.ndarray, alpha: float, delta: float) -> float:
    """The smallest grid ``lam`` whose Hoeffding-Bentkus bound on the mean risk is <= ``alpha``, at it
    and at every larger grid value (scanned from the top down, as the guarantee requires).

    Args:
        risks: ``(n, L)`` from :func:`risk_table`.
        lambdas: ``(L,)`` ascending.
        alpha: the risk level, in (0, 1).
        delta: 1 - the confidence, in (0, 1).

    Raises:
        ValueError: not even the largest ``lam`` is certified (too few images for ``alpha`` and
            ``delta``: see :func:`minimum_images`).
    """
    risks = np.asarray(risks, dtype=np.float64)
    lambdas = np.asarray(lambdas, dtype=np.float64)
    if not (0 < alpha < 1 and 0 < delta < 1):
        raise ValueError(f"alpha and delta must lie in (0, 1), got {alpha} and {delta}")
    if risks.ndim != 2 or risks.shape[1] != lambdas.size or risks.shape[0] < 1:
        raise ValueError(f"risks {risks.shape} do not match {lambdas.size} candidate values")
    n = risks.shape[0]
    means = risks.mean(axis=0)
    bounds: dict[float, float] = {}  # many grid values share a mean risk: bound each mean once
    chosen = None
    for index in range(lambdas.size - 1, -1, -1):
        mean = float(means[index])
        if mean not in bounds:
            bounds[mean] = hoeffding_bentkus_ucb(mean, n, delta)
        if bounds[mean] > alpha:
            break
        chosen = index
    if chosen is None:
        raise ValueError(f"{n} images cannot certify a risk of {alpha} at confidence {1 - delta} (at least "
                         f"{minimum_images(alpha, delta)} are needed, with almost no pixel outside at the largest lam)")
    return float(lambdas[chosen])


def crc_lambda(risks: np.ndarray, lambdas: np.ndarray, alpha: float) -> float:
    """Conformal risk control: the smallest grid ``lam`` with ``(n * mean_risk(lam) + 1) / (n + 1) <= alpha``,
    at it and at every larger grid value (the losses are in [0, 1], so 1 bounds a new image's loss).

    Args:
        risks: ``(n, L)`` from :func:`risk_table`.
        lambdas: ``(L,)`` ascending.
        alpha: the risk level, in (0, 1).

    Raises:
        ValueError: not even the largest ``lam`` meets it (fewer than ``1 / alpha - 1`` images).
    """
    risks = np.asarray(risks, dtype=np.float64)
    lambdas = np.asarray(lambdas, dtype=np.float64)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if risks.ndim != 2 or risks.shape[1] != lambdas.size or risks.shape[0] < 1:
        raise ValueError(f"risks {risks.shape} do not match {lambdas.size} candidate values")
    n = risks.shape[0]
    adjusted = (n * risks.mean(axis=0) + 1.0) / (n + 1)
    # scanned from the top down: the first failure ends the run (the mean risk may be flat, never rising)
    failing = np.flatnonzero(adjusted > alpha + 1e-12)
    first = 0 if failing.size == 0 else int(failing[-1]) + 1
    if first >= lambdas.size:
        raise ValueError(f"{n} images cannot control a risk of {alpha} by conformal risk control (at least "
                         f"{math.ceil(1 / alpha - 1)} are needed, with almost no pixel outside at the largest lam)")
    return float(lambdas[first])


def fit_lambda(risks: np.ndarray, lambdas: np.ndarray, alpha: float, delta: float | None = None,
               method: str = METHOD) -> float:
    """``lam`` by ``method`` (:data:`METHOD_CRC`: :func:`crc_lambda`, ``delta`` unused;
    :data:`METHOD_RCPS`: :func:`calibrate_lambda` at confidence ``1 - delta``)."""
    if method == METHOD_CRC:
        return crc_lambda(risks, lambdas, alpha)
    if method == METHOD_RCPS:
        if delta is None:
            raise ValueError("risk-controlling prediction sets need delta")
        return calibrate_lambda(risks, lambdas, alpha, delta)
    raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS.values())}")


def coverage(sr: np.ndarray, hr: np.ndarray, half_width: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of (masked) pixels whose true value lies in ``[SR - half_width, SR + half_width]``.

    Args:
        sr, hr, half_width: equal shapes, the same units; ``half_width`` >= 0.
        mask: bool, the pixels that count (default all).

    Returns:
        In [0, 1]; NaN when no pixel counts.
    """
    sr, hr, half_width = (np.asarray(a, dtype=np.float64) for a in (sr, hr, half_width))
    inside = np.abs(hr - sr) <= half_width
    if mask is not None:
        inside = inside[np.asarray(mask, dtype=bool)]
    return float(inside.mean()) if inside.size else math.nan


def mean_half_width(half_width: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean of ``half_width`` over the (masked) pixels, in its units; NaN when no pixel counts."""
    values = np.asarray(half_width, dtype=np.float64)
    if mask is not None:
        values = values[np.asarray(mask, dtype=bool)]
    return float(values.mean()) if values.size else math.nan


def image_coverage(scores: Sequence[np.ndarray], lam: float) -> float:
    """Mean over images of the fraction of each image's pixels inside the interval at ``lam``: one
    minus the mean risk, the quantity the calibration's guarantee is about (each image weighs the
    same, whatever its number of foreground pixels).

    Args:
        scores: per image, ``(P_i,)`` sorted ascending (:func:`normalised_errors`); images with no
            pixel are left out (they have no coverage to speak of).
        lam: the multiplier (>= 0; NaN gives NaN).

    Returns:
        In [0, 1]; NaN when no image has a pixel or ``lam`` is NaN.
    """
    kept = [s for s in scores if len(s)]
    if not kept or not math.isfinite(lam):
        return math.nan
    return float(1.0 - risk_table(kept, np.array([float(lam)]))[:, 0].mean())


@dataclass(frozen=True)
class ReliabilityPoint:
    """One point of a reliability diagram.

    Attributes:
        nominal: the promised coverage ``1 - alpha``.
        lam: the ``lam`` of the calibration's method (:func:`fit_lambda`) fitted on the calibration
            images; NaN when they are too few to control ``alpha`` (see :func:`minimum_images`).
        coverage: :func:`image_coverage` of the held-out images at ``lam`` (NaN with ``lam``).
        lam_point: the smallest grid ``lam`` at which the calibration images' mean risk is <= ``alpha``
            (the large-n limit, no finite-sample margin): it shows whether the held-out images behave
            like the calibration images, apart from the bound's slack.
        coverage_point: :func:`image_coverage` of the held-out images at ``lam_point``.
    """

    nominal: float
    lam: float
    coverage: float
    lam_point: float
    coverage_point: float


def reliability_curve(calibration_scores: Sequence[np.ndarray], test_scores: Sequence[np.ndarray],
                      levels: Sequence[float] = RELIABILITY_LEVELS, delta: float | None = 0.1,
                      grid_size: int = 1000, method: str = METHOD_RCPS) -> list[ReliabilityPoint]:
    """Nominal against empirical coverage: for each level ``1 - alpha``, ``lam`` is fitted on the
    calibration images' scores (as :func:`fit_lambda` fits it by ``method``, on the
    :func:`lambda_grid` of those scores) and the coverage is measured on the test images' scores.

    Args:
        calibration_scores: per calibration image, ``(P_i,)`` sorted (:func:`normalised_errors`).
        test_scores: per held-out image, likewise (images the calibration never saw).
        levels: nominal coverages, each in (0, 1).
        delta: 1 - the confidence of the bound, in (0, 1) (``rcps`` only).
        grid_size: positive values in the ``lam`` grid.
        method: :data:`METHOD_CRC` or :data:`METHOD_RCPS`.

    Returns:
        One :class:`ReliabilityPoint` per level, in the order given.
    """
    grid = lambda_grid(calibration_scores, grid_size)
    risks = risk_table(calibration_scores, grid)
    means = risks.mean(axis=0) if len(calibration_scores) else np.full(grid.size, np.nan)
    points = []
    for level in levels:
        alpha = round(1.0 - float(level), 12)  # 1 - 0.9 is 0.09999999999999998: keep the alpha that was meant
        if not 0 < alpha < 1:
            raise ValueError(f"a nominal coverage must lie in (0, 1), got {level}")
        try:
            lam = fit_lambda(risks, grid, alpha, delta, method)
        except ValueError:  # too few calibration images for this level: no controlled interval
            lam = math.nan
        reached = np.flatnonzero(means <= alpha)  # mean risk falls with lam: the first index is the smallest
        lam_point = float(grid[reached[0]]) if reached.size else math.nan
        points.append(ReliabilityPoint(float(level), lam, image_coverage(test_scores, lam), lam_point,
                                       image_coverage(test_scores, lam_point)))
    return points


def width_auroc(score: np.ndarray, flagged: np.ndarray, mask: np.ndarray | None = None) -> float:
    """AUROC of a per-pixel score at flagging pixels: the probability that a flagged pixel scores
    higher than an unflagged one, ties counting one half (0.5: no better than chance; 1: every
    flagged pixel above every other; below 0.5: the score points the wrong way).

    Computed as the Mann-Whitney U statistic of the flagged scores against the others divided by the
    number of pairs (``scipy.stats.mannwhitneyu``; its mid-rank tie handling gives the half).

    Args:
        score: ``(...)`` the per-pixel score (e.g. an interval half-width, the std across samples).
        flagged: bool of the same shape, the positive pixels (e.g. hallucinated or lost).
        mask: bool of the same shape, the pixels that count (default all).

    Returns:
        In [0, 1]; NaN when the counted pixels are all flagged or all unflagged.
    """
    score = np.asarray(score, dtype=np.float64)
    flagged = np.asarray(flagged, dtype=bool)
    if score.shape != flagged.shape or (mask is not None and np.shape(mask) != score.shape):
        raise ValueError(f"shapes differ: score {score.shape}, flagged {flagged.shape}"
                         + ("" if mask is None else f", mask {np.shape(mask)}"))
    if mask is not None:
        keep = np.asarray(mask, dtype=bool)
        score, flagged = score[keep], flagged[keep]
    positives, negatives = score[flagged], score[~flagged]
    if positives.size == 0 or negatives.size == 0:
        return math.nan
    u = stats.mannwhitneyu(positives, negatives, alternative="two-sided", method="asymptotic").statistic
    return float(u) / (positives.size * negatives.size)


@dataclass(frozen=True)
class Calibration:
    """A model's calibration (``calibration.json`` in the model folder).

    Attributes:
        lam: the calibrated multiplier: the half-width is ``lam * heuristic_width(...)``.
        alpha: the risk level (the expected fraction of foreground pixels outside, at most).
        delta: 1 - the confidence of that statement over calibration sets (``rcps``); None for
            conformal risk control, whose statement is in expectation over calibration sets.
        samples: K, the samples per image the std was measured with (use the same K at inference).
        steps: the sampling steps used (None: the model's default).
        split, images, dataset: the calibration split, its number of images and its dataset folder name.
        seed: the sampling seed.
        floor: the heuristic's floor, window units.
        structure_weight: the weight of the heuristic's structure term (:data:`HEURISTIC` only).
        foreground_level: pixels of the truth above it count (window units).
        heuristic, method: names of the formula (:data:`HEURISTICS`) and the method (:data:`METHODS`).
        coverage, mean_half_width: on the calibration images (foreground pixels, window units).
        extra: anything else worth recording (e.g. the sampler).
    """

    lam: float
    alpha: float
    delta: float | None
    samples: int
    split: str
    images: int
    dataset: str = ""
    steps: int | None = None
    seed: int = 0
    floor: float = DEFAULT_FLOOR
    structure_weight: float = DEFAULT_STRUCTURE_WEIGHT
    foreground_level: float = FOREGROUND_LEVEL
    heuristic: str = HEURISTIC
    method: str = METHOD
    coverage: float | None = None
    mean_half_width: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nominal(self) -> float:
        """The coverage the calibration promises: ``1 - alpha``."""
        return 1.0 - self.alpha

    @property
    def guarantee(self) -> str:
        """What the calibration promises, in words (for reports and the Slicer module)."""
        if self.method == METHOD_RCPS:
            return (f"expected coverage >= {self.nominal:g} with confidence {1 - float(self.delta or 0):g} over "
                    f"calibration sets (risk-controlling prediction sets)")
        return f"expected coverage >= {self.nominal:g} (conformal risk control)"

    @property
    def uses_structure(self) -> bool:
        """Whether the width needs the SR's structure map (:data:`HEURISTIC` with a weight above 0)."""
        return self.heuristic == HEURISTIC and self.structure_weight > 0

    def width(self, std: np.ndarray, consistency: np.ndarray, sr: np.ndarray | None = None,
              structure: np.ndarray | None = None) -> np.ndarray:
        """The recorded heuristic's un-calibrated width, float64 window units (:func:`named_width`).

        Args:
            std, consistency: ``(..., H, W)`` window units.
            sr: ``(..., H, W)`` the SR in window units, for :data:`HEURISTIC`'s structure term
                (computed in the last two axes' plane), unless ``structure`` is given.
            structure: that term, computed already.
        """
        return named_width(self.heuristic, std, consistency, sr, self.floor, structure, self.structure_weight)

    def half_width(self, std: np.ndarray, consistency: np.ndarray, sr: np.ndarray | None = None,
                   structure: np.ndarray | None = None) -> np.ndarray:
        """``lam * width(...)``: ``(..., H, W)`` window units, float32."""
        return (self.lam * self.width(std, consistency, sr, structure)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps({"format": "latentsr.calibration", **asdict(self)}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        known = {f for f in cls.__dataclass_fields__}
        # files written before the method and heuristic were recorded used the only ones there were then
        values = {"heuristic": HEURISTIC_V1, "method": METHOD_RCPS, "structure_weight": 0.0}
        values.update({k: v for k, v in data.items() if k in known})
        return cls(**values)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/calibration.json`` (atomically: a reader never sees half a file)."""
        from LatentSRLib.io.atomic import atomic_path

        path = Path(folder) / CALIBRATION_FILE
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Calibration | None:
        """The calibration recorded in ``folder``, or None when it has none.

        Raises:
            InputError: a damaged ``calibration.json`` (named).
        """
        from LatentSRLib.errors import InputError

        path = Path(folder) / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            calibration = cls.from_dict(data)
            if not (math.isfinite(calibration.lam) and calibration.lam >= 0 and calibration.floor > 0):
                raise ValueError(f"lam {calibration.lam}, floor {calibration.floor}")
            if calibration.heuristic not in HEURISTICS:
                raise ValueError(f"unknown heuristic {calibration.heuristic!r}; this version knows "
                                 f"{' and '.join(repr(h) for h in HEURISTICS)}")
            if not (math.isfinite(calibration.structure_weight) and calibration.structure_weight >= 0):
                raise ValueError(f"structure weight {calibration.structure_weight}")
            if calibration.method not in METHODS.values():
                raise ValueError(f"unknown method {calibration.method!r}")
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise InputError(f"damaged calibration ({exc})", path) from None
        return calibration
