"""Calibrate a model's per-pixel intervals on a prepared dataset (``latentsr calibrate``).

The model super-resolves every slice of one split of a dataset written by ``latentsr prepare``
(true HR and its LR on the model grid, [0, 1] window units) through the one sampling path
(:func:`~LatentSRLib.model.sampling.sample_sr`, K samples, seeded per slice id), exactly as
``latentsr sr`` does for a slice of one tile: SR = the mean of the K samples clipped to [0, 1],
``std`` their std, ``consistency`` = ``|A(SR) - LR|`` with the task's noise-free forward operator
(rule 11; measured before clipping, as the engine does). The heuristic width
(:func:`~LatentSRLib.metrics.calibration.heuristic_width`, with the structure of the slice's SR) of
each slice is then scaled by the ``lam`` of :func:`~LatentSRLib.metrics.calibration.fit_lambda`
(conformal risk control by default, or risk-controlling prediction sets; risk = fraction of the
slice's foreground pixels whose truth lies outside), and the result is recorded in the model
folder's ``calibration.json`` with what reproduces it (method, dataset, split, n, K, steps, seed).

The split must hold slices of subjects the model never trained on (the validation split of the
dataset the model was trained with is the natural choice), exchangeable with the scans it will meet.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from LatentSRLib.data.dataset import SPLITS, PreparedDataset
from LatentSRLib.errors import InputError
from LatentSRLib.metrics.calibration import (
    DEFAULT_FLOOR,
    DEFAULT_STRUCTURE_WEIGHT,
    FOREGROUND_LEVEL,
    HEURISTIC,
    METHOD,
    METHOD_RCPS,
    METHODS,
    Calibration,
    coverage,
    fit_lambda,
    lambda_grid,
    mean_half_width,
    named_width,
    normalised_errors,
    risk_table,
)
from LatentSRLib.model.devices import autocast_for, resolve_device
from LatentSRLib.model.folder import SRModel, load_sr_model
from LatentSRLib.model.sampling import SamplingSettings, sample_sr
from LatentSRLib.transforms.consistency import consistency_map, data_consistent

__all__ = ["CalibrationMaps", "calibrate_maps", "calibrate_model", "calibration_maps", "check_pairing", "maps_width"]

ProgressCallback = Callable[[float, str], None]


@dataclass
class CalibrationMaps:
    """What the model produced on the calibration slices, each ``(n, H, W)`` float32 in window units.

    Attributes:
        ids: the n slice ids.
        sr: the SR (mean of K samples, clipped to [0, 1]).
        hr: the true slices.
        std: the std across the K samples (zeros for K = 1).
        consistency: ``|A(SR) - LR|``.
    """

    ids: list[str]
    sr: np.ndarray
    hr: np.ndarray
    std: np.ndarray
    consistency: np.ndarray


def check_pairing(model: SRModel, dataset: PreparedDataset, where: Path) -> None:
    """Refuse (:class:`InputError` naming ``where``) a dataset on another grid or of another task than the model's."""
    # the model must be fed the degradation it learned, on its own grid (rule 11)
    grid = tuple(int(v) for v in model.config.get("grid", {}).get("size", dataset.size))
    if grid != tuple(dataset.size):
        raise InputError(f"the model works on a {grid[0]}x{grid[1]} grid but the dataset's slices are "
                         f"{dataset.size[0]}x{dataset.size[1]}; prepare it with --size {grid[0]}", where)
    a, b = model.task, dataset.task
    if (a.mode, a.scale, a.noise, a.noise_kind, a.options) != (b.mode, b.scale, b.noise, b.noise_kind, b.options):
        raise InputError(f"the model was trained for task {a.name} (noise {a.noise}) but the dataset holds task "
                         f"{b.name} (noise {b.noise}): its LR inputs are not what the model undoes", where)


