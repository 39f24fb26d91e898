"""Paired statistics: pairing by id, bootstrap CIs, Wilcoxon, effect sizes, Holm, summaries."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from scipy import stats

from LatentSRLib.metrics import (
    EFFECT_SIZE_LABELS,
    aggregate_by,
    compare_by_id,
    holm_correction,
    pair_by_id,
    paired_comparison,
    summarise,
)


# ----------------------------------------------------------------------------------- pairing
def test_pair_by_id_refuses_different_image_sets():
    a = {f"img{i:03d}": float(i) for i in range(10)}
    b = {f"img{i:03d}": float(i) for i in range(1, 12)}
    with pytest.raises(ValueError) as info:
        pair_by_id(a, b)
    message = str(info.value)
    assert "'img000'" in message and "'img010'" in message and "'img011'" in message
    assert "1 ids only in the first set" in message and "2 ids only in the second set" in message
    with pytest.raises(ValueError, match="empty"):
        pair_by_id({}, {})


def test_pair_by_id_pairs_by_id_not_position():
    ids = [f"patient{p}_slice{s}" for p in range(5) for s in range(8)]
    a = {i: float(k) for k, i in enumerate(ids)}
    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)
    b = {i: a[i] + 100.0 for i in shuffled}  # same images, different insertion order
    assert list(b) != list(a)
    paired_ids, x, y = pair_by_id(a, b)
    assert paired_ids == sorted(ids)
    np.testing.assert_array_equal(y - x, 100.0)
    np.testing.assert_array_equal(x, [a[i] for i in paired_ids])


# ----------------------------------------------------------------------------------- comparison
def test_known_shift_ci_contains_truth_and_p_is_small():
    rng = np.random.default_rng(1)
    base = rng.normal(30, 2, size=300)
    x = base + 0.5 + rng.normal(0, 0.4, size=300)
    result = paired_comparison(x, base, n_resamples=2000, seed=0)
    assert result.n == 300 and result.n_dropped == 0
    assert result.ci_low < 0.5 < result.ci_high
    assert result.ci_low < result.mean_difference < result.ci_high
    assert result.p_value < 1e-20
    assert result.mean_difference == pytest.approx(x.mean() - base.mean())
    assert result.sd_difference == pytest.approx(np.std(x - base, ddof=1))


def test_bootstrap_ci_coverage_on_synthetic_pairs():
    """The 95% paired bootstrap CI covers the true mean difference in about 95% of experiments."""
    rng = np.random.default_rng(7)
    trials, covered = 200, 0
    for trial in range(trials):
        y = rng.normal(25, 3, size=40)
        x = y + rng.normal(0.3, 1.0, size=40)
        result = paired_comparison(x, y, n_resamples=400, seed=trial)
        covered += result.ci_low <= 0.3 <= result.ci_high
    assert 0.88 <= covered / trials <= 0.99


def test_wilcoxon_p_is_scipys_two_sided_signed_rank():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, size=25)
    y = x + rng.normal(0.2, 1, size=25)
    y[:3] = x[:3]  # a few exact ties (zero differences)
    result = paired_comparison(x, y, n_resamples=200)
    reference = stats.wilcoxon(x, y, alternative="two-sided")
    assert result.p_value == reference.pvalue
    assert result.wilcoxon_statistic == reference.statistic
    assert result.n_zero_differences == 3


def test_d_z_and_pooled_d_on_correlated_data():
    """d_z = mean diff / SD of diffs; pooled d = mean diff / sqrt((sx^2 + sy^2) / 2). With a
    between-image correlation r, SD of diffs^2 = sx^2 + sy^2 - 2 r sx sy, so d_z >> d for r near 1."""
    rng = np.random.default_rng(4)
    image_difficulty = rng.normal(0, 2.0, size=500)  # shared by both methods -> correlation
    y = 28 + image_difficulty + rng.normal(0, 0.5, size=500)
    x = y + 0.3 + rng.normal(0, 0.5, size=500)
    result = paired_comparison(x, y, n_resamples=500)
    sx, sy = x.std(ddof=1), y.std(ddof=1)
    r = np.corrcoef(x, y)[0, 1]
    assert r > 0.9
    assert result.cohens_d_pooled == pytest.approx((x.mean() - y.mean()) / math.sqrt((sx**2 + sy**2) / 2))
    assert result.d_z == pytest.approx(result.mean_difference / result.sd_difference)
    expected_ratio = math.sqrt((sx**2 + sy**2) / 2) / math.sqrt(sx**2 + sy**2 - 2 * r * sx * sy)
    assert result.d_z / result.cohens_d_pooled == pytest.approx(expected_ratio, rel=1e-9)
    assert result.d_z > 3 * result.cohens_d_pooled
    assert result.d_z_ci_low < result.d_z < result.d_z_ci_high
    assert result.cohens_d_pooled_ci_low < result.cohens_d_pooled < result.cohens_d_pooled_ci_high
    assert result.labels == EFFECT_SIZE_LABELS
    assert "paired d_z" in result.labels["d_z"] and result.labels["cohens_d_pooled"] == "Cohen's d (pooled SD)"


def test_seeded_bootstrap_is_reproducible():
    rng = np.random.default_rng(5)
    x, y = rng.normal(1, 1, 60), rng.normal(0.8, 1, 60)
    first = paired_comparison(x, y, n_resamples=1000, seed=11)
    again = paired_comparison(x, y, n_resamples=1000, seed=11)
    other = paired_comparison(x, y, n_resamples=1000, seed=12)
    assert first == again
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)


def test_stratified_bootstrap_keeps_strata_sizes():
    """Stratum A always differs by +1, B by -1. Resampling within strata keeps 30 A and 70 B in every
    resample, so the pooled mean difference is exactly -0.4 each time; unstratified it varies."""
    x = np.array([1.0] * 30 + [-1.0] * 70)
    y = np.zeros(100)
    strata = ["A"] * 30 + ["B"] * 70
    stratified = paired_comparison(x, y, n_resamples=1000, strata=strata)
    assert stratified.strata == {"A": 30, "B": 70}
    assert stratified.ci_low == pytest.approx(-0.4, abs=1e-12) and stratified.ci_high == pytest.approx(-0.4, abs=1e-12)
    plain = paired_comparison(x, y, n_resamples=1000)
    assert plain.strata is None and plain.ci_high - plain.ci_low > 0.2
    with pytest.raises(ValueError, match="strata"):
        paired_comparison(x, y, strata=strata[:-1])


def test_zero_differences_are_handled():
    x = np.array([30.0, 31.5, 29.0, 33.0])
    result = paired_comparison(x, x.copy(), n_resamples=200)
    assert result.p_value == 1.0 and result.wilcoxon_statistic == 0.0
    assert math.isnan(result.d_z) and result.cohens_d_pooled == 0.0
    assert result.ci_low == result.ci_high == 0.0 and result.n_zero_differences == 4


def test_non_finite_scores_are_refused_or_dropped_with_a_count():
    x = np.array([30.0, np.inf, 29.0, 33.0, 31.0, np.nan])
    y = np.array([29.0, 35.0, 28.5, 32.0, 30.5, 30.0])
    with pytest.raises(ValueError, match="2 of 6 pairs are not finite.*nonfinite='drop'"):
        paired_comparison(x, y)
    result = paired_comparison(x, y, nonfinite="drop", n_resamples=200)
    assert result.n == 4 and result.n_dropped == 2
    with pytest.raises(ValueError, match="nonfinite"):
        paired_comparison(x, y, nonfinite="clip")


def test_compare_by_id_and_json_ready_result():
    a = {f"brats_{i}": 30.0 + 0.1 * i for i in range(6)} | {f"cxr_{i}": 28.0 + 0.2 * i for i in range(4)}
    b = {k: v - 1.0 + 0.01 * (i % 7) for i, (k, v) in enumerate(reversed(list(a.items())))}
    strata = {k: k.split("_")[0] for k in a}
    result = compare_by_id(a, b, strata=strata, n_resamples=300)
    assert result.n == 10 and result.strata == {"brats": 6, "cxr": 4}
    encoded = json.loads(json.dumps(result.to_dict()))
    assert encoded["n"] == 10 and encoded["labels"]["cohens_d_pooled"] == "Cohen's d (pooled SD)"
    with pytest.raises(ValueError, match="no stratum"):
        compare_by_id(a, b, strata={"brats_0": "brats"})


# ----------------------------------------------------------------------------------- Holm, summaries
def test_holm_correction_hand_computed():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    adjusted = holm_correction([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm_correction([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    with_nan = holm_correction([0.02, np.nan, 0.01])  # NaN does not count towards m = 2
    np.testing.assert_allclose(with_nan, [0.02, np.nan, 0.02])
    with pytest.raises(ValueError):
        holm_correction([0.2, 1.5])


def test_summarise():
    values = np.array([27.0, 29.0, 30.0, 31.0, 33.0])
    summary = summarise(values, n_resamples=2000)
    assert summary["n"] == 5 and summary["mean"] == 30.0 and summary["median"] == 30.0
    assert summary["sd"] == pytest.approx(np.std(values, ddof=1))
    assert summary["ci_low"] < 30.0 < summary["ci_high"] and summary["confidence"] == 0.95
    assert summary == summarise(values, n_resamples=2000)  # seeded
    with pytest.raises(ValueError, match="1 of 6 values are not finite"):
        summarise(np.append(values, np.inf))
    assert summarise(np.append(values, np.inf), nonfinite="drop", n_resamples=100)["n_dropped"] == 1
    single = summarise([31.0])
    assert single["n"] == 1 and math.isnan(single["sd"]) and math.isnan(single["ci_low"])


def test_aggregate_by_patient_then_pair():
    slices = {f"p{p}_s{s}": float(10 * p + s) for p in range(3) for s in range(4)}
    patient = {k: k.split("_")[0] for k in slices}
    means = aggregate_by(slices, patient)
    assert means == {"p0": 1.5, "p1": 11.5, "p2": 21.5}
    assert aggregate_by(slices, lambda k: k.split("_")[0]) == means
    with pytest.raises(ValueError, match="no group"):
        aggregate_by(slices, {"p0_s0": "p0"})
    other = aggregate_by({k: v + 1 for k, v in slices.items()}, patient)
    ids, x, y = pair_by_id(other, means)
    assert ids == ["p0", "p1", "p2"] and np.all(x - y == 1.0)
