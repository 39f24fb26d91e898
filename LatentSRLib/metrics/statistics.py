"""Paired statistics for comparing two methods image by image (rules 2 and 7 (docs/science.md)).

* Pairing is by image id, never by position: :func:`pair_by_id` refuses two result sets whose ids
  differ and otherwise lines them up.
* :func:`paired_comparison` reports, for per-image scores ``x`` (method A) and ``y`` (method B) of
  the same images: n, the means, the mean difference ``x - y`` with a seeded paired bootstrap CI
  (percentile method; resampling whole pairs, optionally within strata such as the dataset when
  datasets are pooled), the two-sided Wilcoxon signed-rank test (scipy), and two effect sizes,
  each labelled: the paired ``d_z`` (mean difference / SD of the differences) and Cohen's d with
  the pooled SD of the two methods. They answer different questions and differ a lot when the
  methods are correlated across images, which is the usual case.
* :func:`holm_correction` for families of tests, :func:`summarise` for one method's scores and
  :func:`aggregate_by` for patient-level analysis (average slices per patient, then pair patients).

Non-finite scores (``inf`` PSNR of an exact reconstruction, NaN MS-SSIM of a small image) are
refused by default with a message that counts them; ``nonfinite="drop"`` leaves them out and the
result states how many were dropped. Nothing is ever imputed or resampled into existence: ``n``
is always the number of real (pairs of) images used.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

__all__ = [
    "EFFECT_SIZE_LABELS",
    "PairedComparison",
    "aggregate_by",
    "cohens_h",
    "compare_by_id",
    "holm_correction",
    "pair_by_id",
    "paired_comparison",
    "summarise",
]

NonFinite = Literal["raise", "drop"]

#: How the two effect sizes are labelled in tables and figures.
EFFECT_SIZE_LABELS = {
    "d_z": "paired d_z (mean difference / SD of differences)",
    "cohens_d_pooled": "Cohen's d (pooled SD)",
    "cohens_h": "Cohen's h (2 asin sqrt p1 - 2 asin sqrt p2, of the mean rates)",
}

# bound the memory of one block of bootstrap resamples: 2e6 entries = 16 MB per array
_MAX_BLOCK_ELEMENTS = 2_000_000


def _sort_key(ids: list[Hashable]) -> list[Hashable]:
    try:
        return sorted(ids)
    except TypeError:  # mixed id types: fall back to a stable textual order
        return sorted(ids, key=lambda i: (type(i).__name__, repr(i)))


def _first(items: list[Hashable], k: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:k])
    return shown + (f", ... ({len(items)} in all)" if len(items) > k else "")


def pair_by_id(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float]
) -> tuple[list[Hashable], np.ndarray, np.ndarray]:
    """Line up two methods' per-image scores by image id.

    Args:
        a, b: ``{image id: score}`` of method A and method B.

    Returns:
        ``(ids, x, y)``: the ids in sorted order, ``x[i] = a[ids[i]]`` and ``y[i] = b[ids[i]]``
        (float64 arrays).

    Raises:
        ValueError: when the id sets differ (names the first few ids missing on each side); two
            result sets of different images must never be compared (rule 2).
    """
    keys_a, keys_b = set(a), set(b)
    if keys_a != keys_b:
        only_a = _sort_key(list(keys_a - keys_b))
        only_b = _sort_key(list(keys_b - keys_a))
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} ids only in the first set: {_first(only_a)}")
        if only_b:
            parts.append(f"{len(only_b)} ids only in the second set: {_first(only_b)}")
        raise ValueError(
            f"cannot pair results of different images ({len(keys_a)} vs {len(keys_b)} ids): " + "; ".join(parts)
        )
    if not keys_a:
        raise ValueError("no results to pair: both sets are empty")
    ids = _sort_key(list(keys_a))
    x = np.array([float(a[i]) for i in ids], dtype=np.float64)
    y = np.array([float(b[i]) for i in ids], dtype=np.float64)
    return ids, x, y


@dataclass(frozen=True)
class PairedComparison:
    """Method A (``x``) against method B (``y``) on the same ``n`` images; differences are ``x - y``.

    ``ci_low``/``ci_high``: paired bootstrap percentile CI of ``mean_difference``;
    ``d_z_ci_low``/``d_z_ci_high`` and ``cohens_d_pooled_ci_low``/``_high``: the same resamples'
    CIs of the effect sizes. ``p_value``: two-sided Wilcoxon signed-rank (1.0 when every difference
    is zero). ``n_zero_differences``: pairs with ``x == y`` (scipy's default ``"wilcox"`` zero
    method leaves them out of the ranking). ``n_dropped``: non-finite pairs left out
    (``nonfinite="drop"``). ``strata``: ``{label: n}`` when the bootstrap was stratified.
    """

    n: int
    mean_x: float
    mean_y: float
    mean_difference: float
    sd_difference: float
    ci_low: float
    ci_high: float
    confidence: float
    n_resamples: int
    seed: int | None
    wilcoxon_statistic: float
    p_value: float
    d_z: float
    cohens_d_pooled: float
    d_z_ci_low: float
    d_z_ci_high: float
    cohens_d_pooled_ci_low: float
    cohens_d_pooled_ci_high: float
    n_zero_differences: int
    n_dropped: int = 0
    strata: dict[str, int] | None = None
    labels: dict[str, str] = field(default_factory=lambda: dict(EFFECT_SIZE_LABELS))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (floats, ints, strings; NaN/inf stay floats)."""
        return asdict(self)