@torch.inference_mode()
def calibration_maps(model: SRModel, dataset: PreparedDataset, split: str = "val", *, samples: int = 2,
                     steps: int | None = None, seed: int = 0, limit: int | None = None,
                     data_consistency: bool = False, batch_size: int = 4, autocast: bool = True,
                     progress: ProgressCallback | None = None) -> CalibrationMaps:
    """Super-resolve the slices of ``split`` and measure what the heuristic is made of.

    Args:
        model: a loaded model, on the device to compute on.
        dataset: a prepared dataset of the model's task and grid.
        split: ``train``, ``val`` or ``test``.
        samples, steps, seed: the sampling (K, steps or the model's default, seed).
        limit: at most this many evenly spaced slices of the split.
        data_consistency: project the SR onto the measurement first (as ``latentsr sr --data-consistency``).
        batch_size: slices per call of the sampler.
        progress: called with (fraction done, message) after each batch.
    """
    items = dataset.items(split, limit=limit)
    settings = SamplingSettings(steps=steps, samples=int(samples), seed=int(seed))
    n = len(items)
    height, width = dataset.size
    out = {name: np.zeros((n, height, width), dtype=np.float32) for name in ("sr", "hr", "std", "consistency")}
    for start in range(0, n, batch_size):
        chunk = items[start : start + batch_size]
        rows = [item["row"] for item in chunk]
        lr = torch.from_numpy(np.asarray(dataset.lr[rows], dtype=np.float32))[:, None].to(model.device)
        with autocast_for(model.device, autocast):
            result = sample_sr(model, lr, [item["id"] for item in chunk], settings)
            mean = result.mean.float()
            if data_consistency:
                mean = data_consistent(mean, lr, model.task)
            disagreement = consistency_map(mean, lr, model.task)
        done = slice(start, start + len(chunk))
        out["sr"][done] = mean.clamp(0, 1)[:, 0].cpu().numpy()
        out["std"][done] = result.std.float()[:, 0].cpu().numpy()
        out["consistency"][done] = disagreement.float()[:, 0].cpu().numpy()
        out["hr"][done] = np.asarray(dataset.hr[rows], dtype=np.float32)
        if progress is not None:
            progress(min(start + len(chunk), n) / n, f"{min(start + len(chunk), n)}/{n} slices")
    return CalibrationMaps([item["id"] for item in items], **out)


def maps_width(maps: CalibrationMaps, heuristic: str = HEURISTIC, floor: float = DEFAULT_FLOOR,
               structure_weight: float = DEFAULT_STRUCTURE_WEIGHT) -> np.ndarray:
    """The heuristic width of each slice of ``maps``: ``(n, H, W)`` float64, window units (the
    structure term from each slice's SR, in its own plane)."""
    return named_width(heuristic, maps.std, maps.consistency, maps.sr, floor, structure_weight=structure_weight)


def calibrate_maps(maps: CalibrationMaps, *, alpha: float = 0.1, delta: float | None = None, method: str = METHOD,
                   floor: float = DEFAULT_FLOOR, heuristic: str = HEURISTIC,
                   structure_weight: float = DEFAULT_STRUCTURE_WEIGHT,
                   foreground_level: float = FOREGROUND_LEVEL) -> tuple[float, float, float]:
    """The calibrated ``lam`` of the maps, with the coverage and mean half-width it gives on them
    (foreground pixels pooled, window units).

    Args:
        maps: the calibration split's maps.
        alpha: the risk level.
        delta: 1 - the confidence (``rcps`` only).
        method: :data:`~LatentSRLib.metrics.calibration.METHOD_CRC` or ``METHOD_RCPS``.
        floor, heuristic, structure_weight: the width's floor, formula and structure weight.
        foreground_level: pixels of the truth above it count.

    Raises:
        ValueError: too few slices to control ``alpha`` by ``method``.
    """
    widths = maps_width(maps, heuristic, floor, structure_weight)
    masks = maps.hr > foreground_level  # the truth's anatomy, not the empty field of view
    scores = [normalised_errors(sr, hr, w, m) for sr, hr, w, m in zip(maps.sr, maps.hr, widths, masks)]
    grid = lambda_grid(scores)
    lam = fit_lambda(risk_table(scores, grid), grid, alpha, delta, method)
    half = lam * widths
    return lam, coverage(maps.sr, maps.hr, half, masks), mean_half_width(half, masks)


