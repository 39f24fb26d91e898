"""Calibrated intervals of a super-resolved volume: the ``interval`` and ``trust`` maps and the
``calibration`` entry of ``metrics.json``.

A model calibrated by ``latentsr calibrate`` (:mod:`LatentSRLib.evaluation.calibration`) carries a
``calibration.json``; its half-width ``lam * heuristic_width(std, consistency, structure)``
(:mod:`LatentSRLib.metrics.calibration`) is computed here from the engine's std, consistency and
SR structure maps in the window's [0, 1] units and converted to the input's intensity units by the window's width
alone (a width: no offset). With a reference, the coverage of the intervals (foreground pixels of
the truth, as calibrated) and their mean half-width are reported beside the nominal ``1 - alpha``,
and per mask label when a mask is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from LatentSRLib.errors import InputError
from LatentSRLib.io import MedicalImage
from LatentSRLib.metrics.calibration import Calibration, coverage, mean_half_width

__all__ = ["UNCALIBRATED", "calibration_review", "calibration_summary", "interval_maps", "model_calibration"]

#: the ``calibration`` entry of ``metrics.json`` for a model without ``calibration.json``
UNCALIBRATED = "uncalibrated"


def model_calibration(model, tolerance: float | None = None) -> Calibration | None:
    """The calibration recorded in ``model``'s folder (None when it has none).

    Raises:
        InputError: a ``tolerance`` for a model without calibration (there is no interval to compare
            it with), or a damaged ``calibration.json``.
    """
    folder = getattr(model, "folder", None)
    calibration = Calibration.load(folder) if folder is not None else None
    if tolerance is not None and calibration is None:
        raise InputError("a tolerance needs a calibrated model (no calibration.json): run `latentsr calibrate` on it "
                         "first", folder)
    return calibration


def interval_maps(calibration: Calibration, out_grid: MedicalImage, std: np.ndarray, consistency: np.ndarray,
                  window_width: float, tolerance: float | None = None, structure: np.ndarray | None = None
                  ) -> tuple[np.ndarray, MedicalImage, MedicalImage | None]:
    """The half-width map (and, with ``tolerance``, the trust map) of a volume.

    Args:
        calibration: the model's calibration.
        out_grid: the SR grid (geometry of the outputs).
        std, consistency: the engine's maps on that grid (``out_grid.shape``), window units.
        window_width: ``upper - lower`` of the intensity window (intensity units per window unit).
        tolerance: >= 0, intensity units.
        structure: the SR's structure map on that grid (window units), computed slice by slice in the
            plane the model worked in; needed when ``calibration.uses_structure``.

    Returns:
        ``(half_width in window units, interval image in intensity units, trust image or None)``;
        trust is uint8, 1 where the half-width is at most ``tolerance``.
    """
    half = calibration.half_width(std, consistency, structure=structure)
    interval = out_grid.with_array((half * float(window_width)).astype(np.float32),
                                   latentsr_output=f"calibrated interval half-width (SR +- it holds the truth with "
                                   f"risk {calibration.alpha:g})", source_dtype="float32")
    trust = None
    if tolerance is not None:
        trust = out_grid.with_array((interval.array <= float(tolerance)).astype(np.uint8),
                                    latentsr_output=f"trusted (1): interval half-width <= {float(tolerance):g}",
                                    source_dtype="uint8")
    return half, interval, trust


def calibration_summary(calibration: Calibration | None, *, samples: int, data_consistency: bool,
                        tolerance: float | None = None, trust: MedicalImage | None = None
                        ) -> tuple[dict[str, Any] | str, list[str]]:
    """The ``calibration`` entry of ``metrics.json`` without a reference, and warnings for settings that
    differ from the calibration's (its guarantee is for those settings)."""
    if calibration is None:
        return UNCALIBRATED, []
    entry: dict[str, Any] = {
        "method": calibration.method, "heuristic": calibration.heuristic, "lam": calibration.lam,
        "alpha": calibration.alpha, "delta": calibration.delta, "nominal": calibration.nominal,
        "guarantee": calibration.guarantee,
        "calibrated_on": {"dataset": calibration.dataset, "split": calibration.split, "images": calibration.images,
                          "samples": calibration.samples, "steps": calibration.steps},
    }
    if tolerance is not None:
        entry["tolerance"] = float(tolerance)
        if trust is not None:
            entry["trusted_fraction"] = float(np.mean(trust.array))
    warnings = []
    if int(samples) != calibration.samples:
        warnings.append(f"the model was calibrated with {calibration.samples} sample(s) per slice but this run takes "
                        f"{samples}: the interval's guarantee holds for --samples {calibration.samples}")
    if bool(data_consistency) != bool(calibration.extra.get("data_consistency", False)):
        warnings.append("the model was calibrated " + ("with" if calibration.extra.get("data_consistency") else "without")
                        + " the data-consistency projection: the interval's guarantee holds for that setting")
    return entry, warnings


def calibration_review(calibration: Calibration, sr: np.ndarray, hr: np.ndarray, half_width: np.ndarray,
                       window_width: float, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Coverage of the intervals against the truth.

    Args:
        calibration: the model's calibration (its foreground level decides which pixels count).
        sr, hr, half_width: volumes on the SR grid, window units (``hr`` the windowed reference).
        window_width: intensity units per window unit (for the mean half-width).
        mask: integer labels on the same grid (0 = background), or None.

    Returns:
        ``{"coverage", "nominal", "mean_half_width", "pixels", "units"}`` over the foreground of the
        truth, and with a mask ``"labels": {label: {...}}`` (every pixel of the label; ``"0"`` the
        foreground outside the labels).
    """
    foreground = hr > calibration.foreground_level

    def scores(where: np.ndarray) -> dict[str, Any]:
        cover = coverage(sr, hr, half_width, where)
        width = mean_half_width(half_width, where) * float(window_width)
        return {"coverage": None if np.isnan(cover) else cover, "mean_half_width": None if np.isnan(width) else width,
                "pixels": int(np.count_nonzero(where))}

    entry = {**scores(foreground), "nominal": calibration.nominal,
             "units": "coverage over the reference's foreground pixels; half-width in intensity units"}
    if mask is not None:
        labels = np.rint(mask).astype(np.int64)
        entry["labels"] = {str(int(label)): scores(labels == label if label else (labels == 0) & foreground)
                           for label in np.unique(labels)}
    return entry
