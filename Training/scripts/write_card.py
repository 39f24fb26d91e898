"""Regenerate the measured parts of a model card from its saved results (rule 9: no typed numbers).

    python Training/scripts/write_card.py Training/models/brain-sr4 [--demo]
    python Training/scripts/write_card.py --readme      # the README's demo table, from the demo models' cards
    python Training/scripts/write_card.py Training/autoencoders/taef2-brain   # a shipped autoencoder's card

``--demo`` first re-runs the demo case recorded in ``card.json`` (the run ``Testing/demo`` reproduces)
and stores its figures there. Then every block of the model's README.md between
``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->`` is rewritten from ``card.json`` and
``results/*`` (written by ``measure_model.py``; ``validation.csv`` is the training run's
``val_log.csv``): ``validation`` (the validation curve), ``real-scans`` (per contrast and overall, both
operating points, against bicubic, with the paired difference), ``knee`` (the same table for the knee
series, ``results/knee.json``, and ``knee-NAME`` from ``results/knee-NAME.json``: another domain,
evaluation only), ``real-scans-NAME`` (the same table from ``results/real_scans_NAME.json``: a variant
of the model on the same scans, e.g. an ablation), ``targets`` (the reference-model
issue's targets, met or not, with the measured values), ``thick-scans`` (a thick-slice model against
cubic B-spline, from ``measure_thick.py``'s ``thick_scans.json``, with its target), ``screen`` (a
shipped autoencoder's ceiling beside the others ``latentsr screen`` scored, ``results/screen/``), ``steps``
(quality against sampling steps), ``validation-NAME`` (``results/validation_NAME.csv``: a variant's
training run) and ``demo``. Blocks whose results are missing are left as they are.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from LatentSRLib.inference.real_scans import load_real_scans, summarise
from LatentSRLib.io.atomic import atomic_path
from LatentSRLib.metrics.statistics import paired_comparison

ROOT = Path(__file__).resolve().parents[2]
RUNS = {"dc": "fidelity end (data consistency, the default)", "no_dc": "detail end (`--no-data-consistency`)"}


def _f(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _triple(summary: dict[str, Any], which: str) -> str:
    return " / ".join(v for v in (_f(summary.get(f"psnr_{which}"), 2), _f(summary.get(f"ssim_{which}"), 3),
                                  _f(summary.get(f"lpips_{which}"), 3)) if v)


def _gain_line(run: str, gain: dict[str, Any], baseline: str, radiographs: bool = False) -> str:
    """One operating point's paired PSNR difference against ``baseline``, as the cards state it."""
    units = (f"n = {gain['n']} images, each an independent unit" if radiographs
             else f"n = {gain['n']} slices of one subject (bootstrap within each scan)")
    return (f"- {RUNS[run]}: SR - {baseline} {gain['mean_difference']:+.2f} dB "
            f"[95% CI {gain['ci_low']:+.2f}, {gain['ci_high']:+.2f}], Wilcoxon p = {gain['p_value']:.2g}, {units}.")


def _radiographs(results: dict[str, Any]) -> bool:
    """Whether real-scan results are of 2D images (radiographs): each its own one slice, an independent unit."""
    return len(next(iter(results["scans"].values()))["lr_shape"]) == 2


def _slice_numbers(settings: dict[str, Any], first: dict[str, Any]) -> str:
    return f"{settings.get('plane', 'axial')} slices {first['slices'][0]}, {first['slices'][0] + settings['every']}, ... {first['slices'][-1]}"


