"""Assess a model's stored calibration on subjects it was not fitted on (``latentsr calibrate --assess``).

The question (issue 18): does the calibrated interval ``SR +- half-width`` hold the truth as often as
promised, and does its width find hallucinations without the truth? On one split of a prepared dataset
(the ``test`` split by default; never the split the calibration was fitted on), the model
super-resolves every slice exactly as ``latentsr calibrate`` did (the same K, steps, seed and
data-consistency setting, read from ``calibration.json``), and:

* coverage against nominal: at the stored ``lam``, the mean over slices of each slice's fraction of
  foreground pixels inside the interval (the quantity the bound controls), and the pooled fraction;
  per region, the pooled coverage and mean half-width. The regions are the anatomy (truth above the
  calibration's foreground level, the pixels the calibration counts) and the background; a prepared
  dataset carries no segmentation, so there is no tumour region yet (a label map would plug into
  :func:`assess_maps`'s ``regions``). The flagged pixels below are regions too: how often the interval
  still holds the truth where the model hallucinated;
* hallucinations found without the truth: the ground truth is the autoencoder noise-floor rule
  (:func:`~LatentSRLib.metrics.hallucination.hallucination_maps`, ``tau = mean + k SD`` of ``|AE - HR|``
  with ``AE`` the model's own autoencoder's reconstruction of the true slice, over the anatomy with
  holes filled): a pixel is flagged when ``|SR - HR| > tau``. The AUROC of the calibrated half-width
  at ranking flagged above unflagged pixels (:func:`~LatentSRLib.metrics.calibration.width_auroc`,
  pooled over every analysed pixel of the split, and the mean of the per-slice AUROCs), beside the
  raw K-sample std, the consistency map ``|A(SR) - LR|`` and the SR's structure map (the terms of the
  width) as baselines. ``lam`` and the floor do not change a ranking: the calibrated width's AUROC is
  that of the heuristic's spread;
* a reliability diagram: for each nominal level, ``lam`` refitted on the calibration split (the same
  method, and confidence for ``rcps``, as the stored calibration) and the coverage it reaches on the
  assessed split (:func:`~LatentSRLib.metrics.calibration.reliability_curve`).

Outputs, in one folder written atomically (a previous assessment is replaced as a whole):
``calibration_assessment.json`` (every number, the slice ids of both splits, per-source and per-slice rows),
``calibration_assessment.md`` (tables generated from the json, rule 9) and ``reliability.png``.
Units: the intensity window's [0, 1] (widths), fractions in [0, 1] (coverage).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from LatentSRLib.data.dataset import SPLITS, PreparedDataset
from LatentSRLib.errors import InputError
from LatentSRLib.evaluation.calibration import CalibrationMaps, calibration_maps, check_pairing, maps_width
from LatentSRLib.io.atomic import atomic_directory, check_results_folder
from LatentSRLib.metrics.calibration import (
    METHOD_RCPS,
    RELIABILITY_LEVELS,
    Calibration,
    coverage,
    image_coverage,
    mean_half_width,
    normalised_errors,
    reliability_curve,
    structure_map,
    width_auroc,
)
from LatentSRLib.metrics.hallucination import BACKGROUND_LEVEL, hallucination_maps
from LatentSRLib.metrics.plotting import new_figure, save_png
from LatentSRLib.model.devices import resolve_device
from LatentSRLib.model.folder import SRModel, load_sr_model
from LatentSRLib.model.sampling import SamplingSettings

__all__ = [
    "ASSESSMENT_FILE",
    "FIGURE_FILE",
    "REPORT_FILE",
    "CalibrationAssessment",
    "assess_calibration",
    "assess_maps",
    "assessment_markdown",
    "autoencoder_reconstructions",
    "save_reliability_figure",
]

ASSESSMENT_FILE = "calibration_assessment.json"
REPORT_FILE = "calibration_assessment.md"
FIGURE_FILE = "reliability.png"
ASSESSMENT_FORMAT = "latentsr.calibration_assessment"
#: the per-pixel scores ranked against the flagged pixels: the calibrated width and its terms as baselines
SCORES = ("calibrated_half_width", "std", "consistency", "structure")
#: what the AUROC flags: hallucinated or lost pixels (beyond the AE noise floor), and each kind alone
TARGETS = ("flagged", "hallucinated", "lost")

ProgressCallback = Callable[[float, str], None]


@dataclass
class CalibrationAssessment:
    """What :func:`assess_calibration` wrote: the folder and the summary (``calibration_assessment.json``)."""

    outdir: Path
    summary: dict[str, Any]


def _number(value: float) -> float | None:
    """JSON-ready: NaN (nothing to measure) becomes null, so the file is strict JSON."""
    value = float(value)
    return value if math.isfinite(value) else None


def _region(sr: np.ndarray, hr: np.ndarray, half: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    return {"pixels": int(mask.sum()), "coverage": _number(coverage(sr, hr, half, mask)),
            "mean_half_width": _number(mean_half_width(half, mask))}


def assess_maps(calibration: Calibration, maps: CalibrationMaps, reference: CalibrationMaps, ae: np.ndarray, *,
                k: float = 2.0, levels: Sequence[float] = RELIABILITY_LEVELS,
                regions: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Every number of the assessment, from the maps (numpy only; no model).

    Args:
        calibration: the stored calibration (its ``lam``, heuristic, floor, foreground level, method, delta).
        maps: the assessed split's maps, each ``(n, H, W)`` window units (:func:`calibration_maps`).
        reference: the calibration split's maps (``(m, H, W)``), for the reliability curve only.
        ae: ``(n, H, W)`` the model's autoencoder reconstruction of ``maps.hr`` in [0, 1].
        k: the hallucination noise-floor multiplier.
        levels: the nominal coverages of the reliability curve (the calibration's own is added).
        regions: extra named ``(n, H, W)`` bool masks to report coverage and width in (e.g. a tumour).

    Returns:
        A JSON-ready dict (NaN written as None): ``nominal``, ``coverage``, ``regions``,
        ``hallucination``, ``auroc``, ``reliability``, ``per_image`` (see the module docstring).
    """
    sr, hr = maps.sr.astype(np.float64), maps.hr.astype(np.float64)
    ae = np.asarray(ae, dtype=np.float64)
    if not (sr.shape == hr.shape == ae.shape == maps.std.shape == maps.consistency.shape):
        raise ValueError(f"the maps differ in shape: sr {sr.shape}, hr {hr.shape}, ae {ae.shape}")
    structure = structure_map(sr)  # one pass: a term of the width and a baseline score below
    width = calibration.width(maps.std, maps.consistency, structure=structure)
    half = calibration.lam * width  # float64: the same comparison as the calibration's scores
    foreground = hr > calibration.foreground_level  # the pixels the calibration counts
    analysis = hallucination_maps(sr, hr, ae, k=k)  # the anatomy, holes filled (the hallucination rule)
    labels = np.stack([result.labels for result in analysis])
    analysed = np.stack([result.foreground for result in analysis])
    flagged, hallucinated, lost = labels != 0, labels > 0, labels < 0
    unflagged = analysed & ~flagged

    masks = {"foreground": foreground, "background": ~foreground, "flagged": flagged, "hallucinated": hallucinated,
             "lost": lost, "unflagged": unflagged}
    for name, mask in (regions or {}).items():
        mask = np.asarray(mask, dtype=bool)
        if name in masks:
            raise ValueError(f"region {name!r} would replace a built-in region")
        if mask.shape != sr.shape:
            raise ValueError(f"region {name!r} has shape {mask.shape}, not {sr.shape}")
        masks[name] = mask

    scores = [normalised_errors(s, h, w, m) for s, h, w, m in zip(sr, hr, width, foreground)]
    reference_width = maps_width(reference, calibration.heuristic, calibration.floor, calibration.structure_weight)
    reference_scores = [normalised_errors(s, h, w, h > calibration.foreground_level)
                        for s, h, w in zip(reference.sr.astype(np.float64), reference.hr.astype(np.float64),
                                           reference_width)]
    levels = sorted({round(float(level), 6) for level in levels} | {round(calibration.nominal, 6)})
    curve = reliability_curve(reference_scores, scores, levels, calibration.delta, method=calibration.method)
    refitted = next(point.lam for point in curve if point.nominal == round(calibration.nominal, 6))

    score_maps = dict(zip(SCORES, (half, maps.std.astype(np.float64), maps.consistency.astype(np.float64),
                                   structure)))
    auroc: dict[str, Any] = {}
    for target, positives, counted in (("flagged", flagged, analysed), ("hallucinated", hallucinated, analysed & ~lost),
                                       ("lost", lost, analysed & ~hallucinated)):
        entry: dict[str, Any] = {"positives": int(positives.sum()), "pixels": int(counted.sum())}
        for name, score in score_maps.items():
            within = [width_auroc(score[i], positives[i], counted[i]) for i in range(len(score))]
            within = [value for value in within if math.isfinite(value)]
            entry[name] = {"pooled": _number(width_auroc(score, positives, counted)),
                           "per_slice_mean": _number(np.mean(within)) if within else None, "slices": len(within)}
        auroc[target] = entry

    n_analysed = int(analysed.sum())
    rows = []
    for i, slice_id in enumerate(maps.ids):
        fg = foreground[i]
        rows.append({
            "id": slice_id, "foreground_pixels": int(fg.sum()),
            "coverage": _number(coverage(sr[i], hr[i], half[i], fg)),
            "mean_half_width": _number(mean_half_width(half[i], fg)),
            "tau": _number(analysis[i].tau), "analysed_pixels": analysis[i].n_pixels,
            "hallucinated_fraction": _number(analysis[i].hallucinated_fraction),
            "lost_fraction": _number(analysis[i].lost_fraction),
            "flagged_coverage": _number(coverage(sr[i], hr[i], half[i], flagged[i])),
        })
    per_image = np.array([row["coverage"] for row in rows if row["coverage"] is not None], dtype=np.float64)
    return {
        "nominal": calibration.nominal,
        "coverage": {
            "mean_over_images": _number(image_coverage(scores, calibration.lam)),
            "pooled_pixels": _number(coverage(sr, hr, half, foreground)),
            "min_over_images": _number(per_image.min()) if per_image.size else None,
            "images_below_nominal": int((per_image < calibration.nominal).sum()),
            "images": int(per_image.size),
        },
        "regions": {name: _region(sr, hr, half, mask) for name, mask in masks.items()},
        "hallucination": {
            "k": float(k), "rule": f"|SR - HR| > tau, tau = mean + {float(k):g} SD of |AE - HR| per slice "
                                   "(AE: the model's autoencoder reconstruction of the true slice)",
            "region": f"anatomy: HR > {BACKGROUND_LEVEL} with enclosed holes filled",
            "analysed_pixels": n_analysed,
            "flagged_fraction": _number(flagged.sum() / n_analysed) if n_analysed else None,
            "hallucinated_fraction": _number(hallucinated.sum() / n_analysed) if n_analysed else None,
            "lost_fraction": _number(lost.sum() / n_analysed) if n_analysed else None,
        },
        "auroc": auroc,
        "reliability": {
            "method": calibration.method,
            "delta": calibration.delta,
            "calibration_images": len(reference.ids),
            "refitted_lam": _number(refitted),
            "points": [{key: _number(value) for key, value in asdict(point).items()} for point in curve],
        },
        "by_source": _by_source(rows),
        "per_image": rows,
    }


