"""Calibrated intervals (conformal risk control and risk-controlling prediction sets): the
Hoeffding-Bentkus bound and the conformal rule against direct computations, their guarantees on data
whose truth is drawn around the prediction with a known spread, the structure term of the width, and
the record a model folder keeps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from LatentSRLib.errors import InputError
from LatentSRLib.metrics.calibration import (
    CALIBRATION_FILE,
    HEURISTIC,
    HEURISTIC_V1,
    METHOD_CRC,
    METHOD_RCPS,
    Calibration,
    calibrate_lambda,
    coverage,
    crc_lambda,
    heuristic_width,
    hoeffding_bentkus_ucb,
    lambda_grid,
    mean_half_width,
    minimum_images,
    normalised_errors,
    reliability_curve,
    risk_table,
    structure_map,
)


def direct_ucb(mean_risk: float, n: int, delta: float) -> float:
    """The bound by brute force: the largest alpha on a fine grid that the Hoeffding-Bentkus test
    does not reject, with both tails written out here (Hoeffding: exp(-n KL); Bentkus: e * binomial cdf)."""
    alphas = np.linspace(mean_risk, 1 - 1e-9, 200_001)[1:]
    a = np.minimum(mean_risk, alphas)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(a > 0, a * np.log(a / alphas), 0.0) + (1 - a) * np.log((1 - a) / (1 - alphas))
    hoeffding = np.exp(-n * kl)
    bentkus = np.e * stats.binom.cdf(np.ceil(n * mean_risk - 1e-9), n, alphas)
    p = np.minimum(1.0, np.minimum(hoeffding, bentkus))
    kept = alphas[p >= delta]
    return float(kept.max()) if kept.size else float(mean_risk)


@pytest.mark.parametrize(("mean_risk", "n", "delta"), [(0.0, 30, 0.1), (0.05, 100, 0.1), (0.08, 500, 0.05),
                                                       (0.3, 40, 0.2), (0.013, 1000, 0.1)])
def test_the_bound_matches_a_direct_computation(mean_risk, n, delta):
    assert hoeffding_bentkus_ucb(mean_risk, n, delta) == pytest.approx(direct_ucb(mean_risk, n, delta), abs=2e-5)


def test_the_bound_lies_above_the_mean_and_tightens_with_more_images():
    bounds = [hoeffding_bentkus_ucb(0.05, n, 0.1) for n in (20, 50, 200, 1000, 10000)]
    assert all(b > 0.05 for b in bounds)
    assert bounds == sorted(bounds, reverse=True)
    assert bounds[-1] < 0.06
    assert hoeffding_bentkus_ucb(0.05, 200, 0.01) > hoeffding_bentkus_ucb(0.05, 200, 0.2)  # more confidence, wider


def test_minimum_images_is_the_first_n_that_certifies_zero_risk():
    n = minimum_images(0.1, 0.1)
    assert hoeffding_bentkus_ucb(0.0, n, 0.1) <= 0.1 < hoeffding_bentkus_ucb(0.0, n - 1, 0.1)
    # Hoeffding's tail alone at zero risk: (1 - alpha)^n <= delta
    assert n == int(np.ceil(np.log(0.1) / np.log(0.9)))


def gaussian_set(rng, images: int, pixels: int, spreads: np.ndarray | None = None):
    """Predictions, truths drawn around them with a known per-pixel std, and that std."""
    sr = rng.random((images, pixels))
    sigma = rng.uniform(0.01, 0.1, (images, pixels)) if spreads is None else spreads
    hr = sr + sigma * rng.standard_normal((images, pixels))
    return sr, hr, sigma


def calibrated_lambda(sr, hr, width, alpha, delta):
    scores = [normalised_errors(s, h, w) for s, h, w in zip(sr, hr, width)]
    grid = lambda_grid(scores)
    return calibrate_lambda(risk_table(scores, grid), grid, alpha, delta)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_the_calibrated_interval_covers_new_images_as_promised(alpha):
    rng = np.random.default_rng(1)
    sr, hr, sigma = gaussian_set(rng, 800, 200)
    lam = calibrated_lambda(sr, hr, sigma, alpha, 0.1)
    # the width is the true std: the ideal lam is the two-sided normal quantile, the bound adds a little
    ideal = stats.norm.ppf(1 - alpha / 2)
    assert ideal < lam < ideal * 1.15
    test_sr, test_hr, test_sigma = gaussian_set(np.random.default_rng(2), 400, 200)
    covered = coverage(test_sr, test_hr, lam * test_sigma)
    assert 1 - alpha <= covered <= 1 - alpha + 0.04


def test_a_heuristic_that_follows_the_error_gives_narrower_intervals_than_a_constant():
    rng = np.random.default_rng(3)
    sr, hr, sigma = gaussian_set(rng, 300, 200)
    informed = calibrated_lambda(sr, hr, sigma, 0.1, 0.1) * sigma
    constant = calibrated_lambda(sr, hr, np.ones_like(sigma), 0.1, 0.1) * np.ones_like(sigma)
    assert coverage(sr, hr, informed) >= 0.9 and coverage(sr, hr, constant) >= 0.9
    assert mean_half_width(informed) < 0.9 * mean_half_width(constant)


def test_risk_falls_and_the_calibrated_lambda_grows_with_stricter_alpha():
    rng = np.random.default_rng(4)
    sr, hr, sigma = gaussian_set(rng, 100, 300)
    scores = [normalised_errors(s, h, w) for s, h, w in zip(sr, hr, sigma)]
    grid = lambda_grid(scores)
    risks = risk_table(scores, grid)
    assert risks.shape == (100, grid.size) and risks[:, 0].max() == 1.0 and risks[:, -1].max() == 0.0
    assert np.all(np.diff(risks, axis=1) <= 0)
    # risk_table agrees with counting pixels outside the interval directly
    lam = grid[500]
    direct = (np.abs(hr - sr) > lam * sigma).mean(axis=1)
    np.testing.assert_allclose(risks[:, 500], direct)
    lams = [calibrate_lambda(risks, grid, alpha, 0.1) for alpha in (0.3, 0.2, 0.1, 0.05)]
    assert lams == sorted(lams) and lams[0] < lams[-1]


def test_too_few_images_are_refused_with_the_number_needed():
    rng = np.random.default_rng(5)
    sr, hr, sigma = gaussian_set(rng, 10, 50)
    with pytest.raises(ValueError, match="at least 22"):
        calibrated_lambda(sr, hr, sigma, 0.1, 0.1)


def test_heuristic_width_mask_and_coverage():
    std = np.array([[0.0, 0.3], [0.0, 0.0]])
    consistency = np.array([[0.0, 0.4], [0.2, 0.0]])
    np.testing.assert_allclose(heuristic_width(std, consistency, 0.01), [[0.01, 0.51], [0.21, 0.01]])
    with pytest.raises(ValueError):
        heuristic_width(std, consistency, 0.0)
    sr, hr = np.zeros((2, 2)), np.array([[0.005, 0.6], [0.1, 0.5]])
    mask = np.array([[True, True], [True, False]])
    assert coverage(sr, hr, np.full((2, 2), 0.2)) == 0.5
    assert coverage(sr, hr, np.full((2, 2), 0.2), mask) == pytest.approx(2 / 3)
    assert mean_half_width(np.array([[1.0, 2.0], [3.0, 10.0]]), mask) == 2.0
    np.testing.assert_allclose(normalised_errors(sr, hr, np.full((2, 2), 0.5), mask), [0.01, 0.2, 1.2])


def test_calibration_round_trips_through_json(tmp_path):
    assert Calibration.load(tmp_path) is None
    record = Calibration(lam=2.5, alpha=0.1, delta=0.05, samples=4, split="val", images=40, dataset="brain-ds",
                         steps=10, seed=3, floor=0.01, coverage=0.93, mean_half_width=0.04, extra={"sampler": "ddim"},
                         heuristic=HEURISTIC_V1, method=METHOD_RCPS)
    assert Calibration.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    path = record.save(tmp_path)
    assert path.name == CALIBRATION_FILE and json.loads(path.read_text())["format"] == "latentsr.calibration"
    assert Calibration.load(tmp_path) == record
    assert record.nominal == pytest.approx(0.9)
    assert "confidence 0.95" in record.guarantee and not record.uses_structure
    np.testing.assert_allclose(record.half_width(np.array([0.0, 0.3]), np.array([0.0, 0.4])), [0.025, 1.275],
                               rtol=1e-6)
    path.write_text("{not json")
    with pytest.raises(InputError, match=CALIBRATION_FILE):
        Calibration.load(tmp_path)


def test_the_default_record_is_conformal_with_the_structure_term(tmp_path):
    record = Calibration(lam=2.0, alpha=0.1, delta=None, samples=1, split="val", images=30, structure_weight=0.5)
    assert (record.method, record.heuristic, record.uses_structure) == (METHOD_CRC, HEURISTIC, True)
    record.save(tmp_path)
    assert Calibration.load(tmp_path) == record and "conformal risk control" in record.guarantee
    sr = np.zeros((2, 8, 8))
    sr[1, :, 4:] = 1.0  # a vertical step in the second slice only
    std, consistency = np.zeros_like(sr), np.full_like(sr, 0.1)
    half = record.half_width(std, consistency, sr)
    # lam * (sqrt(0.1^2 + (0.5 * structure)^2) + 0.05), structure 0 in the flat slice and 1/2 beside the step
    np.testing.assert_allclose(half[0], 2.0 * 0.15, rtol=1e-6)
    np.testing.assert_allclose(half[1, :, 2:6], 2.0 * (np.hypot(0.1, 0.25) + 0.05), rtol=1e-6)  # edge +- 1 pixel
    np.testing.assert_allclose(half[1][:, [0, 1, 6, 7]], 2.0 * 0.15, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the SR"):
        record.half_width(std, consistency)
    np.testing.assert_array_equal(record.half_width(std, consistency, structure=structure_map(sr)), half)
    unweighted = Calibration(lam=2.0, alpha=0.1, delta=None, samples=1, split="val", images=30, structure_weight=0)
    assert not unweighted.uses_structure
    np.testing.assert_allclose(unweighted.half_width(std, consistency), 2.0 * 0.15, rtol=1e-6)


def test_files_from_before_the_method_was_recorded_read_as_what_they_were(tmp_path):
    data = Calibration(lam=1.5, alpha=0.1, delta=0.1, samples=1, split="val", images=30).to_dict()
    del data["method"], data["heuristic"], data["structure_weight"]
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(data))
    record = Calibration.load(tmp_path)
    assert (record.method, record.heuristic, record.structure_weight) == (METHOD_RCPS, HEURISTIC_V1, 0.0)
    data["heuristic"] = "lam * magic"
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(data))
    with pytest.raises(InputError, match="unknown heuristic"):
        Calibration.load(tmp_path)


def test_structure_map_is_the_local_slope_in_each_image_plane():
    x = np.arange(12, dtype=np.float64)
    ramp = np.tile(0.01 * x, (10, 1))  # slope 0.01 per pixel along the columns
    np.testing.assert_allclose(structure_map(ramp)[1:-1, 1:-1], 0.01)
    diagonal = 0.03 * np.add.outer(np.arange(10.0), x)  # slope 0.03 along both axes
    np.testing.assert_allclose(structure_map(diagonal)[2:-2, 2:-2], 0.03 * np.sqrt(2))
    stack = np.stack([np.zeros((10, 12)), ramp])
    out = structure_map(stack)
    np.testing.assert_array_equal(out[0], 0.0)  # slices do not leak into each other
    np.testing.assert_allclose(out[1], structure_map(ramp))
    with pytest.raises(ValueError):
        structure_map(x)


def direct_crc(scores: list[np.ndarray], lambdas: np.ndarray, alpha: float) -> float:
    """Conformal risk control written out: per candidate, count each image's pixels outside."""
    n = len(scores)
    for lam in lambdas:
        mean = np.mean([np.mean(s > lam) for s in scores])
        if (n * mean + 1) / (n + 1) <= alpha:
            return float(lam)
    raise AssertionError("no candidate controls the risk")


