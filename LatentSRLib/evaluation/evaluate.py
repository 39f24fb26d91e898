"""Evaluate SR methods on one split of a prepared dataset: per-image scores, statistics, the paper's
tables and figures, and a report, in one run folder.

Every method (:mod:`.methods`) is scored against the TRUE high-resolution slice (design rule 1),
image by image; rows are paired by image id (rule 2) and every statistic is paired (rule 7). The
run folder, written atomically (an interrupted run leaves the previous one or nothing)::

    RUN_DIR/
      per_image.csv         one row per (image, method), columns below
      summary.json          settings, dataset, methods, networks, every statistic, the files
      tables.md             Table 1, 2, S6, S7, S8, S9, S11 and the runtime, from per_image.csv by code
      report.md             settings, methods, networks, the tables and the figures together
      radial_spectrum.csv   mean radial power spectrum of every method and of the true image
      examples.npz          a few example slices (HR, LR, every prediction) the image figures are drawn from
      perception_distortion.png, metric_bars.png, subband_profile.png, radial_spectrum.png,
      examples.png, hallucination_<n>.png (one per SR model), bland_altman.png,
      ceiling_regression.png (only with at least 3 SR-model x dataset points)

LPIPS is computed by :class:`.perceptual.LPIPSMetric` and its network named in the column, the
tables, the figures and the report (the offline ST-LPIPS stand-in is labelled as such). FID is not
computed yet.

Per-image rows -> statistics -> tables (design rule 9). Everything after the scoring, the
statistics in ``summary.json``, every table in ``tables.md`` and every figure, is computed from the
rows as read back from ``per_image.csv`` (and from ``radial_spectrum.csv`` / ``examples.npz`` for
the spectrum and the image montages). Calling::

    tables_from_rows(read_rows("RUN/per_image.csv"), **json.load(open("RUN/summary.json"))["tables"])

reproduces ``tables.md`` exactly. Rows of several evaluations (other datasets) may be concatenated:
every table then has one block per dataset, and the AE-ceiling regression gets one point per
(SR model x dataset).

Columns of a row: ``dataset, id, subject, method, kind, noise_floor`` (text), then numbers:
``psnr, ssim, ms_ssim``, the LPIPS column named for its network (``lpips_alex`` for the published
AlexNet LPIPS, ``stlpips_alex`` for the offline stand-in; absent when LPIPS was not computed),
``psnr_LL3 .. psnr_HH1`` (Haar subbands), ``hallucinated_fraction, lost_fraction,
noise_floor_tau``, ``latent_cosine, latent_psnr`` (full latent grid) and ``latent_cosine_1x1,
latent_psnr_1x1``, ``mean_intensity, hr_mean_intensity``, ``seconds_per_sample``. NaN marks a
number that does not apply or is undefined:

* hallucination: only methods with an autoencoder noise floor have numbers: an SR model against
  its own autoencoder's ceiling, an AE ceiling against itself (the share of its own error beyond
  its floor, i.e. what an SR output equal to the AE reconstruction would show); interpolation has
  no autoencoder, hence NaN;
* latent fidelity: SR models only; MS-SSIM: NaN below 176x176 pixels.

Statistics (design rule 7): per method mean, SD, median and a bootstrap CI of the mean; paired
comparisons of every method with a reference method (the first SR model, else the first method;
differences are reference - method): mean difference with a paired bootstrap CI, two-sided
Wilcoxon signed-rank p, the paired d_z and Cohen's d with the pooled SD (both labelled), optionally
Holm-adjusted p-values within each (dataset, metric) family; n always stated. Non-finite values
(inf PSNR of an exactly reproduced image) are left out and counted, never imputed. With
``aggregate="subject"`` every number is first averaged over a subject's slices (finite values
only), so n counts subjects (patients).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import textwrap
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import InputError, OutputError
from ..io.atomic import atomic_directory, atomic_path, refuse_overwriting_inputs
from .agreement import bland_altman, save_bland_altman_figure
from .frequency import SUBBANDS, haar_subband_psnr, radial_power_spectrum
from .hallucination import BACKGROUND_LEVEL, hallucination_maps, save_hallucination_figure
from .latent_fidelity import latent_fidelity
from .methods import BuildContext, Method, MethodBatch, build_methods
from .metrics import ms_ssim, ms_ssim_size_problem, psnr, ssim
from .regression import ceiling_regression, save_ceiling_regression_figure
from .statistics import EFFECT_SIZE_LABELS, holm_correction, pair_by_id, paired_comparison, summarise

__all__ = [
    "AGGREGATES",
    "EVALUATION_FORMAT",
    "NUMERIC_COLUMNS",
    "TEXT_COLUMNS",
    "EvaluationResult",
    "check_paired",
    "evaluate",
    "is_evaluation_folder",
    "load_examples",
    "lpips_column",
    "read_rows",
    "read_spectra",
    "save_examples",
    "save_examples_figure",
    "save_metric_bars_figure",
    "save_perception_distortion_figure",
    "save_radial_spectrum_figure",
    "save_subband_profile_figure",
    "statistics_from_rows",
    "tables_from_rows",
    "tables_from_statistics",
    "write_rows",
    "write_spectra",
]

EVALUATION_FORMAT = "latentsr.evaluation"
_VERSION = 1
SUMMARY_FILE = "summary.json"
EXAMPLES = 3

logger = logging.getLogger(__name__)


# ============================================================== per-image rows, statistics, tables
AGGREGATES = ("image", "subject")
TEXT_COLUMNS = ("dataset", "id", "subject", "method", "kind", "noise_floor")
SUBBAND_COLUMNS = tuple(f"psnr_{band}" for band in SUBBANDS)
#: numeric columns in file order; the LPIPS column (named for its network) follows ``ms_ssim``
NUMERIC_COLUMNS = (
    "psnr", "ssim", "ms_ssim", *SUBBAND_COLUMNS,
    "hallucinated_fraction", "lost_fraction", "noise_floor_tau",
    "latent_cosine", "latent_psnr", "latent_cosine_1x1", "latent_psnr_1x1",
    "mean_intensity", "hr_mean_intensity", "seconds_per_sample",
)
#: metrics compared between methods (the LPIPS column is added when present)
COMPARED = ("psnr", "ssim", "ms_ssim")
METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "ms_ssim": "MS-SSIM"}
BAND_DESCRIPTIONS = {"LL": "low-low (approximation)", "LH": "low-high (horizontal edges)",
                     "HL": "high-low (vertical edges)", "HH": "high-high (diagonal detail)"}
CONFIDENCE = 0.95


# ------------------------------------------------------------------------------------- rows on disk
def lpips_column(rows_or_columns: Iterable) -> str | None:
    """The LPIPS column of these rows (its name says which network computed it), or ``None``."""
    items = list(rows_or_columns)
    columns = list(items[0]) if items and isinstance(items[0], dict) else [str(c) for c in items]
    return next((c for c in columns if "lpips" in c), None)


def _columns(rows: Sequence[dict]) -> list[str]:
    lpips = lpips_column(rows)
    numeric = list(NUMERIC_COLUMNS)
    if lpips is not None:
        numeric.insert(3, lpips)
    return [*TEXT_COLUMNS, *numeric]


def write_rows(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write rows as CSV; floats as Python's shortest round-trip repr, so reading them back is exact."""
    path = Path(path)
    columns = _columns(rows)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: (repr(float(row[c])) if c not in TEXT_COLUMNS else row[c]) for c in columns})
    return path


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Read a ``per_image.csv``: text columns as strings, every other column as float (NaN, inf kept)."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in TEXT_COLUMNS + ("psnr",) if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"missing column(s) {', '.join(missing)}")
            rows = [{k: (v if k in TEXT_COLUMNS else float(v) if v != "" else math.nan) for k, v in r.items()}
                    for r in reader]
    except (OSError, ValueError) as exc:
        raise InputError(f"not a per-image result file: {exc}", path) from None
    if not rows:
        raise InputError("no rows in this per-image result file", path)
    return rows


