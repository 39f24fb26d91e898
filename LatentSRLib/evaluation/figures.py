"""The evaluation's figures, each drawn from saved results, and the saved data they are drawn from.

* saved data: mean radial power spectra (``radial_spectrum.csv``, :func:`write_spectra` /
  :func:`read_spectra`) and a few example slices (``examples.npz``, :func:`save_examples` /
  :func:`load_examples`);
* one ``save_*_figure`` per plot, from the statistics of :mod:`.row_statistics` or the saved data;
* :func:`save_run_figures`: every figure of a run folder, from the files already in it.

Every figure is written atomically as PNG (:mod:`.plotting`); the LPIPS network is named under the
titles that show LPIPS (rule 10 (docs/science.md)).
"""

from __future__ import annotations

import csv
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from LatentSRLib.io.atomic import atomic_path
from LatentSRLib.metrics.agreement import bland_altman, save_bland_altman_figure
from LatentSRLib.metrics.frequency import SUBBANDS
from LatentSRLib.metrics.hallucination import save_hallucination_figure
from LatentSRLib.metrics.plotting import new_figure, save_png
from LatentSRLib.metrics.regression import ceiling_regression, save_ceiling_regression_figure
from LatentSRLib.evaluation.rows import values_by_unit

if TYPE_CHECKING:
    from LatentSRLib.evaluation.methods import Method

__all__ = [
    "load_examples",
    "read_spectra",
    "save_examples",
    "save_examples_figure",
    "save_metric_bars_figure",
    "save_perception_distortion_figure",
    "save_radial_spectrum_figure",
    "save_run_figures",
    "save_subband_profile_figure",
    "write_spectra",
]

DPI = 110
_KIND_MARKERS = {"interpolation": "s", "sr_model": "o", "external": "^", "ae_ceiling": "D"}
_KIND_COLOURS = {"interpolation": "#7f7f7f", "sr_model": "#1f77b4", "external": "#2ca02c", "ae_ceiling": "#9ecae1"}


# ------------------------------------------------------------------------------------- labels
def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _network_line(column: str, label: str | None) -> str:
    """The LPIPS network named under a title (rule 10 (docs/science.md)), wrapped."""
    return "\n" + textwrap.fill(f"{column}: {label or 'LPIPS network not recorded'}", 90)


def _n(stats: dict, dataset: str) -> int:
    return max(stats["per_method"][dataset][m]["n"] for m in stats["methods"][dataset])


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
    fig = new_figure(6.5, 4.8)
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
    return save_png(fig, path, DPI)


def save_metric_bars_figure(path: str | os.PathLike, stats: dict, dataset: str,
                            lpips_label: str | None = None) -> Path:
    """One panel per metric with values: bars of the mean, error bars the 95% bootstrap CI of the mean."""
    lpips = stats["lpips_column"]
    methods = stats["methods"][dataset]
    metrics = [c for c in ("psnr", "ssim", "ms_ssim", lpips) if c and any(
        stats["per_method"][dataset][m][c] for m in methods)]
    fig = new_figure(max(4.0, 0.9 * len(methods) + 1.5) * len(metrics) / 1.6, 4.5)
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
    return save_png(fig, path, DPI)


def save_subband_profile_figure(path: str | os.PathLike, stats: dict, dataset: str) -> Path:
    """Mean PSNR in each of the ten Haar subbands (LL3 .. HH1) per method."""
    fig = new_figure(8, 4.2)
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
    return save_png(fig, path, DPI)


def save_radial_spectrum_figure(path: str | os.PathLike, frequencies: np.ndarray,
                                spectra: Mapping[str, np.ndarray], *, title: str = "") -> Path:
    """Mean radial power spectra (log scale); the curve named ``HR`` (the true image) is drawn black."""
    fig = new_figure(7, 4.2)
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
    return save_png(fig, path, DPI)


def save_examples_figure(path: str | os.PathLike, examples: dict) -> Path:
    """Per example two rows: HR and every method's output; the LR input and every signed error (method − HR)."""
    names = list(examples["predictions"])
    count = len(examples["ids"])
    columns = 1 + len(names)
    fig = new_figure(2.0 * columns, 4.1 * count)
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
    return save_png(fig, path, dpi=100)


# ------------------------------------------------------------------------------------- figures of a run
def save_run_figures(folder: Path, rows: list[dict], stats: dict, dataset: str, methods: list[Method],
                     lpips_label: str | None, k: float, aggregate: str) -> tuple[dict[str, str], list[str]]:
    """Draw every figure of a run from the saved files in ``folder`` (``radial_spectrum.csv``,
    ``examples.npz``), the rows read back from ``per_image.csv`` and their statistics.

    Returns:
        ``{figure key: file name}`` and notes on the figures skipped.
    """
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
        method_values = values_by_unit(in_method, "mean_intensity", aggregate)
        hr_values = values_by_unit(in_method, "hr_mean_intensity", aggregate)
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
