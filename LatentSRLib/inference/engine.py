"""The volume SR engine: a low-resolution scan in, its super-resolved version and review maps out.

The data flow, one slice plane at a time (docs/science.md has the rules it follows):

1. window the scan to [0, 1] (the model's training percentiles, remembered) and take the upright
   slices of the chosen plane;
2. for a model whose task refines the grid (``sr``): the input is the measured low-resolution scan
   and the output grid is ``s`` times finer along the slice's rows and columns over the same field of
   view (:mod:`LatentSRLib.transforms.grids`); each slice is up-sampled onto it with the grid's one
   bicubic, exactly as the training pairs were made (rule 5, rule 11). Other tasks (``refine``,
   ``kspace``) and ``same_grid=True`` keep the input's grid: the input is already interpolated;
3. the model works at the slice's own pixel pitch: overlapping tiles of its grid size through
   MONAI's sliding-window inferer (Gaussian blending), each tile through the one sampling path
   (:func:`~LatentSRLib.model.sampling.sample_sr`, K samples); nothing is resized to a coarse fixed grid;
4. [data-consistency projection with the task's noise-free forward operator], stack, undo the window.

With ``simulate`` the input is the TRUE high-resolution scan: the low-resolution scan a scanner
would have produced is made from it on the coarse grid with the same forward operator, super-
resolved back onto the input's grid, and scored against the input. Maps, on the SR grid:

* ``uncertainty``: standard deviation across the K samples (0 when K = 1), in intensity units;
* ``consistency``: ``|A(SR) - LR|`` (``A`` the noise-free forward operator, LR on the SR grid): where
  the result disagrees with what was measured (no ground truth needed), in intensity units;
* with a reference HR volume on the SR grid: ``difference`` = SR - HR (intensity units) and the
  hallucination/loss label map (+1 / -1, the AE noise floor of :mod:`LatentSRLib.metrics.hallucination`),
  with whole-volume and per-slice PSNR/SSIM of the SR and of the up-sampled input;
* with a mask: PSNR/SSIM inside each label and in the background.
* with a calibrated model (``latentsr calibrate``): ``interval``, the half-width of the calibrated
  interval ``SR +- interval`` (intensity units), and with a tolerance ``trust`` (1 where the half-width
  is at most it); :mod:`LatentSRLib.inference.intervals`.

:func:`super_resolve_volume` is the library API (the Slicer module calls it with a progress
callback and a cancel check); :mod:`LatentSRLib.inference.files` writes its results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from LatentSRLib.errors import InputError, LatentSRError
from LatentSRLib.io import MedicalImage, check_pixels
from LatentSRLib.model.folder import SRModel
from LatentSRLib.inference.intervals import calibration_review, calibration_summary, interval_maps, model_calibration
from LatentSRLib.metrics.calibration import structure_map
from LatentSRLib.inference.review import reference_review
from LatentSRLib.model.sampling import SamplingSettings, sample_sr
from LatentSRLib.transforms.consistency import consistency_map, data_consistent
from LatentSRLib.transforms.intensity import IntensityWindow, PercentileWindow
from LatentSRLib.transforms.degradations import AddNoise, task_degradation
from LatentSRLib.transforms.grids import coarse_image, downsample, fine_image, upsample
from LatentSRLib.transforms.slicing import ModelGrid, SliceLayout, tile_windows
from LatentSRLib.data.slice_source import SliceSelection
from LatentSRLib.model.devices import (autocast_for, default_batch_size, prefers_channels_last, resolve_device,
                                      run_in_batches)

__all__ = ["Cancelled", "SRSettings", "VolumeResult", "anatomy_windows", "pixel_size_warnings", "refines_grid",
           "simulate_measurement", "super_resolve_volume"]

ProgressCallback = Callable[[float, str], None]


class Cancelled(LatentSRError):
    """The caller's cancel check returned True; nothing was written."""