def _finite_mask(*arrays: np.ndarray) -> np.ndarray:
    mask = np.ones(arrays[0].shape, dtype=bool)
    for array in arrays:
        mask &= np.isfinite(array)
    return mask


def _handle_nonfinite(mask: np.ndarray, nonfinite: NonFinite, what: str) -> int:
    if nonfinite not in ("raise", "drop"):
        raise ValueError(f"nonfinite must be 'raise' or 'drop', got {nonfinite!r}")
    bad = int((~mask).sum())
    if bad and nonfinite == "raise":
        raise ValueError(
            f"{bad} of {mask.size} {what} are not finite (inf PSNR = an exact reconstruction, NaN = a metric "
            f"undefined for that image, e.g. MS-SSIM below 176 px); pass nonfinite='drop' to leave them out "
            f"(the count is reported) or fix the input"
        )
    return bad


def _check_confidence(confidence: float, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")


def _resample_blocks(groups: list[np.ndarray], n_resamples: int, rng: np.random.Generator):
    """Yield ``(k, n)`` blocks of bootstrap indices, ``n_resamples`` rows in all.

    Each row draws, with replacement, as many indices from every group as the group holds, so the
    group sizes are the same in every resample (one group = the ordinary paired bootstrap).
    """
    n = sum(len(g) for g in groups)
    block = max(1, _MAX_BLOCK_ELEMENTS // max(n, 1))
    done = 0
    while done < n_resamples:
        k = min(block, n_resamples - done)
        yield np.concatenate([g[rng.integers(0, len(g), size=(k, len(g)))] for g in groups], axis=1)
        done += k


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    # an effect size of a resample without spread is +-inf: interpolating next to it gives inf - inf,
    # so such distributions take the plain order statistic instead
    method = "linear" if np.isfinite(values).all() else "inverted_cdf"
    low, high = np.quantile(values, [alpha, 1 - alpha], method=method)
    return float(low), float(high)


def _strata_groups(strata: Sequence[Hashable] | None, n: int) -> tuple[list[np.ndarray], dict[str, int] | None]:
    if strata is None:
        return [np.arange(n)], None
    labels = list(strata)
    if len(labels) != n:
        raise ValueError(f"strata has {len(labels)} labels for {n} pairs")
    order = _sort_key(list(set(labels)))
    groups = [np.array([i for i, s in enumerate(labels) if s == label]) for label in order]
    return groups, {str(label): len(g) for label, g in zip(order, groups, strict=True)}


def _pooled_sd(sd_x: np.ndarray | float, sd_y: np.ndarray | float) -> np.ndarray | float:
    # equal group sizes (paired data): pooled variance = mean of the two variances
    return np.sqrt((np.square(sd_x) + np.square(sd_y)) / 2)


def _ratio(numerator: float, denominator: float) -> float:
    """Effect size ``numerator / denominator``: NaN for 0/0, +-inf for a constant non-zero shift."""
    if denominator > 0:
        return numerator / denominator
    if numerator == 0:
        return math.nan
    return math.copysign(math.inf, numerator)


def paired_comparison(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int | None = 0,
    strata: Sequence[Hashable] | None = None,
    nonfinite: NonFinite = "raise",
    zero_method: Literal["wilcox", "pratt", "zsplit"] = "wilcox",
) -> PairedComparison:
    """Compare method A (``x``) with method B (``y``) on the same images, ``x[i]`` paired with ``y[i]``.

    Pair by id first (:func:`pair_by_id` or :func:`compare_by_id`): this function trusts the order.

    Args:
        x, y: per-image scores, same length n >= 2.
        n_resamples: bootstrap resamples (the paper: 10,000).
        confidence: CI level (0.95).
        seed: seed of the bootstrap's ``numpy.random.Generator``; the same seed gives the same CI.
        strata: one label per pair (e.g. the dataset when datasets are pooled); resampling then
            draws within each stratum, keeping the strata sizes.
        nonfinite: ``"raise"`` (default) or ``"drop"`` pairs where either score is inf/NaN.
        zero_method: scipy's handling of zero differences in the Wilcoxon test.

    Returns:
        :class:`PairedComparison`. All differences zero: ``p_value = 1``, ``d_z`` and pooled d NaN
        (when both methods also have zero spread), CI ``[0, 0]``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    _check_confidence(confidence, n_resamples)
    labels = None if strata is None else list(strata)
    if labels is not None and len(labels) != x.size:
        raise ValueError(f"strata has {len(labels)} labels for {x.size} pairs")
    mask = _finite_mask(x, y)
    n_dropped = _handle_nonfinite(mask, nonfinite, "pairs")
    x, y = x[mask], y[mask]
    if labels is not None:
        labels = [s for s, keep in zip(labels, mask, strict=True) if keep]
    n = x.size
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 pairs, got {n}")

    d = x - y
    mean_d = float(d.mean())
    sd_d = float(d.std(ddof=1))
    sd_x, sd_y = float(x.std(ddof=1)), float(y.std(ddof=1))
    n_zero = int((d == 0).sum())

    if n_zero == n:
        statistic, p_value = 0.0, 1.0  # scipy cannot rank an empty set of differences: no evidence at all
    else:
        test = stats.wilcoxon(x, y, zero_method=zero_method, alternative="two-sided")
        statistic, p_value = float(test.statistic), float(test.pvalue)

    groups, strata_sizes = _strata_groups(labels, n)
    rng = np.random.default_rng(seed)
    means, dzs, dps = [], [], []
    for idx in _resample_blocks(groups, int(n_resamples), rng):
        xs, ys = x[idx], y[idx]
        ds = xs - ys
        m = ds.mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            dzs.append(m / ds.std(axis=1, ddof=1))
            dps.append((xs.mean(axis=1) - ys.mean(axis=1)) / _pooled_sd(xs.std(axis=1, ddof=1), ys.std(axis=1, ddof=1)))
        means.append(m)
    ci_low, ci_high = _percentile_ci(np.concatenate(means), confidence)
    # a resample of identical differences has d_z = +-inf or NaN; quantiles then follow np.quantile
    dz_low, dz_high = _percentile_ci(np.concatenate(dzs), confidence)
    dp_low, dp_high = _percentile_ci(np.concatenate(dps), confidence)

    return PairedComparison(
        n=n,
        mean_x=float(x.mean()),
        mean_y=float(y.mean()),
        mean_difference=mean_d,
        sd_difference=sd_d,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=float(confidence),
        n_resamples=int(n_resamples),
        seed=seed,
        wilcoxon_statistic=statistic,
        p_value=p_value,
        d_z=_ratio(mean_d, sd_d),
        cohens_d_pooled=_ratio(float(x.mean() - y.mean()), float(_pooled_sd(sd_x, sd_y))),
        d_z_ci_low=dz_low,
        d_z_ci_high=dz_high,
        cohens_d_pooled_ci_low=dp_low,
        cohens_d_pooled_ci_high=dp_high,
        n_zero_differences=n_zero,
        n_dropped=n_dropped,
        strata=strata_sizes,
    )


def compare_by_id(
    a: Mapping[Hashable, float],
    b: Mapping[Hashable, float],
    *,
    strata: Mapping[Hashable, Hashable] | None = None,
    **kwargs: Any,
) -> PairedComparison:
    """:func:`pair_by_id` then :func:`paired_comparison` (``strata``: ``{image id: stratum label}``)."""
    ids, x, y = pair_by_id(a, b)
    labels = None
    if strata is not None:
        missing = [i for i in ids if i not in strata]
        if missing:
            raise ValueError(f"{len(missing)} image ids have no stratum label: {_first(missing)}")
        labels = [strata[i] for i in ids]
    return paired_comparison(x, y, strata=labels, **kwargs)


def holm_correction(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order (family-wise error control).

    Sorted ascending, the i-th smallest p (1-based) is multiplied by ``m - i + 1``, a running
    maximum keeps the adjusted values monotone, and values are capped at 1. NaN entries stay NaN
    and do not count towards ``m``. Written here because scipy has no Holm correction and
    statsmodels would be a heavy dependency for eight lines.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def cohens_h(p1: float, p2: float) -> float:
    """Cohen's h, the effect size of a difference between two proportions: ``2 asin sqrt(p1) - 2 asin sqrt(p2)``.

    The arcsine makes equal differences of h equally detectable whatever the base rate (0.01 vs
    0.02 is a larger effect than 0.50 vs 0.51); |h| of 0.2 / 0.5 / 0.8 are Cohen's small / medium
    / large. scipy and statsmodels compute power for it but not the statistic itself.

    Raises:
        ValueError: a proportion outside ``[0, 1]`` or not finite.
    """
    for name, p in (("p1", p1), ("p2", p2)):
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"{name} must be a proportion in [0, 1], got {p!r}")
    return 2.0 * math.asin(math.sqrt(p1)) - 2.0 * math.asin(math.sqrt(p2))


def summarise(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int | None = 0,
    nonfinite: NonFinite = "raise",
) -> dict[str, float | int]:
    """Mean, SD (ddof 1), median, n and a seeded bootstrap percentile CI of the mean of one method's scores.

    Returns ``{"n", "mean", "sd", "median", "ci_low", "ci_high", "confidence", "n_dropped"}``
    (SD and CI are NaN for n = 1). Non-finite values: see the module docstring.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    _check_confidence(confidence, n_resamples)
    mask = np.isfinite(v)
    n_dropped = _handle_nonfinite(mask, nonfinite, "values")
    v = v[mask]
    if v.size == 0:
        raise ValueError("no (finite) values to summarise")
    ci_low = ci_high = math.nan
    if v.size > 1:
        rng = np.random.default_rng(seed)
        means = np.concatenate(
            [v[idx].mean(axis=1) for idx in _resample_blocks([np.arange(v.size)], int(n_resamples), rng)]
        )
        ci_low, ci_high = _percentile_ci(means, confidence)
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
        "median": float(np.median(v)),
        "ci_low": ci_low,
        "ci_high": ci_high,
        "confidence": float(confidence),
        "n_dropped": n_dropped,
    }


def aggregate_by(
    values: Mapping[Hashable, float],
    groups: Mapping[Hashable, Hashable] | Callable[[Hashable], Hashable],
) -> dict[Hashable, float]:
    """Average per-image scores within groups (e.g. slices -> patient), keyed by group.

    Use it for patient-level statistics: aggregate both methods, then :func:`pair_by_id` the
    patients, so that n counts patients, not correlated slices.

    Args:
        values: ``{image id: score}``.
        groups: ``{image id: group}`` or a function ``image id -> group`` (e.g. parsing the patient
            out of a slice id). Every image id must have a group.

    Returns:
        ``{group: mean score}`` (a group holding a non-finite score has a non-finite mean, which the
        statistics then refuse or drop as asked).
    """
    lookup = groups if callable(groups) else None
    if lookup is None:
        missing = [i for i in values if i not in groups]  # type: ignore[operator]
        if missing:
            raise ValueError(f"{len(missing)} image ids have no group: {_first(_sort_key(missing))}")
    sums: dict[Hashable, float] = {}
    counts: Counter = Counter()
    for image_id, score in values.items():
        group = lookup(image_id) if lookup is not None else groups[image_id]  # type: ignore[index]
        sums[group] = sums.get(group, 0.0) + float(score)
        counts[group] += 1
    return {group: sums[group] / counts[group] for group in sums}
