"""A scan file in, an output folder out: the workflow behind ``latentsr sr`` and the bundle's
``inference`` entry (both call :func:`super_resolve_file`).

The output folder is checked before anything heavy runs (a foreign folder, an input inside it, a
file in the way are refused at once), every output is written into a staging folder beside it, and
the staging folder replaces the old one in one rename at the end: an interrupted run leaves the
previous folder or the new one, never a mixture, and a rerun replaces every map.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from LatentSRLib.errors import InputError
from LatentSRLib.inference.engine import SRSettings, super_resolve_volume
from LatentSRLib.inference.intervals import model_calibration
from LatentSRLib.inference.preflight import METRICS_FILE, check_sr_request, is_sr_folder
from LatentSRLib.io import atomic_directory, read_image, write_image
from LatentSRLib.model.folder import SRModel, load_sr_model

__all__ = ["OUTPUT_EXTENSIONS", "is_sr_folder", "super_resolve_file"]

#: output format -> file extension of each map (DICOM: one series folder per map)
OUTPUT_EXTENSIONS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "metaimage": ".mha", "dicom": ""}
def super_resolve_file(
    input: str | os.PathLike,
    outdir: str | os.PathLike,
    model: str | os.PathLike | SRModel,
    *,
    plane: str = "axial",
    settings: SRSettings = SRSettings(),
    reference: str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
    simulate_scale: int | None = None,
    same_grid: bool = False,
    device: str = "auto",
    output_format: str = "nifti",
    progress: Callable[[float, str], None] | None = None,
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Super-resolve the scan ``input`` with ``model`` and write every output into ``outdir``.

    Writes ``sr``, ``uncertainty``, ``consistency`` and, with a reference (or ``simulate_scale``),
    ``difference``, ``hallucination`` (and ``lr``, the simulated input), with a calibrated model
    ``interval`` (and with ``tolerance`` ``trust``), plus ``metrics.json`` (settings, timing, scores,
    calibration, the written paths); see :mod:`LatentSRLib.inference.engine`.

    Args:
        input: an image file or DICOM series folder (the LR scan, or with ``simulate_scale`` the truth).
        outdir: the output folder (new, empty, or a previous output of this function).
        model: a model folder or a loaded model.
        simulate_scale: evaluation mode: degrade ``input`` as the model's task does (its factor
            must be this) and super-resolve that, with ``input`` as the reference.
        same_grid: keep the input's grid even for an ``sr`` model (an input already interpolated onto
            the fine grid); by default an ``sr`` model writes on a grid ``s`` times finer in-plane.
        output_format: ``nifti``, ``nrrd``, ``metaimage`` or ``dicom`` (derived series of the input's study).
        tolerance: intensity units; with a calibrated model, ``trust`` = 1 where the interval's
            half-width is at most this (refused for an uncalibrated model).
        plane, settings, reference, mask, device, progress: as :func:`~.engine.super_resolve_volume`.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        InputError, OutputError: one line naming the file and the problem.
    """
    if output_format not in OUTPUT_EXTENSIONS:
        raise InputError(f"unknown output format {output_format!r}; choose one of {', '.join(OUTPUT_EXTENSIONS)}")
    if simulate_scale is not None and reference:
        raise InputError("simulating the low-resolution scan uses INPUT as the reference; do not also give a reference")
    inputs = [Path(p) for p in (input, reference, mask) if p]
    model_folder = None if isinstance(model, SRModel) else Path(model)
    outdir = check_sr_request(input, outdir, model_folder, reference=reference, mask=mask)
    sr_model = model if isinstance(model, SRModel) else load_sr_model(model_folder)
    if simulate_scale is not None and int(simulate_scale) != sr_model.task.scale:
        raise InputError(f"the model was trained for {sr_model.task.name} (factor {sr_model.task.scale}), "
                         f"not a simulated scale of {simulate_scale}", sr_model.folder)
    model_calibration(sr_model, tolerance)  # a tolerance without a calibration is refused before any reading
    image = read_image(input)
    reference_image = read_image(reference) if reference else None
    mask_image = read_image(mask) if mask else None
    result = super_resolve_volume(sr_model, image, plane=plane, settings=settings, reference=reference_image,
                                  mask=mask_image, simulate=simulate_scale is not None, same_grid=same_grid, device=device,
                                  progress=progress, tolerance=tolerance)
    extension = OUTPUT_EXTENSIONS[output_format]
    outputs = dict(result.outputs())
    if result.metrics.get("simulated"):
        outputs["lr"] = result.lr
    descriptions = {"lr": "LatentSR simulated low resolution"}
    with atomic_directory(outdir) as staging:
        written = {}
        for name, output in outputs.items():
            write_image(output, staging / f"{name}{extension}", format=output_format, inputs=inputs,
                        series_description=descriptions.get(name, f"LatentSR {name}"))
            written[name] = str(outdir / f"{name}{extension}")
        metrics = {**result.metrics, "input": str(Path(input).resolve()), "outputs": written}
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
