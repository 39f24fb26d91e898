"""Score a model where a user meets it (rule 12): real low-resolution scans through the volume engine.

Each true high-resolution volume is measured as a scanner would store it
(:func:`~LatentSRLib.transforms.simulation.simulate_coarse_scan`: the grid's one forward operator,
written on the coarse grid in the scan's own units and dtype), and that coarse scan - not the truth -
is what the engine super-resolves, exactly as ``latentsr sr LR --reference HR`` does. Every slice is
scored against the truth on the SR grid (rule 1) in the engine's intensity window: PSNR and SSIM from
the engine's review, plus LPIPS (which network, rule 10), for the SR and for the bicubic up-sampling
of the same scan (the engine's own input, the baseline a user would otherwise look at). Each
operating point (data consistency on = the fidelity end, off = the detail end) is a separate run.

The per-slice rows are saved (``real_scans.json``) so that model cards and reports are generated
from them (rule 9); :func:`summarise` gives the means and the paired differences.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from LatentSRLib.errors import InputError
from LatentSRLib.io import MedicalImage, index_axis_of_array_axis, read_image
from LatentSRLib.metrics.statistics import paired_comparison

__all__ = ["evaluate_real_scans", "load_real_scans", "slab_of", "summarise"]

RESULTS_FORMAT = "latentsr.real_scans"


def slab_of(image: MedicalImage, plane: str, indices: Sequence[int]) -> MedicalImage:
    """The slices ``indices`` (evenly spaced, increasing) of ``plane``, as a volume of their own: the
    slice spacing becomes the stride, the origin the first slice's. In-plane geometry is kept."""
    indices = [int(i) for i in indices]
    axis = image.array_axis_for_plane(plane)
    n = image.array.shape[axis]
    if not indices or min(indices) < 0 or max(indices) >= n:
        raise InputError(f"slices {indices[:3]}... are outside the {n} {plane} slices", image.path)
    steps = set(np.diff(indices).tolist()) or {1}
    if len(steps) != 1 or steps.pop() < 1:
        raise InputError("the slices must be evenly spaced and increasing", image.path)
    stride = indices[1] - indices[0] if len(indices) > 1 else 1
    index_axis = index_axis_of_array_axis(axis, 3)
    offset = [0, 0, 0]
    offset[index_axis] = indices[0]
    origin = tuple((image.index_to_world() @ np.array([*offset, 1.0]))[:3])
    spacing = list(image.spacing)
    spacing[index_axis] *= stride
    array = np.ascontiguousarray(np.take(image.array, indices, axis=axis))
    return MedicalImage(array, tuple(spacing), origin, image.direction, metadata=dict(image.metadata))


def _crop_to_multiple(image: MedicalImage, plane: str, scale: int) -> MedicalImage:
    """``image`` cropped in-plane (at the far edges) to a multiple of ``scale`` pixels, so that the fine
    grid of its coarse scan is its own grid (a 2D image: both axes)."""
    slice_axis = image.array_axis_for_plane(plane) if image.ndim == 3 else None
    index = tuple(slice(None) if a == slice_axis else slice(0, n - n % scale) for a, n in enumerate(image.array.shape))
    if all(s == slice(None) or s.stop == n for s, n in zip(index, image.array.shape)):
        return image
    return MedicalImage(np.ascontiguousarray(image.array[index]), image.spacing, image.origin, image.direction,
                        metadata=dict(image.metadata))