def _by_source(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Coverage and mean half-width per source scan (a slice id's first path part, e.g. the series a
    prepared dataset took it from): the calibration's promise is about images like the calibration
    split's, and how far sources scatter around it is what a new scan may meet."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["id"]).split("/", 1)[0], []).append(row)
    out = {}
    for source, members in groups.items():
        covered = [row["coverage"] for row in members if row["coverage"] is not None]
        widths = [row["mean_half_width"] for row in members if row["mean_half_width"] is not None]
        out[source] = {"images": len(members), "coverage": _number(np.mean(covered)) if covered else None,
                       "mean_half_width": _number(np.mean(widths)) if widths else None}
    return out


@torch.inference_mode()
def autoencoder_reconstructions(model: SRModel, hr: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """The model's own autoencoder's encode-then-decode (posterior mean) of the true slices: the
    hallucination noise floor. ``(n, H, W)`` in [0, 1] -> ``(n, H, W)`` float32 in [0, 1]."""
    out = np.zeros(hr.shape, dtype=np.float32)
    for start in range(0, len(hr), batch_size):
        batch = torch.from_numpy(np.asarray(hr[start : start + batch_size], dtype=np.float32))[:, None]
        recon = model.autoencoder.reconstruct(batch.to(model.device))
        out[start : start + len(batch)] = recon.float().clamp(0.0, 1.0)[:, 0].cpu().numpy()
    return out


def assess_calibration(model_folder: str | os.PathLike, dataset_dir: str | os.PathLike, outdir: str | os.PathLike, *,
                       split: str = "test", calibration_split: str | None = None, samples: int | None = None,
                       steps: int | None = None, seed: int | None = None, data_consistency: bool | None = None,
                       limit: int | None = None, k: float = 2.0, levels: Sequence[float] = RELIABILITY_LEVELS,
                       device: str = "auto", progress: ProgressCallback | None = None) -> CalibrationAssessment:
    """Assess ``model_folder``'s stored calibration on ``split`` of ``dataset_dir``; write ``outdir``.

    Args:
        model_folder: a model folder with a ``calibration.json`` (``latentsr calibrate``).
        dataset_dir: a dataset of the model's task and grid (``latentsr prepare``).
        outdir: the report folder (new, empty or a previous assessment, replaced as a whole).
        split: the split assessed (subjects neither the model nor the calibration saw).
        calibration_split: the split the reliability curve refits ``lam`` on (default: the one recorded
            in ``calibration.json``, with its recorded ``limit``); must differ from ``split``.
        samples, steps, seed, data_consistency: the sampling (default: as recorded in the calibration,
            which the stored ``lam`` belongs to).
        limit: at most this many evenly spaced slices of ``split``.
        k: the hallucination noise-floor multiplier (the paper's 2).
        levels: nominal coverages of the reliability diagram.
        device: ``auto``, ``cpu``, ``cuda``, ...
        progress: called with (fraction done, message).

    Raises:
        InputError: an uncalibrated model, the assessed split equal to the calibration split, an unknown
            or empty split, or a model and dataset that do not match.
        OutputError: an output folder that cannot be written or is not a previous assessment.
    """
    model_folder, dataset_dir, outdir = Path(model_folder), Path(dataset_dir), Path(outdir)
    calibration = Calibration.load(model_folder)
    if calibration is None:
        raise InputError("the model is not calibrated (no calibration.json); run `latentsr calibrate` first",
                         model_folder)
    calibration_split = calibration_split or calibration.split
    for name in (split, calibration_split):
        if name not in SPLITS:
            raise InputError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}", dataset_dir)
    if split == calibration_split:
        raise InputError(f"the {split} split is the calibration split: assess the calibration on slices it was not "
                         f"fitted on (another split, e.g. test)", dataset_dir)
    check_results_folder(outdir, model_folder, [dataset_dir], is_ours=lambda folder: (folder / ASSESSMENT_FILE).is_file(),
                         what="calibration assessment")
    dataset = PreparedDataset(dataset_dir)
    calibration_limit = calibration.extra.get("limit") if calibration_split == calibration.split else None
    for name, at_most in ((split, limit), (calibration_split, calibration_limit)):
        if not dataset.items(name, limit=at_most):
            raise InputError(f"the dataset has no {name} slices", dataset_dir)

    model = load_sr_model(model_folder, device=resolve_device(device))
    check_pairing(model, dataset, dataset_dir)
    samples = calibration.samples if samples is None else int(samples)
    seed = calibration.seed if seed is None else int(seed)
    steps = calibration.steps if steps is None else int(steps)
    data_consistency = bool(calibration.extra.get("data_consistency", False)) if data_consistency is None else bool(
        data_consistency)
    sampling = SamplingSettings(steps=steps, samples=samples, seed=seed).resolved(
        model.objective, model.config.get("sampling"), model_folder)

    n_split = len(dataset.items(split, limit=limit))
    total = n_split + len(dataset.items(calibration_split, limit=calibration_limit))

    def stage(offset: int, count: int, what: str) -> ProgressCallback | None:
        # one bar over both splits, weighted by their slices
        if progress is None:
            return None
        return lambda done, message: progress((offset + done * count) / total, f"{what} {message}")

    options = dict(samples=samples, steps=sampling.steps, seed=seed, data_consistency=data_consistency)
    maps = calibration_maps(model, dataset, split, limit=limit, progress=stage(0, n_split, split), **options)
    ae = autoencoder_reconstructions(model, maps.hr)
    reference = calibration_maps(model, dataset, calibration_split, limit=calibration_limit,
                                 progress=stage(n_split, total - n_split, calibration_split), **options)
    summary = assess_maps(calibration, maps, reference, ae, k=k, levels=levels)

    notes = [f"regions: the dataset carries no segmentation, so coverage and width are reported in the anatomy "
             f"(foreground: true image above {calibration.foreground_level:g} of the window, the pixels the "
             f"calibration counts) and the background, and in the pixels the hallucination rule flags",
             f"the calibrated half-width is lam * ({calibration.heuristic}), structure weight "
             f"{calibration.structure_weight:g}; lam and the floor do not change a "
             "ranking, so its AUROC is that of the spread under the square root"]
    if samples == 1:
        notes.append("K = 1: the std is zero everywhere, so its AUROC is 0.5 (all ties)")
    recorded = (calibration.samples, calibration.steps, calibration.seed,
                bool(calibration.extra.get("data_consistency", False)))
    if (samples, sampling.steps, seed, data_consistency) != recorded:
        notes.append(f"the sampling differs from the calibration's (K, steps, seed, data consistency = {recorded}): the "
                     f"stored lam was fitted on other maps")
    if calibration.dataset and calibration.dataset != dataset_dir.resolve().name:
        notes.append(f"the calibration was fitted on dataset {calibration.dataset!r}, not this one: the reliability "
                     f"curve refits lam on this dataset's {calibration_split} split")
    summary = {
        "format": ASSESSMENT_FORMAT,
        "model": str(model_folder.resolve()),
        "dataset": str(dataset_dir.resolve()),
        "split": split,
        "images": len(maps.ids),
        "ids": maps.ids,
        "calibration_split": calibration_split,
        "calibration_images": len(reference.ids),
        "calibration_ids": reference.ids,
        "calibration": calibration.to_dict(),
        "sampling": {"samples": samples, "steps": sampling.steps, "sampler": sampling.sampler, "seed": seed,
                     "data_consistency": data_consistency, "limit": limit, "calibration_limit": calibration_limit},
        "units": "widths in the intensity window's [0, 1]; coverage as fractions of pixels",
        **summary,
        "notes": notes,
    }
    with atomic_directory(outdir) as staging:
        (staging / ASSESSMENT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        (staging / REPORT_FILE).write_text(assessment_markdown(summary))
        save_reliability_figure(summary, staging / FIGURE_FILE)
    return CalibrationAssessment(outdir, summary)


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pp(value: float | None, nominal: float) -> str:
    return "n/a" if value is None else f"{100 * (value - nominal):+.1f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def assessment_markdown(summary: Mapping[str, Any]) -> str:
    """The tables of ``calibration_assessment.md``, generated from the summary (the json) alone."""
    c = summary["calibration"]
    nominal = summary["nominal"]
    sampling = summary["sampling"]
    rcps = c.get("method") == METHOD_RCPS
    how = f"{c.get('method')}, alpha {c['alpha']:g}" + (f", delta {c['delta']:g}" if rcps else "")
    lines = [
        f"# Calibration assessment: {Path(summary['model']).name} on the {summary['split']} split "
        f"(n = {summary['images']} slices)", "",
        f"Stored calibration: lam = {c['lam']:.4g}, nominal coverage 1 - alpha = {nominal:.3f} ({how}; width "
        f"lam * ({c.get('heuristic')})), fitted on {c['images']} {c['split']} slices of {c['dataset'] or 'a dataset'}. "
        f"Assessed on {summary['images']} {summary['split']} slices of {Path(summary['dataset']).name} with K = "
        f"{sampling['samples']}, {sampling['steps']} {sampling['sampler']} steps, seed {sampling['seed']}, data "
        f"consistency {'on' if sampling['data_consistency'] else 'off'}. Widths in the intensity window's [0, 1].", "",
        "## Coverage at the stored calibration", "",
        "| pixels | n | coverage | vs nominal (pp) | mean half-width |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    cov = summary["coverage"]
    fg = summary["regions"]["foreground"]
    lines.append(f"| foreground, mean over slices (what the calibration controls) | {cov['images']} slices | "
                 f"{_f(cov['mean_over_images'])} | {_pp(cov['mean_over_images'], nominal)} | "
                 f"{_f(fg['mean_half_width'], 4)} |")
    labels = {"foreground": "foreground (anatomy), pooled", "background": "background",
              "flagged": "flagged (hallucinated or lost)", "hallucinated": "hallucinated", "lost": "lost",
              "unflagged": "analysed, not flagged"}
    for name, region in summary["regions"].items():
        lines.append(f"| {labels.get(name, name)} | {region['pixels']} px | {_f(region['coverage'])} | "
                     f"{_pp(region['coverage'], nominal)} | {_f(region['mean_half_width'], 4)} |")
    lines += ["", f"Slices below nominal: {cov['images_below_nominal']} of {cov['images']} (lowest coverage "
                  f"{_f(cov['min_over_images'])}).", ""]
    sources = summary.get("by_source") or {}
    if len(sources) > 1:
        lines += ["By source scan (mean over its slices):", "",
                  "| source | slices | coverage | vs nominal (pp) | mean half-width |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {name} | {entry['images']} | {_f(entry['coverage'])} | {_pp(entry['coverage'], nominal)} | "
                  f"{_f(entry['mean_half_width'], 4)} |" for name, entry in sources.items()]
        lines.append("")

    h, auroc = summary["hallucination"], summary["auroc"]
    lines += [
        "## Does the width find hallucinations? (AUROC)", "",
        f"Ground truth: {h['rule']}, over the {h['region']} ({h['analysed_pixels']} pixels): flagged "
        f"{_percent(h['flagged_fraction'])} (hallucinated {_percent(h['hallucinated_fraction'])}, lost "
        f"{_percent(h['lost_fraction'])}). AUROC: the chance that a flagged pixel scores above an "
        "unflagged one (0.5: chance), pooled over the split's pixels; per slice: the mean over slices with both "
        "kinds of pixel.", "",
        "| score | flagged | hallucinated | lost | flagged, per slice (slices) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    names = {"calibrated_half_width": "calibrated half-width", "std": f"raw std (K = {sampling['samples']})",
             "consistency": "consistency \\|A(SR) - LR\\|",  # escaped: a bare | splits a table cell
             "structure": "SR structure (edge strength)"}
    for score in (name for name in SCORES if name in auroc["flagged"]):
        per = auroc["flagged"][score]
        lines.append(f"| {names[score]} | " + " | ".join(_f(auroc[t][score]["pooled"]) for t in TARGETS)
                     + f" | {_f(per['per_slice_mean'])} ({per['slices']}) |")
    reliability = summary["reliability"]
    lines += [
        "", "## Reliability", "",
        f"lam refitted on {reliability['calibration_images']} {summary['calibration_split']} slices for each level "
        + (f"(Hoeffding-Bentkus, delta {reliability['delta']:g}; n/a: too few slices to certify it)" if rcps else
           "(conformal risk control; n/a: too few slices)")
        + " and in the large-n "
        f"limit (mean risk = alpha, no margin); coverage: mean over the {summary['split']} slices. At the stored "
        f"level the refit gives lam = {_f(reliability['refitted_lam'], 4)}.", "",
        "| nominal | lam | coverage | vs nominal (pp) | lam, large-n | coverage, large-n | vs nominal (pp) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in reliability["points"]:
        lines.append(f"| {p['nominal']:.3f} | {_f(p['lam'], 4)} | {_f(p['coverage'])} | {_pp(p['coverage'], p['nominal'])} "
                     f"| {_f(p['lam_point'], 4)} | {_f(p['coverage_point'])} | {_pp(p['coverage_point'], p['nominal'])} |")
    lines += ["", f"![reliability diagram]({FIGURE_FILE})", "", "Notes:", ""]
    lines += [f"- {note}" for note in summary["notes"]]
    return "\n".join(lines) + "\n"


def save_reliability_figure(summary: Mapping[str, Any], path: str | os.PathLike, dpi: int = 100) -> Path:
    """Nominal against empirical coverage with the diagonal (written atomically as PNG): the
    calibration method's ``lam`` per level, the large-n ``lam``, and the stored calibration."""
    points = summary["reliability"]["points"]
    nominal = np.array([p["nominal"] for p in points])

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if p[key] is None else p[key] for p in points], dtype=float)

    fig = new_figure(4.8, 4.6)
    ax = fig.subplots()
    low = float(min(nominal.min(), np.nanmin(np.r_[column("coverage_point"), column("coverage"), 1.0]))) - 0.03
    ax.plot([low, 1], [low, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    rcps = summary["reliability"].get("method", METHOD_RCPS) == METHOD_RCPS
    ax.plot(nominal, column("coverage"), "o-", color="#b2182b",
            label=f"certified (delta {summary['reliability']['delta']:g})" if rcps else "conformal risk control")
    ax.plot(nominal, column("coverage_point"), "s--", color="#2166ac", markersize=4, label="large-n lam (no margin)")
    stored = summary["coverage"]["mean_over_images"]
    if stored is not None:
        ax.plot([summary["nominal"]], [stored], "*", color="k", markersize=12, label="stored calibration")
    ax.set_xlim(low, 1.01)  # a little above 1: a point at full coverage stays whole
    ax.set_ylim(low, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal coverage 1 - alpha")
    ax.set_ylabel(f"empirical coverage ({summary['split']}, mean over slices)")
    ax.set_title(f"Reliability: {summary['images']} {summary['split']} slices, lam fitted on "
                 f"{summary['calibration_images']} {summary['calibration_split']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path, dpi)
