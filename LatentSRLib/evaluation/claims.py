"""The paper's claims about the autoencoder, re-tested from an evaluation's per-image rows.

The paper's thesis: the frozen autoencoder (AE) sets the fidelity ceiling of a latent diffusion SR
model, and a domain-adapted AE beats a natural-image one. The experiment that tests it trains two SR
models identical but for their AE (``generic`` and ``adapted``) and scores both, with each AE's
encode-then-decode of the TRUE slice (its ceiling, rule 1 (docs/science.md)), on the same held-out
slices (:mod:`.evaluate`). :func:`latent_space_claims` turns those rows into every number of the
report, :func:`claims_markdown` writes the report; each verdict is read off a confidence interval,
never typed:

1. the adapted AE's ceiling is higher than the generic one's (paired, adapted - generic);
2. the SR model in the adapted latent space is better (paired), and keeps how much of the ceiling gain;
3. each AE's ceiling bounds its SR model (SR - ceiling, and the share of slices above it);
4. where the gains sit in the Haar subbands (coarsest LL3 to finest HH1);
5. hallucination and loss rates beyond each AE's own noise floor, with Cohen's h;
6. the ceiling -> SR regression over every SR model of the evaluation (from its ``summary.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from LatentSRLib.errors import InputError
from LatentSRLib.evaluation.rows import SUBBAND_COLUMNS, check_paired, lpips_column
from LatentSRLib.metrics.statistics import EFFECT_SIZE_LABELS, cohens_h, compare_by_id, pair_by_id, summarise

__all__ = ["claims_markdown", "latent_space_claims", "verdict"]

#: metrics where a lower value is better (an LPIPS column is added by name)
_LOWER_IS_BETTER = ("hallucinated_fraction", "lost_fraction")


def _lower_is_better(metric: str) -> bool:
    return metric in _LOWER_IS_BETTER or "lpips" in metric


def verdict(comparison: Mapping[str, Any], metric: str, better: str = "better", worse: str = "worse") -> str:
    """``better`` / ``worse`` when the CI of ``x - y`` excludes 0 (the metric's direction applied), else
    "no difference shown"."""
    low, high = comparison["ci_low"], comparison["ci_high"]
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 <= high:
        return "no difference shown"
    higher = low > 0
    return better if higher != _lower_is_better(metric) else worse


def _values(rows: Sequence[dict], method: str, column: str) -> dict[str, float]:
    return {r["id"]: float(r[column]) for r in rows if r["method"] == method}


def _compare(rows, a: str, b: str, metric: str, n_resamples: int, seed: int) -> dict[str, Any]:
    """``a - b`` on ``metric``, paired by image id, non-finite pairs dropped and counted."""
    result = compare_by_id(_values(rows, a, metric), _values(rows, b, metric), n_resamples=n_resamples, seed=seed,
                           nonfinite="drop")
    return result.to_dict()


def _mean_difference(rows, a: str, b: str, metric: str) -> float:
    """Mean of ``a - b`` over the images finite for both, paired by id (no bootstrap: only the mean is shown)."""
    _, x, y = pair_by_id(_values(rows, a, metric), _values(rows, b, metric))
    keep = np.isfinite(x) & np.isfinite(y)
    return float((x[keep] - y[keep]).mean()) if keep.any() else math.nan


def _floor_of(rows: Sequence[dict], model: str) -> str:
    floors = {r["noise_floor"] for r in rows if r["method"] == model}
    if not floors:
        raise InputError(f"no rows of the SR model {model!r} in this evaluation")
    floor = floors.pop()
    if not floor or floors or not any(r["method"] == floor for r in rows):
        raise InputError(f"the rows of {model!r} name no autoencoder ceiling that was scored beside it")
    return floor


def latent_space_claims(rows: Sequence[dict], generic: str, adapted: str, *, n_resamples: int = 10_000,
                        seed: int = 0) -> dict[str, Any]:
    """Every number of the claims report, from per-image rows of ONE dataset (JSON-ready).

    Args:
        rows: an evaluation's ``per_image.csv`` rows (:func:`.rows.read_rows`); paired by id (rule 2).
        generic, adapted: the method names of the two SR models (e.g. ``model:runs/sr-generic/model``);
            each one's AE ceiling is the method its rows name as their noise floor.
        n_resamples, seed: the paired bootstrap of every CI.

    Returns:
        ``{"n", "metrics", "generic", "adapted", "ceiling_gain", "sr_gain", "gain_kept", "bound",
        "subbands", "hallucination"}``; comparisons are ``adapted - generic`` (or ``SR - ceiling``).

    Raises:
        InputError: rows of several datasets, unpaired rows, a model missing or without its ceiling.
    """
    datasets = {r["dataset"] for r in rows}
    if len(datasets) != 1:
        raise InputError(f"the claims are computed on one dataset at a time; these rows hold {sorted(datasets)}")
    check_paired(rows)
    if generic == adapted:
        raise InputError("the generic and the adapted SR model must be two different methods")
    floors = {"generic": _floor_of(rows, generic), "adapted": _floor_of(rows, adapted)}
    if floors["generic"] == floors["adapted"]:
        raise InputError(f"both SR models were scored against the same autoencoder ({floors['generic']!r}): "
                         "the experiment compares two autoencoders")
    lpips = lpips_column(rows)
    metrics = ["psnr", "ssim", *([lpips] if lpips else [])]
    models = {"generic": generic, "adapted": adapted}
    out: dict[str, Any] = {
        "dataset": datasets.pop(),
        "n": len({r["id"] for r in rows}),
        "metrics": metrics,
        **{role: {"model": models[role], "ceiling": floors[role]} for role in models},
    }
    out["ceiling_gain"] = {m: _compare(rows, floors["adapted"], floors["generic"], m, n_resamples, seed)
                           for m in metrics}
    out["sr_gain"] = {m: _compare(rows, adapted, generic, m, n_resamples, seed) for m in metrics}
    ceiling_db = out["ceiling_gain"]["psnr"]["mean_difference"]
    out["gain_kept"] = out["sr_gain"]["psnr"]["mean_difference"] / ceiling_db if ceiling_db else math.nan
    out["bound"] = {}
    for role, model in models.items():
        sr, ceiling = _values(rows, model, "psnr"), _values(rows, floors[role], "psnr")
        finite = [i for i in sr if math.isfinite(sr[i]) and math.isfinite(ceiling[i])]
        out["bound"][role] = {
            "psnr": _compare(rows, model, floors[role], "psnr", n_resamples, seed),
            "share_above": sum(sr[i] > ceiling[i] for i in finite) / len(finite) if finite else math.nan,
            "n": len(finite),
        }
    out["subbands"] = {
        kind: {band.removeprefix("psnr_"): _mean_difference(rows, a, b, band) for band in SUBBAND_COLUMNS}
        for kind, (a, b) in (("ceiling", (floors["adapted"], floors["generic"])), ("sr", (adapted, generic)))
    }
    rates: dict[str, dict[str, Any]] = {}
    for role, model in models.items():
        rates[role] = {}
        for kind in ("hallucinated", "lost"):
            values = np.array(list(_values(rows, model, f"{kind}_fraction").values()))
            rates[role][kind] = summarise(values, n_resamples=n_resamples, seed=seed, nonfinite="drop")
    out["hallucination"] = {
        **rates,
        "cohens_h": {kind: cohens_h(rates["adapted"][kind]["mean"], rates["generic"][kind]["mean"])
                     for kind in ("hallucinated", "lost")},
        "paired": {kind: _compare(rows, adapted, generic, f"{kind}_fraction", n_resamples, seed)
                   for kind in ("hallucinated", "lost")},
    }
    return out


# --------------------------------------------------------------------------------------- the report
def _f(value: float, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _s(value: float, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _digits(metric: str) -> int:
    return 2 if metric == "psnr" else 3


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else (f"{value:.1e}" if value < 1e-3 else f"{value:.3f}")


def _difference_row(label: str, metric: str, c: Mapping[str, Any]) -> list[str]:
    d = _digits(metric)
    return [label, metric, _f(c["mean_y"], d), _f(c["mean_x"], d),
            f"{_s(c['mean_difference'], d)} [{_s(c['ci_low'], d)}, {_s(c['ci_high'], d)}]", _p(c["p_value"]),
            _f(c["d_z"], 2), str(c["n"]), verdict(c, metric)]


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(x) for x in line) + " |" for line in lines)]


def _method_rows(summary: Mapping[str, Any], metrics: Sequence[str]) -> list[list[str]]:
    stats = summary["statistics"]
    dataset = stats["datasets"][0]
    body = []
    for m in stats["methods"][dataset]:
        s = stats["per_method"][dataset][m]
        cells = [f"`{m}`", stats["kinds"][m], str(s["n"])]
        for metric in metrics:
            v = s.get(metric)
            cells.append(f"{_f(v['mean'], _digits(metric))} ± {_f(v['sd'], _digits(metric))}" if v else "n/a")
        body.append(cells)
    return body


def _other_points(summary: Mapping[str, Any], chosen: set[str]) -> list[dict[str, Any]]:
    """The evaluation's other SR models (ceiling and SR PSNR means), from its regression points."""
    points = (summary.get("statistics") or {}).get("regression_points") or []
    return [p for p in points if p["method"] not in chosen]


def _summary_lines(claims: Mapping[str, Any], summary: Mapping[str, Any]) -> list[str]:
    """One generated sentence per claim: the verdict and the number it rests on."""
    ceiling, sr = claims["ceiling_gain"]["psnr"], claims["sr_gain"]["psnr"]
    gaps = {role: claims["bound"][role]["psnr"]["mean_difference"] for role in ("generic", "adapted")}
    bounded = all(claims["bound"][role]["psnr"]["ci_high"] < 0 for role in gaps)
    bands = claims["subbands"]["sr"]
    best_band = max(bands, key=lambda band: bands[band] if math.isfinite(bands[band]) else -math.inf)
    h = claims["hallucination"]
    lines = [
        f"1. Adapted ceiling vs generic: {verdict(ceiling, 'psnr')} by {_s(ceiling['mean_difference'], 2)} dB "
        f"[{_s(ceiling['ci_low'], 2)}, {_s(ceiling['ci_high'], 2)}].",
        f"2. SR in the adapted space vs the generic one: {verdict(sr, 'psnr')} by {_s(sr['mean_difference'], 2)} dB "
        f"[{_s(sr['ci_low'], 2)}, {_s(sr['ci_high'], 2)}], {_f(claims['gain_kept'], 2)} of the ceiling gain.",
        f"3. Each ceiling bounds its SR model: {'yes' if bounded else 'not for both'} (SR − ceiling: generic "
        f"{_s(gaps['generic'], 2)} dB, adapted {_s(gaps['adapted'], 2)} dB"
        + "".join(f"; `{p['method']}` {_s(p['sr_psnr'] - p['ae_ceiling_psnr'], 2)} dB"
                  for p in _other_points(summary, {claims['generic']['model'], claims['adapted']['model']}))
        + "). A gap far below the ceiling says the denoiser, not the autoencoder, limits that model.",
        f"4. The SR gain is largest in {best_band} ({_s(bands[best_band], 2)} dB); the ceiling gain ranges "
        f"{_s(min(claims['subbands']['ceiling'].values()), 2)} to {_s(max(claims['subbands']['ceiling'].values()), 2)} dB "
        "over the bands.",
        f"5. Hallucinated pixels, adapted vs generic: {verdict(h['paired']['hallucinated'], 'hallucinated_fraction', 'fewer', 'more')}"
        f" (Cohen's h {_s(h['cohens_h']['hallucinated'], 3)}); lost pixels: "
        f"{verdict(h['paired']['lost'], 'lost_fraction', 'fewer', 'more')} (h {_s(h['cohens_h']['lost'], 3)}).",
    ]
    regression = (summary.get("statistics") or {}).get("regression") or {}
    if "skipped" in regression or not regression:
        lines.append("6. Ceiling -> SR regression: not computed (fewer than 3 SR models).")
    else:
        shown = "shown" if regression["p_value"] < 0.05 else "not shown"
        lines.append(f"6. Ceiling -> SR regression over {regression['n']} SR models: r = {_f(regression['pearson_r'], 3)}, "
                     f"slope {_s(regression['slope'], 2)}, p = {_p(regression['p_value'])}: a positive relation is "
                     f"{shown if regression['slope'] > 0 else 'not shown'}.")
    return lines


def claims_markdown(claims: Mapping[str, Any], summary: Mapping[str, Any], *, source: str = "",
                    figures: Mapping[str, str] | None = None) -> str:
    """The report as Markdown: setup, the per-method table, then one section per claim with its verdict.

    ``summary`` is the evaluation's ``summary.json`` (settings, methods, the regression); ``source``
    says where the rows came from; ``figures`` maps a caption to a relative image path."""
    metrics = claims["metrics"]
    lpips = next((m for m in metrics if "lpips" in m), None)
    lpips_label = (summary.get("lpips") or {}).get("label") or lpips
    generic, adapted = claims["generic"], claims["adapted"]
    data = summary.get("dataset", {})
    direction = "; ".join(f"{m}: {'lower' if _lower_is_better(m) else 'higher'} is better" for m in metrics)
    lines = [
        "# Does the autoencoder set the ceiling? The paper's claims re-tested on open data",
        "",
        f"Generated from the saved per-image results{f' ({source})' if source else ''} by "
        "`Training/scripts/write_paper_report.py`; every number and verdict below is computed, none typed. "
        "A verdict is read off the 95% paired bootstrap CI of the difference: it is shown only when the CI "
        "excludes 0.",
        "",
        "## Setup",
        "",
        f"- Held-out slices: {claims['n']} ({data.get('split', '?')} split of dataset `{claims['dataset']}`; "
        f"subjects: {', '.join(data.get('subjects', [])) or '?'}); task {data.get('task', {}).get('name', '?')}; "
        "every method is scored against the TRUE high-resolution slice (rule 1).",
        f"- Generic SR model: `{generic['model']}`, in the latent space of `{generic['ceiling']}`.",
        f"- Adapted SR model: `{adapted['model']}`, in the latent space of `{adapted['ceiling']}`.",
        "- The two are identical but for the autoencoder (same data, denoiser, objective, iterations, seed "
        "and sampling): see each model's `config.json`.",
        f"- Sampling: {summary.get('settings', {}).get('samples', 1)} sample(s), steps as recorded in each "
        "model unless the evaluation set them; no data-consistency projection (the SR model alone).",
        f"- Metrics: {direction}." + (f" LPIPS: {lpips_label}." if lpips else ""),
        "",
        "### Every method (mean ± SD over the slices)",
        "",
        *_table(["method", "kind", "n", *metrics], _method_rows(summary, metrics)),
        "",
    ]
    lines += ["## Summary", "", *_summary_lines(claims, summary), ""]
    header = ["comparison", "metric", "B", "A", "A − B [95% CI]", "Wilcoxon p", "d_z", "n", "verdict for A"]
    lines += ["## Claim 1: a domain-adapted autoencoder has a higher ceiling", "",
              "A = the adapted AE's encode-then-decode of the true slice, B = the generic AE's.", "",
              *_table(header, [_difference_row("adapted AE − generic AE", m, claims["ceiling_gain"][m])
                               for m in metrics]), ""]
    lines += ["## Claim 2: the SR model in the adapted latent space is better", "",
              "A = the SR model in the adapted latent space, B = the one in the generic space.", "",
              *_table(header, [_difference_row("adapted SR − generic SR", m, claims["sr_gain"][m]) for m in metrics]),
              "", f"Share of the ceiling's PSNR gain the SR model keeps: {_f(claims['gain_kept'], 2)} "
              "(SR gain / ceiling gain, in dB).", ""]
    bound_lines = []
    for role in ("generic", "adapted"):
        b = claims["bound"][role]
        c = b["psnr"]
        bounded = ("bounded (SR below its ceiling)" if c["ci_high"] < 0 else
                   "not bounded (SR above its ceiling)" if c["ci_low"] > 0 else "at its ceiling (no difference shown)")
        bound_lines.append([role, _f(c["mean_y"], 2), _f(c["mean_x"], 2),
                            f"{_s(c['mean_difference'], 2)} [{_s(c['ci_low'], 2)}, {_s(c['ci_high'], 2)}]",
                            f"{100 * b['share_above']:.0f}%", str(b["n"]), bounded])
    chosen = {generic["model"], adapted["model"]}
    for point in _other_points(summary, chosen):
        bound_lines.append([f"`{point['method']}` (other)", _f(point["ae_ceiling_psnr"], 2), _f(point["sr_psnr"], 2),
                            _s(point["sr_psnr"] - point["ae_ceiling_psnr"], 2), "", "", "mean gap only"])
    lines += ["## Claim 3: the autoencoder's ceiling bounds its SR model", "",
              "PSNR (dB) of each SR model against its own AE's encode-then-decode of the true slice (the other SR "
              "models of the evaluation, in other latent spaces, for comparison).", "",
              *_table(["SR model", "AE ceiling", "SR", "SR − ceiling [95% CI]", "slices with SR > ceiling", "n",
                       "verdict"], bound_lines), ""]
    bands = list(claims["subbands"]["ceiling"])
    lines += ["## Claim 4: where the gains sit (Haar subband PSNR, adapted − generic, dB)", "",
              "LL3 is the coarsest approximation, HH1 the finest diagonal detail.", "",
              *_table(["difference", *bands],
                      [[kind, *(_s(claims["subbands"][key][band], 2) for band in bands)]
                       for kind, key in (("AE ceiling", "ceiling"), ("SR model", "sr"))]), ""]
    h = claims["hallucination"]
    hall_lines = []
    for kind in ("hallucinated", "lost"):
        c = h["paired"][kind]
        hall_lines.append([kind, f"{100 * h['generic'][kind]['mean']:.2f}%", f"{100 * h['adapted'][kind]['mean']:.2f}%",
                           _s(h["cohens_h"][kind], 3),
                           f"{_s(100 * c['ci_low'], 2)} to {_s(100 * c['ci_high'], 2)} pp",
                           verdict(c, f"{kind}_fraction", "fewer", "more")])
    lines += ["## Claim 5: hallucination beyond each autoencoder's own noise floor", "",
              "Share of the anatomy's pixels where SR − HR exceeds τ (hallucinated) or falls below −τ (lost), "
              f"τ = mean + {summary.get('tables', {}).get('k', 2):g} SD of that model's own AE error on the slice. "
              f"h: {EFFECT_SIZE_LABELS['cohens_h']} (adapted − generic; |h| 0.2 / 0.5 / 0.8: small / medium / "
              "large). Each rate is relative to its own AE's floor, so a better AE also sets a stricter τ.", "",
              *_table(["pixels", "generic", "adapted", "Cohen's h", "95% CI of the paired difference",
                       "verdict for adapted"], hall_lines), ""]
    regression = (summary.get("statistics") or {}).get("regression") or {}
    lines += ["## Claim 6: the ceiling predicts SR quality (every SR model of the evaluation)", ""]
    if "skipped" in regression or not regression:
        lines += [f"Not computed: {regression.get('skipped', 'no regression in the summary')}.", ""]
    else:
        points = [[f"`{label.split(' / ')[0]}`", _f(x, 2), _f(y, 2)]
                  for label, x, y in zip(regression["labels"], regression["x"], regression["y"], strict=True)]
        lines += [*_table(["SR model", "AE ceiling PSNR", "SR PSNR"], points), "",
                  f"OLS over n = {regression['n']} points (models, not images): SR = {_f(regression['slope'], 2)} × "
                  f"ceiling {_s(regression['intercept'], 2)} dB; Pearson r = {_f(regression['pearson_r'], 3)}, "
                  f"R² = {_f(regression['r_squared'], 3)}, two-sided p = {_p(regression['p_value'])} "
                  f"({regression['n'] - 2} degrees of freedom: few points make a weak test).", ""]
    for caption, path in (figures or {}).items():
        lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"
