"""The paper-claims report: every number recomputed by hand from per-image rows with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from LatentSRLib.errors import InputError
from LatentSRLib.evaluation.claims import claims_markdown, latent_space_claims, verdict
from LatentSRLib.evaluation.row_statistics import statistics_from_rows
from LatentSRLib.evaluation.rows import SUBBAND_COLUMNS

N = 8
RNG = np.random.default_rng(3)
BASE = 26.0 + RNG.normal(0, 1.5, N)            # per-slice difficulty, shared by every method
CEILING = {"ae:generic": BASE + 4.0 + RNG.normal(0, 0.3, N), "ae:adapted": BASE + 6.0 + RNG.normal(0, 0.3, N)}
SR = {"model:generic": BASE + 1.0 + RNG.normal(0, 0.3, N), "model:adapted": BASE + 2.0 + RNG.normal(0, 0.3, N)}
SR["model:generic"][0] = CEILING["ae:generic"][0] + 0.5   # one slice above its ceiling
HALLUCINATED = {"model:generic": np.full(N, 0.04), "model:adapted": np.full(N, 0.01)}
LOST = {"model:generic": np.full(N, 0.02), "model:adapted": np.full(N, 0.02)}


def _rows():
    rows = []
    methods = [("model:adapted", "sr_model", "ae:adapted", SR["model:adapted"]),
               ("model:generic", "sr_model", "ae:generic", SR["model:generic"]),
               ("ae:adapted", "ae_ceiling", "ae:adapted", CEILING["ae:adapted"]),
               ("ae:generic", "ae_ceiling", "ae:generic", CEILING["ae:generic"]),
               ("bicubic", "interpolation", "", BASE)]
    for method, kind, floor, psnr in methods:
        for i in range(N):
            row = {"dataset": "brats", "id": f"slice-{i}", "subject": "P", "method": method, "kind": kind,
                   "noise_floor": floor, "psnr": float(psnr[i]), "ssim": 0.8 + psnr[i] / 1000, "ms_ssim": math.nan,
                   "stlpips_alex": 0.3 - psnr[i] / 1000, "mean_intensity": 0.3, "hr_mean_intensity": 0.3,
                   "hallucinated_fraction": float(HALLUCINATED[method][i]) if method in HALLUCINATED else math.nan,
                   "lost_fraction": float(LOST[method][i]) if method in LOST else math.nan,
                   "noise_floor_tau": 0.05 if floor else math.nan}
            # the finest band carries (band index) x 0.1 of the method's PSNR: differences scale with it
            row.update({band: float(psnr[i]) * (1 + 0.1 * j) for j, band in enumerate(SUBBAND_COLUMNS)})
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def claims():
    return latent_space_claims(_rows(), "model:generic", "model:adapted", n_resamples=500)


def test_claims_ceiling_and_sr_gains_against_numpy(claims):
    assert claims["generic"]["ceiling"] == "ae:generic" and claims["adapted"]["ceiling"] == "ae:adapted"
    assert claims["n"] == N and claims["metrics"] == ["psnr", "ssim", "stlpips_alex"]
    ceiling = claims["ceiling_gain"]["psnr"]
    assert ceiling["mean_difference"] == pytest.approx(np.mean(CEILING["ae:adapted"] - CEILING["ae:generic"]))
    assert ceiling["ci_low"] > 0 and verdict(ceiling, "psnr") == "better"
    sr = claims["sr_gain"]["psnr"]
    assert sr["mean_difference"] == pytest.approx(np.mean(SR["model:adapted"] - SR["model:generic"]))
    assert claims["gain_kept"] == pytest.approx(sr["mean_difference"] / ceiling["mean_difference"])
    # LPIPS falls as PSNR rises here: the adapted AE's lower LPIPS is "better"
    assert claims["ceiling_gain"]["stlpips_alex"]["mean_difference"] < 0
    assert verdict(claims["ceiling_gain"]["stlpips_alex"], "stlpips_alex") == "better"


def test_claims_bound_subbands_and_hallucination_against_numpy(claims):
    bound = claims["bound"]["generic"]
    assert bound["psnr"]["mean_difference"] == pytest.approx(np.mean(SR["model:generic"] - CEILING["ae:generic"]))
    assert bound["share_above"] == pytest.approx(np.mean(SR["model:generic"] > CEILING["ae:generic"])) == 1 / N
    gain = np.mean(CEILING["ae:adapted"] - CEILING["ae:generic"])
    for j, band in enumerate(SUBBAND_COLUMNS):
        assert claims["subbands"]["ceiling"][band.removeprefix("psnr_")] == pytest.approx(gain * (1 + 0.1 * j))
    h = claims["hallucination"]
    assert h["cohens_h"]["hallucinated"] == pytest.approx(2 * np.arcsin(np.sqrt(0.01)) - 2 * np.arcsin(np.sqrt(0.04)))
    assert h["cohens_h"]["lost"] == pytest.approx(0.0)
    assert verdict(h["paired"]["hallucinated"], "hallucinated_fraction", "fewer", "more") == "fewer"
    assert verdict(h["paired"]["lost"], "lost_fraction") == "no difference shown"


def test_report_states_the_numbers_and_verdicts(claims):
    rows = _rows()
    summary = {"statistics": statistics_from_rows(rows, n_resamples=200),
               "dataset": {"split": "test", "subjects": ["P"], "task": {"name": "sr4"}},
               "settings": {"samples": 1}, "tables": {"k": 2.0}, "lpips": {"label": "ST-LPIPS (offline stand-in)"}}
    text = claims_markdown(claims, summary, source="runs/eval", figures={"regression": "figures/regression.png"})
    ceiling = claims["ceiling_gain"]["psnr"]
    assert f"{ceiling['mean_difference']:+.2f} [{ceiling['ci_low']:+.2f}, {ceiling['ci_high']:+.2f}]" in text
    assert "| adapted AE − generic AE | psnr |" in text and "better |" in text
    assert "12%" in text or "13%" in text   # one slice of 8 above the ceiling
    # two SR models only: the regression (needs 3 points) is reported as not computed, with the reason
    assert "Not computed: the AE-ceiling regression needs at least 3" in text
    assert "![regression](figures/regression.png)" in text


def test_claims_refuse_what_is_not_the_experiment():
    rows = _rows()
    with pytest.raises(InputError, match="two different"):
        latent_space_claims(rows, "model:generic", "model:generic")
    with pytest.raises(InputError, match="no rows"):
        latent_space_claims(rows, "model:generic", "model:missing")
    same = [dict(r, noise_floor="ae:generic") if r["method"] == "model:adapted" else r for r in rows]
    with pytest.raises(InputError, match="same autoencoder"):
        latent_space_claims(same, "model:generic", "model:adapted")
    two = rows + [dict(r, dataset="cxr") for r in rows]
    with pytest.raises(InputError, match="one dataset"):
        latent_space_claims(two, "model:generic", "model:adapted")
