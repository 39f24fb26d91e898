"""Every number of an evaluation's tables, computed from per-image rows (rules 7 and 9 (docs/science.md)).

:func:`statistics_from_rows` turns rows (:mod:`.rows`) into a JSON-ready dict, stored in
``summary.json`` and rendered by :mod:`.tables`: per method mean, SD, median and a bootstrap CI of
the mean; paired comparisons of every method with a reference method (the first SR model, else the
first method; differences are reference - method): mean difference with a paired bootstrap CI,
two-sided Wilcoxon signed-rank p, the paired d_z and Cohen's d with the pooled SD (both labelled),
optionally Holm-adjusted p-values within each (dataset, metric) family; n always stated. Also the
Haar subband differences, Cohen's h of the hallucination and loss rates against the reference's, the
Bland-Altman agreement of the mean intensity with the true image and
the AE ceiling -> SR quality regression (one point per SR model x dataset). Non-finite values (inf
PSNR of an exactly reproduced image) are left out and counted, never imputed. With
``aggregate="subject"`` every number is first averaged over a subject's slices, so n counts
subjects (patients): one method's summary over its own finite slices; two methods that are compared
(Table 2, the subband differences) over the SAME slices, those finite for both
(:func:`.rows.paired_values_by_unit`), so a slice non-finite for one method leaves that slice out
of both sides. ``n_slices_dropped`` counts the slices (images) left out: in a comparison those
non-finite on either side, in a method's summary its own non-finite ones; ``n_dropped`` still
counts the units (images or subjects) left out.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from LatentSRLib.metrics.agreement import bland_altman
from LatentSRLib.metrics.regression import ceiling_regression
from LatentSRLib.evaluation.rows import (AGGREGATES, SUBBAND_COLUMNS, TEXT_COLUMNS, check_paired, lpips_column, ordered,
                                        paired_values_by_unit, row_columns, values_by_unit)
from LatentSRLib.metrics.statistics import EFFECT_SIZE_LABELS, cohens_h, holm_correction, pair_by_id, paired_comparison, summarise

__all__ = ["COMPARED", "CONFIDENCE", "statistics_from_rows"]

#: metrics compared between methods (the LPIPS column is added when present)
COMPARED = ("psnr", "ssim", "ms_ssim")
CONFIDENCE = 0.95


def _summary(values: dict[Hashable, float], n_resamples: int, seed: int, n_slices_dropped: int) -> dict | None:
    array = np.array(list(values.values()), dtype=np.float64)
    if not np.isfinite(array).any():
        return None
    return {**summarise(array, n_resamples=n_resamples, seed=seed, nonfinite="drop"),
            "n_slices_dropped": int(n_slices_dropped)}


def _nonfinite_count(rows: Sequence[dict], column: str) -> int:
    """How many of one method's images have no finite value in ``column``."""
    return sum(1 for r in rows if not math.isfinite(float(r.get(column, math.nan))))


def _reference(methods: list[str], kinds: dict[str, str], wanted: str | None) -> str:
    if wanted is not None and wanted in methods:
        return wanted
    return next((m for m in methods if kinds[m] == "sr_model"), methods[0])


def _hallucination_effects(per_method: dict[str, dict], reference: str) -> dict[str, dict[str, float]]:
    """``{method: {"hallucinated_h", "lost_h"}}``: Cohen's h of the reference's mean rate minus the method's.

    Only methods with a noise floor (an autoencoder) have rates; each rate is measured against the
    method's OWN autoencoder floor, so h compares how often each model leaves its own AE's noise."""
    ref = per_method[reference]
    if not ref.get("hallucinated_fraction"):
        return {}
    effects = {}
    for m, s in per_method.items():
        if m == reference or not s.get("hallucinated_fraction"):
            continue
        effects[m] = {f"{kind}_h": cohens_h(ref[f"{kind}_fraction"]["mean"], s[f"{kind}_fraction"]["mean"])
                      for kind in ("hallucinated", "lost")}
    return effects