@dataclass(frozen=True)
class SRSettings:
    """How to run the engine. ``None`` takes the model's recorded default.

    Args:
        steps, sampler, samples, seed: the sampling (:class:`~LatentSRLib.model.sampling.SamplingSettings`;
            slice ``s``'s sample ``k`` starts from noise seeded by ``seed``, ``s`` and ``k`` alone, so a
            deterministic sampler gives the same volume whatever the batch size). The SR volume is the
            mean of the ``samples`` and the uncertainty their std.
        batch_size: slices per batch (None: from free GPU memory, 4 on CPU); halves on out-of-memory.
        data_consistency: project each SR slice so that degrading it reproduces the LR input
            (``SR + (LR - A(SR))``, clipped, with the noise-free forward operator ``A``); the
            consistency map is then measured after it.
        autocast: reduced precision (bf16/fp16) on CUDA.
        channels_last: run the networks in channels-last (NHWC) layout; None: where it measured faster
            (:func:`~LatentSRLib.model.devices.prefers_channels_last`: the CPU). The networks agree to 1e-5.
        tile: pixels per side of the sliding window's tiles (None: the tile the model was trained on).
            A larger tile runs fewer windows with less overlap: on a CPU the whole 240 x 240 slice as one
            256 x 256 tile was 1.6-2.9x faster than 128 x 128 tiles for brain-sr4, at -0.07 dB (README).
            A multiple of the autoencoder's down-sampling times the denoiser's (checked on use).
        overlap: the sliding window's overlap between neighbouring tiles, a fraction of the tile in
            [0, 1) (None: the model's recorded ``sampling.overlap``, 0.25 when it records none). MONAI steps its
            windows by ``tile * (1 - overlap)`` and sets the last one flush with the edge, so a smaller
            overlap can cover a slice with fewer tiles (240 pixels: 3 x 3 tiles of 128 at 0.25, 2 x 2 at 0.125).
        skip_background: a tile (or a slice that fits one tile) with no pixel above the model's
            background level is not sampled; the output keeps the up-sampled input there. It is the
            rule that kept such images out of training (no foreground), so the model has never learnt
            anything for them; empty slices and the corners of a head scan cost nothing.
        anatomy_window: with ``skip_background``, sample each slice as one window around its anatomy
            (the pixels above the background level, plus :data:`ANATOMY_MARGIN` pixels) instead of the
            sliding window's tiles, where that window fits in twice the tile per side; the output keeps
            the up-sampled input outside it, as for background tiles. A head in a 240 x 240 slice is then
            one window of at most 256 x 256 instead of nine overlapping 128 x 128 tiles, and the
            background stays free of sampled texture. None: the model's recorded
            ``sampling.anatomy_window`` (off when it records none).
    """

    steps: int | None = None
    sampler: str | None = None
    samples: int = 1
    seed: int = 0
    batch_size: int | None = None
    data_consistency: bool = False
    autocast: bool = True
    skip_background: bool = True
    tile: int | None = None
    overlap: float | None = None
    anatomy_window: bool | None = None
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        self.sampling  # validates steps and samples  # noqa: B018
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.tile is not None and self.tile < 1:
            raise ValueError(f"the tile must be >= 1 pixel, got {self.tile}")
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise ValueError(f"the tiles' overlap must be a fraction in [0, 1), got {self.overlap}")

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings(steps=self.steps, sampler=self.sampler, samples=self.samples, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class VolumeResult:
    """The outputs of one volume, each on the input's grid (see the module docstring)."""

    sr: MedicalImage
    uncertainty: MedicalImage
    consistency: MedicalImage
    lr: MedicalImage
    difference: MedicalImage | None = None
    hallucination: MedicalImage | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    interval: MedicalImage | None = None
    trust: MedicalImage | None = None
    #: with a reference: the model's input, the measured scan up-sampled onto the SR grid by the grid's
    #: bicubic (float32, source units): the baseline every SR is scored against. Not an output file.
    bicubic: MedicalImage | None = None

    def outputs(self) -> dict[str, MedicalImage]:
        """Name -> image of every map that was computed."""
        named = {"sr": self.sr, "uncertainty": self.uncertainty, "consistency": self.consistency,
                 "difference": self.difference, "hallucination": self.hallucination,
                 "interval": self.interval, "trust": self.trust}
        return {k: v for k, v in named.items() if v is not None}


#: the smallest slice (pixels per side) the engine super-resolves: below it there is no image to speak of
MIN_SLICE_PIXELS = 4

def _tile_key(slice_index: int, top: int, left: int) -> int:
    # the stable id of a tile: its slice and position (so its noise does not depend on the batching)
    return (slice_index * 65_537 + top) * 65_537 + left + 1


def background_level(model: SRModel) -> float:
    """The window level at or below which a tile holds no anatomy: the rule that kept such tiles out of
    the model's training (its ``grid.background_level``)."""
    return float(model.config.get("grid", {}).get("background_level", SliceSelection.background_level))


def _mean_std(model: SRModel, lr: torch.Tensor, keys: list[int], settings: SRSettings,
              skipped: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SR mean and std of a batch of ``(B, 1, h, w)`` LR tiles; with ``settings.skip_background``, tiles with
    no pixel above the model's background level keep their input (std 0) and are counted in ``skipped``.
    Each tile's noise is seeded by its key, so sampling only the others changes nothing for them."""
    busy = torch.ones(lr.shape[0], dtype=torch.bool, device=lr.device)
    if settings.skip_background:
        level = background_level(model)
        busy = lr.flatten(1).amax(1) > level
    if bool(busy.all()):
        result = sample_sr(model, lr, keys, settings.sampling)
        return result.mean, result.std
    if skipped is not None:
        skipped[0] += int((~busy).sum())
    mean, std = lr.clone(), torch.zeros_like(lr)
    if bool(busy.any()):
        result = sample_sr(model, lr[busy], [key for key, b in zip(keys, busy.tolist()) if b], settings.sampling)
        mean[busy], std[busy] = result.mean.to(mean.dtype), result.std.to(std.dtype)
    return mean, std


def window_multiple(model: SRModel) -> int:
    """Pixels a window's side must be a multiple of: whole latent pixels that the denoiser's levels can
    halve down to its coarsest one."""
    levels = len(model.config.get("denoiser", {}).get("network", {}).get("channels", (0,)))
    return model.autoencoder.downsampling_factor * 2 ** max(levels - 1, 0)


def tile_size(model: SRModel, settings: SRSettings) -> tuple[int, int]:
    """The sliding window's tile: ``settings.tile`` (square) or the model's training tile. A tile must
    hold whole latent pixels that the denoiser's levels can halve down to its coarsest one."""
    if settings.tile is None:
        return tuple(int(v) for v in model.config.get("grid", {}).get("size", (256, 256)))
    step = window_multiple(model)
    if settings.tile % step:
        raise InputError(f"a tile of {settings.tile} pixels does not fit this model: use a multiple of {step} "
                         f"(e.g. {max(step, round(settings.tile / step) * step)})")
    return (settings.tile, settings.tile)


#: the sliding window's overlap when neither the caller nor the model folder gives one
DEFAULT_TILE_OVERLAP = 0.25


def tile_overlap_of(model: SRModel, settings: SRSettings) -> float:
    """The sliding window's overlap: ``settings.overlap``, else the model's recorded default
    (``config.json`` ``sampling.overlap``, chosen from measurements like its default steps), else
    :data:`DEFAULT_TILE_OVERLAP`."""
    if settings.overlap is not None:
        return float(settings.overlap)
    recorded = model.config.get("sampling", {}).get("overlap")
    return DEFAULT_TILE_OVERLAP if recorded is None else float(recorded)


#: pixels kept around the anatomy by an anatomy window (2 latent pixels of a 4x autoencoder). brain-sr4
#: on the whole real 4 mm scans of the held-out BraTS case (t1n, t1c, t2w, t2f), margin 24 / 16 / 8: PSNR
#: 30.454 / 30.465 / 30.471, 28.586 / 28.597 / 28.601, 26.459 / 26.459 / 26.456, 29.383 / 29.399 / 29.429 dB,
#: higher SSIM each time, and 25-30% less time than 24 (the SR is kept off the background)
ANATOMY_MARGIN = 8


def anatomy_window_of(model: SRModel, settings: SRSettings) -> bool:
    """Whether slices are sampled as one window around their anatomy (:class:`SRSettings`)."""
    if not settings.skip_background:
        return False
    if settings.anatomy_window is not None:
        return bool(settings.anatomy_window)
    return bool(model.config.get("sampling", {}).get("anatomy_window", False))


def anatomy_windows(slices: torch.Tensor, level: float, step: int, limit: tuple[int, int],
                    margin: int = ANATOMY_MARGIN, align: int = 1) -> tuple[tuple[int, int], list[tuple[int, int] | None]] | None:
    """One window size for a batch of ``(B, 1, H, W)`` slices and each slice's window position.

    The window holds every pixel above ``level`` of each slice plus ``margin`` pixels, its sides rounded
    up to a multiple of ``step`` (the model's latent levels); a slice's window is centred on its
    anatomy, starts at a multiple of ``align`` (the autoencoder's down-sampling: the same latent grid
    as the sliding window's tiles) and is kept inside the slice. Where the slice (or ``limit``) is too
    small for the whole margin, the margin shrinks to what fits: the largest multiple of ``step``
    inside both, as long as the anatomy (plus ``align`` pixels each side, slack for the aligned start) still
    fits. Returns ``((h, w), [(top, left), or None for a slice without anatomy])``, or None when even
    the anatomy alone would exceed ``limit`` or the slice (then tile instead).
    """
    height, width = slices.shape[-2:]
    boxes = []
    for one in slices[:, 0] > level:
        rows, cols = torch.nonzero(one.any(1)).flatten(), torch.nonzero(one.any(0)).flatten()
        boxes.append(None if len(rows) == 0 else (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1))
    found = [b for b in boxes if b is not None]
    if not found:
        return (step, step), [None] * len(boxes)
    span = [max(b[2 * a + 1] - b[2 * a] for b in found) for a in (0, 1)]
    room = [min(limit[a], (height, width)[a]) // step * step for a in (0, 1)]
    if any(-(-(span[a] + 2 * align) // step) * step > room[a] for a in (0, 1)):
        return None
    # a margin cut short by the slice's edge beats tiling: the tiles' overlap costs more than the
    # margin gains (brain-sr4, whole 4 mm FLAIR: 76 s with tiling fallbacks against 29 s in windows)
    size = [max(step, min(room[a], -(-(span[a] + 2 * max(margin, align)) // step) * step)) for a in (0, 1)]
    places = []
    for box in boxes:
        if box is None:
            places.append(None)
            continue
        centre = ((box[0] + box[1]) // 2, (box[2] + box[3]) // 2)
        places.append(tuple(int(min(max(c - n // 2, 0) // align * align, extent - n))
                            for c, n, extent in zip(centre, size, (height, width))))
    return (size[0], size[1]), places


def _window_for(model: SRModel, image: MedicalImage) -> IntensityWindow:
    grid = model.config.get("grid", {})
    lower = float(grid.get("lower_percentile", 0.5))
    upper = float(grid.get("upper_percentile", 99.5))
    return PercentileWindow(lower, upper, clip=True).compute(image.array)


def refines_grid(model: SRModel, same_grid: bool = False) -> bool:
    """Whether ``model`` writes its output on a finer grid in-plane than its input (its task is ``sr``;
    a ``thick`` model refines the slice axis instead)."""
    return model.task.mode == "sr" and model.task.scale > 1 and not same_grid


def _windowed_slices(window: IntensityWindow, layout: SliceLayout, array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(layout.extract(np.asarray(window.apply(array), dtype=np.float32)))


def super_resolve_volume(
    model: SRModel,
    image: MedicalImage,
    *,
    plane: str = "axial",
    settings: SRSettings = SRSettings(),
    reference: MedicalImage | None = None,
    mask: MedicalImage | None = None,
    simulate: bool = False,
    same_grid: bool = False,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
    tolerance: float | None = None,
) -> VolumeResult:
    """Super-resolve ``image`` slice by slice.

    Args:
        model: a loaded SR model (:func:`LatentSRLib.model.folder.load_sr_model`).
        image: the low-resolution scan (2D image or 3D volume, any units), or with ``simulate`` the
            high-resolution scan to degrade first.
        plane: slicing plane of a volume (the plane the model super-resolves in).
        settings: sampling settings.
        reference: the true high-resolution scan on the SR grid (evaluation); ``simulate`` sets it.
        mask: a label volume on the SR grid (0 = background) for region metrics; needs a reference.
        simulate: degrade ``image`` as the model's task does (on the coarse grid) and super-resolve
            that back onto ``image``'s grid, using ``image`` as the reference.
        same_grid: keep the input's grid even for an ``sr`` model (an input already interpolated
            onto the fine grid, e.g. the LR image of a prepared dataset).
        device: ``"auto"``, ``"cuda"``, ``"cpu"``, ...
        progress: called with (fraction done, message) after each batch of tiles.
        cancelled: checked between batches; when it returns True, :class:`Cancelled` is raised.
        tolerance: >= 0, intensity units: with a calibrated model, ``trust`` marks (1) the pixels whose
            interval half-width is at most this (:mod:`LatentSRLib.inference.intervals`).

    Returns:
        A :class:`VolumeResult`; ``lr`` is the low-resolution scan that was super-resolved (the
        simulated one with ``simulate``). With a calibrated model (``calibration.json`` in its
        folder) also ``interval``, the half-width of the calibrated interval ``SR +- interval``
        (intensity units), and with ``tolerance`` the ``trust`` labels; ``metrics["calibration"]``
        describes the calibration (``"uncalibrated"`` without one) and, with a reference, its coverage.

    Raises:
        InputError: unusable inputs (named), or a ``tolerance`` for an uncalibrated model.
    """
    check_pixels(image)
    if tolerance is not None and not (np.isfinite(tolerance) and tolerance >= 0):
        raise InputError(f"the tolerance must be a finite number >= 0, got {tolerance}")
    calibration = model_calibration(model, tolerance)
    for other in (reference, mask):
        if other is not None:
            check_pixels(other, allow_constant=True)
    task = model.task
    scale = int(task.scale)
    rows, cols = SliceLayout.for_image(image, plane).slice_shape
    if min(rows, cols) < MIN_SLICE_PIXELS:
        raise InputError(f"its {plane} slices of {rows} x {cols} pixels are too small to super-resolve (at least "
                         f"{MIN_SLICE_PIXELS} x {MIN_SLICE_PIXELS})", image.path)
    started = time.perf_counter()
    torch_device = resolve_device(device)
    channels_last = prefers_channels_last(torch_device) if settings.channels_last is None else settings.channels_last
    model.to(torch_device, channels_last=channels_last)
    refine = refines_grid(model, same_grid)
    if simulate and reference is not None:
        raise InputError("give either a reference or simulate, not both", image.path)
    if task.mode == "thick" and not same_grid:
        return _through_plane(model, image, plane=plane, settings=settings, reference=reference, mask=mask,
                              simulate=simulate, device=torch_device, progress=progress, cancelled=cancelled,
                              started=started, calibration=calibration, tolerance=tolerance)

    if simulate:  # the truth: make the measurement from it with the training pairs' operator
        reference = image
        window = _window_for(model, reference)
        layout = SliceLayout.for_image(reference, plane)
        hr_slices = _windowed_slices(window, layout, reference.array)
        try:
            lr_fine, lr = simulate_measurement(task, hr_slices, reference, layout, window, refine, settings.seed)
        except ValueError as exc:
            raise InputError(f"cannot simulate the model's task {task.name}: {exc}", image.path) from None
        out_grid = reference
    else:
        lr = image
        window = _window_for(model, lr)
        coarse_layout = SliceLayout.for_image(lr, plane)
        coarse = _windowed_slices(window, coarse_layout, lr.array)
        axes = _in_plane_axes(coarse_layout)
        if refine:
            fine_shape = tuple(n * scale if a in axes else n for a, n in enumerate(lr.shape))
            out_grid = fine_image(lr, axes, scale, np.zeros(fine_shape, dtype=lr.array.dtype))
        else:
            out_grid = lr
        layout = SliceLayout.for_image(out_grid, plane)
        lr_fine = _upsampled(coarse, scale, layout.slice_shape) if refine else coarse
    for other, what in ((reference, "reference"), (mask, "mask")):
        if other is not None and not out_grid.has_same_geometry(other):
            where = "SR grid" if refine else "input's grid"
            raise InputError(f"the {what} is not on the {where} (shape {other.shape} vs {out_grid.shape}, spacing "
                             f"{_mm(other.spacing)} vs {_mm(out_grid.spacing)}); resample it first", other.path)
    if mask is not None and reference is None:
        raise InputError("region metrics need a reference (or --simulate-scale)", mask.path)

    tile = tile_size(model, settings)
    grid = ModelGrid(tile, fit="tile")  # native pixel pitch: pad to whole latent pixels, never resize
    batch_size = settings.batch_size or default_batch_size(torch_device, tile[0] * tile[1])
    n = lr_fine.shape[0]
    sr_slices, std_slices, consistency_slices, final_batch, skipped = _sample_slices(
        model, lr_fine, settings, torch_device, grid, batch_size, progress, cancelled, task_for_dc=task)

    width = float(window.upper - window.lower)
    sr_array = window.invert(layout.assemble(sr_slices))
    as_float = {"source_dtype": "float32"}
    result = VolumeResult(
        sr=out_grid.with_array(sr_array, latentsr_output="super-resolved", model=str(model.folder)),
        uncertainty=out_grid.with_array((layout.assemble(std_slices) * width).astype(np.float32),
                                        latentsr_output="uncertainty (std across samples)", **as_float),
        consistency=out_grid.with_array((layout.assemble(consistency_slices) * width).astype(np.float32),
                                        latentsr_output="data consistency |A(SR) - LR|", **as_float),
        lr=lr,
    )
    seconds = time.perf_counter() - started
    output_pixel = tuple(float(v) for v in layout.pixel_spacing)
    result.metrics = {
        "model": str(model.folder),
        "task": task.to_dict(),
        "plane": layout.plane,
        "slices": n,
        "input_grid": {"shape": list(lr.shape), "spacing": [float(v) for v in lr.spacing]},
        "output_grid": {"shape": list(out_grid.shape), "spacing": [float(v) for v in out_grid.spacing]},
        "refined_grid": bool(refine),
        "settings": settings.to_dict(),
        "device": str(torch_device),
        "batch_size": final_batch,
        "tiling": {"tile": list(tile), "overlap": tile_overlap_of(model, settings),
                   "anatomy_window": anatomy_window_of(model, settings)},
        "background_tiles_skipped": skipped,
        "seconds": round(seconds, 3),
        "seconds_per_slice": round(seconds / max(n, 1), 4),
        "window": {"lower": window.lower, "upper": window.upper},
        "simulated": bool(simulate),
        "consistency_mean": float(consistency_slices.mean()),
        "warnings": pixel_size_warnings(model, output_pixel),
    }
    if reference is not None:
        review = reference_review(model, lr_fine, reference, mask, window, layout, grid, sr_slices, torch_device,
                                  batch_size=settings.batch_size or 4, autocast=settings.autocast)
        result.difference, result.hallucination = review.difference, review.hallucination
        result.metrics["reference"] = review.metrics
        result.bicubic = out_grid.with_array((layout.assemble(lr_fine) * width + window.lower).astype(np.float32),
                                             latentsr_output="bicubic up-sampling of the input", **as_float)
    _calibrate(result, calibration, settings, tolerance, out_grid, window, layout.assemble(std_slices),
               layout.assemble(consistency_slices), layout.assemble(sr_slices), reference, mask,
               _structure(calibration, sr_slices, layout.assemble))
    return result


def _calibrate(result: VolumeResult, calibration, settings: SRSettings, tolerance: float | None,
               out_grid: MedicalImage, window: IntensityWindow, std: np.ndarray, consistency: np.ndarray,
               sr: np.ndarray, reference: MedicalImage | None, mask: MedicalImage | None,
               structure: np.ndarray | None = None) -> None:
    """Add the calibrated ``interval`` (and ``trust``) maps and ``metrics["calibration"]`` to ``result``;
    ``std``, ``consistency``, ``sr`` and ``structure`` are volumes on the SR grid in window units."""
    width = float(window.upper - window.lower)
    half = None
    if calibration is not None:
        half, result.interval, result.trust = interval_maps(calibration, out_grid, std, consistency, width, tolerance,
                                                            structure)
    entry, warnings = calibration_summary(calibration, samples=settings.samples,
                                          data_consistency=settings.data_consistency, tolerance=tolerance,
                                          trust=result.trust)
    if calibration is not None and reference is not None:
        hr = np.asarray(window.apply(reference.array), dtype=np.float32)
        entry.update(calibration_review(calibration, sr, hr, half, width, None if mask is None else mask.array))
    result.metrics["calibration"] = entry
    result.metrics.setdefault("warnings", []).extend(warnings)


def _structure(calibration, sr_slices: np.ndarray, assemble: Callable[[np.ndarray], np.ndarray]) -> np.ndarray | None:
    """The calibration's structure term on the SR grid: the SR's edge strength computed slice by slice
    in the plane the model worked in (as the calibration computed it), then assembled; None when the
    model is uncalibrated or its heuristic has no structure term."""
    if calibration is None or not calibration.uses_structure:
        return None
    return assemble(structure_map(sr_slices).astype(np.float32))


def _sample_slices(model: SRModel, lr_fine: np.ndarray, settings: SRSettings, device: torch.device, grid: ModelGrid,
                   batch_size: int, progress: ProgressCallback | None, cancelled: Callable[[], bool] | None, *,
                   key_offset: int = 0, task_for_dc=None):
    """``(N, H, W)`` LR slices on the fine grid in [0, 1] -> SR mean, std and consistency slices (same
    shape; consistency zeros without ``task_for_dc``, which also enables the data-consistency step),
    and the final batch size. Each slice goes through the sliding window at its own pixel pitch."""
    from monai.inferers import SlidingWindowInferer

    tile = tuple(grid.size)
    tile_overlap = tile_overlap_of(model, settings)
    n = lr_fine.shape[0]
    sr_slices = np.zeros_like(lr_fine)
    std_slices = np.zeros_like(lr_fine)
    consistency_slices = np.zeros_like(lr_fine)
    done_mask = np.zeros(n, dtype=bool)
    skipped = [0]  # background tiles not sampled
    anatomy = anatomy_window_of(model, settings)
    level = background_level(model)
    step = window_multiple(model)

    def _anatomy_mean_std(lr_model: torch.Tensor, rows: list[int], size: tuple[int, int], places):
        # the input outside each slice's window; inside, the window's SR
        mean, std = lr_model.clone(), torch.zeros_like(lr_model)
        busy = [i for i, place in enumerate(places) if place is not None]
        skipped[0] += len(places) - len(busy)
        # no more pixels per sampler call than the tiles' batch would hold: memory stays that of tiling
        per_call = max(1, (len(rows) * tile[0] * tile[1]) // (size[0] * size[1]))
        for start in range(0, len(busy), per_call):
            chunk = busy[start : start + per_call]
            crops = torch.stack([lr_model[i, :, places[i][0] : places[i][0] + size[0], places[i][1] : places[i][1] + size[1]]
                                 for i in chunk])
            keys = [_tile_key(rows[i] + key_offset, *places[i]) for i in chunk]
            sr_mean, sr_std = _mean_std(model, crops, keys, settings, skipped)
            for j, i in enumerate(chunk):
                top, left = places[i]
                mean[i, :, top : top + size[0], left : left + size[1]] = sr_mean[j].to(mean.dtype)
                std[i, :, top : top + size[0], left : left + size[1]] = sr_std[j].to(std.dtype)
        return mean, std

    def tiled_mean_std(lr_model: torch.Tensor, rows: list[int], tiles_per_batch: int):
        if tuple(lr_model.shape[-2:]) == tile:
            # slices of one tile: the sliding window would run that one window at (0, 0), one slice at a
            # time; the same tiles (same keys, same noise) go through the sampler as one batch instead
            return _mean_std(model, lr_model, [_tile_key(row + key_offset, 0, 0) for row in rows], settings, skipped)
        if anatomy:
            found = anatomy_windows(lr_model, level, step, (2 * tile[0], 2 * tile[1]),
                                    align=model.autoencoder.downsampling_factor)
            if found is not None:
                return _anatomy_mean_std(lr_model, rows, *found)
        inferer = SlidingWindowInferer(tile, sw_batch_size=tiles_per_batch, overlap=tile_overlap,
                                       mode="gaussian", with_coord=True)
        stride = tuple(max(1, int(s * (1 - tile_overlap))) for s in tile)  # as MONAI steps its windows
        total = len(tile_windows(tuple(lr_model.shape[-2:]), tile, stride))
        means, stds = [], []
        for row, one in zip(rows, lr_model):
            finished = [0]

            def predict(tiles: torch.Tensor, locations) -> torch.Tensor:
                # a radiograph is one slice of many tiles: cancel and report between tile batches
                if cancelled is not None and cancelled():
                    raise Cancelled("cancelled")
                keys = [_tile_key(row + key_offset, int(where[-2].start), int(where[-1].start)) for where in locations]
                out = torch.cat(_mean_std(model, tiles, keys, settings, skipped), dim=1)
                finished[0] += len(tiles)
                if progress is not None and total > 1:
                    progress((int(done_mask.sum()) + finished[0] / total) / n,
                             f"slice {int(done_mask.sum()) + 1}/{n}: {finished[0]}/{total} tiles")
                return out

            blended = inferer(one[None], predict)
            means.append(blended[:, :1])
            stds.append(blended[:, 1:])
        return torch.cat(means), torch.cat(stds)

    def work(rows):
        if cancelled is not None and cancelled():
            raise Cancelled("cancelled")
        rows = list(rows)
        lr_model = grid.to_model(lr_fine[rows]).clamp(0, 1)[:, None].to(device)
        with torch.inference_mode(), autocast_for(device, settings.autocast):
            mean, std = tiled_mean_std(lr_model, rows, len(rows))
            if task_for_dc is not None and settings.data_consistency:
                mean = data_consistent(mean, lr_model, task_for_dc)
            disagreement = consistency_map(mean, lr_model, task_for_dc) if task_for_dc is not None else torch.zeros_like(mean)
        shape = tuple(lr_fine.shape[-2:])
        back = [grid.from_model(x[:, 0].float().cpu(), shape).numpy() for x in (mean, std, disagreement)]
        return rows, back

    def done(rows, result):
        rows, (mean, std, disagreement) = result
        sr_slices[rows] = np.clip(mean, 0, 1)
        std_slices[rows] = std
        consistency_slices[rows] = disagreement
        done_mask[rows] = True
        if progress is not None:
            finished = int(done_mask.sum())
            progress(finished / n, f"{finished}/{n} slices")

    final_batch = run_in_batches(list(range(n)), batch_size, work, done)
    return sr_slices, std_slices, consistency_slices, final_batch, skipped[0]


def pixel_size_warnings(model: SRModel, output_pixel: tuple[float, float]) -> list[str]:
    """A warning when the output's pixel size is more than 2x away from the one the model was trained at."""
    trained = model.config.get("grid", {}).get("pixel_size_mm")
    if not trained or not all(output_pixel):
        return []
    ratio = max(output_pixel) / float(trained) if max(output_pixel) > trained else float(trained) / min(output_pixel)
    if ratio <= 2.0:
        return []
    return [f"the output pixels are {_mm(output_pixel)} mm but the model was trained at {float(trained):g} mm "
            f"({ratio:.1f}x away): detail at other scales than it learned may be wrong"]


def _mm(values) -> str:
    return "x".join(f"{float(v):.3g}" for v in values)


def _in_plane_axes(layout: SliceLayout) -> tuple[int, int]:
    """Array axes of the slices' rows and columns (a 2D image's two axes)."""
    return (0, 1) if layout.plane == "image" else (layout.axes[1], layout.axes[2])


def _upsampled(coarse: np.ndarray, scale: int, size: tuple[int, int], range_of: np.ndarray | None = None) -> np.ndarray:
    """``(N, h, w)`` windowed coarse slices -> ``(N, *size)`` on the fine grid (the grid's one bicubic),
    each slice clipped to the range of its slice in ``range_of`` (default: the coarse slice) as the
    training pairs were (no bicubic overshoot), and to [0, 1]."""
    fine = upsample(torch.from_numpy(np.ascontiguousarray(coarse))[:, None], scale, size=size)[:, 0].numpy()
    ranges = coarse if range_of is None else range_of
    low = ranges.min(axis=(1, 2), keepdims=True)
    high = ranges.max(axis=(1, 2), keepdims=True)
    return np.clip(np.clip(fine, low, high), 0.0, 1.0).astype(np.float32)


def simulate_measurement(task, hr_slices: np.ndarray, reference: MedicalImage, layout: SliceLayout,
                          window: IntensityWindow, refine: bool, seed: int) -> tuple[np.ndarray, MedicalImage]:
    """The LR slices the model is fed (on the HR grid) and the low-resolution scan itself, made from
    the windowed true slices ``hr_slices`` (``(N, H, W)`` of ``reference`` in ``layout``).

    ``sr`` tasks: the coarse scan is ``downsample`` of the windowed truth (the coarse grid of
    :mod:`~LatentSRLib.transforms.grids`, unclipped), and the model's input its up-sampling, clipped:
    exactly the LR of a prepared dataset. Other tasks degrade on the input's own grid, as the dataset
    does. A task's noise is added on the fine grid, as in the training pairs (seeded per slice).
    """
    hr = torch.from_numpy(hr_slices)[:, None]
    if refine:
        coarse = downsample(hr, task.scale)[:, 0].numpy()
        lr_fine = _upsampled(coarse, task.scale, layout.slice_shape, range_of=hr_slices)
        axes = _in_plane_axes(layout)
        coarse_grid = coarse_image(reference, axes, task.scale)
        coarse_layout = SliceLayout.for_image(coarse_grid, layout.plane if layout.plane != "image" else "axial")
        lr_array = window.invert(coarse_layout.assemble(coarse))
        lr = coarse_grid.with_array(lr_array, degradation=task.to_dict())
    else:
        lr_fine = np.clip(np.asarray(task_degradation(task, noise=False)(hr))[:, 0], 0, 1).astype(np.float32)
        lr = None
    if task.noise > 0:
        noisy = [np.asarray(AddNoise(task.noise, kind=task.noise_kind, seed=seed + i)(torch.from_numpy(lr_fine[i : i + 1])))
                 for i in range(len(lr_fine))]
        lr_fine = np.clip(np.concatenate(noisy), 0, 1).astype(np.float32)
    if lr is None:
        lr = reference.with_array(window.invert(layout.assemble(lr_fine)), degradation=task.to_dict())
    return lr_fine, lr


# ------------------------------------------------------------------------------------- through-plane
def _rows_along(layout: SliceLayout, axis: int) -> bool:
    """Whether the slices' rows (True) or columns (False) run along array ``axis``."""
    if layout.axes[1] == axis:
        return True
    if layout.axes[2] == axis:
        return False
    raise ValueError(f"array axis {axis} does not lie in the {layout.plane} plane")


def _thick_axis_slices(layout: SliceLayout, array: np.ndarray, axis: int) -> np.ndarray:
    """Upright slices with the thick axis on the rows (transposed when it runs along the columns)."""
    slices = layout.extract(array)
    return np.ascontiguousarray(slices if _rows_along(layout, axis) else slices.transpose(0, 2, 1))


def _assemble_thick(layout: SliceLayout, slices: np.ndarray, axis: int) -> np.ndarray:
    return layout.assemble(slices if _rows_along(layout, axis) else np.ascontiguousarray(slices.transpose(0, 2, 1)))


def _through_plane(model: SRModel, image: MedicalImage, *, plane: str, settings: SRSettings,
                   reference: MedicalImage | None, mask: MedicalImage | None, simulate: bool, device: torch.device,
                   progress: ProgressCallback | None, cancelled: Callable[[], bool] | None,
                   started: float, calibration=None, tolerance: float | None = None) -> VolumeResult:
    """A ``thick`` model: refine the slice axis of a thick-slice volume.

    The thick axis is the array axis with the largest spacing (with ``simulate``: the normal of
    ``plane``). The output grid is ``s`` times finer along it (same field of view). The slices of
    both orthogonal planes that contain the thick axis are super-resolved (the thick axis on their
    rows, as in training), each brought up along it with the grid's one bicubic; the two results are
    averaged, and their disagreement is added to the sampling variance in the uncertainty map.
    """
    from LatentSRLib.transforms.thick import thick_volume

    task = model.task
    scale = int(task.scale)
    profile = task.options.get("profile", "gaussian")
    if image.ndim != 3:
        raise InputError("a thick-slice model needs a volume", image.path)
    if simulate:
        reference = image
        axis = image.array_axis_for_plane(plane)
        window = _window_for(model, reference)
        hr = np.asarray(window.apply(reference.array), dtype=np.float32)
        coarse_array = thick_volume(hr, axis, scale, profile)
        lr = coarse_image(reference, [axis], scale).with_array(window.invert(coarse_array), degradation=task.to_dict())
        coarse_windowed = coarse_array  # unclipped, as the training pairs' coarse rows
        out_grid = reference
    else:
        lr = image
        axis = int(np.argmax(list(reversed(lr.spacing))))  # array axis with the largest spacing
        window = _window_for(model, lr)
        coarse_windowed = np.asarray(window.apply(lr.array), dtype=np.float32)
        fine_shape = tuple(n * scale if a == axis else n for a, n in enumerate(lr.shape))
        out_grid = fine_image(lr, [axis], scale, np.zeros(fine_shape, dtype=lr.array.dtype))
    for other, what in ((reference, "reference"), (mask, "mask")):
        if other is not None and not out_grid.has_same_geometry(other):
            raise InputError(f"the {what} is not on the SR grid (shape {other.shape} vs {out_grid.shape}, spacing "
                             f"{_mm(other.spacing)} vs {_mm(out_grid.spacing)}); resample it first", other.path)
    if mask is not None and reference is None:
        raise InputError("region metrics need a reference (or --simulate-scale)", mask.path)
    planes = [p for p in ("axial", "coronal", "sagittal") if out_grid.array_axis_for_plane(p) != axis]
    if len(planes) != 2:
        raise InputError("cannot tell the two planes that contain the thick axis (an oblique volume?)", image.path)
    tile = tile_size(model, settings)
    grid = ModelGrid(tile, fit="tile")
    means, variances, fused_layout, lr_fine_first = [], [], None, None
    skipped_tiles = 0
    batch_size = settings.batch_size or default_batch_size(device, tile[0] * tile[1])
    for number, name in enumerate(planes):
        coarse_layout = SliceLayout.for_image(lr, name)
        fine_layout = SliceLayout.for_image(out_grid, name)
        coarse_slices = _thick_axis_slices(coarse_layout, np.asarray(coarse_windowed, dtype=np.float32), axis)
        height = out_grid.shape[axis]
        fine = upsample(torch.from_numpy(coarse_slices)[:, None], scale, dims=(-2,),
                        size=(height, coarse_slices.shape[-1]))[:, 0].numpy()
        ranges = coarse_slices if not simulate else _thick_axis_slices(fine_layout, hr, axis)
        lr_fine = np.clip(np.clip(fine, ranges.min(axis=(1, 2), keepdims=True), ranges.max(axis=(1, 2), keepdims=True)),
                          0, 1).astype(np.float32)

        def report(fraction: float, message: str, number=number, name=name) -> None:
            if progress is not None:
                progress((number + fraction) / len(planes), f"{name}: {message}")

        mean, std, _, batch_size, skipped = _sample_slices(model, lr_fine, settings, device, grid, batch_size, report,
                                                           cancelled, key_offset=number * 1_000_000)
        skipped_tiles += skipped
        means.append(_assemble_thick(fine_layout, mean, axis))
        variances.append(_assemble_thick(fine_layout, std**2, axis))
        if fused_layout is None:
            fused_layout, lr_fine_first = fine_layout, lr_fine
    fused = np.mean(means, axis=0)
    # the total variance of a mixture of the two planes' sample sets: mean variance + spread of the means
    uncertainty = np.sqrt(np.mean(variances, axis=0) + np.var(means, axis=0)).astype(np.float32)
    sr_slices = _thick_axis_slices(fused_layout, fused, axis)
    sr_tensor = torch.from_numpy(np.ascontiguousarray(sr_slices))[:, None]
    lr_tensor = torch.from_numpy(lr_fine_first)[:, None]
    if settings.data_consistency:
        sr_tensor = data_consistent(sr_tensor, lr_tensor, task)
    disagreement = consistency_map(sr_tensor.clamp(0, 1), lr_tensor, task)[:, 0].numpy()
    sr_slices = np.clip(sr_tensor[:, 0].numpy(), 0, 1)
    width = float(window.upper - window.lower)
    as_float = {"source_dtype": "float32"}
    result = VolumeResult(
        sr=out_grid.with_array(window.invert(_assemble_thick(fused_layout, sr_slices, axis)),
                               latentsr_output="super-resolved", model=str(model.folder)),
        uncertainty=out_grid.with_array((uncertainty * width).astype(np.float32),
                                        latentsr_output="uncertainty (std across samples and planes)", **as_float),
        consistency=out_grid.with_array((_assemble_thick(fused_layout, disagreement, axis) * width).astype(np.float32),
                                        latentsr_output="data consistency |A(SR) - LR|", **as_float),
        lr=lr,
    )
    seconds = time.perf_counter() - started
    spacing = [float(v) for v in out_grid.spacing]
    result.metrics = {
        "model": str(model.folder), "task": task.to_dict(), "plane": "+".join(planes), "slices": int(sum(
            out_grid.shape[out_grid.array_axis_for_plane(p)] for p in planes)),
        "thick_axis_spacing": [float(list(reversed(lr.spacing))[axis]), float(list(reversed(out_grid.spacing))[axis])],
        "input_grid": {"shape": list(lr.shape), "spacing": [float(v) for v in lr.spacing]},
        "output_grid": {"shape": list(out_grid.shape), "spacing": spacing},
        "refined_grid": True, "settings": settings.to_dict(), "device": str(device), "batch_size": batch_size,
        "tiling": {"tile": list(tile), "overlap": tile_overlap_of(model, settings),
                   "anatomy_window": anatomy_window_of(model, settings)},
        "background_tiles_skipped": skipped_tiles, "seconds": round(seconds, 3), "window": {"lower": window.lower, "upper": window.upper},
        "simulated": bool(simulate), "consistency_mean": float(disagreement.mean()),
        "warnings": pixel_size_warnings(model, tuple(sorted(spacing)[:2])),
    }
    if reference is not None:
        upright = _rows_along(fused_layout, axis)  # the review works on the layout's own slice orientation
        as_layout = (lambda s: s) if upright else (lambda s: np.ascontiguousarray(s.transpose(0, 2, 1)))
        review = reference_review(model, as_layout(lr_fine_first), reference, mask, window, fused_layout, grid,
                                  as_layout(sr_slices), device, batch_size=settings.batch_size or 4,
                                  autocast=settings.autocast)
        result.difference, result.hallucination = review.difference, review.hallucination
        result.metrics["reference"] = review.metrics
        result.bicubic = out_grid.with_array(
            (_assemble_thick(fused_layout, lr_fine_first, axis) * width + window.lower).astype(np.float32),
            latentsr_output="interpolation of the input along the thick axis", **as_float)
    _calibrate(result, calibration, settings, tolerance, out_grid, window, uncertainty,
               _assemble_thick(fused_layout, disagreement, axis), _assemble_thick(fused_layout, sr_slices, axis),
               reference, mask, _structure(calibration, sr_slices, lambda s: _assemble_thick(fused_layout, s, axis)))
    return result