# ------------------------------------------------------------------------------------- grouping
def _ordered(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(value, None)
    return list(seen)


def check_paired(rows: Sequence[dict]) -> None:
    """Refuse rows that do not pair (design rule 2): within each dataset every method must have
    exactly the same image ids, each once.

    Raises:
        ValueError: naming the method, the dataset and the first ids that do not pair.
    """
    if not rows:
        raise ValueError("no rows")
    for dataset in _ordered(r["dataset"] for r in rows):
        in_dataset = [r for r in rows if r["dataset"] == dataset]
        methods = _ordered(r["method"] for r in in_dataset)
        first: dict[str, float] | None = None
        for method in methods:
            ids = [r["id"] for r in in_dataset if r["method"] == method]
            if len(set(ids)) != len(ids):
                twice = sorted({i for i in ids if ids.count(i) > 1})
                raise ValueError(f"dataset {dataset!r}, method {method!r}: image id(s) given twice: {twice[:5]}")
            keyed = dict.fromkeys(ids, 0.0)
            if first is None:
                first, first_method = keyed, method
                continue
            try:
                pair_by_id(first, keyed)
            except ValueError as exc:
                raise ValueError(f"dataset {dataset!r}: methods {first_method!r} and {method!r} were not scored on "
                                 f"the same images, refusing to compare them: {exc}") from None


def _values(rows: Sequence[dict], column: str, aggregate: str) -> dict[Hashable, float]:
    """``{image id: value}``, or ``{subject: mean of the finite values of its images}`` (NaN if none)."""
    if aggregate == "image":
        return {r["id"]: float(r.get(column, math.nan)) for r in rows}
    groups: dict[Hashable, list[float]] = {}
    for r in rows:
        groups.setdefault(r["subject"], []).append(float(r.get(column, math.nan)))
    out = {}
    for subject, values in groups.items():
        finite = [v for v in values if math.isfinite(v)]
        out[subject] = float(np.mean(finite)) if finite else math.nan
    return out


def _summary(values: dict[Hashable, float], n_resamples: int, seed: int) -> dict | None:
    array = np.array(list(values.values()), dtype=np.float64)
    if not np.isfinite(array).any():
        return None
    return summarise(array, n_resamples=n_resamples, seed=seed, nonfinite="drop")


def _reference(methods: list[str], kinds: dict[str, str], wanted: str | None) -> str:
    if wanted is not None and wanted in methods:
        return wanted
    return next((m for m in methods if kinds[m] == "sr_model"), methods[0])


# ------------------------------------------------------------------------------------- statistics
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
        rows: per-image rows (see the module docstring); refused unless paired (:func:`check_paired`).
        reference: the method every other is compared with (default: the first SR model, else the
            first method), per dataset.
        aggregate: ``"image"`` (n = images) or ``"subject"`` (average slices per subject first).
        n_resamples, seed: the bootstrap of the CIs.
        holm: also report Holm-adjusted p-values within each (dataset, metric) family.

    Returns:
        ``{"aggregate", "unit", "lpips_column", "datasets", "methods", "kinds", "noise_floor",
        "reference", "per_method", "comparisons", "subband_differences", "bland_altman",
        "regression_points", "regression"}``.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    check_paired(rows)
    lpips = lpips_column(rows)
    compared = [*COMPARED, *([lpips] if lpips else [])]
    numeric = [c for c in _columns(rows) if c not in TEXT_COLUMNS]
    datasets = _ordered(r["dataset"] for r in rows)
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
        "regression_points": [],
    }
    for dataset in datasets:
        in_dataset = [r for r in rows if r["dataset"] == dataset]
        methods = _ordered(r["method"] for r in in_dataset)
        by_method = {m: [r for r in in_dataset if r["method"] == m] for m in methods}
        for m in methods:
            out["kinds"][m] = by_method[m][0]["kind"]
            out["noise_floor"][m] = by_method[m][0]["noise_floor"] or None
        ref = _reference(methods, out["kinds"], reference)
        out["methods"][dataset] = methods
        out["reference"][dataset] = ref
        values = {m: {c: _values(by_method[m], c, aggregate) for c in numeric} for m in methods}
        out["per_method"][dataset] = {
            m: {"n": len(values[m]["psnr"]), **{c: _summary(values[m][c], n_resamples, seed) for c in numeric}}
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
                _, x, y = pair_by_id(values[ref][metric], values[m][metric])
                keep = np.isfinite(x) & np.isfinite(y)
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
                _, x, y = pair_by_id(values[ref][column], values[m][column])
                keep = np.isfinite(x) & np.isfinite(y)
                bands[column] = float(np.mean(x[keep] - y[keep])) if keep.any() else math.nan
            out["subband_differences"][dataset][m] = bands
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


def tables_from_statistics(stats: dict, lpips_label: str | None = None, k: float = 2.0) -> str:
    """The Markdown tables of :func:`tables_from_rows` from already computed :func:`statistics_from_rows`."""
    unit = stats["unit"]
    lpips = stats["lpips_column"]
    kinds = stats["kinds"]
    metrics = [*COMPARED, *([lpips] if lpips else [])]
    lpips_text = (f"LPIPS: {lpips_label or lpips} (column `{lpips}`)." if lpips
                  else "LPIPS: not computed (no LPIPS network was available or it was switched off).")
    level = "image" if unit == "images" else "subject (slices averaged per subject first)"
    lines = [
        "# Tables",
        "",
        f"Computed from the per-image rows by code (`tables_from_rows`). Every method is scored against the TRUE "
        f"high-resolution image; statistics are per {level}, "
        f"n counts {unit}. {lpips_text} FID is not computed yet. "
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
              "would show). Interpolation has no autoencoder, hence no noise floor: not listed.", ""]
    body = []
    for dataset in stats["datasets"]:
        for m in stats["methods"][dataset]:
            s = stats["per_method"][dataset][m]
            if not s["hallucinated_fraction"]:
                continue
            body.append([dataset, _method_cell(m, kinds[m]), f"`{stats['noise_floor'][m]}`", s["n"],
                         _mean_sd(s["hallucinated_fraction"], 2, 100.0), _mean_sd(s["lost_fraction"], 2, 100.0),
                         _mean_sd(s["noise_floor_tau"], 4)])
    lines += (_table(["dataset", "method", "noise floor from", "n", "hallucinated %", "lost %", "τ"], body)
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
) -> str:
    """The paper's tables as Markdown, computed from per-image rows (an evaluation's ``tables.md``).

    Table 1 (PSNR / SSIM / MS-SSIM / LPIPS per method), Table 2 (paired significance against the
    reference), S6 (Haar subband PSNR), S7 (hallucination), S8 (latent fidelity), S9 (Bland-Altman),
    S11 (AE ceiling, and its link to SR quality) and the runtime. ``lpips_label`` names the LPIPS
    network in the text; ``k`` is the hallucination noise-floor multiplier the rows were computed
    with (text only). The other arguments are those of :func:`statistics_from_rows`.

    Raises:
        ValueError: rows that do not pair (see :func:`check_paired`).
    """
    stats = statistics_from_rows(rows, reference=reference, aggregate=aggregate, n_resamples=n_resamples,
                                 seed=seed, holm=holm)
    return tables_from_statistics(stats, lpips_label, k)


# ============================================================== figures
# Each drawn from saved results (summary statistics, radial_spectrum.csv, examples.npz), written
# atomically as PNG with matplotlib's Agg canvas (no pyplot, no global state).
_KIND_MARKERS = {"interpolation": "s", "sr_model": "o", "external": "^", "ae_ceiling": "D"}
_KIND_COLOURS = {"interpolation": "#7f7f7f", "sr_model": "#1f77b4", "external": "#2ca02c", "ae_ceiling": "#9ecae1"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return target


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


# ------------------------------------------------------------------------------------- saved data
def write_spectra(path: str | os.PathLike, frequencies: np.ndarray, spectra: Mapping[str, np.ndarray]) -> Path:
    """Write mean radial power spectra as CSV: ``frequency`` then one column per curve (``HR`` first)."""
    target = Path(path)
    names = list(spectra)
    with atomic_path(target) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frequency", *names])
        for i, f in enumerate(frequencies):
            writer.writerow([repr(float(f)), *[repr(float(spectra[n][i])) for n in names]])
    return target


def read_spectra(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(frequencies, {curve name: mean power})`` from :func:`write_spectra`'s file."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], np.array([[float(v) for v in r] for r in rows[1:]], dtype=np.float64)
    return body[:, 0], {name: body[:, i + 1] for i, name in enumerate(header[1:])}


def save_examples(path: str | os.PathLike, ids: Sequence[str], hr: np.ndarray, lr: np.ndarray,
                  predictions: Mapping[str, np.ndarray]) -> Path:
    """Store example slices ``(E, H, W)``: the true image, the LR input and every method's prediction."""
    target = Path(path)
    names = list(predictions)
    arrays = {"ids": np.array(list(ids), dtype=str), "methods": np.array(names, dtype=str),
              "hr": np.asarray(hr, np.float32), "lr": np.asarray(lr, np.float32)}
    arrays.update({f"prediction_{i}": np.asarray(predictions[n], np.float32) for i, n in enumerate(names)})
    with atomic_path(target) as tmp:
        with tmp.open("wb") as handle:
            np.savez_compressed(handle, **arrays)
    return target


def load_examples(path: str | os.PathLike) -> dict:
    """``{"ids", "hr", "lr", "predictions": {method: (E, H, W)}}`` from :func:`save_examples`'s file."""
    with np.load(path, allow_pickle=False) as data:
        names = [str(n) for n in data["methods"]]
        return {"ids": [str(i) for i in data["ids"]], "hr": data["hr"], "lr": data["lr"],
                "predictions": {n: data[f"prediction_{i}"] for i, n in enumerate(names)}}


# ------------------------------------------------------------------------------------- plots
def save_perception_distortion_figure(path: str | os.PathLike, stats: dict, dataset: str,
                                      lpips_label: str | None = None) -> Path | None:
    """LPIPS (y, lower is better) against PSNR (x, higher is better), mean ± SD per method.

    Returns ``None`` (nothing written) when the statistics hold no LPIPS column.
    """
    lpips = stats["lpips_column"]
    if not lpips:
        return None
    fig = _figure(6.5, 4.8)
    ax = fig.add_subplot()
    for m in stats["methods"][dataset]:
        s = stats["per_method"][dataset][m]
        if not s["psnr"] or not s[lpips]:
            continue
        kind = stats["kinds"][m]
        ax.errorbar(s["psnr"]["mean"], s[lpips]["mean"], xerr=np.nan_to_num(s["psnr"]["sd"]),
                    yerr=np.nan_to_num(s[lpips]["sd"]), fmt=_KIND_MARKERS.get(kind, "o"),
                    color=_KIND_COLOURS.get(kind, "k"), capsize=3, label=f"{_short(m)} ({kind})")
        ax.annotate(_short(m, 22), (s["psnr"]["mean"], s[lpips]["mean"]), xytext=(5, 4), textcoords="offset points",
                    fontsize=7)
    ax.set_xlabel("PSNR (dB) vs true HR  → better")
    ax.set_ylabel(f"LPIPS ({lpips})  ↓ better")
    ax.set_title(f"Perception-distortion, {dataset} (mean ± SD, n = {_n(stats, dataset)} {stats['unit']})"
                 + _network_line(lpips, lpips_label), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _network_line(column: str, label: str | None) -> str:
    """The LPIPS network named under a title (design rule 10), wrapped."""
    return "\n" + textwrap.fill(f"{column}: {label or 'LPIPS network not recorded'}", 90)


def _n(stats: dict, dataset: str) -> int:
    return max(stats["per_method"][dataset][m]["n"] for m in stats["methods"][dataset])


def save_metric_bars_figure(path: str | os.PathLike, stats: dict, dataset: str,
                            lpips_label: str | None = None) -> Path:
    """One panel per metric with values: bars of the mean, error bars the 95% bootstrap CI of the mean."""
    lpips = stats["lpips_column"]
    methods = stats["methods"][dataset]
    metrics = [c for c in ("psnr", "ssim", "ms_ssim", lpips) if c and any(
        stats["per_method"][dataset][m][c] for m in methods)]
    fig = _figure(max(4.0, 0.9 * len(methods) + 1.5) * len(metrics) / 1.6, 4.5)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    labels = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "ms_ssim": "MS-SSIM ↑"}
    for ax, metric in zip(axes, metrics, strict=True):
        means, low, high, colours = [], [], [], []
        for m in methods:
            s = stats["per_method"][dataset][m][metric]
            mean = s["mean"] if s else math.nan
            means.append(mean)
            low.append(mean - s["ci_low"] if s and math.isfinite(s["ci_low"]) else 0.0)
            high.append(s["ci_high"] - mean if s and math.isfinite(s["ci_high"]) else 0.0)
            colours.append(_KIND_COLOURS.get(stats["kinds"][m], "k"))
        x = np.arange(len(methods))
        ax.bar(x, means, yerr=[low, high], color=colours, capsize=3, edgecolor="black", linewidth=0.5)
        ax.set_xticks(x, [_short(m, 18) for m in methods], rotation=35, ha="right", fontsize=7)
        ax.set_title(labels.get(metric, f"LPIPS ({metric}) ↓"), fontsize=8)
        finite = [v for v in means if math.isfinite(v)]
        if metric == "psnr" and finite:
            ax.set_ylim(min(finite) - 3, max(finite) + 2)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{dataset}: mean with 95% bootstrap CI (n = {_n(stats, dataset)} {stats['unit']})"
                 + (_network_line(lpips, lpips_label) if lpips in metrics else ""), fontsize=8)
    return _save(fig, path)


def save_subband_profile_figure(path: str | os.PathLike, stats: dict, dataset: str) -> Path:
    """Mean PSNR in each of the ten Haar subbands (LL3 .. HH1) per method."""
    fig = _figure(8, 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(SUBBANDS))
    for m in stats["methods"][dataset]:
        s = stats["per_method"][dataset][m]
        values = [s[f"psnr_{b}"]["mean"] if s[f"psnr_{b}"] else np.nan for b in SUBBANDS]
        kind = stats["kinds"][m]
        ax.plot(x, values, marker=_KIND_MARKERS.get(kind, "o"), label=_short(m, 40),
                linestyle="--" if kind == "ae_ceiling" else "-")
    ax.set_xticks(x, SUBBANDS)
    ax.set_xlabel("Haar subband (coarsest to finest)")
    ax.set_ylabel("PSNR (dB) vs true HR")
    ax.set_title(f"Subband profile, {dataset} (mean, n = {_n(stats, dataset)} {stats['unit']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def save_radial_spectrum_figure(path: str | os.PathLike, frequencies: np.ndarray,
                                spectra: Mapping[str, np.ndarray], *, title: str = "") -> Path:
    """Mean radial power spectra (log scale); the curve named ``HR`` (the true image) is drawn black."""
    fig = _figure(7, 4.2)
    ax = fig.add_subplot()
    for name, power in spectra.items():
        keep = (frequencies > 0) & np.isfinite(power) & (power > 0)
        style = {"color": "black", "linewidth": 2.2} if name == "HR" else {"linewidth": 1.2}
        ax.semilogy(frequencies[keep], power[keep], label="HR (true)" if name == "HR" else _short(name, 40), **style)
    ax.set_xlabel("radial frequency (cycles/pixel)")
    ax.set_ylabel("mean power")
    ax.set_title(title or "Radial power spectrum", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


def save_examples_figure(path: str | os.PathLike, examples: dict) -> Path:
    """Per example two rows: HR and every method's output; the LR input and every signed error (method − HR)."""
    names = list(examples["predictions"])
    count = len(examples["ids"])
    columns = 1 + len(names)
    fig = _figure(2.0 * columns, 4.1 * count)
    axes = fig.subplots(2 * count, columns, squeeze=False)
    for e in range(count):
        hr = examples["hr"][e]
        errors = [examples["predictions"][n][e] - hr for n in names]
        limit = max([float(np.abs(d).max()) for d in errors] + [1e-6])
        top, bottom = axes[2 * e], axes[2 * e + 1]
        top[0].imshow(hr, cmap="gray", vmin=0, vmax=1)
        top[0].set_title(f"HR (true)\n{_short(examples['ids'][e], 30)}", fontsize=6)
        bottom[0].imshow(examples["lr"][e], cmap="gray", vmin=0, vmax=1)
        bottom[0].set_title("LR input (HR grid)", fontsize=6)
        for j, name in enumerate(names, start=1):
            top[j].imshow(examples["predictions"][name][e], cmap="gray", vmin=0, vmax=1)
            top[j].set_title(_short(name, 24), fontsize=6)
            image = bottom[j].imshow(errors[j - 1], cmap="RdBu_r", vmin=-limit, vmax=limit)
            bottom[j].set_title(f"method − HR (±{limit:.2f})", fontsize=6)
        fig.colorbar(image, ax=list(bottom), shrink=0.7)
    for ax in axes.ravel():
        ax.set_axis_off()
    return _save(fig, path, dpi=100)


# ============================================================== the run
@dataclass
class EvaluationResult:
    """What an evaluation wrote (the same numbers as in its run folder)."""

    outdir: Path
    rows: list[dict] = field(repr=False)
    summary: dict = field(repr=False)
    tables: str = field(repr=False)
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def is_evaluation_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a previous evaluation (its ``summary.json`` says so)."""
    path = Path(folder) / SUMMARY_FILE
    try:
        return json.loads(path.read_text()).get("format") == EVALUATION_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_outdir(outdir: Path, inputs: Sequence[Path]) -> None:
    """Refuse a run folder that would write over or into an input, or over someone else's files."""
    refuse_overwriting_inputs(outdir, inputs)
    target = outdir.resolve()
    for source in inputs:
        if source.is_dir():
            try:
                target.relative_to(source.resolve())
            except ValueError:
                continue
            raise OutputError(f"the run folder must not be inside an input folder ({source})", outdir)
    if outdir.exists():
        if not outdir.is_dir():
            raise OutputError("a file is in the way of this run folder", outdir)
        if any(outdir.iterdir()) and not is_evaluation_folder(outdir):
            raise OutputError("this folder holds other files and is not a previous evaluation; choose a new or "
                              "empty folder (a previous evaluation folder is replaced as a whole)", outdir)


def _check_arguments(methods, split, limit, samples, batch_size, k, n_resamples, aggregate) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]
    if methods is None or not list(methods):
        raise InputError("no methods: pass --methods \"['model:RUN/model','bicubic']\" (a list)")
    if aggregate not in AGGREGATES:
        raise InputError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    if split not in ("train", "val", "test"):
        raise InputError(f"unknown split {split!r}; use train, val or test")
    checks = [(limit is None or int(limit) >= 1, f"limit must be >= 1, got {limit}"),
              (int(samples) >= 1, f"samples must be >= 1, got {samples}"),
              (int(batch_size) >= 1, f"batch_size must be >= 1, got {batch_size}"),
              (math.isfinite(float(k)) and float(k) >= 0, f"k must be a finite number >= 0, got {k}"),
              (int(n_resamples) >= 1, f"n_resamples must be >= 1, got {n_resamples}")]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    return [str(m) for m in methods]


def _example_positions(n: int, count: int = EXAMPLES) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, min(count, n)).round().astype(int).tolist()))