def statistics_from_rows(
    rows: Sequence[dict],
    *,
    reference: str | None = None,
    aggregate: str = "image",
    n_resamples: int = 10_000,
    seed: int = 0,
    holm: bool = False,
) -> dict[str, Any]:
    """Every number the tables show, as a JSON-ready dict (also stored in ``summary.json``).

    Args:
        rows: per-image rows (see :mod:`.rows`); refused unless paired (:func:`check_paired`).
        reference: the method every other is compared with (default: the first SR model, else the
            first method), per dataset.
        aggregate: ``"image"`` (n = images) or ``"subject"`` (average slices per subject first).
        n_resamples, seed: the bootstrap of the CIs.
        holm: also report Holm-adjusted p-values within each (dataset, metric) family.

    Returns:
        ``{"aggregate", "unit", "lpips_column", "datasets", "methods", "kinds", "noise_floor",
        "reference", "per_method", "comparisons", "subband_differences", "bland_altman",
        "hallucination_effects", "regression_points", "regression"}``.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    check_paired(rows)
    lpips = lpips_column(rows)
    compared = [*COMPARED, *([lpips] if lpips else [])]
    numeric = [c for c in row_columns(rows) if c not in TEXT_COLUMNS]
    datasets = ordered(r["dataset"] for r in rows)
    out: dict[str, Any] = {
        "aggregate": aggregate,
        "unit": "images" if aggregate == "image" else "subjects",
        "lpips_column": lpips,
        "confidence": CONFIDENCE,
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "holm": bool(holm),
        "effect_size_labels": dict(EFFECT_SIZE_LABELS),
        "datasets": datasets,
        "methods": {},
        "kinds": {},
        "noise_floor": {},
        "reference": {},
        "per_method": {},
        "comparisons": [],
        "subband_differences": {},
        "bland_altman": {},
        "hallucination_effects": {},
        "regression_points": [],
    }
    for dataset in datasets:
        in_dataset = [r for r in rows if r["dataset"] == dataset]
        methods = ordered(r["method"] for r in in_dataset)
        by_method = {m: [r for r in in_dataset if r["method"] == m] for m in methods}
        for m in methods:
            out["kinds"][m] = by_method[m][0]["kind"]
            out["noise_floor"][m] = by_method[m][0]["noise_floor"] or None
        ref = _reference(methods, out["kinds"], reference)
        out["methods"][dataset] = methods
        out["reference"][dataset] = ref
        values = {m: {c: values_by_unit(by_method[m], c, aggregate) for c in numeric} for m in methods}
        out["per_method"][dataset] = {
            m: {"n": len(values[m]["psnr"]),
                **{c: _summary(values[m][c], n_resamples, seed, _nonfinite_count(by_method[m], c)) for c in numeric}}
            for m in methods
        }
        # paired comparisons: reference - method
        family: dict[str, list[dict]] = {}
        defined = [c for c in compared if any(out["per_method"][dataset][m][c] for m in methods)]
        for metric in defined:
            for m in methods:
                if m == ref:
                    continue
                entry = {"dataset": dataset, "metric": metric, "reference": ref, "method": m}
                # per subject: the slices finite for BOTH methods, the same slices on both sides
                a, b, slices_dropped = paired_values_by_unit(by_method[ref], by_method[m], metric, aggregate)
                _, x, y = pair_by_id(a, b)
                keep = np.isfinite(x) & np.isfinite(y)
                entry["n_slices_dropped"] = slices_dropped
                if keep.sum() < 2:
                    entry.update(skipped=f"fewer than 2 paired finite {out['unit']} ({int(keep.sum())})",
                                 n=int(keep.sum()))
                else:
                    result = paired_comparison(x, y, n_resamples=n_resamples, seed=seed, nonfinite="drop")
                    entry.update(result.to_dict(), sd_x=float(np.std(x[keep], ddof=1)),
                                 sd_y=float(np.std(y[keep], ddof=1)))
                out["comparisons"].append(entry)
                family.setdefault(metric, []).append(entry)
        if holm:
            for entries in family.values():
                p = [e.get("p_value", math.nan) for e in entries]
                for entry, adjusted in zip(entries, holm_correction(p), strict=True):
                    entry["p_holm"] = float(adjusted)
        # subband differences (reference - method, paired, finite pairs)
        out["subband_differences"][dataset] = {}
        for m in methods:
            if m == ref:
                continue
            bands = {}
            for column in SUBBAND_COLUMNS:
                a, b, _ = paired_values_by_unit(by_method[ref], by_method[m], column, aggregate)
                _, x, y = pair_by_id(a, b)
                keep = np.isfinite(x) & np.isfinite(y)
                bands[column] = float(np.mean(x[keep] - y[keep])) if keep.any() else math.nan
            out["subband_differences"][dataset][m] = bands
        # hallucination and loss rates against the reference's: Cohen's h of the mean rates
        out["hallucination_effects"][dataset] = _hallucination_effects(out["per_method"][dataset], ref)
        # Bland-Altman of the mean intensity against the true image
        out["bland_altman"][dataset] = {}
        for m in methods:
            try:
                result = bland_altman(values[m]["mean_intensity"], values[m]["hr_mean_intensity"],
                                      nonfinite="drop", method_label=m, reference_label="HR")
                out["bland_altman"][dataset][m] = result.to_dict()
            except ValueError as exc:
                out["bland_altman"][dataset][m] = {"skipped": str(exc)}
        # AE ceiling -> SR points
        for m in methods:
            floor = out["noise_floor"][m]
            if out["kinds"][m] != "sr_model" or floor not in by_method:
                continue
            ceiling = out["per_method"][dataset][floor]["psnr"]
            sr = out["per_method"][dataset][m]["psnr"]
            if ceiling and sr:
                out["regression_points"].append({"method": m, "dataset": dataset, "autoencoder": floor,
                                                 "ae_ceiling_psnr": ceiling["mean"], "sr_psnr": sr["mean"]})
    points = out["regression_points"]
    if len(points) >= 3:
        try:
            fit = ceiling_regression({(p["method"], p["dataset"]): p["ae_ceiling_psnr"] for p in points},
                                     {(p["method"], p["dataset"]): p["sr_psnr"] for p in points})
            out["regression"] = fit.to_dict(per_point=True)
        except ValueError as exc:
            out["regression"] = {"skipped": str(exc), "n": len(points)}
    else:
        out["regression"] = {"skipped": f"the AE-ceiling regression needs at least 3 (SR model x dataset) points; "
                                        f"these rows give {len(points)}", "n": len(points)}
    return out