def real_scans_block(results: dict[str, Any]) -> str:
    """Per scan and overall, both operating points against the engine's input (bicubic for an ``sr``
    model; the degraded scan itself for a model that keeps the scan's grid), with the paired difference."""
    settings = results["settings"]
    first = next(iter(results["scans"].values()))
    lpips = results["lpips"]["label"] if results["lpips"] else "not available"
    baseline = results.get("baseline", "bicubic")
    steps = f"{settings['steps'] or 'the default'} steps and {settings['samples']} sample(s)"
    radiographs = _radiographs(results)
    unit = "image" if radiographs else "slice"
    if radiographs:
        sizes = sorted({f"{e['lr_shape'][1]} x {e['lr_shape'][0]}" for e in results["scans"].values()})
        opening = (f"Real {settings['scale']}x low-resolution radiographs (each image measured with {settings['scale']}x "
                   f"coarser pixels, `latentsr degrade --coarse-grid`: {', '.join(sizes)} pixels) super-resolved by the engine "
                   f"of `latentsr sr` with {steps}, against the true images in their intensity window.")
    elif baseline == "input":  # a refine or kspace model: measured and refined on the scan's own grid
        opening = (f"The task's degradation ({settings['scale']}x) made on each scan's own grid ({first['lr_shape'][1]} x "
                   f"{first['lr_shape'][2]} pixels of {first['lr_spacing'][0]:g} x {first['lr_spacing'][1]:g} mm, "
                   f"`latentsr sr --simulate-scale {settings['scale']}`) and refined by the engine of `latentsr sr` with {steps}, "
                   f"on {_slice_numbers(settings, first)} (those with anatomy scored), against the true slices in the scan's "
                   f"intensity window; the baseline is the degraded input itself.")
    else:
        opening = (f"Real {settings['scale']}x low-resolution scans ({first['lr_shape'][1]} x {first['lr_shape'][2]} pixels of "
                   f"{first['lr_spacing'][0]:g} x {first['lr_spacing'][1]:g} mm, made with `latentsr degrade --coarse-grid`) "
                   f"super-resolved by the engine of `latentsr sr` with {steps}, on {_slice_numbers(settings, first)} "
                   f"(those with anatomy scored), against the true 1 mm slices in the scan's intensity window.")
    whole = "PSNR of each whole image" if radiographs else "PSNR of the whole volume"
    if results.get("decoding") == "lr_residual":
        ceiling = (f"The last column is the autoencoder's own encode-decode of the true {unit}s (not an SR method; {whole}); "
                   "this model decodes the change it makes to the LR image (`decoding: lr_residual`), so it is no bound here.")
    else:
        ceiling = (f"The last column is the autoencoder's own encode-decode of the true {unit}s (the ceiling of the "
                   f"sampled image, not an SR method; {whole}).")
    lines = [f"{opening} Cells: PSNR (dB) / SSIM / LPIPS; LPIPS is {lpips}.", ceiling,
             "", f"| scan | {unit}s | {baseline} | " + " | ".join(RUNS.values()) + " | autoencoder ceiling (dB) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, entry in results["scans"].items():
        parts = {run: summarise(results, run, [name]) for run in RUNS if run in entry["runs"]}
        base = next(iter(parts.values()))
        ceiling = next(iter(entry["runs"].values())).get("psnr_ae_ceiling")
        lines.append(f"| {name} | {base['n']} | {_triple(base, 'lr')} | " +
                     " | ".join(_triple(parts[run], "sr") if run in parts else "" for run in RUNS) + f" | {_f(ceiling, 2)} |")
    overall = {run: summarise(results, run) for run in RUNS if any(run in e["runs"] for e in results["scans"].values())}
    base = next(iter(overall.values()))
    lines.append(f"| **all** | {base['n']} | {_triple(base, 'lr')} | " +
                 " | ".join(_triple(overall[run], "sr") if run in overall else "" for run in RUNS) + " | |")
    lines.append("")
    lines += [_gain_line(run, summary["psnr_gain"], baseline, radiographs) for run, summary in overall.items()
              if summary.get("psnr_gain")]
    return "\n".join(lines)


def targets_block(results: dict[str, Any]) -> str:
    """The reference-model issue's 4x targets, each with its measured value (met or not): brain scans'
    at both operating points; radiographs' (2D images) at the detail end, which must beat bicubic
    without the data-consistency projection."""
    rows = []
    detail = summarise(results, "no_dc")

    def check(label: str, value: float, bound: float, ok: bool) -> None:
        rows.append(f"| {label} | {value:.3f} | {bound:.3f} | {'met' if ok else '**not met**'} |")

    if _radiographs(results):
        check("detail end (no data consistency): PSNR >= bicubic", detail["psnr_sr"], detail["psnr_lr"],
              detail["psnr_sr"] >= detail["psnr_lr"])
        if "lpips_sr" in detail:
            check("detail end: LPIPS <= 0.6 x bicubic", detail["lpips_sr"], 0.6 * detail["lpips_lr"],
                  detail["lpips_sr"] <= 0.6 * detail["lpips_lr"])
        rows_no_dc = [row for entry in results["scans"].values() for row in entry["runs"]["no_dc"]["per_slice"]]
        above = sum(row["psnr_sr"] >= row["psnr_lr"] for row in rows_no_dc)
        return "\n".join(["| target (all images above) | measured | bound | |", "| --- | --- | --- | --- |", *rows, "",
                          f"Without data consistency the SR's PSNR is at or above bicubic's on {above} of {len(rows_no_dc)} images."])
    fidelity = summarise(results, "dc")

    check("defaults: PSNR >= bicubic + 1 dB", fidelity["psnr_sr"], fidelity["psnr_lr"] + 1, fidelity["psnr_sr"] >= fidelity["psnr_lr"] + 1)
    check("defaults: SSIM >= bicubic", fidelity["ssim_sr"], fidelity["ssim_lr"], fidelity["ssim_sr"] >= fidelity["ssim_lr"])
    if "lpips_sr" in fidelity:
        check("defaults: LPIPS <= 0.7 x bicubic", fidelity["lpips_sr"], 0.7 * fidelity["lpips_lr"],
              fidelity["lpips_sr"] <= 0.7 * fidelity["lpips_lr"])
        check("detail end: LPIPS <= 0.4 x bicubic", detail["lpips_sr"], 0.4 * detail["lpips_lr"],
              detail["lpips_sr"] <= 0.4 * detail["lpips_lr"])
    check("detail end: PSNR >= bicubic - 1 dB", detail["psnr_sr"], detail["psnr_lr"] - 1, detail["psnr_sr"] >= detail["psnr_lr"] - 1)
    return "\n".join(["| target (all scans above) | measured | bound | |", "| --- | --- | --- | --- |", *rows])


def _thick_rows(results: dict[str, Any], run: str, scans: list[str] | None = None) -> list[tuple[str, dict]]:
    return [(name, row) for name, entry in results["scans"].items() if scans is None or name in scans
            for row in entry["runs"].get(run, {}).get("per_slice", [])]


def _thick_summary(results: dict[str, Any], run: str, scans: list[str] | None = None) -> dict[str, Any]:
    """Means over the scored slices of one operating point; ``gain``: the paired SR - B-spline PSNR."""
    pairs = _thick_rows(results, run, scans)
    rows = [row for _, row in pairs]
    summary = {"n": len(rows), **{key: float(np.mean([row[key] for row in rows]))
                                  for key in ("psnr_sr", "psnr_bspline", "ssim_sr", "ssim_bspline")}}
    if len(rows) >= 2:  # slices of one scan are not independent: the bootstrap resamples within each scan
        summary["gain"] = paired_comparison([row["psnr_sr"] for row in rows], [row["psnr_bspline"] for row in rows],
                                            strata=[name for name, _ in pairs]).to_dict()
    return summary


def thick_scans_block(results: dict[str, Any]) -> str:
    """A thick-slice model on real thick-slice scans against cubic B-spline (``measure_thick.py``'s results)."""
    settings = results["settings"]
    first = next(iter(results["scans"].values()))
    thick_mm = max(first["lr_spacing"])
    lines = [f"Real thick-slice scans ({settings['scale']}x: {thick_mm:g} mm {settings['plane']} slices with a "
             f"{settings['profile']} slice profile, made with `latentsr degrade --mode thick --scale {settings['scale']}`) "
             f"refined to {thick_mm / settings['scale']:g} mm by the engine of `latentsr sr` with "
             f"{settings['steps'] or 'the default'} step(s) and {settings['samples']} sample; every fine "
             f"{settings['plane']} slice with anatomy scored against the true slice in the scan's intensity window. "
             "Baseline: cubic B-spline interpolation of the same scan along the slice axis. Cells: PSNR (dB) / SSIM.",
             "", "| scan | slices | cubic B-spline | " + " | ".join(RUNS.values()) + " |", "| --- | --- | --- | --- | --- |"]

    def cells(summary: dict[str, Any], which: str) -> str:
        return f"{summary[f'psnr_{which}']:.2f} / {summary[f'ssim_{which}']:.3f}"

    for name, entry in results["scans"].items():
        parts = {run: _thick_summary(results, run, [name]) for run in RUNS if run in entry["runs"]}
        base = next(iter(parts.values()))
        lines.append(f"| {name} | {base['n']} | {cells(base, 'bspline')} | " +
                     " | ".join(cells(parts[run], "sr") if run in parts else "" for run in RUNS) + " |")
    overall = {run: _thick_summary(results, run) for run in RUNS if _thick_rows(results, run)}
    base = next(iter(overall.values()))
    lines += [f"| **all** | {base['n']} | {cells(base, 'bspline')} | " +
              " | ".join(cells(overall[run], "sr") if run in overall else "" for run in RUNS) + " |", ""]
    lines += [_gain_line(run, summary["gain"], "cubic B-spline") for run, summary in overall.items() if summary.get("gain")]
    fidelity = overall["dc"]
    bound = fidelity["psnr_bspline"] + 2
    lines += ["", "| target (all scans above) | measured | bound | |", "| --- | --- | --- | --- |",
              f"| thick-slice, defaults: PSNR >= cubic B-spline + 2 dB | {fidelity['psnr_sr']:.3f} | {bound:.3f} | "
              f"{'met' if fidelity['psnr_sr'] >= bound else '**not met**'} |"]
    return "\n".join(lines)


def steps_block(curve: dict[str, Any]) -> str:
    lines = [f"Scan `{curve['scan']}`, the same slices and protocol as above; PSNR (dB) / SSIM / LPIPS of the SR "
             "(bicubic does not depend on the steps). Seconds per slice as the run took them (indicative only when the CPU was "
             "shared; `Testing/benchmarks/bench_real_scan.py` times cleanly).", "", "| steps | " + " | ".join(RUNS.values()) + " | seconds per slice |",
             "| --- | --- | --- | --- |"]
    best = {}
    for steps, results in curve["runs"].items():
        cells = []
        for run in RUNS:
            if run in next(iter(results["scans"].values()))["runs"]:
                summary = summarise(results, run)
                best[run] = max(best.get(run, -1e9), summary["psnr_sr"])
                cells.append(_triple(summary, "sr"))
            else:
                cells.append("")
        entry = next(iter(results["scans"].values()))
        seconds = sum(r["seconds"] for r in entry["runs"].values()) / len(entry["runs"]) / len(entry["slices"])
        lines.append(f"| {steps} | " + " | ".join(cells) + f" | {seconds:.2f} |")
    fewest = {run: min(int(s) for s, r in curve["runs"].items() if summarise(r, run)["psnr_sr"] >= best[run] - 0.1)
              for run in best}
    lines.append("")
    lines.append("Fewest steps within 0.1 dB of the best PSNR: " +
                 ", ".join(f"{RUNS[run].split(' (')[0]} {n}" for run, n in fewest.items()) + ".")
    return "\n".join(lines)


def tiling_block(curve: dict[str, Any], sampling: dict[str, Any]) -> str:
    """How slices are windowed (``measure_model.py --tiling-curve``): each variant's PSNR / SSIM / LPIPS at both
    operating points over every scan, its PSNR against the first variant (paired by slice), and the seconds per
    slice as the runs took them. ``sampling``: the model's recorded defaults (``config.json``)."""
    lines = ["Every scan above, the same slices and protocol; PSNR (dB) / SSIM / LPIPS of the SR, the fidelity end's PSNR "
             "difference from the first row (paired by slice, 95% CI), and the windows sampled per slice. Seconds per slice "
             "as the runs took them (indicative only when the CPU was shared; `Testing/benchmarks/bench_real_scan.py` times "
             "cleanly).", "", "| windows | per slice | " + " | ".join(RUNS.values()) + " | PSNR vs first row | seconds per slice |",
             "| --- | --- | --- | --- | --- | --- |"]
    first = None
    for variant, results in curve["runs"].items():
        entries = list(results["scans"].values())
        tiling = entries[0]["runs"]["dc"].get("tiling") or {}
        tile, overlap = tiling.get("tile", [0])[0], tiling.get("overlap", 0.0)
        if tiling.get("anatomy_window"):
            name, windows = "one around the anatomy (`--anatomy-window`)", "1"
        else:
            stride = max(1, int(tile * (1 - overlap)))  # as MONAI steps its windows, the last one flush with the edge
            fine = [n * results["settings"]["scale"] for n in entries[0]["lr_shape"][-2:]]
            name = f"tiles of {tile}, overlap {overlap:g}"
            windows = str(int(np.prod([1 if tile >= n else -(-(n - tile) // stride) + 1 for n in fine])))
        cells = [_triple(summarise(results, run), "sr") for run in RUNS]
        psnr = np.array([row["psnr_sr"] for entry in entries for row in entry["runs"]["dc"]["per_slice"]])
        if first is None:
            first, difference = psnr, "(reference)"
        else:
            gain = paired_comparison(psnr, first, strata=[name for name, entry in results["scans"].items()
                                                          for _ in entry["runs"]["dc"]["per_slice"]])
            difference = f"{gain.mean_difference:+.3f} [{gain.ci_low:+.3f}, {gain.ci_high:+.3f}]"
        seconds = np.mean([run["seconds"] / len(entry["slices"]) for entry in entries for run in entry["runs"].values()])
        lines.append(f"| {name} | {windows} | " + " | ".join(cells) + f" | {difference} | {seconds:.2f} |")
    recorded = [f"{key} {sampling[key]}" for key in ("anatomy_window", "overlap") if sampling.get(key) is not None]
    lines += ["", "Recorded defaults (`config.json` `sampling`): " + (", ".join(recorded) if recorded else
                                                                    "none (tiles, the engine's overlap 0.25)") + "."]
    return "\n".join(lines)


def validation_block(path: Path) -> str:
    import csv

    rows = list(csv.DictReader(path.open()))
    columns = [("val_psnr", "SR PSNR (dB)"), ("val_dc_psnr", "with data consistency (dB)"), ("val_lr_psnr", "LR input PSNR (dB)")]
    lines = ["| iteration | " + " | ".join(r["iteration"] for r in rows) + " |", "| --- |" + " --- |" * len(rows)]
    for key, label in columns:
        if rows and key in rows[0]:
            lines.append(f"| {label} | " + " | ".join(f"{float(r[key]):.2f}" if r[key] else "" for r in rows) + " |")
    return "\n".join(lines)


def calibration_block(assessment: dict[str, Any]) -> str:
    """The calibration issue's targets from ``latentsr calibrate --assess`` (its report is beside it)."""
    cal, cov = assessment["calibration"], assessment["coverage"]
    auroc = assessment["auroc"]["hallucinated"]
    width, std = auroc["calibrated_half_width"]["pooled"], auroc["std"]["pooled"]
    nominal = assessment["nominal"]
    within = abs(cov["mean_over_images"] - nominal) <= 0.02
    if assessment["sampling"]["samples"] > 1:
        std_cell = f"raw std {std:.3f}, "
        auroc_verdict = "met" if width >= 0.75 and width > std else "**not met**"
    else:  # one sample has no spread: the std is 0 everywhere and cannot rank pixels, so there is nothing to beat
        std_cell = "no raw std at K = 1, "
        auroc_verdict = ("met" if width >= 0.75 else "**not met**") + " (>= 0.75; the std part needs K > 1)"
    method = cal.get("method", "rcps-hoeffding-bentkus")
    how = f"{method}, alpha {cal['alpha']}" + (f", delta {cal['delta']}" if cal.get("delta") is not None else "")
    extra = ""
    if "structure" in auroc:
        extra = f", SR structure {auroc['structure']['pooled']:.3f}"
    return "\n".join([
        f"Calibrated on {cal['images']} {cal['split']} images of `{cal['dataset']}` (K = {cal['samples']}, {cal['steps']} "
        f"step(s), data consistency {'on' if assessment['sampling']['data_consistency'] else 'off'}; lam = {cal['lam']:.3f}, "
        f"{how}; width lam * ({cal.get('heuristic', 'sqrt(std^2 + consistency^2) + floor')})"
        + (f", structure weight {cal['structure_weight']:g}" if cal.get("structure_weight") else "") + ") and assessed on "
        f"{assessment['images']} {assessment['split']} images (`results/calibration_assessment/`):", "",
        "| target | measured | |", "| --- | --- | --- |",
        f"| coverage within 2 pp of nominal {nominal:.2f} | {cov['mean_over_images']:.3f} "
        f"({100 * (cov['mean_over_images'] - nominal):+.1f} pp; min over images {cov['min_over_images']:.3f}) | "
        f"{'met' if within else '**not met**'} |",
        f"| AUROC of the calibrated width for hallucinated pixels >= 0.75 and above the raw std's | {width:.3f} "
        f"({std_cell}consistency {auroc['consistency']['pooled']:.3f}{extra}) | {auroc_verdict} |",
        *source_lines(assessment),
    ])


def source_lines(assessment: dict[str, Any]) -> list[str]:
    """How the coverage scatters over the assessed split's source scans (when there are several)."""
    sources = {name: entry for name, entry in (assessment.get("by_source") or {}).items() if entry["coverage"] is not None}
    if len(sources) < 2:
        return []
    low = min(sources, key=lambda name: sources[name]["coverage"])
    high = max(sources, key=lambda name: sources[name]["coverage"])
    return ["", f"Coverage by source scan ({len(sources)} scans): from {sources[low]['coverage']:.3f} (`{low}`) to "
                f"{sources[high]['coverage']:.3f} (`{high}`); the calibration's promise is an average over scans like "
                "the calibration split's, and the scatter between scans is what one new scan may meet."]


def demo_block(card: dict[str, Any]) -> str:
    demo = card["demo"]
    size = f"{demo['slices']} slices" if "slices" in demo else f"central {demo.get('crop')} pixels"
    return (f"`latentsr demo` ({demo['input']}; {size}, {_count(demo['steps'], 'step')}, {_count(demo['samples'], 'sample')}"
            f"{', data consistency' if demo.get('data_consistency') else ''}): bicubic {demo['psnr_lr']:.2f} dB, "
            f"{card['model']} {demo['psnr_sr']:.2f} dB, its autoencoder's ceiling {demo['psnr_ae_ceiling']:.2f} dB "
            "(`card.json`; `Testing/demo` reproduces it).")


def measure_demo(folder: Path, card: dict[str, Any]) -> None:
    import tempfile

    from LatentSRLib.demo import run_demo

    demo = card["demo"]
    with tempfile.TemporaryDirectory() as tmp:
        result = run_demo(Path(tmp) / "demo", model=folder, case=demo.get("case", "brain"), slices=demo.get("slices", 12),
                          crop=demo.get("crop", 0), steps=demo["steps"], samples=demo["samples"],
                          data_consistency=demo.get("data_consistency", False), device="cpu")
    review = result.metrics["reference"]
    for key in ("psnr_sr", "psnr_lr", "psnr_ae_ceiling"):
        demo[key] = round(float(review[key]), 3)
    with atomic_path(folder / "card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n")


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- generated: {re.escape(name)} -->\n).*?(<!-- end generated: {re.escape(name)} -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def readme_demo_table(models: Path) -> str:
    """One row per demo case, from its model's card (the run ``Testing/demo`` reproduces)."""
    from LatentSRLib.demo import DEMO_CASES

    lines = ["| case | the run (`card.json`) | bicubic PSNR (dB) | LatentSR PSNR (dB) | autoencoder ceiling PSNR (dB) |",
             "| --- | --- | --- | --- | --- |"]
    for name, case in DEMO_CASES.items():
        card = json.loads((models / case.model / "card.json").read_text())
        demo = card["demo"]
        run = (f"{demo['input']}; {_count(demo['steps'], 'step')}, {_count(demo['samples'], 'sample')}"
               f"{', data consistency' if demo.get('data_consistency') else ''}")
        lines.append(f"| {name} (`{case.model}`) | {run} | {demo['psnr_lr']:.2f} | {demo['psnr_sr']:.2f} | "
                     f"{demo['psnr_ae_ceiling']:.2f} |")
    return "\n".join(lines)


def _parameters(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "denoiser.safetensors"), "pt") as weights:
        return sum(int(np.prod(weights.get_slice(key).get_shape())) for key in weights.keys())


def _held_out(folder: Path, card: dict[str, Any]) -> str:
    """The card's held-out headline: the real-scan results when saved, else the card's recorded run."""
    if (folder / "results" / "real_scans.json").is_file():
        results = load_real_scans(folder / "results" / "real_scans.json")
        fidelity = summarise(results, "dc")
        detail = summarise(results, "no_dc") if all("no_dc" in e["runs"] for e in results["scans"].values()) else None
        first = next(iter(results["scans"].values()))
        if _radiographs(results):
            return (f"real {results['settings']['scale']}x radiographs ({', '.join(results['scans'])}; {fidelity['n']} images): "
                    f"{fidelity['psnr_sr']:.2f} at its defaults (bicubic {fidelity['psnr_lr']:.2f}"
                    + (f"; {detail['psnr_sr']:.2f} without data consistency)" if detail else ")"))
        return (f"real {results['settings']['scale']}x scans ({', '.join(results['scans'])}; {fidelity['n']} slices, "
                f"{first['lr_spacing'][0]:g} mm to {first['lr_spacing'][0] / results['settings']['scale']:g} mm): "
                f"{fidelity['psnr_sr']:.2f} at its defaults (bicubic {fidelity['psnr_lr']:.2f}"
                + (f"; {detail['psnr_sr']:.2f} without data consistency)" if detail else ")"))
    if (folder / "results" / "thick_scans.json").is_file():
        results = json.loads((folder / "results" / "thick_scans.json").read_text())
        fidelity, detail = _thick_summary(results, "dc"), _thick_summary(results, "no_dc")
        thick_mm = max(next(iter(results["scans"].values()))["lr_spacing"])
        return (f"real thick-slice scans ({', '.join(results['scans'])}; {fidelity['n']} slices, {thick_mm:g} mm to "
                f"{thick_mm / results['settings']['scale']:g} mm): {fidelity['psnr_sr']:.2f} at its defaults (cubic "
                f"B-spline {fidelity['psnr_bspline']:.2f}; {detail['psnr_sr']:.2f} without data consistency)")
    key = next((k for k in card if k.startswith("held_out")), None)
    if key is None:
        return "see the card"
    held = card[key]
    runs = {name: value for name, value in held.items() if isinstance(value, dict) and "psnr" in value} or \
        {held.get("input", key): {"psnr": held["psnr"]}}
    cells = []
    for name, value in runs.items():
        psnr = value["psnr"]
        if "sr" not in psnr:  # one entry per contrast
            psnr = next(iter(psnr.values()))
        base = ("bicubic", psnr["bicubic"]) if "bicubic" in psnr else ("input", psnr.get("input"))
        cells.append(f"{name.split(' (')[0]}: {psnr['sr']:.2f}, {psnr['sr_data_consistency']:.2f} with data "
                     f"consistency ({base[0]} {base[1]:.2f})")
    return "; ".join(cells)


def models_table(models: Path) -> str:
    """One row per shipped model: its task, network, held-out headline (from its saved results) and card."""
    lines = ["| model | task | network | held-out result, PSNR (dB) against the true image | card |",
             "| --- | --- | --- | --- | --- |"]
    for folder in sorted(p for p in models.iterdir() if (p / "config.json").is_file()):
        config = json.loads((folder / "config.json").read_text())
        card = json.loads((folder / "card.json").read_text()) if (folder / "card.json").is_file() else {}
        grid = config["grid"]
        pitch = ("native pixel pitch" if grid.get("fit") == "tile" else "model grid") + \
            f", {grid['size'][0]} x {grid['size'][1]} {'tiles' if grid.get('fit') == 'tile' else 'pixels'}"
        autoencoder = config["autoencoder"]
        kind = {"monai": "a MONAI autoencoder", "tiny": "a TAESD-family tiny autoencoder"}.get(
            autoencoder["spec"].split(":")[0], f"`{autoencoder['spec']}`")
        network = (f"`{config['denoiser']['preset']}`, {_parameters(folder) / 1e6:.2f} M parameters, in the latent space "
                   f"of {kind} ({autoencoder['latent_channels']} channels, {autoencoder['downsampling_factor']}x)")
        lines.append(f"| `{folder.name}` | `{config['task']['name']}`, {pitch} | {network} | {_held_out(folder, card)} | "
                     f"[{folder.name}](../models/{folder.name}/README.md) |")
    return "\n".join(lines)


def _is_spec_of(spec: str, folder: Path) -> bool:
    """Whether an autoencoder spec (as a screen recorded it, relative to the repository root) names ``folder``."""
    where = spec.partition(":")[2]
    return bool(where) and (ROOT / where).resolve() == folder.resolve()


def screen_block(summary: dict[str, Any], folder: Path) -> str:
    """A shipped autoencoder's ceiling beside the others ``latentsr screen`` scored on the same slices
    (``results/screen/summary.json``), and its paired PSNR differences to each of them."""
    names = {spec: ("**this autoencoder**" if _is_spec_of(spec, folder) else f"`{spec}`") for spec in summary["autoencoders"]}
    selection = summary["selection"]
    sources = ", ".join(f"`{Path(s).name}`" for s in summary["sources"])
    lines = [f"`latentsr screen` on {summary['n_images']} slices of {summary['n_subjects']} held-out subject(s) ({sources}; "
             f"{selection['plane']}, at most {selection['max_slices_per_source']} per file, {selection['fit']} to "
             f"{selection['size'][0]} x {selection['size'][1]} pixels), each encoded and decoded ({summary['encoding']}) and "
             f"scored against the true slice. LPIPS is {summary['lpips_network'] or 'not computed'}; HH1 is the finest "
             "diagonal Haar subband.", "",
             "| autoencoder | PSNR (dB) | SSIM | LPIPS | HH1 PSNR (dB) |", "| --- | --- | --- | --- | --- |"]
    for spec, entry in summary["autoencoders"].items():
        metrics = entry["metrics"]

        def mean(key: str, digits: int) -> str:
            return _f(metrics[key]["mean"], digits) if key in metrics else ""

        lines.append(f"| {names[spec]} | {mean('psnr', 2)} | {mean('ssim', 4)} | {mean('lpips', 4)} | {mean('psnr_HH1', 2)} |")
    lines.append("")
    for c in summary["comparisons"]:
        if c["metric"] != "psnr" or not (_is_spec_of(c["a"], folder) or _is_spec_of(c["b"], folder)):
            continue
        sign, other = (1, c["b"]) if _is_spec_of(c["a"], folder) else (-1, c["a"])
        low, high = sorted((sign * c["ci_low"], sign * c["ci_high"]))
        lines.append(f"- this autoencoder - `{other}`: PSNR {sign * c['mean_difference']:+.2f} dB [95% CI {low:+.2f}, "
                     f"{high:+.2f}], Wilcoxon p = {c['p_value']:.2g}, n = {c['n']} slices.")
    return "\n".join(lines)


def card_text(folder: Path) -> str:
    """The model card ``folder/README.md`` with every generated block rewritten from the saved results
    (an autoencoder's folder has no ``card.json``: its blocks come from ``results/`` alone)."""
    card = json.loads((folder / "card.json").read_text()) if (folder / "card.json").is_file() else {}
    text = (folder / "README.md").read_text()
    if (folder / "results" / "screen" / "summary.json").is_file():
        text = replace_block(text, "screen", screen_block(json.loads((folder / "results" / "screen" / "summary.json").read_text()),
                                                          folder))
    if (folder / "results" / "validation.csv").is_file():
        text = replace_block(text, "validation", validation_block(folder / "results" / "validation.csv"))
    for path in sorted((folder / "results").glob("validation_*.csv")):  # a variant's training run (an ablation)
        text = replace_block(text, path.stem.replace("_", "-"), validation_block(path))
    if (folder / "results" / "real_scans.json").is_file():
        results = load_real_scans(folder / "results" / "real_scans.json")
        text = replace_block(text, "real-scans", real_scans_block(results))
        text = replace_block(text, "targets", targets_block(results))
    for path in sorted((folder / "results").glob("knee*.json")):  # another domain's scans (evaluation only)
        text = replace_block(text, path.stem, real_scans_block(load_real_scans(path)))
    for path in sorted((folder / "results").glob("real_scans_*.json")):  # a variant on the same scans (an ablation)
        text = replace_block(text, path.stem.replace("_", "-"), real_scans_block(load_real_scans(path)))
    if (folder / "results" / "thick_scans.json").is_file():
        text = replace_block(text, "thick-scans", thick_scans_block(json.loads((folder / "results" / "thick_scans.json").read_text())))
    if (folder / "results" / "steps.json").is_file():
        text = replace_block(text, "steps", steps_block(json.loads((folder / "results" / "steps.json").read_text())))
    if (folder / "results" / "tiling.json").is_file():
        sampling = json.loads((folder / "config.json").read_text()).get("sampling", {})
        text = replace_block(text, "tiling", tiling_block(json.loads((folder / "results" / "tiling.json").read_text()),
                                                          sampling))
    assessment = folder / "results" / "calibration_assessment" / "calibration_assessment.json"
    if assessment.is_file():
        text = replace_block(text, "calibration", calibration_block(json.loads(assessment.read_text())))
    if "<!-- generated: demo -->" in text:
        text = replace_block(text, "demo", demo_block(card))
    return text


def readme_texts(root: Path) -> dict[Path, str]:
    """The README's demo table and the bundle README's model table, rewritten from the cards."""
    models = root / "Training" / "models"
    readme, bundle_readme = root / "README.md", root / "Training" / "docs" / "README.md"
    return {readme: replace_block(readme.read_text(), "demo-table", readme_demo_table(models)),
            bundle_readme: replace_block(bundle_readme.read_text(), "models-table", models_table(models))}


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, nargs="?")
    parser.add_argument("--demo", action="store_true", help="re-run the card's demo case first")
    parser.add_argument("--readme", action="store_true",
                        help="rewrite the README's demo table and the bundle README's model table from the cards")
    args = parser.parse_args(argv)
    if args.readme:
        for path, text in readme_texts(Path(__file__).resolve().parents[2]).items():
            _write(path, text)
    if args.model is None:
        return 0
    if args.demo:
        measure_demo(args.model, json.loads((args.model / "card.json").read_text()))
    _write(args.model / "README.md", card_text(args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