def calibrate_model(model_folder: str | os.PathLike, dataset_dir: str | os.PathLike, *, split: str = "val",
                    alpha: float = 0.1, delta: float | None = None, method: str = METHOD, samples: int = 1,
                    steps: int | None = None,
                    device: str = "auto", limit: int | None = None, seed: int = 0, data_consistency: bool = False,
                    floor: float = DEFAULT_FLOOR, structure_weight: float = DEFAULT_STRUCTURE_WEIGHT,
                    progress: ProgressCallback | None = None) -> Calibration:
    """Calibrate ``model_folder``'s intervals on ``split`` of ``dataset_dir`` and write its ``calibration.json``.

    Args:
        model_folder: a trained model folder (``calibration.json`` is written into it, atomically).
        dataset_dir: a dataset of the model's task and grid, written by ``latentsr prepare``.
        split: the split to calibrate on (subjects the model never trained on).
        alpha: the risk level in (0, 1): at most this expected fraction of foreground pixels outside.
        delta: in (0, 1), for ``rcps``: the statement holds with probability at least ``1 - delta``
            (default 0.1); must be None for conformal risk control (its statement is in expectation).
        method: :data:`~LatentSRLib.metrics.calibration.METHOD_CRC` (the default) or ``METHOD_RCPS``.
        samples: K samples per slice; ``latentsr sr`` should use the same K (its std is part of the width).
        steps: sampling steps (None: the model's default).
        device: ``auto``, ``cpu``, ``cuda``, ...
        limit: at most this many evenly spaced slices of the split.
        seed: seed of the sampling noise.
        data_consistency: calibrate the SR after the data-consistency projection.
        floor: the heuristic's floor, window units.
        structure_weight: >= 0, the weight of the heuristic's structure term (0: none).
        progress: called with (fraction done, message).

    Returns:
        The :class:`~LatentSRLib.metrics.calibration.Calibration` written.

    Raises:
        InputError: a missing or mismatched model or dataset, an empty split, or too few slices.
    """
    model_folder, dataset_dir = Path(model_folder), Path(dataset_dir)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}", dataset_dir)
    if method not in METHODS.values():
        raise InputError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if method == METHOD_RCPS and delta is None:
        delta = 0.1
    if method != METHOD_RCPS and delta is not None:
        raise InputError("delta is for risk-controlling prediction sets (--method rcps); conformal risk control "
                         "controls the expected risk, with no confidence level")
    if not structure_weight >= 0:
        raise InputError(f"the structure weight must be >= 0, got {structure_weight}")
    if not (0 < alpha < 1 and (delta is None or 0 < delta < 1)):
        raise InputError(f"alpha and delta must lie strictly between 0 and 1 (got {alpha} and {delta})")
    dataset = PreparedDataset(dataset_dir)
    if not dataset.indices(split):
        raise InputError(f"the dataset has no {split} slices", dataset_dir)
    model = load_sr_model(model_folder, device=resolve_device(device))
    check_pairing(model, dataset, dataset_dir)
    sampling = SamplingSettings(steps=steps, samples=int(samples), seed=int(seed)).resolved(
        model.objective, model.config.get("sampling"), model_folder)
    maps = calibration_maps(model, dataset, split, samples=samples, steps=sampling.steps, seed=seed, limit=limit,
                            data_consistency=data_consistency, progress=progress)
    try:
        lam, covered, width = calibrate_maps(maps, alpha=alpha, delta=delta, method=method, floor=floor,
                                             structure_weight=structure_weight)
    except ValueError as exc:
        raise InputError(f"the {split} split ({len(maps.ids)} slices) is too small: {exc}", dataset_dir) from None
    calibration = Calibration(
        lam=lam, alpha=float(alpha), delta=None if delta is None else float(delta), samples=int(samples), split=split,
        images=len(maps.ids), dataset=dataset_dir.resolve().name, steps=sampling.steps, seed=int(seed),
        floor=float(floor), method=method, heuristic=HEURISTIC, structure_weight=float(structure_weight),
        coverage=covered, mean_half_width=width,
        extra={"sampler": sampling.sampler, "data_consistency": bool(data_consistency), "limit": limit,
               "task": dataset.task.name, "units": "window [0, 1]; coverage over foreground pixels"},
    )
    calibration.save(model_folder)
    return calibration
