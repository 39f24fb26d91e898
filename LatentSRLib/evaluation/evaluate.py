"""Evaluate SR methods on one split of a prepared dataset: per-image scores, statistics, the paper's
tables and figures, and a report, in one run folder.

:func:`evaluate` is the entry point (the ``evaluate`` bundle config calls it); this module checks
its arguments and the run folder and runs the steps in order. Each step lives in its own module:

* :mod:`.methods`: the methods (SR models, their AE ceilings, interpolation baselines);
* :mod:`.scoring`: every method scored against the TRUE high-resolution slice (rule 1 (docs/science.md)),
  image by image, into per-image rows;
* :mod:`.fid`: FID per method, a set statistic (all predictions against all true slices);
* :mod:`.rows`: the rows' columns, ``per_image.csv``, pairing by image id (rule 2);
* :mod:`.row_statistics`: every statistic, paired (rule 7), from the rows;
* :mod:`.tables`: the Markdown tables; :mod:`.figures`: the figures and the saved spectra and
  example slices they are drawn from; :mod:`.report`: ``report.md``.

The run folder, written atomically (an interrupted run leaves the previous one or nothing)::

    RUN_DIR/
      per_image.csv         one row per (image, method), columns in :mod:`.rows`
      summary.json          settings, dataset, methods, networks, every statistic, the files
      tables.md             Table 1, 2, S6, S7, S8, S9, S11, S12 and the runtime, from per_image.csv
                            (and, for S12, the FID values saved in summary.json) by code
      report.md             settings, methods, networks, the tables and the figures together
      radial_spectrum.csv   mean radial power spectrum of every method and of the true image
      examples.npz          a few example slices (HR, LR, every prediction) the image figures are drawn from
      perception_distortion.png, metric_bars.png, subband_profile.png, radial_spectrum.png,
      examples.png, hallucination_<n>.png (one per SR model), bland_altman.png,
      ceiling_regression.png (only with at least 3 SR-model x dataset points)

LPIPS is computed by :class:`.perceptual.LPIPSMetric` and its network named in the column, the
tables, the figures and the report (the offline ST-LPIPS stand-in is labelled as such). FID is
computed by :class:`.fid.FIDMetric`: one value per method over all its predictions against all
the true slices of the split, Inception FID (torchmetrics) when its weights are available, else
the offline ST-LPIPS AlexNet feature distance, labelled as such in Table S12 and the report; a
split of fewer than 2048 slices gets a warning in the log, the table and the report's notes.

Per-image rows -> statistics -> tables (rule 9 (docs/science.md)). Everything after the scoring, the
statistics in ``summary.json``, every table in ``tables.md`` and every figure, is computed from the
rows as read back from ``per_image.csv`` (and from ``radial_spectrum.csv`` / ``examples.npz`` for
the spectrum and the image montages); FID, a set statistic with no per-image value, is saved in
``summary.json`` (``tables.fid``). :func:`.tables.tables_from_rows` reproduces ``tables.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from LatentSRLib import __version__
from LatentSRLib.errors import InputError
from LatentSRLib.io.atomic import atomic_directory, check_output_folder
from LatentSRLib.data.slice_source import evenly_spaced
from LatentSRLib.metrics.fid import FID_MIN_SAMPLES, FIDSampleSizeWarning
from LatentSRLib.evaluation.figures import save_examples, save_run_figures, write_spectra
from LatentSRLib.metrics.hallucination import BACKGROUND_LEVEL
from LatentSRLib.evaluation.methods import BuildContext, MethodBatch, build_methods
from LatentSRLib.metrics.quality import ms_ssim_size_problem
from LatentSRLib.evaluation.report import report_markdown
from LatentSRLib.evaluation.row_statistics import statistics_from_rows
from LatentSRLib.evaluation.rows import AGGREGATES, read_rows, write_rows
from LatentSRLib.evaluation.scoring import score_batch
from LatentSRLib.evaluation.tables import tables_from_statistics

__all__ = ["EVALUATION_FORMAT", "EvaluationResult", "evaluate", "is_evaluation_folder"]

EVALUATION_FORMAT = "latentsr.evaluation"
_VERSION = 2  # 2: summary.json's "fid" is a record with the FID values (was a string)
SUMMARY_FILE = "summary.json"
EXAMPLES = 3

logger = logging.getLogger(__name__)


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
    check_output_folder(outdir, inputs, is_ours=is_evaluation_folder, what="evaluation folder")


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
    fid: bool = True,
    fid_download: bool = True,
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
        fid: compute FID per method (all predictions against all true slices of the split) when a
            feature network is available (named in Table S12 and the report).
        fid_download: let torch-fidelity download the Inception-v3 weights of the published FID when
            they are not cached; without them (or without torch-fidelity) the offline ST-LPIPS
            AlexNet feature distance is used (labelled, not comparable with Inception FID).
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

    from LatentSRLib.model.devices import resolve_device
    from LatentSRLib.data.dataset import PreparedDataset
    from LatentSRLib.metrics.fid import FIDMetric
    from LatentSRLib.metrics.perceptual import LPIPSMetric

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

    fid_metric = None
    fid_info = {"name": None, "label": None, "reason": "switched off (fid=False)", "min_samples": FID_MIN_SAMPLES,
                "values": {}}
    if fid:
        fid_metric = FIDMetric(device=torch_device, allow_download=bool(fid_download), batch_size=int(batch_size))
        if fid_metric.available:
            fid_info.update(name=fid_metric.name, label=fid_metric.label, reason=fid_metric.reason)
            say(f"FID network: {fid_metric.label}")
        else:
            fid_info["reason"] = fid_metric.reason
            say(f"FID skipped: {fid_metric.reason}")
            fid_metric = None

    height, width = dataset.size
    notes: list[str] = []
    ms_problem = ms_ssim_size_problem(height, width)
    if ms_problem:
        notes.append(f"MS-SSIM is n/a: {ms_problem}.")
    dataset_name = dataset.folder.name
    example_rows = {items[i]["row"] for i in evenly_spaced(len(items), EXAMPLES)}
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
        batch_rows, frequencies, power = score_batch(batch, chunk, built, outputs, dataset=dataset_name,
                                                     perceptual=perceptual, ms_ssim_undefined=bool(ms_problem), k=k)
        rows += batch_rows
        if fid_metric is not None:  # a set statistic: accumulated over the whole split
            fid_metric.update(hr, {m.name: outputs[m.name].predictions for m in built})
        for name, total in power.items():
            spectra[name] = spectra.get(name, 0.0) + total
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
    if fid_metric is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FIDSampleSizeWarning)  # routed to the log and the notes below
            results = fid_metric.compute()
        fid_info["values"] = {dataset_name: {name: {"value": r.value, "n": r.n, "n_true": r.n_true}
                                             for name, r in results.items()}}
        for name, r in results.items():
            say(f"{fid_metric.name} {name}: {r.value:.4g} (n = {r.n} predictions, {r.n_true} true slices)")
        for warning in caught:
            if issubclass(warning.category, FIDSampleSizeWarning):
                notes.append(f"FID {warning.message}.")
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)

    table_settings = {"reference": next((m.name for m in built if m.kind == "sr_model"), built[0].name),
                      "aggregate": aggregate, "lpips_label": lpips_info["label"], "k": float(k),
                      "n_resamples": int(n_resamples), "seed": int(seed), "holm": bool(holm), "fid": fid_info}
    settings = {"dataset_dir": str(dataset.folder.resolve()), "dataset": dataset_name, "split": split,
                "limit": limit, "steps": steps, "sampler": sampler, "samples": int(samples), "seed": int(seed),
                "batch_size": int(batch_size), "device": str(torch_device), "lpips": bool(lpips), "fid": bool(fid),
                "k": float(k),
                "n_resamples": int(n_resamples), "holm": bool(holm), "aggregate": aggregate,
                "reference": table_settings["reference"],
                "hallucination_region": f"anatomy: HR > {BACKGROUND_LEVEL} with enclosed holes filled",
                "methods_requested": names}
    with atomic_directory(outdir) as staging:
        write_rows(rows, staging / "per_image.csv")
        saved_rows = read_rows(staging / "per_image.csv")  # tables and statistics come from the file
        stats = statistics_from_rows(saved_rows, reference=table_settings["reference"], aggregate=aggregate,
                                     n_resamples=n_resamples, seed=seed, holm=holm)
        tables = tables_from_statistics(stats, lpips_info["label"], k, fid_info)
        (staging / "tables.md").write_text(tables)
        write_spectra(staging / "radial_spectrum.csv", frequencies, mean_spectra)
        save_examples(staging / "examples.npz", examples["ids"], np.stack(examples["hr"]), np.stack(examples["lr"]),
                      {n: np.stack(v) for n, v in examples["predictions"].items()})
        figures, figure_notes = save_run_figures(staging, saved_rows, stats, dataset_name, built,
                                                 lpips_info["label"], k, aggregate)
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
            "fid": fid_info,
            "methods": [m.describe() for m in built],
            "seconds": round(elapsed, 3),
            "statistics": stats,
            "figures": figures,
            "notes": notes,
            "files": sorted(["per_image.csv", SUMMARY_FILE, "tables.md", "report.md", "radial_spectrum.csv",
                             "examples.npz", *figures.values()]),
        }
        (staging / "report.md").write_text(report_markdown(summary, tables))
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    for note in notes:
        say(note)
    say(f"wrote {outdir}")
    return EvaluationResult(outdir, saved_rows, summary, tables, figures, notes)
