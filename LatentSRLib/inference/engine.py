"""The volume SR engine: a scan in, its super-resolved version and review maps out, on the scan's grid.

The data flow (docs/science.md has the rules it follows): window the volume to [0, 1] (the model's training percentiles,
remembered) -> upright slices of the chosen plane -> model grid -> encode the LR slice (on the HR
grid, rule 5) -> sample K times -> decode -> [data-consistency projection] -> back to the slice grid
-> stack -> undo the window. A model trained on tiles of large images (``fit="tile"`` in its grid,
e.g. radiographs) keeps the slice's own pixels instead: the encode/sample/decode step runs on
overlapping grid-sized tiles through MONAI's sliding-window inferer (Gaussian blending), and the
data-consistency projection and consistency map are computed on the blended whole slice. Maps
computed alongside, per voxel on the input grid:

* ``uncertainty``: standard deviation across the K samples (0 when K = 1), in intensity units;
* ``consistency``: ``|degrade(SR) - LR|``, where the result disagrees with what was measured (no
  ground truth needed), in intensity units;
* with a reference HR volume: ``difference`` = SR - HR (intensity units) and the
  hallucination/loss label map (+1 / -1, the AE noise floor of :mod:`LatentSRLib.metrics.hallucination`),
  with whole-volume and per-slice PSNR/SSIM;
* with a mask: PSNR/SSIM inside each label and in the background.

:func:`super_resolve_volume` is the library API (the Slicer module calls it with a progress
callback and a cancel check); ``latentsr sr`` is a thin wrapper that writes the results.
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
from LatentSRLib.transforms.simulation import simulate_low_resolution
from LatentSRLib.model.folder import SRModel
from LatentSRLib.inference.review import reference_review
from LatentSRLib.model.sampling import SamplingSettings, sample_sr
from LatentSRLib.transforms.consistency import consistency_map, data_consistent
from LatentSRLib.transforms.intensity import IntensityWindow, PercentileWindow
from LatentSRLib.transforms.slicing import ModelGrid, SliceLayout, tile_windows
from LatentSRLib.model.devices import autocast_for, default_batch_size, resolve_device, run_in_batches

__all__ = ["Cancelled", "SRSettings", "VolumeResult", "super_resolve_volume"]

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
    """

    steps: int | None = None
    sampler: str | None = None
    samples: int = 1
    seed: int = 0
    batch_size: int | None = None
    data_consistency: bool = False
    autocast: bool = True

    def __post_init__(self) -> None:
        self.sampling  # validates steps and samples  # noqa: B018
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")

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

    def outputs(self) -> dict[str, MedicalImage]:
        """Name -> image of every map that was computed."""
        named = {"sr": self.sr, "uncertainty": self.uncertainty, "consistency": self.consistency,
                 "difference": self.difference, "hallucination": self.hallucination}
        return {k: v for k, v in named.items() if v is not None}


def _tile_key(slice_index: int, top: int, left: int) -> int:
    # the stable id of a tile: its slice and position (so its noise does not depend on the batching)
    return (slice_index * 65_537 + top) * 65_537 + left + 1


def _mean_std(model: SRModel, lr: torch.Tensor, keys: list[int], settings: SRSettings) -> tuple[torch.Tensor, torch.Tensor]:
    result = sample_sr(model, lr, keys, settings.sampling)
    return result.mean, result.std


def _window_for(model: SRModel, image: MedicalImage) -> IntensityWindow:
    grid = model.config.get("grid", {})
    lower = float(grid.get("lower_percentile", 0.5))
    upper = float(grid.get("upper_percentile", 99.5))
    return PercentileWindow(lower, upper, clip=True).compute(image.array)


