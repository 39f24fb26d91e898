"""What ``latentsr info`` reports about an image: geometry, orientation, intensities, DICOM facts."""

from __future__ import annotations

from typing import Any

import numpy as np

from LatentSRLib.io.image import PLANES, MedicalImage

__all__ = ["describe_image", "format_description"]


def describe_image(image: MedicalImage) -> dict[str, Any]:
    """A JSON-serialisable summary of ``image`` (geometry in LPS mm, index order ``(i, j[, k])``)."""
    array = image.array
    info: dict[str, Any] = {
        "path": image.path,
        "format": image.metadata.get("format"),
        "dimensions": image.ndim,
        "shape_numpy": list(image.shape),
        "size_ijk": list(image.size_ijk),
        "spacing_mm": _rounded(image.spacing),
        "origin_lps_mm": _rounded(image.origin),
        "direction": [_rounded(row) for row in image.direction.tolist()],
        "dtype": str(array.dtype),
    }
    if image.ndim == 3:
        info["orientation"] = image.orientation()
        info["acquisition_plane"] = image.acquisition_plane()
        info["slices"] = {
            plane: {"array_axis": axis, "count": int(array.shape[axis])}
            for plane in PLANES
            for axis in [image.array_axis_for_plane(plane)]
        }
    info["intensity"] = _intensity(array)
    for key in ("modality", "series_description", "series_instance_uid", "photometric_interpretation"):
        if image.metadata.get(key) is not None:
            info[key] = image.metadata[key]
    if image.metadata.get("notes"):
        info["notes"] = list(image.metadata["notes"])
    return info


def _intensity(array: np.ndarray) -> dict[str, Any]:
    values = array.astype(np.float64, copy=False) if array.dtype != np.float64 else array
    finite = np.isfinite(values)
    out: dict[str, Any] = {}
    if not finite.all():
        out["non_finite_pixels"] = int(values.size - np.count_nonzero(finite))
        values = values[finite]
    if values.size == 0:
        return out
    p_low, p_high = np.percentile(values, [0.5, 99.5])
    out.update(
        min=float(values.min()),
        max=float(values.max()),
        mean=float(values.mean()),
        std=float(values.std()),
        p0_5=float(p_low),
        p99_5=float(p_high),
        constant=bool(values.min() == values.max()),
    )
    return out


def _rounded(values, digits: int = 6) -> list[float]:
    return [round(float(v), digits) + 0.0 for v in values]  # + 0.0 turns -0.0 into 0.0


def format_description(info: dict[str, Any]) -> str:
    """Human-readable lines for ``latentsr info``."""
    lines = [f"{info['path']}", f"  format        {info['format']}"]
    lines.append(f"  size (i,j,k)  {' x '.join(str(s) for s in info['size_ijk'])}   numpy shape {tuple(info['shape_numpy'])}")
    lines.append(f"  dtype         {info['dtype']}")
    lines.append(f"  spacing (mm)  {', '.join(f'{s:g}' for s in info['spacing_mm'])}")
    lines.append(f"  origin (LPS)  {', '.join(f'{o:g}' for o in info['origin_lps_mm'])}")
    lines.append("  direction     " + " | ".join(" ".join(f"{v:+.4f}" for v in row) for row in info["direction"]))
    if "orientation" in info:
        lines.append(f"  orientation   {info['orientation']} (direction each of i, j, k points to); "
                     f"acquired {info['acquisition_plane']}")
        lines.append("  slices        " + ", ".join(
            f"{plane} {s['count']} (array axis {s['array_axis']})" for plane, s in info["slices"].items()))
    inten = info["intensity"]
    if "min" in inten:
        lines.append(f"  intensity     min {inten['min']:g}  max {inten['max']:g}  mean {inten['mean']:.4g}  "
                     f"p0.5 {inten['p0_5']:g}  p99.5 {inten['p99_5']:g}" + ("  (constant)" if inten["constant"] else ""))
    if inten.get("non_finite_pixels"):
        lines.append(f"  WARNING       {inten['non_finite_pixels']} NaN/Inf pixels")
    for key, label in (("modality", "modality"), ("series_description", "series"),
                       ("photometric_interpretation", "photometric")):
        if key in info:
            lines.append(f"  {label:<13} {info[key]}")
    for note in info.get("notes", []):
        lines.append(f"  note          {note}")
    return "\n".join(lines)
