"""Statistics from per-image rows: with ``aggregate="subject"`` two compared methods are averaged
per subject over the SAME slices (those finite for both), and the slices left out are counted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from LatentSRLib.evaluation.row_statistics import statistics_from_rows
from LatentSRLib.evaluation.rows import paired_values_by_unit

# (subject, slice) -> PSNR / SSIM of the reference SR model "model:a" and of "bicubic"
SLICES = [("P", "s1"), ("P", "s2"), ("P", "s3"), ("Q", "s1"), ("Q", "s2"), ("Q", "s3"), ("R", "s1"), ("R", "s2")]
PSNR_A = [30.0, 32.0, math.inf, 28.0, 29.0, 33.0, 31.0, 27.5]   # inf: P/s3 reproduced exactly
PSNR_B = [27.0, 28.5, 10.0, 26.0, 25.5, 30.0, 29.0, 26.0]       # P/s3 far lower: averaging it in shows
SSIM_A = [0.90, 0.91, 0.92, 0.85, 0.95, 0.87, 0.80, 0.81]
SSIM_B = [0.70, 0.72, 0.50, 0.75, math.nan, 0.40, 0.60, 0.62]   # NaN on Q/s2, this time on the other side


def _rows():
    rows = []
    for method, kind, psnr, ssim in (("model:a", "sr_model", PSNR_A, SSIM_A), ("bicubic", "interpolation", PSNR_B, SSIM_B)):
        for (subject, name), p, s in zip(SLICES, psnr, ssim, strict=True):
            rows.append({"dataset": "d", "id": f"{subject}/{name}", "subject": subject, "method": method,
                         "kind": kind, "noise_floor": "", "psnr": p, "ssim": s, "ms_ssim": math.nan,
                         "psnr_HH1": p - 1.0, "mean_intensity": 0.3, "hr_mean_intensity": 0.3})
    return rows


def _by_hand(a, b):
    """Per subject: the mean over the slices where both values are finite (plain Python)."""
    out_a, out_b, dropped = {}, {}, 0
    for (subject, _), x, y in zip(SLICES[:len(a)], a, b, strict=True):
        if math.isfinite(x) and math.isfinite(y):
            out_a.setdefault(subject, []).append(x)
            out_b.setdefault(subject, []).append(y)
        else:
            dropped += 1
    subjects = sorted(out_a)
    return ([sum(out_a[s]) / len(out_a[s]) for s in subjects], [sum(out_b[s]) / len(out_b[s]) for s in subjects],
            dropped)


@pytest.mark.parametrize("metric, a, b", [("psnr", PSNR_A, PSNR_B), ("ssim", SSIM_A, SSIM_B)])
def test_subject_comparison_pairs_the_same_slices(metric, a, b):
    stats = statistics_from_rows(_rows(), aggregate="subject", n_resamples=200)
    entry = next(c for c in stats["comparisons"] if c["metric"] == metric)
    assert (entry["reference"], entry["method"]) == ("model:a", "bicubic")
    x, y, dropped = _by_hand(a, b)
    assert entry["n"] == 3 and entry["n_dropped"] == 0  # three subjects, none left without a common slice
    assert entry["mean_x"] == pytest.approx(np.mean(x), abs=1e-12)
    assert entry["mean_y"] == pytest.approx(np.mean(y), abs=1e-12)
    assert entry["mean_difference"] == pytest.approx(np.mean(np.subtract(x, y)), abs=1e-12)
    assert entry["sd_x"] == pytest.approx(np.std(x, ddof=1), abs=1e-12)
    assert entry["sd_y"] == pytest.approx(np.std(y, ddof=1), abs=1e-12)
    assert entry["n_slices_dropped"] == dropped == 1


def test_subject_comparison_psnr_difference_by_hand():
    # the numbers written out: P on s1, s2 only (A is inf on s3); Q and R on all their slices
    stats = statistics_from_rows(_rows(), aggregate="subject", n_resamples=200)
    entry = next(c for c in stats["comparisons"] if c["metric"] == "psnr")
    p = (30.0 + 32.0) / 2 - (27.0 + 28.5) / 2
    q = (28.0 + 29.0 + 33.0) / 3 - (26.0 + 25.5 + 30.0) / 3
    r = (31.0 + 27.5) / 2 - (29.0 + 26.0) / 2
    assert entry["mean_difference"] == pytest.approx((p + q + r) / 3, abs=1e-12)
    # subband differences follow the same rule (psnr_HH1 = psnr - 1 here, so the same difference)
    assert stats["subband_differences"]["d"]["bicubic"]["psnr_HH1"] == pytest.approx((p + q + r) / 3, abs=1e-12)


def test_subject_without_a_common_slice_is_left_out_and_counted():
    rows = _rows()
    for row in rows:  # every SSIM of subject R undefined for the reference
        if row["method"] == "model:a" and row["subject"] == "R":
            row["ssim"] = math.nan
    stats = statistics_from_rows(rows, aggregate="subject", n_resamples=200)
    entry = next(c for c in stats["comparisons"] if c["metric"] == "ssim")
    x, y, _ = _by_hand(SSIM_A[:6], SSIM_B[:6])  # P and Q only
    assert entry["n"] == 2 and entry["n_dropped"] == 1
    assert entry["mean_difference"] == pytest.approx(np.mean(np.subtract(x, y)), abs=1e-12)
    assert entry["n_slices_dropped"] == 3  # R's two slices and Q/s2


def test_image_level_counts_are_unchanged():
    stats = statistics_from_rows(_rows(), aggregate="image", n_resamples=200)
    entry = next(c for c in stats["comparisons"] if c["metric"] == "psnr")
    finite = [i for i, v in enumerate(PSNR_A) if math.isfinite(v)]
    assert entry["n"] == 7 and entry["n_dropped"] == 1 and entry["n_slices_dropped"] == 1
    assert entry["mean_difference"] == pytest.approx(np.mean([PSNR_A[i] - PSNR_B[i] for i in finite]), abs=1e-12)
    # per-method summaries keep each method's own finite values and count what they left out
    summary = stats["per_method"]["d"]["model:a"]["psnr"]
    assert summary["n"] == 7 and summary["n_dropped"] == 1


def test_per_method_subject_summary_counts_dropped_slices():
    stats = statistics_from_rows(_rows(), aggregate="subject", n_resamples=200)
    assert stats["per_method"]["d"]["model:a"]["psnr"]["n_slices_dropped"] == 1
    assert stats["per_method"]["d"]["bicubic"]["psnr"]["n_slices_dropped"] == 0
    assert stats["per_method"]["d"]["bicubic"]["ssim"]["n_slices_dropped"] == 1


def test_paired_values_by_unit_refuses_mismatched_subjects():
    rows = _rows()
    a = [r for r in rows if r["method"] == "model:a"]
    b = [dict(r) for r in rows if r["method"] == "bicubic"]
    b[0]["subject"] = "Q"
    with pytest.raises(ValueError, match="belongs to subject"):
        paired_values_by_unit(a, b, "psnr", "subject")
    with pytest.raises(ValueError, match="cannot pair"):
        paired_values_by_unit(a, b[1:], "psnr", "subject")


def _hallucination_rows():
    """Two SR models with their own noise floors (ae:x, ae:y): model:a hallucinates 1-3 %, model:b 10-30 %."""
    rows = []
    rates = {"model:a": ([0.01, 0.02, 0.03], [0.05, 0.05, 0.05]), "model:b": ([0.10, 0.20, 0.30], [0.0, 0.0, 0.0])}
    for method, floor in (("model:a", "ae:x"), ("model:b", "ae:y")):
        hallucinated, lost = rates[method]
        for i in range(3):
            rows.append({"dataset": "d", "id": f"s{i}", "subject": "P", "method": method, "kind": "sr_model",
                         "noise_floor": floor, "psnr": 30.0 + i, "ssim": 0.9, "ms_ssim": math.nan,
                         "hallucinated_fraction": hallucinated[i], "lost_fraction": lost[i], "noise_floor_tau": 0.05,
                         "mean_intensity": 0.3, "hr_mean_intensity": 0.3})
    return rows


def test_cohens_h_of_the_hallucination_rates_against_the_reference():
    stats = statistics_from_rows(_hallucination_rows(), n_resamples=200)
    effects = stats["hallucination_effects"]["d"]
    assert set(effects) == {"model:b"}  # the reference (first SR model) is not compared with itself
    # the mean rates: model:a 2 % hallucinated / 5 % lost, model:b 20 % / 0 %
    assert effects["model:b"]["hallucinated_h"] == pytest.approx(
        2 * np.arcsin(np.sqrt(0.02)) - 2 * np.arcsin(np.sqrt(0.20)), abs=1e-12)
    assert effects["model:b"]["lost_h"] == pytest.approx(2 * np.arcsin(np.sqrt(0.05)), abs=1e-12)
    from LatentSRLib.evaluation.tables import tables_from_statistics
    s7 = tables_from_statistics(stats).split("## Table S7")[1].split("## Table S8")[0]
    assert "Cohen's h vs reference" in s7
    assert f"{effects['model:b']['hallucinated_h']:+.2f} / {effects['model:b']['lost_h']:+.2f}" in s7


def test_cohens_h_known_values_and_refusals():
    from LatentSRLib.metrics.statistics import cohens_h
    assert cohens_h(0.5, 0.0) == pytest.approx(math.pi / 2)    # 2 asin(sqrt(1/2)) = pi/2
    assert cohens_h(1.0, 0.0) == pytest.approx(math.pi)
    assert cohens_h(0.3, 0.3) == 0.0
    # the same difference of rates is a larger effect near 0 than near 1/2
    assert abs(cohens_h(0.02, 0.01)) > abs(cohens_h(0.51, 0.50))
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="proportion"):
            cohens_h(bad, 0.5)