def evaluate(
    dataset_dir: str | os.PathLike,
    methods: Sequence[str] | str,
    outdir: str | os.PathLike,
    *,
    split: str = "test",
    limit: int | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    lpips: bool = True,
    lpips_download: bool = True,
    k: float = 2.0,
    n_resamples: int = 10_000,
    holm: bool = False,
    aggregate: str = "image",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Score ``methods`` on a split of a prepared dataset against the true HR slices; write a run folder.

    Args:
        dataset_dir: a folder written by ``latentsr prepare`` (HR/LR pairs, subject splits).
        methods: method names (see :mod:`.methods`): ``"model:FOLDER"``, ``"ae:SPEC"``, ``"bicubic"``,
            ``"lanczos"`` or a prefix registered in ``METHOD_BUILDERS``. Each SR model's own AE
            ceiling is added when not listed.
        outdir: the run folder (a new or empty folder, or a previous evaluation, replaced as a whole).
        split: ``"test"`` (default), ``"val"`` or ``"train"``.
        limit: evaluate an evenly spaced subset of this many slices.
        steps, sampler: sampling of SR models (default: what each model recorded).
        samples: K samples per image for SR models; the prediction is their mean image.
        seed: start noise of image ``id``, sample ``k`` depends on ``seed``, the id and ``k`` only;
            also the bootstrap seed.
        batch_size: slices per batch.
        device: ``"auto"`` (CUDA, MPS, CPU), ``"cuda"``, ``"cpu"``...
        lpips: compute LPIPS when a network is available (its name goes into the column and tables).
        lpips_download: let torchvision download the ImageNet AlexNet weights of the published LPIPS
            when they are not cached; without them the offline ST-LPIPS stand-in is used (labelled).
        k: hallucination noise floor, ``tau = mean + k * SD`` of ``|AE - HR|``.
        n_resamples: bootstrap resamples of every CI.
        holm: Holm-adjust the p-values within each (dataset, metric) family.
        aggregate: ``"image"`` (n = slices) or ``"subject"`` (slices averaged per subject first).
        progress: show a progress bar.
        log: where one-line messages go (default: this module's logger).

    Returns:
        :class:`EvaluationResult`.

    Raises:
        InputError: a missing or damaged dataset, an empty split, a method that cannot be built or
            does not fit the dataset (grid, task), bad arguments.
        OutputError: a run folder that is not new, empty or a previous evaluation, or that would
            write over or into an input.
    """
    from tqdm.auto import tqdm

    from ..inference.devices import resolve_device
    from ..training.dataset import PreparedDataset
    from .perceptual import LPIPSMetric

    say = log or logger.info
    names = _check_arguments(methods, split, limit, samples, batch_size, k, n_resamples, aggregate)
    if not dataset_dir:
        raise InputError("no dataset: pass --dataset_dir DATASET_DIR (a folder written by `latentsr prepare`)")
    dataset = PreparedDataset(dataset_dir)
    outdir = Path(outdir)
    _check_outdir(outdir, [dataset.folder])
    items = dataset.items(split, None if limit is None else int(limit))
    if not items:
        raise InputError(f"the dataset has no {split!r} slices", dataset.folder)
    torch_device = resolve_device(device)
    context = BuildContext(dataset=dataset, device=torch_device, steps=steps, sampler=sampler,
                           samples=int(samples), seed=int(seed))
    built = build_methods(names, context)
    _check_outdir(outdir, [dataset.folder, *[p for m in built for p in m.inputs]])

    perceptual = None
    lpips_info = {"column": None, "label": None, "reason": "switched off (lpips=False)"}
    if lpips:
        perceptual = LPIPSMetric(device=torch_device, allow_download=bool(lpips_download))
        if perceptual.available:
            lpips_info = {"column": perceptual.name, "label": perceptual.label, "reason": perceptual.reason}
            say(f"LPIPS network: {perceptual.label}")
        else:
            lpips_info = {"column": None, "label": None, "reason": perceptual.reason}
            say(f"LPIPS skipped: {perceptual.reason}")
            perceptual = None

    height, width = dataset.size
    notes: list[str] = []
    ms_problem = ms_ssim_size_problem(height, width)
    if ms_problem:
        notes.append(f"MS-SSIM is n/a: {ms_problem}.")
    dataset_name = dataset.folder.name
    example_rows = {items[i]["row"] for i in _example_positions(len(items))}
    examples = {"ids": [], "hr": [], "lr": [], "predictions": {m.name: [] for m in built}}
    spectra: dict[str, np.ndarray] = {}
    frequencies = None
    rows: list[dict] = []
    started = time.perf_counter()
    bar = tqdm(total=len(items), desc="evaluate", unit="slice", disable=not progress)
    for start in range(0, len(items), int(batch_size)):
        chunk = items[start : start + int(batch_size)]
        indices = [item["row"] for item in chunk]
        ids = [item["id"] for item in chunk]
        hr = torch.from_numpy(np.ascontiguousarray(dataset.hr[indices], dtype=np.float32))[:, None]
        lr = torch.from_numpy(np.ascontiguousarray(dataset.lr[indices], dtype=np.float32))[:, None]
        batch = MethodBatch(ids=ids, lr=lr, hr=hr)
        outputs = {m.name: m.run(batch) for m in built}
        hr_means = hr.double().mean(dim=(1, 2, 3)).numpy()
        f, power = radial_power_spectrum(hr)
        frequencies = f
        spectra["HR"] = spectra.get("HR", 0.0) + power.sum(0)
        for method in built:
            output = outputs[method.name]
            prediction = output.predictions
            scores = {"psnr": psnr(prediction, hr), "ssim": ssim(prediction, hr),
                      "ms_ssim": np.full(len(ids), np.nan) if ms_problem else ms_ssim(prediction, hr)}
            if perceptual is not None:
                scores[perceptual.name] = perceptual(prediction, hr)
            bands = haar_subband_psnr(prediction, hr)
            nan = np.full(len(ids), np.nan)
            hallucinated, lost, tau = nan, nan, nan
            if method.noise_floor is not None:
                results = hallucination_maps(prediction, hr, outputs[method.noise_floor].predictions, k=k)
                hallucinated = np.array([r.hallucinated_fraction for r in results])
                lost = np.array([r.lost_fraction for r in results])
                tau = np.array([r.tau for r in results])
            latent = {name: nan for name in ("latent_cosine", "latent_psnr", "latent_cosine_1x1", "latent_psnr_1x1")}
            if output.sr_latents is not None:
                reference = method.hr_latents(batch)
                full = [latent_fidelity(z, reference, tuple(reference.shape[-2:])) for z in output.sr_latents]
                one = [latent_fidelity(z, reference, 1) for z in output.sr_latents]
                latent = {"latent_cosine": np.mean([r.cosine for r in full], axis=0),
                          "latent_psnr": np.mean([r.psnr for r in full], axis=0),
                          "latent_cosine_1x1": np.mean([r.cosine for r in one], axis=0),
                          "latent_psnr_1x1": np.mean([r.psnr for r in one], axis=0)}
            means = prediction.double().mean(dim=(1, 2, 3)).numpy()
            _, power = radial_power_spectrum(prediction)
            spectra[method.name] = spectra.get(method.name, 0.0) + power.sum(0)
            for i, item in enumerate(chunk):
                row = {"dataset": dataset_name, "id": item["id"], "subject": item["subject"], "method": method.name,
                       "kind": method.kind, "noise_floor": method.noise_floor or ""}
                row.update({name: float(values[i]) for name, values in scores.items()})
                row.update({f"psnr_{band}": float(values[i]) for band, values in bands.items()})
                row.update(hallucinated_fraction=float(hallucinated[i]), lost_fraction=float(lost[i]),
                           noise_floor_tau=float(tau[i]))
                row.update({name: float(values[i]) for name, values in latent.items()})
                row.update(mean_intensity=float(means[i]), hr_mean_intensity=float(hr_means[i]),
                           seconds_per_sample=float(output.seconds_per_sample))
                rows.append(row)
        for i, index in enumerate(indices):
            if index in example_rows:
                examples["ids"].append(ids[i])
                examples["hr"].append(hr[i, 0].numpy())
                examples["lr"].append(lr[i, 0].numpy())
                for method in built:
                    examples["predictions"][method.name].append(outputs[method.name].predictions[i, 0].numpy())
        bar.update(len(chunk))
    bar.close()
    elapsed = time.perf_counter() - started
    say(f"evaluated {len(items)} slices x {len(built)} methods in {elapsed:.1f} s on {torch_device}")
    mean_spectra = {name: np.asarray(total) / len(items) for name, total in spectra.items()}

    table_settings = {"reference": next((m.name for m in built if m.kind == "sr_model"), built[0].name),
                      "aggregate": aggregate, "lpips_label": lpips_info["label"], "k": float(k),
                      "n_resamples": int(n_resamples), "seed": int(seed), "holm": bool(holm)}
    settings = {"dataset_dir": str(dataset.folder.resolve()), "dataset": dataset_name, "split": split,
                "limit": limit, "steps": steps, "sampler": sampler, "samples": int(samples), "seed": int(seed),
                "batch_size": int(batch_size), "device": str(torch_device), "lpips": bool(lpips), "k": float(k),
                "n_resamples": int(n_resamples), "holm": bool(holm), "aggregate": aggregate,
                "reference": table_settings["reference"],
                "hallucination_region": f"anatomy: HR > {BACKGROUND_LEVEL} with enclosed holes filled",
                "methods_requested": names}
    with atomic_directory(outdir) as staging:
        write_rows(rows, staging / "per_image.csv")
        saved_rows = read_rows(staging / "per_image.csv")  # tables and statistics come from the file
        stats = statistics_from_rows(saved_rows, reference=table_settings["reference"], aggregate=aggregate,
                                     n_resamples=n_resamples, seed=seed, holm=holm)
        tables = tables_from_statistics(stats, lpips_info["label"], k)
        (staging / "tables.md").write_text(tables)
        write_spectra(staging / "radial_spectrum.csv", frequencies, mean_spectra)
        save_examples(staging / "examples.npz", examples["ids"], np.stack(examples["hr"]), np.stack(examples["lr"]),
                      {n: np.stack(v) for n, v in examples["predictions"].items()})
        figures, figure_notes = _figures(staging, saved_rows, stats, dataset_name, built, lpips_info["label"], k,
                                         aggregate)
        notes += figure_notes
        summary = {
            "format": EVALUATION_FORMAT,
            "version": _VERSION,
            "latentsr_version": __version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": settings,
            "tables": table_settings,
            "dataset": {"folder": str(dataset.folder.resolve()), "task": dataset.task.to_dict(),
                        "size": list(dataset.size), "split": split, "n_images": len(items),
                        "n_subjects": len({item["subject"] for item in items}),
                        "subjects": sorted({item["subject"] for item in items}),
                        "lr_grid": dataset.info.get("lr_grid")},
            "reference_image": "the true high-resolution slice (every method is scored against it)",
            "lpips": lpips_info,
            "fid": "not computed yet",
            "methods": [m.describe() for m in built],
            "seconds": round(elapsed, 3),
            "statistics": stats,
            "figures": figures,
            "notes": notes,
            "files": sorted(["per_image.csv", SUMMARY_FILE, "tables.md", "report.md", "radial_spectrum.csv",
                             "examples.npz", *figures.values()]),
        }
        (staging / "report.md").write_text(_report(summary, tables))
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    for note in notes:
        say(note)
    say(f"wrote {outdir}")
    return EvaluationResult(outdir, saved_rows, summary, tables, figures, notes)


# ------------------------------------------------------------------------------------- figures of a run
def _figures(folder: Path, rows: list[dict], stats: dict, dataset: str, methods: list[Method],
             lpips_label: str | None, k: float, aggregate: str) -> tuple[dict[str, str], list[str]]:
    """Draw every figure from the saved files in ``folder``; ``{key: file name}`` and notes on skipped ones."""
    figures: dict[str, str] = {}
    notes: list[str] = []
    path = save_perception_distortion_figure(folder / "perception_distortion.png", stats, dataset, lpips_label)
    if path is None:
        notes.append("perception-distortion figure skipped: LPIPS was not computed.")
    else:
        figures["perception_distortion"] = path.name
    figures["metric_bars"] = save_metric_bars_figure(folder / "metric_bars.png", stats, dataset, lpips_label).name
    figures["subband_profile"] = save_subband_profile_figure(folder / "subband_profile.png", stats, dataset).name
    frequencies, spectra = read_spectra(folder / "radial_spectrum.csv")
    figures["radial_spectrum"] = save_radial_spectrum_figure(
        folder / "radial_spectrum.png", frequencies, spectra,
        title=f"Mean radial power spectrum, {dataset} (n = {stats['per_method'][dataset][methods[0].name]['n']} "
              f"{stats['unit']})").name
    examples = load_examples(folder / "examples.npz")
    figures["examples"] = save_examples_figure(folder / "examples.png", examples).name
    number = 0
    for method in methods:
        if method.kind != "sr_model" or method.noise_floor is None:
            continue
        number += 1
        name = f"hallucination_{number}.png"
        save_hallucination_figure(folder / name, examples["predictions"][method.name], examples["hr"],
                                  examples["predictions"][method.noise_floor], k=k, image_ids=examples["ids"])
        figures[f"hallucination:{method.name}"] = name
    # Bland-Altman from the saved rows, per method, at the statistics' level (image or subject)
    panels = {}
    for m in stats["methods"][dataset]:
        entry = stats["bland_altman"][dataset][m]
        if "skipped" in entry:
            continue
        in_method = [r for r in rows if r["method"] == m and r["dataset"] == dataset]
        key = "id" if aggregate == "image" else "subject"
        method_values = _group_means(in_method, key, "mean_intensity")
        hr_values = _group_means(in_method, key, "hr_mean_intensity")
        panels[m] = bland_altman(method_values, hr_values, nonfinite="drop", method_label=m, reference_label="HR")
    if panels:
        figures["bland_altman"] = save_bland_altman_figure(folder / "bland_altman.png", panels).name
    else:
        notes.append("Bland-Altman figure skipped: fewer than 2 paired values per method.")
    fit = stats["regression"]
    if "skipped" in fit:
        notes.append(f"AE-ceiling regression figure skipped: {fit['skipped']}.")
    else:
        points = stats["regression_points"]
        result = ceiling_regression({(p["method"], p["dataset"]): p["ae_ceiling_psnr"] for p in points},
                                    {(p["method"], p["dataset"]): p["sr_psnr"] for p in points})
        figures["ceiling_regression"] = save_ceiling_regression_figure(folder / "ceiling_regression.png", result).name
    return figures, notes


def _group_means(rows: list[dict], key: str, column: str) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r[column])
    return {g: float(np.mean([v for v in values if math.isfinite(v)])) if any(math.isfinite(v) for v in values)
            else math.nan for g, values in groups.items()}


# ------------------------------------------------------------------------------------- report
_FIGURE_CAPTIONS = {
    "perception_distortion": "Perception-distortion: LPIPS against PSNR per method (mean ± SD).",
    "metric_bars": "Mean PSNR / SSIM / MS-SSIM / LPIPS per method with 95% bootstrap CIs of the mean.",
    "subband_profile": "Mean PSNR per Haar subband, coarsest (LL3) to finest (HH1).",
    "radial_spectrum": "Mean radial power spectrum of each method against the true image (black).",
    "examples": "Example slices: true HR and each output (top), LR input and signed error method − HR (bottom).",
    "bland_altman": "Bland-Altman agreement of the mean intensity with the true image, per method.",
    "ceiling_regression": "AE ceiling PSNR against SR PSNR, one point per SR model x dataset, OLS with 95% band.",
}


def _report(summary: dict, tables: str) -> str:
    s = summary["settings"]
    d = summary["dataset"]
    lpips = summary["lpips"]
    if lpips["label"]:
        network = f"{lpips['label']} (column `{lpips['column']}`)"
        if lpips.get("reason"):
            network += f"; the preferred network was not used: {lpips['reason']}"
    else:
        network = f"not computed ({lpips['reason']})"
    lines = [
        "# Evaluation report",
        "",
        f"Dataset `{d['folder']}`, split **{d['split']}**: {d['n_images']} slices of {d['n_subjects']} subject(s), "
        f"{d['size'][0]}x{d['size'][1]}, task {d['task']['name']} (LR input on the HR grid). Every method is scored "
        f"against the true high-resolution slice; rows are paired by image id.",
        "",
        "## Settings",
        "",
        f"- statistics per {s['aggregate']}; reference method for paired comparisons: `{s['reference']}`",
        f"- bootstrap: {s['n_resamples']} resamples, seed {s['seed']}; Holm correction: {'yes' if s['holm'] else 'no'}",
        f"- SR sampling: steps {s['steps'] or 'as recorded in each model'}, sampler {s['sampler'] or 'as recorded'}, "
        f"{s['samples']} sample(s) per image (averaged), seed {s['seed']}",
        f"- hallucination: noise floor mean + {s['k']:g} SD of |AE − HR| over the {s['hallucination_region']}",
        f"- device {s['device']}, batch size {s['batch_size']}, limit {s['limit'] or 'none'}; "
        f"run time {summary['seconds']:.1f} s",
        "",
        "## Networks",
        "",
        f"- LPIPS: {network}",
        f"- FID: {summary['fid']}.",
        "",
        "## Methods",
        "",
        "| method | kind | noise floor | what it is |",
        "| --- | --- | --- | --- |",
    ]
    for m in summary["methods"]:
        floor = f"`{m['noise_floor']}`" if m["noise_floor"] else "none"
        lines.append(f"| `{m['name']}` | {m['kind']} | {floor} | {m['description']} |")
    nested = tables.replace("\n### ", "\n#### ").replace("\n## ", "\n### ").replace("# Tables", "## Tables", 1)
    lines += ["", nested.rstrip(), "", "## Figures", ""]
    for key, name in summary["figures"].items():
        if key.startswith("hallucination:"):
            caption = f"Hallucination maps of `{key.split(':', 1)[1]}` (noise floor of its own autoencoder)."
        else:
            caption = _FIGURE_CAPTIONS.get(key, key)
        lines += [f"![{key}]({name})", "", caption, ""]
    if summary["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in summary["notes"]] + [""]
    return "\n".join(lines)