@pytest.mark.parametrize("alpha", [0.1, 0.25])
def test_conformal_risk_control_matches_a_direct_computation(alpha):
    sr, hr, sigma = gaussian_set(np.random.default_rng(11), 60, 100)
    scores = [normalised_errors(s, h, w) for s, h, w in zip(sr, hr, sigma)]
    grid = lambda_grid(scores, 300)
    assert crc_lambda(risk_table(scores, grid), grid, alpha) == direct_crc(scores, grid, alpha)


def test_conformal_risk_control_covers_new_images_as_promised_and_no_more():
    # the guarantee is in expectation over calibration sets: average the test coverage over many draws
    rng = np.random.default_rng(12)
    n, alpha, coverages, widths_crc, widths_rcps = 40, 0.1, [], [], []
    for _ in range(150):
        sr, hr, sigma = gaussian_set(rng, n + 20, 60)
        scores = [normalised_errors(s, h, w) for s, h, w in zip(sr, hr, sigma)]
        grid = lambda_grid(scores[:n], 400)
        risks = risk_table(scores[:n], grid)
        lam = crc_lambda(risks, grid, alpha)
        coverages.append(1 - risk_table(scores[n:], np.array([lam]))[:, 0].mean())
        widths_crc.append(lam)
        widths_rcps.append(calibrate_lambda(risks, grid, alpha, 0.1))
    mean = float(np.mean(coverages))
    # >= 1 - alpha in expectation, and tight: at most 2 / (n + 1) above it (the loss has no ties to speak of)
    standard_error = float(np.std(coverages)) / np.sqrt(len(coverages))
    assert 1 - alpha - 3 * standard_error <= mean <= 1 - alpha + 2 / (n + 1) + 3 * standard_error
    assert np.mean(widths_crc) < np.mean(widths_rcps)  # no confidence margin: narrower than RCPS


