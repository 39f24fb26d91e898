"""Reference-based review of a super-resolved volume: difference, hallucination/loss labels and metrics.

Everything is scored against the TRUE high-resolution volume (rule 1), in the window the engine
used ([0, 1] units, so PSNR peaks are comparable between scans). The hallucination noise floor is
the model's own autoencoder: each reference slice is encoded and decoded, and SR deviations beyond
what that round trip alone produces are labelled (:mod:`LatentSRLib.metrics.hallucination`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from LatentSRLib.metrics.hallucination import hallucination_maps
from LatentSRLib.metrics.quality import psnr, ssim
from LatentSRLib.metrics.roi import region_metrics
from LatentSRLib.io import MedicalImage
from LatentSRLib.model.folder import SRModel
from LatentSRLib.transforms.intensity import IntensityWindow
from LatentSRLib.transforms.slicing import ModelGrid, SliceLayout
from LatentSRLib.model.devices import autocast_for

__all__ = ["ReferenceReview", "reference_review"]


@dataclass
class ReferenceReview:
    """The reference-based outputs of one volume, on the input's grid.

    Attributes:
        difference: SR - HR in intensity units.
        hallucination: int8 labels, +1 hallucinated / -1 lost beyond the autoencoder's noise floor.
        metrics: whole-volume, per-slice and per-region scores (the ``reference`` entry of ``metrics.json``).
    """

    difference: MedicalImage
    hallucination: MedicalImage
    metrics: dict[str, Any]


def _number(value: float) -> float | None:
    """JSON-safe: infinities (identical images) and NaN (empty regions) become None."""
    return float(value) if value is not None and math.isfinite(value) else None


def _volume_psnr(prediction: np.ndarray, target: np.ndarray) -> float:
    mse = float(np.mean((prediction.astype(np.float64) - target.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@torch.inference_mode()
def _autoencoder_round_trip(model: SRModel, slices: np.ndarray, grid: ModelGrid, layout: SliceLayout,
                            device: torch.device, batch_size: int, autocast: bool) -> np.ndarray:
    out = np.zeros_like(slices)
    for start in range(0, len(slices), batch_size):
        chunk = grid.to_model(slices[start : start + batch_size], layout.pixel_spacing).clamp(0, 1)[:, None].to(device)
        with autocast_for(device, autocast):
            recon = model.autoencoder.reconstruct(chunk).float()
        out[start : start + len(chunk)] = grid.from_model(recon[:, 0].cpu(), layout.slice_shape, layout.pixel_spacing).numpy()
    return np.clip(out, 0, 1)


def reference_review(model: SRModel, lr_slices: np.ndarray, reference: MedicalImage, mask: MedicalImage | None,
                     window: IntensityWindow, layout: SliceLayout, grid: ModelGrid, sr_slices: np.ndarray,
                     device: torch.device, *, batch_size: int = 4, autocast: bool = True,
                     k: float = 2.0) -> ReferenceReview:
    """Score the SR slices and the LR slices they came from (both ``(n, H, W)`` in the window's [0, 1],
    on the reference's grid) against ``reference``."""
    hr_slices = np.ascontiguousarray(layout.extract(np.asarray(window.apply(reference.array), dtype=np.float32)))
    width = float(window.upper - window.lower)
    difference = reference.with_array(((layout.assemble(sr_slices) - layout.assemble(hr_slices)) * width)
                                             .astype(np.float32), latentsr_output="difference SR - HR",
                                             source_dtype="float32")
    ae_slices = _autoencoder_round_trip(model, hr_slices, grid, layout, device, batch_size, autocast)
    maps = hallucination_maps(sr_slices, hr_slices, ae_slices, k=k)
    labels = np.stack([m.labels for m in maps]).astype(np.int8)
    hallucination = reference.with_array(layout.assemble(labels),
                                                latentsr_output="hallucination (+1) / loss (-1) labels",
                                                source_dtype="int8")
    # per-slice scores only where the reference has anatomy (an empty slice has no meaningful PSNR)
    informative = [i for i in range(len(hr_slices)) if float(hr_slices[i].max()) > 0.05]
    per_slice_sr = psnr(sr_slices[informative], hr_slices[informative]) if informative else np.array([])
    per_slice_lr = psnr(lr_slices[informative], hr_slices[informative]) if informative else np.array([])
    small = min(layout.slice_shape) < 11  # SSIM needs an 11x11 window
    per_slice_ssim_sr = ssim(sr_slices[informative], hr_slices[informative]) if informative and not small else None
    per_slice_ssim_lr = ssim(lr_slices[informative], hr_slices[informative]) if informative and not small else None
    metrics = {
        "reference": str(reference.path) if reference.path else "given",
        "psnr_sr": _number(_volume_psnr(sr_slices, hr_slices)),
        "psnr_lr": _number(_volume_psnr(lr_slices, hr_slices)),
        "ssim_sr": None if per_slice_ssim_sr is None else _number(float(np.mean(per_slice_ssim_sr))),
        "ssim_lr": None if per_slice_ssim_lr is None else _number(float(np.mean(per_slice_ssim_lr))),
        "psnr_ae_ceiling": _number(_volume_psnr(ae_slices, hr_slices)),
        "hallucinated_fraction": _number(float(np.nanmean([m.hallucinated_fraction for m in maps]))),
        "lost_fraction": _number(float(np.nanmean([m.lost_fraction for m in maps]))),
        "hallucination_k": k,
        "per_slice": [{"slice": int(i), "psnr_sr": _number(per_slice_sr[n]), "psnr_lr": _number(per_slice_lr[n]),
                       "ssim_sr": None if per_slice_ssim_sr is None else _number(per_slice_ssim_sr[n]),
                       "ssim_lr": None if per_slice_ssim_lr is None else _number(per_slice_ssim_lr[n])}
                      for n, i in enumerate(informative)],
        "units": "window [0, 1] (the volume's intensity window), PSNR peak 1",
    }
    if mask is not None:
        mask_slices = np.ascontiguousarray(layout.extract(np.rint(np.asarray(mask.array)).astype(np.int32)))
        present = [i for i in range(len(mask_slices)) if mask_slices[i].any()]
        regions: dict[str, dict] = {}
        for name, prediction in (("sr", sr_slices), ("lr", lr_slices)):
            rows = region_metrics(prediction[present], hr_slices[present], mask_slices[present]) if present else []
            for row in rows:
                entry = regions.setdefault(row.region, {"labels": list(row.labels) if row.labels else [], "pixels": 0})
                entry.setdefault(f"psnr_{name}", [])
                entry.setdefault(f"ssim_{name}", [])
                entry[f"psnr_{name}"].append(row.psnr)
                entry[f"ssim_{name}"].append(row.ssim)
                if name == "sr":
                    entry["pixels"] += int(row.n_pixels)
        for entry in regions.values():  # mean over the slices that contain the region
            for key in [k for k in entry if k.startswith(("psnr_", "ssim_"))]:
                values = np.asarray(entry[key], dtype=float)
                entry[key] = _number(float(np.nanmean(values))) if np.isfinite(values).any() else None
        metrics["regions"] = regions
        metrics["region_slices"] = len(present)
        metrics["mask"] = str(mask.path) if mask.path else "given"
    return ReferenceReview(difference, hallucination, metrics)
