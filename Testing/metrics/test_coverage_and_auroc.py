"""Assessing a calibration: the AUROC of a width map against pair counting, coverage per image by
hand, and the reliability curve against lam refitted and coverage counted here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from LatentSRLib.metrics.calibration import (
    calibrate_lambda,
    image_coverage,
    lambda_grid,
    normalised_errors,
    reliability_curve,
    risk_table,
    width_auroc,
)


def pair_count_auroc(score: np.ndarray, flagged: np.ndarray) -> float:
    """Every (flagged, unflagged) pair: 1 when the flagged pixel scores higher, 1/2 on a tie."""
    positives, negatives = score[flagged], score[~flagged]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return float(wins) / (positives.size * negatives.size)


def test_width_auroc_is_the_pair_count_with_ties_and_a_mask():
    rng = np.random.default_rng(0)
    score = np.round(rng.random((3, 12, 10)), 1)  # rounded: many ties
    flagged = rng.random(score.shape) < 0.2 + 0.5 * score  # higher scores are flagged more often
    mask = rng.random(score.shape) < 0.7
    expected = pair_count_auroc(score[mask], flagged[mask])
    assert width_auroc(score, flagged, mask) == pytest.approx(expected, abs=1e-12)
    assert 0.6 < expected < 0.95
    assert width_auroc(score, flagged) == pytest.approx(pair_count_auroc(score.ravel(), flagged.ravel()), abs=1e-12)
    # the direction: a score that marks the flagged pixels exactly gives 1, its negative 0, a constant 1/2
    assert width_auroc(flagged.astype(float), flagged) == 1.0
    assert width_auroc(-flagged.astype(float), flagged) == 0.0
    assert width_auroc(np.ones(score.shape), flagged) == 0.5
    # the mask decides which pixels count: outside it, flagged pixels with the lowest score do not pull it down
    flipped = np.where(mask, flagged.astype(float), -flagged.astype(float))
    assert width_auroc(flipped, flagged, mask) == 1.0 and width_auroc(flipped, flagged) < 1.0
    assert math.isnan(width_auroc(score, np.zeros(score.shape, bool)))
    assert math.isnan(width_auroc(score, flagged, flagged))  # only positives counted
    with pytest.raises(ValueError, match="shapes differ"):
        width_auroc(score, flagged[0])


def test_image_coverage_is_the_mean_of_each_images_fraction_inside():
    scores = [np.array([0.1, 0.5, 2.0, 3.0]), np.array([0.2]), np.zeros(0), np.array([1.0, 1.5])]
    # lam = 1: 2 of 4, 1 of 1, (no pixel: left out), 1 of 2 (a score equal to lam is inside)
    assert image_coverage(scores, 1.0) == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert image_coverage(scores, 0.0) == 0.0 and image_coverage(scores, 5.0) == 1.0
    assert math.isnan(image_coverage([np.zeros(0)], 1.0)) and math.isnan(image_coverage(scores, math.nan))


def gaussian_scores(rng, images: int, pixels: int):
    """Per image: the normalised errors of a truth drawn around the prediction with the width as its std,
    and the raw arrays (to count coverage independently)."""
    sr = rng.random((images, pixels))
    sigma = rng.uniform(0.01, 0.1, (images, pixels))
    hr = sr + sigma * rng.standard_normal((images, pixels))
    return [normalised_errors(s, h, w) for s, h, w in zip(sr, hr, sigma)], (sr, hr, sigma)


def test_reliability_curve_refits_lam_per_level_and_measures_held_out_coverage():
    rng = np.random.default_rng(1)
    calibration, _ = gaussian_scores(rng, 400, 300)
    test, (sr, hr, sigma) = gaussian_scores(rng, 300, 300)
    levels = (0.5, 0.8, 0.9, 0.95)
    curve = reliability_curve(calibration, test, levels, delta=0.1)
    assert [p.nominal for p in curve] == list(levels)
    grid = lambda_grid(calibration)
    means = risk_table(calibration, grid).mean(axis=0)
    for point in curve:
        alpha = round(1 - point.nominal, 12)
        assert point.lam == calibrate_lambda(risk_table(calibration, grid), grid, alpha, 0.1)
        # the large-n lam: the first grid value where the calibration images' mean risk reaches alpha
        first = min(i for i in range(grid.size) if means[i] <= alpha)
        assert point.lam_point == grid[first]
        # held-out coverage counted here: each test image's share of pixels with |HR - SR| <= lam * sigma
        by_hand = np.mean((np.abs(hr - sr) <= point.lam * sigma).mean(axis=1))
        assert point.coverage == pytest.approx(by_hand, abs=1e-9)
        # exchangeable images: the large-n lam lands on nominal, the certified one a little above it
        assert abs(point.coverage_point - point.nominal) < 0.01
        assert point.nominal - 0.005 < point.coverage < point.nominal + 0.06  # the bound's margin, widest at 0.5
        assert point.lam > point.lam_point
    # the ideal lam of a Gaussian at 90%: the two-sided normal quantile
    assert curve[2].lam_point == pytest.approx(stats.norm.ppf(0.95), rel=0.02)


def test_levels_too_strict_for_the_calibration_images_are_not_certified():
    rng = np.random.default_rng(2)
    calibration, _ = gaussian_scores(rng, 30, 100)  # 30 images certify 0.1 at best, never 0.01
    test, _ = gaussian_scores(rng, 20, 100)
    loose, strict = reliability_curve(calibration, test, (0.5, 0.99), delta=0.1)
    assert math.isfinite(loose.lam) and math.isfinite(loose.coverage)
    assert math.isnan(strict.lam) and math.isnan(strict.coverage)
    assert math.isfinite(strict.lam_point) and strict.coverage_point > 0.95  # the point estimate still exists
    with pytest.raises(ValueError, match="nominal coverage"):
        reliability_curve(calibration, test, (1.0,))