def evaluate_real_scans(
    model: str | os.PathLike,
    scans: Mapping[str, str | os.PathLike | MedicalImage],
    *,
    plane: str = "axial",
    every: int = 1,
    first: int = 0,
    last: int | None = None,
    steps: int | None = None,
    samples: int = 1,
    data_consistency: Sequence[bool] = (True, False),
    seed: int = 0,
    device: str = "auto",
    lpips: bool = True,
    tile: int | None = None,
    overlap: float | None = None,
    anatomy_window: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Super-resolve the real low-resolution scan of each true volume in ``scans`` (name -> file, or an
    image already read, e.g. resampled) and score it, per slice, against the truth and against bicubic.
    A ``refine`` or ``kspace`` model keeps the scan's grid: its measurement is the task's degradation of
    the truth on that grid (``latentsr sr --simulate-scale``), and the baseline is that degraded input
    (``results["baseline"]``: ``"input"``, else ``"bicubic"``).

    Slices ``first, first + every, ... <= last`` of ``plane`` are used (``last`` None: the last one);
    a 2D image (a radiograph) is its own one slice (``plane``, ``every``, ``first``, ``last`` unused).
    Slices without anatomy (maximum below 5% of the window) are not scored, as in the engine's review.
    ``data_consistency``: the operating points to run; ``tile``, ``overlap`` and ``anatomy_window``: how
    slices are windowed (None: the model's defaults, :class:`~LatentSRLib.inference.engine.SRSettings`).
    Returns the results dictionary (JSON-ready):
    ``{"format", "model", "settings", "baseline", "decoding", "lpips", "scans": {name: {"hr", "lr_shape", "lr_spacing",
    "runs": {"dc" | "no_dc": {volume metrics, "seconds", "per_slice": [{slice, psnr_sr, psnr_lr,
    ssim_sr, ssim_lr[, lpips_sr, lpips_lr]}]}}}}}``, slice numbers in the original volume.
    """
    from LatentSRLib.inference.engine import SRSettings, super_resolve_volume
    from LatentSRLib.model.folder import load_sr_model
    from LatentSRLib.model.sampling import decoding_of
    from LatentSRLib.transforms.intensity import IntensityWindow
    from LatentSRLib.transforms.simulation import simulate_coarse_scan
    from LatentSRLib.transforms.slicing import SliceLayout

    if every < 1 or first < 0:
        raise InputError(f"every must be >= 1 and first >= 0 (got {every}, {first})")
    sr_model = load_sr_model(model)
    scale = sr_model.task.scale
    if sr_model.task.mode == "thick":
        raise InputError("a thick-slice model refines the slice axis: score it with Training/scripts/measure_thick.py", model)
    # refine and kspace models keep the scan's grid: their measurement is the task's own degradation on it
    same_grid = sr_model.task.mode != "sr"
    metric = None
    if lpips:
        from LatentSRLib.metrics.perceptual import LPIPSMetric

        metric = LPIPSMetric(allow_download=False)
        if not metric.available:
            metric = None
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT, "version": 1, "model": str(model),
        "settings": {"plane": plane, "every": every, "first": first, "last": last, "steps": steps, "samples": samples,
                     "seed": seed, "scale": scale, "tile": tile, "overlap": overlap, "anatomy_window": anatomy_window,
                     "measurement": ("the task's degradation on the scan's own grid (latentsr sr --simulate-scale)" if same_grid
                                     else "simulate_coarse_scan (latentsr degrade --coarse-grid)")},
        # what the SR is compared with: the engine's input on the SR grid
        "baseline": "input" if same_grid else "bicubic",
        # how the model's samples become images: with lr_residual the autoencoder's round trip is no bound
        "decoding": decoding_of(sr_model.config, model),
        "lpips": None if metric is None else {"name": metric.name, "label": metric.label},
        "scans": {},
    }
    for name, path in scans.items():
        hr_full = path if isinstance(path, MedicalImage) else read_image(path)
        path = hr_full.path if isinstance(path, MedicalImage) else path
        if hr_full.ndim == 2:
            indices = [0]
            hr = _crop_to_multiple(hr_full, plane, scale)
        else:
            n = hr_full.array.shape[hr_full.array_axis_for_plane(plane)]
            stop = n - 1 if last is None else min(last, n - 1)
            indices = list(range(first, stop + 1, every))
            hr = _crop_to_multiple(slab_of(hr_full, plane, indices), plane, scale)
        lr = hr if same_grid else simulate_coarse_scan(hr, scale, plane=plane)
        entry: dict[str, Any] = {"hr": str(path), "slices": indices, "lr_shape": list(lr.shape),
                                 "lr_spacing": [float(v) for v in lr.spacing], "runs": {}}
        for dc in data_consistency:
            if progress:
                progress(f"{name}: {len(indices)} slices, data consistency {'on' if dc else 'off'}")
            settings = SRSettings(steps=steps, samples=samples, seed=seed, data_consistency=bool(dc), tile=tile,
                                  overlap=overlap, anatomy_window=anatomy_window)
            if same_grid:
                result = super_resolve_volume(sr_model, hr, plane=plane, settings=settings, simulate=True, device=device)
            else:
                result = super_resolve_volume(sr_model, lr, plane=plane, settings=settings, reference=hr, device=device)
            review = dict(result.metrics["reference"])
            rows = review.pop("per_slice")
            if metric is not None and rows:
                window = IntensityWindow.from_dict({**result.metrics["window"], "source_dtype": "float32"})
                layout = SliceLayout.for_image(hr, plane)
                picked = [row["slice"] for row in rows]

                def windowed(image: MedicalImage) -> np.ndarray:
                    return np.clip(layout.extract(np.asarray(window.apply(image.array), dtype=np.float32))[picked], 0, 1)

                truth = windowed(hr)
                for key, image in (("lpips_sr", result.sr), ("lpips_lr", result.bicubic)):
                    for row, score in zip(rows, metric(windowed(image), truth)):
                        row[key] = float(score)
            for row in rows:  # the slice's number in the original volume
                row["slice"] = indices[row["slice"]]
            review.pop("reference", None)
            entry["runs"]["dc" if dc else "no_dc"] = {**review, "window": result.metrics["window"],
                                                     "seconds": result.metrics["seconds"],
                                                     "tiling": result.metrics.get("tiling"),
                                                     "background_tiles_skipped": result.metrics["background_tiles_skipped"],
                                                     "per_slice": rows}
        results["scans"][name] = entry
    return results


def load_real_scans(path: str | os.PathLike) -> dict[str, Any]:
    """Results written by :func:`evaluate_real_scans` (refused, in one line, if the file is something else)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read real-scan results ({exc})", path) from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise InputError("not a real-scan results file", path)
    return data


def summarise(results: Mapping[str, Any], run: str, scans: Sequence[str] | None = None) -> dict[str, Any]:
    """Means over every scored slice of ``scans`` (default all) for one operating point (``"dc"`` or
    ``"no_dc"``): ``{n, psnr_sr, psnr_lr, ssim_sr, ssim_lr[, lpips_sr, lpips_lr], psnr_gain: paired
    comparison SR - bicubic (mean, CI, Wilcoxon p)}``."""
    pairs = [(name, row) for name, entry in results["scans"].items() if scans is None or name in scans
             for row in entry["runs"].get(run, {}).get("per_slice", [])]
    if not pairs:
        raise ValueError(f"no scored slices for {run!r}")
    rows = [row for _, row in pairs]
    summary: dict[str, Any] = {"n": len(rows)}
    for key in ("psnr_sr", "psnr_lr", "ssim_sr", "ssim_lr", "lpips_sr", "lpips_lr"):
        values = [row[key] for row in rows if row.get(key) is not None]
        if values:
            summary[key] = float(np.mean(values))
    if len(rows) >= 2:
        sr = np.array([row["psnr_sr"] for row in rows], dtype=float)
        lr = np.array([row["psnr_lr"] for row in rows], dtype=float)
        # slices of one scan are not independent: the bootstrap resamples within each scan; one image
        # per scan (radiographs) are independent units, and resampling within each would fix them all
        names = [name for name, _ in pairs]
        strata = names if len(set(names)) < len(names) else None
        summary["psnr_gain"] = paired_comparison(sr, lr, strata=strata).to_dict()
    return summary