def super_resolve_volume(
    model: SRModel,
    image: MedicalImage,
    *,
    plane: str = "axial",
    settings: SRSettings = SRSettings(),
    reference: MedicalImage | None = None,
    mask: MedicalImage | None = None,
    simulate: bool = False,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> VolumeResult:
    """Super-resolve ``image`` slice by slice.

    Args:
        model: a loaded SR model (:func:`LatentSRLib.model.folder.load_sr_model`).
        image: the low-resolution scan (2D image or 3D volume, any units), or with ``simulate`` the
            high-resolution scan to degrade first.
        plane: slicing plane of a volume (the plane the model super-resolves in).
        settings: sampling settings.
        reference: the true high-resolution scan on the same grid (evaluation); ``simulate`` sets it.
        mask: a label volume on the same grid (0 = background) for region metrics; needs a reference.
        simulate: degrade ``image`` as the model's task does and super-resolve that, using ``image``
            as the reference.
        device: ``"auto"``, ``"cuda"``, ``"cpu"``, ...
        progress: called with (fraction done, message) after each batch.
        cancelled: checked between batches; when it returns True, :class:`Cancelled` is raised.

    Returns:
        A :class:`VolumeResult`.
    """
    check_pixels(image)
    started = time.perf_counter()
    torch_device = resolve_device(device)
    model.to(torch_device)
    task = model.task
    if simulate:
        if reference is not None:
            raise InputError("give either a reference or simulate, not both", image.path)
        reference = image
        try:
            image = simulate_low_resolution(image, mode=task.mode, scale=task.scale, noise=task.noise,
                                            seed=settings.seed, plane=plane, **task.options)
        except ValueError as exc:
            raise InputError(f"cannot simulate the model's task {task.name}: {exc}", image.path) from None
    for other, what in ((reference, "reference"), (mask, "mask")):
        if other is not None and not image.has_same_geometry(other):
            raise InputError(f"the {what} is not on the input's grid (shape {other.shape} vs {image.shape}); "
                             "resample it first", other.path)
    if mask is not None and reference is None:
        raise InputError("region metrics need a reference (or --simulate-scale)", mask.path)

    window = _window_for(model, image)
    layout = SliceLayout.for_image(image, plane)
    lr_slices = np.ascontiguousarray(layout.extract(np.asarray(window.apply(image.array), dtype=np.float32)))
    grid_info = model.config.get("grid", {})
    grid = ModelGrid(tuple(grid_info.get("size", (256, 256))), fit=grid_info.get("fit", "pad"))
    tile_overlap = float(grid_info.get("tile_overlap", 0.25))
    spacing = layout.pixel_spacing
    n = lr_slices.shape[0]

    sr_slices = np.zeros_like(lr_slices)
    std_slices = np.zeros_like(lr_slices)
    consistency_slices = np.zeros_like(lr_slices)

    def tiled_mean_std(lr_model: torch.Tensor, rows: list[int], tiles_per_batch: int):
        from monai.inferers import SlidingWindowInferer

        inferer = SlidingWindowInferer(grid.size, sw_batch_size=tiles_per_batch, overlap=tile_overlap,
                                       mode="gaussian", with_coord=True)
        stride = tuple(max(1, int(s * (1 - tile_overlap))) for s in grid.size)  # as MONAI steps its windows
        total = len(tile_windows(tuple(lr_model.shape[-2:]), grid.size, stride))
        means, stds = [], []
        for row, one in zip(rows, lr_model):
            finished = [0]

            def predict(tiles: torch.Tensor, locations) -> torch.Tensor:
                # a radiograph is one slice of many tiles: cancel and report between tile batches
                if cancelled is not None and cancelled():
                    raise Cancelled("cancelled")
                keys = [_tile_key(row, int(where[-2].start), int(where[-1].start)) for where in locations]
                out = torch.cat(_mean_std(model, tiles, keys, settings), dim=1)
                finished[0] += len(tiles)
                if progress is not None:
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
        lr_model = grid.to_model(lr_slices[rows], spacing).clamp(0, 1)[:, None].to(torch_device)
        with torch.inference_mode(), autocast_for(torch_device, settings.autocast):
            if grid.tiled:  # the batch size counts tiles here; slices go one by one
                mean, std = tiled_mean_std(lr_model, rows, len(rows))
            else:
                mean, std = _mean_std(model, lr_model, rows, settings)
            if settings.data_consistency:
                mean = data_consistent(mean, lr_model, task)
            disagreement = consistency_map(mean, lr_model, task)
        back = [grid.from_model(x[:, 0].float().cpu(), layout.slice_shape, spacing).numpy() for x in (mean, std, disagreement)]
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

    done_mask = np.zeros(n, dtype=bool)
    batch_size = settings.batch_size or default_batch_size(torch_device, grid.size[0] * grid.size[1])
    final_batch = run_in_batches(list(range(n)), batch_size, work, done)

    width = float(window.upper - window.lower)
    sr_array = window.invert(layout.assemble(sr_slices))
    as_float = {"source_dtype": "float32"}
    result = VolumeResult(
        sr=image.with_array(sr_array, latentsr_output="super-resolved", model=str(model.folder)),
        uncertainty=image.with_array((layout.assemble(std_slices) * width).astype(np.float32),
                                     latentsr_output="uncertainty (std across samples)", **as_float),
        consistency=image.with_array((layout.assemble(consistency_slices) * width).astype(np.float32),
                                     latentsr_output="data consistency |degrade(SR) - LR|", **as_float),
        lr=image,
    )
    seconds = time.perf_counter() - started
    result.metrics = {
        "model": str(model.folder),
        "task": task.to_dict(),
        "plane": layout.plane,
        "slices": n,
        "settings": settings.to_dict(),
        "device": str(torch_device),
        "batch_size": final_batch,
        "seconds": round(seconds, 3),
        "seconds_per_slice": round(seconds / max(n, 1), 4),
        "window": {"lower": window.lower, "upper": window.upper},
        "simulated": bool(simulate),
        "consistency_mean": float(consistency_slices.mean()),
    }
    if reference is not None:
        review = reference_review(model, image, reference, mask, window, layout, grid, sr_slices, torch_device,
                                  batch_size=settings.batch_size or 4, autocast=settings.autocast)
        result.difference, result.hallucination = review.difference, review.hallucination
        result.metrics["reference"] = review.metrics
    return result