def test_conformal_risk_control_needs_enough_images():
    sr, hr, sigma = gaussian_set(np.random.default_rng(13), 8, 50)
    scores = [normalised_errors(s, h, w) for s, h, w in zip(sr, hr, sigma)]
    grid = lambda_grid(scores)
    with pytest.raises(ValueError, match="at least 9"):
        crc_lambda(risk_table(scores, grid), grid, 0.1)
    sr, hr, sigma = gaussian_set(np.random.default_rng(13), 9, 50)
    scores = [normalised_errors(s, h, w) for s, h, w in zip(sr, hr, sigma)]
    grid = lambda_grid(scores)
    assert crc_lambda(risk_table(scores, grid), grid, 0.1) == grid[-1]  # 1 / (n + 1) = alpha: only zero risk


def test_the_reliability_curve_follows_the_method():
    sr, hr, sigma = gaussian_set(np.random.default_rng(14), 100, 80)
    scores = [normalised_errors(s, h, w) for s, h, w in zip(sr, hr, sigma)]
    crc = reliability_curve(scores[:60], scores[60:], (0.8, 0.9), method=METHOD_CRC, delta=None)
    rcps = reliability_curve(scores[:60], scores[60:], (0.8, 0.9), method=METHOD_RCPS, delta=0.1)
    grid = lambda_grid(scores[:60])
    assert crc[1].lam == crc_lambda(risk_table(scores[:60], grid), grid, 0.1)
    assert all(c.lam < r.lam and c.coverage <= r.coverage for c, r in zip(crc, rcps))
    assert crc[0].lam_point == rcps[0].lam_point
