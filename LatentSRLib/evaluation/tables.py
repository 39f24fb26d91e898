"""The paper's tables as Markdown (an evaluation's ``tables.md``), from per-image rows by code.

:func:`tables_from_rows` computes the statistics (:mod:`.row_statistics`) and renders them;
:func:`tables_from_statistics` renders already computed ones. Table 1 (PSNR / SSIM / MS-SSIM /
LPIPS per method), Table 2 (paired significance against the reference), S6 (Haar subband PSNR),
S7 (hallucination), S8 (latent fidelity), S9 (Bland-Altman), S11 (AE ceiling, and its link to SR
quality), S12 (FID) and the runtime; one block per dataset when rows of several datasets are
concatenated. FID is a set statistic with no per-image value: S12 renders the values an
evaluation saved (``summary.json``, ``tables.fid``, see :mod:`.fid`). Calling::

    tables_from_rows(read_rows("RUN/per_image.csv"), **json.load(open("RUN/summary.json"))["tables"])

reproduces a run's ``tables.md`` exactly (rule 9 (docs/science.md)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from LatentSRLib.evaluation.row_statistics import statistics_from_rows
from LatentSRLib.evaluation.rows import SUBBAND_COLUMNS
from LatentSRLib.metrics.statistics import EFFECT_SIZE_LABELS

__all__ = ["tables_from_rows", "tables_from_statistics"]

METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "ms_ssim": "MS-SSIM"}
BAND_DESCRIPTIONS = {"LL": "low-low (approximation)", "LH": "low-high (horizontal edges)",
                     "HL": "high-low (vertical edges)", "HH": "high-high (diagonal detail)"}


# ------------------------------------------------------------------------------------- formatting
def _number(value: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _mean_sd(summary: dict | None, digits: int, scale: float = 1.0) -> str:
    if not summary:
        return "n/a"
    text = _number(summary["mean"] * scale, digits)
    if math.isfinite(summary["sd"]):
        text += f" ± {summary['sd'] * scale:.{digits}f}"
    if summary.get("n_dropped"):
        text += f" ({summary['n_dropped']} non-finite left out)"
    return text


def _signed(value: float, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return _number(value, digits)
    return f"{value:+.{digits}f}"


def _p(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _digits(metric: str) -> int:
    return 2 if "psnr" in metric else 4


def _metric_label(metric: str, lpips_label: str | None) -> str:
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    return f"LPIPS ({metric})" if "lpips" in metric else metric


def _method_cell(name: str, kind: str) -> str:
    return f"`{name}`" + (" §" if kind == "ae_ceiling" else "")


def _band_description(column: str) -> str:
    band = column.removeprefix("psnr_")
    level = band[2:]
    text = f"{BAND_DESCRIPTIONS[band[:2]]}, level {level}"
    if band == f"LL{level}":
        text += " (coarsest)"
    if band == "HH1":
        text += " (finest detail)"
    return text


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return out


def _fid_text(fid: Mapping | None) -> str:
    if not fid or not fid.get("label"):
        reason = (fid or {}).get("reason") or "no FID values were given"
        return f"FID: not computed ({reason})."
    return f"FID: {fid['label']} (`{fid['name']}`), one value per method (Table S12)."


def _fid_table(stats: dict, fid: Mapping | None) -> list[str]:
    """Table S12 from the saved FID values ``fid["values"][dataset][method] = {"value", "n", "n_true"}``."""
    lines = ["## Table S12: FID, one value per method (a set statistic)", ""]
    if not fid or not fid.get("label"):
        return lines + [_fid_text(fid), ""]
    minimum = int(fid.get("min_samples", 2048))
    lines += [f"Fréchet distance between Gaussian fits (mean, covariance) of the features of ALL of a method's "
              f"predictions and of ALL the true high-resolution images of the split: {fid['label']}. One number "
              "per method, so no SD, CI or paired test; lower is closer to the true images. An AE ceiling's row "
              "compares reconstructions of the true images themselves.", ""]
    body, small = [], False
    for dataset in stats["datasets"]:
        values = fid.get("values", {}).get(dataset, {})
        for m in stats["methods"][dataset]:
            v = values.get(m)
            if v is None:
                body.append([dataset, _method_cell(m, stats["kinds"][m]), stats["kinds"][m], "n/a", "n/a", "n/a", ""])
                continue
            n, n_true = int(v["n"]), int(v["n_true"])
            flag = "⚠ n < " + str(minimum) if min(n, n_true) < minimum else ""
            small = small or bool(flag)
            value = v["value"]
            text = "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"
            body.append([dataset, _method_cell(m, stats["kinds"][m]), stats["kinds"][m], n, n_true, text, flag])
    lines += _table(["dataset", "method", "kind", "n (method)", "n (true)", f"{fid['name']} ↓", "note"], body)
    lines.append("")
    if small:
        lines += [f"⚠ Fewer than {minimum} images per set: FID is biased upwards at small n and the bias depends on "
                  "n, so these values are comparable only with each other (equal n), never with published FIDs.", ""]
    return lines


def tables_from_statistics(stats: dict, lpips_label: str | None = None, k: float = 2.0,
                           fid: Mapping | None = None) -> str:
    """The Markdown tables of :func:`tables_from_rows` from already computed :func:`statistics_from_rows`."""
    unit = stats["unit"]
    lpips = stats["lpips_column"]
    kinds = stats["kinds"]
    lpips_text = (f"LPIPS: {lpips_label or lpips} (column `{lpips}`)." if lpips
                  else "LPIPS: not computed (no LPIPS network was available or it was switched off).")
    level = "image" if unit == "images" else "subject (slices averaged per subject first)"
    lines = [
        "# Tables",
        "",
        f"Computed from the per-image rows by code (`tables_from_rows`). Every method is scored against the TRUE "
        f"high-resolution image; statistics are per {level}, "
        f"n counts {unit}. {lpips_text} {_fid_text(fid)} "
        "§ marks an AE ceiling: encode-then-decode of the true image, an oracle upper bound, not an SR method.",
        "",
        "## Table 1: reconstruction quality (mean ± SD)",
        "",
    ]
    body = []
    for dataset in stats["datasets"]:
        for m in stats["methods"][dataset]:
            s = stats["per_method"][dataset][m]
            body.append([dataset, _method_cell(m, kinds[m]), kinds[m], s["n"],
                         *[_mean_sd(s[c], _digits(c)) if c else "n/a" for c in ("psnr", "ssim", "ms_ssim", lpips)]])
    lpips_header = f"LPIPS ↓ ({lpips})" if lpips else "LPIPS ↓"
    lines += _table(["dataset", "method", "kind", "n", "PSNR (dB) ↑", "SSIM ↑", "MS-SSIM ↑", lpips_header], body)
    lines += ["", "n/a: not defined for these images (MS-SSIM needs at least 176x176 pixels) or not computed.", ""]

    # ---- Table 2
    holm = stats["holm"]
    labels = stats["effect_size_labels"]
    lines += ["## Table 2: paired comparisons with the reference method", "",
              f"Differences are reference − method on the same {unit} (paired by id). 95% CI: paired bootstrap, "
              f"{stats['n_resamples']} resamples, seed {stats['seed']}. p: two-sided Wilcoxon signed-rank"
              + ("; Holm: Holm-adjusted within each (dataset, metric) family." if holm else ".")
              + f" d_z: {labels['d_z']}; d (pooled): {labels['cohens_d_pooled']}.",
              ""]
    header = ["dataset", "metric", "reference", "method", "n", "reference mean ± SD", "method mean ± SD",
              "Δ (reference − method)", "95% CI", "Wilcoxon p", *(["Holm p"] if holm else []), "d_z", "d (pooled)"]
    body = []
    for c in stats["comparisons"]:
        d = _digits(c["metric"])
        if "skipped" in c:
            body.append([c["dataset"], _metric_label(c["metric"], lpips_label), f"`{c['reference']}`",
                         f"`{c['method']}`", c["n"], *(["n/a"] * (len(header) - 5 - 1)), f"skipped: {c['skipped']}"])
            continue
        dropped = f" ({c['n_dropped']} non-finite pairs left out)" if c["n_dropped"] else ""
        if c.get("n_slices_dropped"):  # subject level: slices not finite for both methods, left out of both
            dropped += f" ({c['n_slices_dropped']} unpaired slices left out of both)"
        body.append([
            c["dataset"], _metric_label(c["metric"], lpips_label), f"`{c['reference']}`", f"`{c['method']}`",
            f"{c['n']}{dropped}", f"{_number(c['mean_x'], d)} ± {_number(c['sd_x'], d)}",
            f"{_number(c['mean_y'], d)} ± {_number(c['sd_y'], d)}", _signed(c["mean_difference"], d),
            f"[{_signed(c['ci_low'], d)}, {_signed(c['ci_high'], d)}]", _p(c["p_value"]),
            *([_p(c.get("p_holm"))] if holm else []), _number(c["d_z"], 2), _number(c["cohens_d_pooled"], 2),
        ])
    lines += _table(header, body) if body else ["No comparison: one method only."]
    lines.append("")

    # ---- Table S6
    lines += ["## Table S6: Haar subband PSNR (dB, mean ± SD), coarsest (LL3) to finest (HH1)", "",
              "3-level orthonormal Haar decomposition of prediction and true image; each band's peak is the range "
              "its coefficients can span (2^level for images in [0, 1]). Δ: paired mean difference, "
              "reference − method.",
              ""]
    for dataset in stats["datasets"]:
        methods = stats["methods"][dataset]
        ref = stats["reference"][dataset]
        others = [m for m in methods if m != ref]
        header = ["subband", "description", *[f"`{m}`" for m in methods], *[f"Δ `{ref}` − `{m}`" for m in others]]
        body = []
        for column in SUBBAND_COLUMNS:
            body.append([column.removeprefix("psnr_"), _band_description(column),
                         *[_mean_sd(stats["per_method"][dataset][m][column], 2) for m in methods],
                         *[_signed(stats["subband_differences"][dataset][m][column], 2) for m in others]])
        lines += [f"### {dataset}", ""] + _table(header, body) + [""]

    # ---- Table S7
    lines += ["## Table S7: pixel-level hallucination (mean ± SD)", "",
              f"Hallucinated: SR − HR > τ; lost: SR − HR < −τ, with τ = mean + {k:g} SD of |AE − HR| of the "
              "method's "
              "own autoencoder on that image, over the anatomy (HR > 0.02, holes filled). AE-ceiling rows are their "
              "own reconstruction against their own floor (the share any SR output that equals the AE reconstruction "
              "would show). Interpolation has no autoencoder, hence no noise floor: not listed. h: "
              f"{EFFECT_SIZE_LABELS['cohens_h']}, the reference's rate against the method's (hallucinated / lost; "
              "|h| 0.2 / 0.5 / 0.8: small / medium / large).", ""]
    body = []
    for dataset in stats["datasets"]:
        effects = stats.get("hallucination_effects", {}).get(dataset, {})
        for m in stats["methods"][dataset]:
            s = stats["per_method"][dataset][m]
            if not s["hallucinated_fraction"]:
                continue
            h = effects.get(m)
            h_cell = (f"{_signed(h['hallucinated_h'], 2)} / {_signed(h['lost_h'], 2)}" if h
                      else "reference" if m == stats["reference"][dataset] else "")
            body.append([dataset, _method_cell(m, kinds[m]), f"`{stats['noise_floor'][m]}`", s["n"],
                         _mean_sd(s["hallucinated_fraction"], 2, 100.0), _mean_sd(s["lost_fraction"], 2, 100.0),
                         _mean_sd(s["noise_floor_tau"], 4), h_cell])
    lines += (_table(["dataset", "method", "noise floor from", "n", "hallucinated %", "lost %", "τ",
                      "Cohen's h vs reference"], body)
              if body else ["No method with an autoencoder noise floor."])
    lines.append("")

    # ---- Table S8
    lines += ["## Table S8: latent fidelity of SR models (mean ± SD)", "",
              "SR latents (sampler output) against the TRUE image's latents from the same autoencoder (posterior "
              "mean, normalised); cosine per channel map then averaged (1x1: one vector of channel means); latent PSNR "
              "with the HR latent's range as peak. With several samples, the per-sample values are averaged.", ""]
    body = []
    for dataset in stats["datasets"]:
        for m in stats["methods"][dataset]:
            if kinds[m] != "sr_model":
                continue
            s = stats["per_method"][dataset][m]
            body.append([dataset, f"`{m}`", s["n"], _mean_sd(s["latent_cosine"], 4), _mean_sd(s["latent_psnr"], 2),
                         _mean_sd(s["latent_cosine_1x1"], 4), _mean_sd(s["latent_psnr_1x1"], 2)])
    lines += (_table(["dataset", "method", "n", "cosine (latent grid)", "latent PSNR (dB, latent grid)",
                      "cosine (1x1)", "latent PSNR (dB, 1x1)"], body) if body else ["No SR model."])
    lines.append("")

    # ---- Table S9
    lines += ["## Table S9: Bland-Altman agreement of the mean intensity with the true image", "",
              "D = method − HR per " + unit[:-1] + "; bias = mean D, SD(D) with ddof 1, 95% limits of agreement "
              "bias ± 1.96 SD(D).", ""]
    body = []
    for dataset in stats["datasets"]:
        for m in stats["methods"][dataset]:
            b = stats["bland_altman"][dataset][m]
            if "skipped" in b:
                body.append([dataset, _method_cell(m, kinds[m]), "n/a", "n/a", "n/a", "n/a", f"n/a ({b['skipped']})"])
            else:
                body.append([dataset, _method_cell(m, kinds[m]), b["n"], _signed(b["bias"], 4),
                             _number(b["sd_difference"], 4), _signed(b["loa_low"], 4), _signed(b["loa_high"], 4)])
    lines += _table(["dataset", "method", "n", "bias", "SD(D)", "lower LoA", "upper LoA"], body)
    lines.append("")

    # ---- Table S11
    lines += ["## Table S11: autoencoder reconstruction ceiling (mean ± SD)", "",
              "Encode-then-decode (posterior mean) of the TRUE image, no diffusion, scored against the true image.", ""]
    body = []
    for dataset in stats["datasets"]:
        for m in stats["methods"][dataset]:
            if kinds[m] != "ae_ceiling":
                continue
            s = stats["per_method"][dataset][m]
            body.append([dataset, f"`{m}`", s["n"], _mean_sd(s["psnr"], 2), _mean_sd(s["ssim"], 4),
                         _mean_sd(s["ms_ssim"], 4), _mean_sd(s[lpips], 4) if lpips else "n/a",
                         _mean_sd(s["psnr_HH1"], 2)])
    lines += (_table(["dataset", "autoencoder", "n", "PSNR (dB)", "SSIM", "MS-SSIM", "LPIPS", "HH1 PSNR (dB)"], body)
              if body else ["No autoencoder ceiling."])
    lines += ["", "AE ceiling and SR quality (the regression's points):", ""]
    body = [[p["dataset"], f"`{p['method']}`", f"`{p['autoencoder']}`", _number(p["ae_ceiling_psnr"], 2),
             _number(p["sr_psnr"], 2), _signed(p["sr_psnr"] - p["ae_ceiling_psnr"], 2)]
            for p in stats["regression_points"]]
    lines += (_table(["dataset", "SR model", "autoencoder", "AE ceiling PSNR (dB)", "SR PSNR (dB)",
                      "SR − ceiling (dB)"], body) if body else ["No SR model with its ceiling."])
    fit = stats["regression"]
    lines.append("")
    if "skipped" in fit:
        lines.append(f"Regression not fitted: {fit['skipped']}.")
    else:
        lines.append(f"OLS: SR PSNR = {fit['slope']:.3f} × ceiling {fit['intercept']:+.2f}; Pearson r = "
                     f"{fit['pearson_r']:.3f}, R² = {fit['r_squared']:.3f}, p = {_p(fit['p_value'])}, "
                     f"n = {fit['n']} points.")
    lines.append("")

    # ---- Table S12
    lines += _fid_table(stats, fid)

    # ---- runtime
    lines += ["## Runtime", "", "Wall time of each method's prediction per image and sample (mean over batches; "
              "includes encode and decode for latent methods).", ""]
    body = []
    for dataset in stats["datasets"]:
        for m in stats["methods"][dataset]:
            s = stats["per_method"][dataset][m]["seconds_per_sample"]
            body.append([dataset, _method_cell(m, kinds[m]), "n/a" if not s else f"{s['mean']:.4g}"])
    lines += _table(["dataset", "method", "seconds per sample"], body)
    return "\n".join(lines) + "\n"


def tables_from_rows(
    rows: Sequence[dict],
    *,
    reference: str | None = None,
    aggregate: str = "image",
    lpips_label: str | None = None,
    k: float = 2.0,
    n_resamples: int = 10_000,
    seed: int = 0,
    holm: bool = False,
    fid: Mapping | None = None,
) -> str:
    """The paper's tables as Markdown, computed from per-image rows (an evaluation's ``tables.md``).

    Table 1 (PSNR / SSIM / MS-SSIM / LPIPS per method), Table 2 (paired significance against the
    reference), S6 (Haar subband PSNR), S7 (hallucination), S8 (latent fidelity), S9 (Bland-Altman),
    S11 (AE ceiling, and its link to SR quality), S12 (FID) and the runtime. ``lpips_label`` names
    the LPIPS network in the text; ``k`` is the hallucination noise-floor multiplier the rows were
    computed with (text only); ``fid`` holds the saved FID values (``summary.json``'s
    ``tables.fid``: ``name``, ``label``, ``reason``, ``min_samples`` and
    ``values[dataset][method] = {"value", "n", "n_true"}``), ``None`` when FID was not computed.
    The other arguments are those of :func:`statistics_from_rows`.

    Raises:
        ValueError: rows that do not pair (see :func:`check_paired`).
    """
    stats = statistics_from_rows(rows, reference=reference, aggregate=aggregate, n_resamples=n_resamples,
                                 seed=seed, holm=holm)
    return tables_from_statistics(stats, lpips_label, k, fid)
