"""Read DICOM into a :class:`MedicalImage`: a series folder, a single-frame file or a multi-frame file.

Geometry follows :mod:`LatentSRLib.io.image` (array ``(k, j, i)``; spacing, origin and direction
columns in ``(i, j, k)`` order, LPS millimetres), and agrees with SimpleITK's ``ImageSeriesReader``:

* column 0 of ``direction`` is the row cosine of ImageOrientationPatient (the way ``i`` grows),
  column 1 the column cosine (``j``), column 2 their cross product, the slice normal;
* slices are sorted by the projection of ImagePositionPatient on that normal, so ``k`` grows
  along the normal, and ``origin`` is the position of the first sorted slice;
* the slice spacing is the mean distance between consecutive slices.

Pixel values are the stored values passed through the modality transform (RescaleSlope and
RescaleIntercept, or a Modality LUT), so CT comes out in Hounsfield units. MONOCHROME1 images
(where a higher stored value is displayed darker) are inverted first so that brighter always
means a higher value: see :func:`_invert_monochrome1`. Colour images become grayscale luminance.

Every problem with the input is raised as one :class:`InputError` naming the file or folder.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from LatentSRLib.errors import InputError
from LatentSRLib.io.image import MedicalImage

__all__ = ["read_dicom", "is_dicom_file"]

# A series whose slice spacing deviates from its mean by more than this fraction has gaps or
# missing slices and is refused; SimpleITK would warn and then misplace every slice after a gap.
MAX_SPACING_DEVIATION = 0.2
# Deviations above this fraction are accepted with a note (below it is rounding in the header).
NOTE_SPACING_DEVIATION = 1e-5
# Slices closer than this along the normal (mm) share a position: echoes, phases or duplicates.
SAME_POSITION_MM = 1e-3
# In-plane drift (mm) of the last slice relative to the first beyond which the stack is sheared.
SHEAR_NOTE_MM = 1e-2

# Element keywords that hold pixels; removed from the headers kept in ``dicom_headers``.
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# How a DICOM file without the 128-byte preamble begins: group 0002 or 0008, either byte order.
_RAW_DICOM_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
_MULTIFRAME_IN_SERIES = "a multi-frame file inside a multi-file series is not supported; read it on its own"
# ITU-R BT.601 luma weights, the Y of DICOM's YBR_FULL.
_LUMA = np.array([0.299, 0.587, 0.114])


# ==================================================================================== public API
def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file: it has the ``DICM`` marker after the 128-byte preamble,
    or (old files without a preamble) pydicom can parse it into a dataset with an SOP class or an
    image size. Never raises."""
    p = Path(path)
    try:
        if not p.is_file():
            return False
        with p.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if head[:2] not in _RAW_DICOM_STARTS:
        return False
    try:
        ds = pydicom.dcmread(p, force=True, stop_before_pixels=True)
    except Exception:  # arbitrary bytes make pydicom fail in many ways; every one means "not DICOM"
        return False
    return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)


def read_dicom(path: str | os.PathLike) -> MedicalImage:
    """Read a DICOM series folder or a single DICOM file.

    Args:
        path: a folder (searched recursively; files that are not DICOM, hidden files and hidden
            folders are ignored) or one DICOM file.

    Returns:
        * a folder: the series with the most image files, as a 3D volume ``(k, j, i)`` sorted along
          the slice normal (``metadata["format"] == "dicom-series"``); a warning and a note say
          which series was chosen when there are several;
        * a single-frame file: a 2D image ``(rows, cols)`` (``"dicom"``), see :func:`_read_file`;
        * a multi-frame file: a 3D volume ``(frames, rows, cols)`` (``"dicom-multiframe"``).

        ``dicom_headers`` holds one pixel-less dataset per slice in array order (a multi-frame
        file has one) whose ``filename`` is the absolute path of its source file.

    Raises:
        InputError: missing path, no DICOM images, corrupt or truncated files, missing pixel
            data, compression without a decoder, inconsistent or gapped series.
    """
    p = Path(path)
    if p.is_dir():
        return _read_folder(p)
    if not p.exists():
        raise InputError("no such file or folder", p)
    if not is_dicom_file(p):
        raise InputError("not a DICOM file (no DICM marker and pydicom cannot parse it)", p)
    return _read_file(p.absolute(), shown_path=p)


# ==================================================================================== geometry
@dataclass
class _Stack:
    """Where the slices of a volume go: their order and the grid they form."""

    order: np.ndarray
    origin: np.ndarray
    direction: np.ndarray
    spacing_k: float
    max_relative_deviation: float = 0.0
    notes: list[str] = field(default_factory=list)


def _floats(ds: Dataset, keyword: str, count: int, where: Path) -> np.ndarray | None:
    """``ds.<keyword>`` as ``count`` floats, ``None`` when absent or empty; malformed -> InputError."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        values = np.asarray([float(v) for v in items])
    except (TypeError, ValueError, OverflowError):  # pydicom converts lazily: bad text fails here
        raise InputError(f"malformed {keyword} value in the header", where) from None
    if values.size != count or not np.all(np.isfinite(values)):
        raise InputError(f"{keyword} should hold {count} numbers, found {value!r}", where)
    return values


def _unit(vector: np.ndarray, what: str, where: Path) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if norm < 1e-6:
        raise InputError(f"{what} is a zero vector", where)
    return vector / norm


def _orientation_axes(iop: np.ndarray, where: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosine (direction of ``i``), column cosine (``j``) and slice normal from IOP."""
    row = _unit(iop[:3], "the ImageOrientationPatient row cosine", where)
    col = _unit(iop[3:], "the ImageOrientationPatient column cosine", where)
    normal = _unit(np.cross(row, col), "the slice normal (ImageOrientationPatient cosines are parallel)", where)
    return row, col, normal


def _stack_from_positions(
    positions: np.ndarray, iop: np.ndarray, labels: Sequence[str], where: Path, what: str = "slices"
) -> _Stack:
    """Sort ``positions`` ``(n, 3)`` along the normal of ``iop`` and derive the volume grid.

    Refuses shared positions and spacing that varies by more than :data:`MAX_SPACING_DEVIATION`;
    accepts smaller variation with a note and uses the mean spacing, as ITK does.
    """
    row, col, normal = _orientation_axes(iop, where)
    projection = positions @ normal
    order = np.argsort(projection, kind="stable")
    steps = np.diff(projection[order])
    close = np.flatnonzero(steps < SAME_POSITION_MM)
    if close.size:
        a, b = labels[order[close[0]]], labels[order[close[0] + 1]]
        raise InputError(
            f"{what} share a position along the slice normal "
            f"(e.g. {a} and {b} at {projection[order[close[0]]]:.4f} mm): repeated acquisitions, echoes or time "
            "points are mixed in one series; separate them first",
            where,
        )
    mean = float(steps.mean())
    deviation = float(np.max(np.abs(steps - mean)) / mean)
    notes = []
    if deviation > MAX_SPACING_DEVIATION:
        raise InputError(
            f"slice spacing varies from {steps.min():.4g} to {steps.max():.4g} mm, more than "
            f"{MAX_SPACING_DEVIATION:.0%} from its mean {mean:.4g} mm: {what} are missing or the series has gaps",
            where,
        )
    if deviation > NOTE_SPACING_DEVIATION:
        notes.append(
            f"slice spacing is slightly non-uniform ({steps.min():.6g} to {steps.max():.6g} mm, at most "
            f"{deviation:.3%} from the mean); using the mean spacing {mean:.6g} mm"
        )
    drift = positions[order[-1]] - positions[order[0]]
    drift = drift - (drift @ normal) * normal
    if np.linalg.norm(drift) > SHEAR_NOTE_MM:
        notes.append(
            f"the slice positions drift {np.linalg.norm(drift):.3g} mm within the image plane across the stack "
            "(gantry tilt or a sheared acquisition); the volume grid ignores the drift"
        )
    return _Stack(
        order=order,
        origin=positions[order[0]],
        direction=np.column_stack([row, col, normal]),
        spacing_k=mean,
        max_relative_deviation=deviation,
        notes=notes,
    )


def _stack_without_positions(
    count: int,
    instance_numbers: Sequence[int | None],
    iop: np.ndarray | None,
    positions: Sequence[np.ndarray | None],
    spacing_k: float | None,
    spacing_source: str,
    where: Path,
    why: str = "ImagePositionPatient is missing",
    what: str = "slices",
) -> _Stack:
    """Fallback grid when positions are missing: order by InstanceNumber (else as found), slice
    spacing from the header (else 1 mm), direction from ImageOrientationPatient (else identity)."""
    notes = []
    if all(n is not None for n in instance_numbers) and len(set(instance_numbers)) == count:
        order = np.argsort(np.asarray(instance_numbers), kind="stable")
        notes.append(f"{why}: {what} sorted by InstanceNumber")
    else:
        order = np.arange(count)
        notes.append(f"{why}: {what} kept in the order found")
    if spacing_k is None:
        spacing_k = 1.0
        notes.append("no slice spacing in the header: 1 mm assumed")
    else:
        notes.append(f"slice spacing {spacing_k:.6g} mm taken from {spacing_source}")
    if iop is None:
        direction = np.eye(3)
        notes.append("ImageOrientationPatient is missing: identity direction assumed")
    else:
        direction = np.column_stack(_orientation_axes(iop, where))
    first = positions[order[0]]
    origin = np.zeros(3) if first is None else first
    return _Stack(order=order, origin=origin, direction=direction, spacing_k=spacing_k, notes=notes)


def _in_plane_spacing(ds: Dataset, where: Path, notes: list[str], item: Dataset | None = None) -> tuple[float, float]:
    """``(spacing_i, spacing_j)`` = (PixelSpacing[1], PixelSpacing[0]), i.e. (column, row) spacing.

    ``item`` is a Pixel Measures item of a multi-frame file, tried first. Falls back to
    ImagerPixelSpacing, then to 1 mm with a note; zero or negative spacings count as absent.
    """
    for source, keyword in ((item, "PixelSpacing"), (ds, "PixelSpacing"), (ds, "ImagerPixelSpacing")):
        if source is None:
            continue
        values = _floats(source, keyword, 2, where)
        if values is None:
            continue
        if np.all(values > 0):
            if keyword != "PixelSpacing":
                notes.append(f"pixel spacing taken from {keyword} (at the detector, not the patient)")
            return float(values[1]), float(values[0])
        notes.append(f"{keyword} {values.tolist()} is not a valid spacing; ignored")
    notes.append("no usable pixel spacing in the header: 1 mm assumed")
    return 1.0, 1.0


# ==================================================================================== pixels
@dataclass
class _Rescale:
    """The modality transform of one frame: a line, or a Modality LUT held by ``lut_ds``."""

    slope: float = 1.0
    intercept: float = 0.0
    lut_ds: Dataset | None = None

    @property
    def is_integral(self) -> bool:
        return self.lut_ds is None and self.slope == 1.0 and float(self.intercept).is_integer()


def _rescale_of(source: Dataset | None, where: Path) -> _Rescale | None:
    """The modality transform held directly in ``source`` (a dataset or functional-group item)."""
    if source is None:
        return None
    if "ModalityLUTSequence" in source:
        return _Rescale(lut_ds=source)
    slope = _floats(source, "RescaleSlope", 1, where)
    intercept = _floats(source, "RescaleIntercept", 1, where)
    if slope is None and intercept is None:
        return None
    slope_value = 1.0 if slope is None else float(slope[0])
    if slope_value == 0.0:  # a zero slope would erase the image: treat as a header error
        raise InputError("RescaleSlope is 0", where)
    return _Rescale(slope_value, 0.0 if intercept is None else float(intercept[0]))


def _frame_rescales(ds: Dataset, frames: int, where: Path) -> list[_Rescale]:
    """Modality transform per frame: per-frame functional group, shared group, top level."""
    shared = _group_item(ds, "SharedFunctionalGroupsSequence", 0, "PixelValueTransformationSequence")
    top = _rescale_of(ds, where) or _Rescale()
    shared_rescale = _rescale_of(shared, where)
    result = []
    for f in range(frames):
        own = _group_item(ds, "PerFrameFunctionalGroupsSequence", f, "PixelValueTransformationSequence")
        result.append(_rescale_of(own, where) or shared_rescale or top)
    return result


def _decode(ds: Dataset, where: Path) -> np.ndarray:
    """``ds.pixel_array`` with every failure turned into an :class:`InputError` naming the file."""
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        raise InputError("the file holds no pixel data (not an image, or truncated)", where)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        _require_decoder(syntax, where)
    try:
        return ds.pixel_array
    except Exception as exc:  # pydicom and its plugins raise many types for damaged data
        named = f" ({syntax.name})" if syntax is not None else ""
        raise InputError(f"cannot decode the pixel data{named}: {exc}".splitlines()[0], where) from None


def _require_decoder(syntax: pydicom.uid.UID, where: Path) -> None:
    """Refuse a compressed transfer syntax that no installed plugin can decode, saying which."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise InputError(
            f"the pixels are compressed with {syntax.name} ({syntax}), for which no decoder plugin is "
            "installed (pydicom has none for it; try converting the file with dcmtk or gdcm first)",
            where,
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise InputError(
            f"the pixels are compressed with {syntax.name} ({syntax}) and no decoder plugin for it is "
            f"installed: install one of: {missing}",
            where,
        )


def _frames_first(array: np.ndarray, ds: Dataset) -> np.ndarray:
    """Decoded pixels as ``(frames, rows, cols)`` or ``(frames, rows, cols, samples)``."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    shape = (int(ds.Rows), int(ds.Columns)) + ((samples,) if samples > 1 else ())
    return array.reshape((-1,) + shape)


def _luminance(frames: np.ndarray, ds: Dataset, notes: list[str]) -> np.ndarray:
    """Colour frames ``(f, r, c, 3)`` -> grayscale ``(f, r, c)`` float32 (BT.601 luma)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        frames = apply_color_lut(frames, ds)
    # pydicom has already converted YBR_* to RGB, so every colour image is RGB here
    notes.append(f"colour image ({photometric}) converted to grayscale luminance (0.299 R + 0.587 G + 0.114 B)")
    return (frames[..., :3].astype(np.float64) @ _LUMA).astype(np.float32)


def _invert_monochrome1(frames: np.ndarray, ds: Dataset) -> np.ndarray:
    """Invert MONOCHROME1 stored values so that brighter (on a display) means higher.

    The rule: ``inverted = lo + hi - stored`` over the range ``[lo, hi]`` that BitsStored and
    PixelRepresentation allow (``[0, 2**b - 1]`` unsigned, ``[-2**(b-1), 2**(b-1) - 1]`` signed),
    applied BEFORE the modality transform. The values keep their dtype and stay in that range, so
    a 15-bit unsigned CR value ``v`` becomes ``32767 - v``. Float pixels are mirrored over their
    own min and max.
    """
    if np.issubdtype(frames.dtype, np.floating):
        return (frames.max() + frames.min() - frames).astype(frames.dtype)
    bits = int(ds.get("BitsStored", frames.dtype.itemsize * 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    wide = np.clip(frames.astype(np.int64), lo, hi)
    return (lo + hi - wide).astype(frames.dtype)


def _smallest_integer_dtype(lo: int, hi: int, prefer: np.dtype) -> np.dtype:
    """The stored dtype if it holds ``[lo, hi]``, else the narrowest of int16/uint16/int32/int64."""
    for candidate in (np.dtype(prefer), np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.int32)):
        if np.issubdtype(candidate, np.integer):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return candidate
    return np.dtype(np.int64)


def _modality_values(frames: list[np.ndarray], rescales: list[_Rescale], notes: list[str]) -> np.ndarray:
    """Stack 2D stored frames into ``(n, r, c)`` real-world values.

    Integer stored values with slope 1 and an integral intercept stay integers (the stored dtype
    when the shifted values fit, else a wider one); everything else becomes float32.
    """
    count = len(frames)
    shape = (count,) + frames[0].shape
    integer_stored = all(np.issubdtype(f.dtype, np.integer) for f in frames)
    if integer_stored and all(r.is_integral for r in rescales):
        lo = min(int(f.min()) + int(r.intercept) for f, r in zip(frames, rescales))
        hi = max(int(f.max()) + int(r.intercept) for f, r in zip(frames, rescales))
        dtype = _smallest_integer_dtype(lo, hi, frames[0].dtype)
        out = np.empty(shape, dtype=dtype)
        for index, (frame, rescale) in enumerate(zip(frames, rescales)):
            # add in int64 first: a uint16 value above 32767 may still land in int16 after the shift
            out[index] = frame.astype(np.int64) + int(rescale.intercept)
        return out
    from pydicom.pixels import apply_modality_lut

    out = np.empty(shape, dtype=np.float32)
    for index, (frame, rescale) in enumerate(zip(frames, rescales)):
        if rescale.lut_ds is not None:
            out[index] = apply_modality_lut(frame, rescale.lut_ds)
        else:
            out[index] = frame.astype(np.float64) * rescale.slope + rescale.intercept
    if any(r.lut_ds is not None for r in rescales):
        notes.append("Modality LUT applied")
    return out


def _stored_frames(ds: Dataset, where: Path, notes: list[str]) -> tuple[np.ndarray, bool, bool]:
    """Decode one file into frames ``(f, rows, cols)``.

    Returns ``(frames, is_colour, inverted)``: colour images come back as float32 luminance
    (no modality transform applies to them); monochrome ones as stored values, MONOCHROME1
    already inverted.
    """
    frames = _frames_first(_decode(ds, where), ds)
    if frames.ndim == 4:
        return _luminance(frames, ds, notes), True, False
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", ""):
        raise InputError(f"unsupported PhotometricInterpretation {photometric!r}", where)
    if photometric == "MONOCHROME1":
        return _invert_monochrome1(frames, ds), False, True
    return frames, False, False


def _pixel_values(ds: Dataset, where: Path, notes: list[str]) -> tuple[np.ndarray, bool]:
    """One file's real-world values ``(frames, rows, cols)`` and whether MONOCHROME1 was inverted."""
    frames, is_colour, inverted = _stored_frames(ds, where, notes)
    if is_colour:
        return frames, False
    return _modality_values(list(frames), _frame_rescales(ds, frames.shape[0], where), notes), inverted


def _strip_pixels(ds: Dataset, source: Path) -> Dataset:
    """Remove the pixel elements (in place) and remember the absolute source path as ``filename``."""
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    ds.filename = str(source)
    return ds


# ==================================================================================== metadata
def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def _metadata(ds: Dataset, fmt: str, notes: list[str], inverted: bool) -> dict:
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return {
        "format": fmt,
        "modality": _text(ds, "Modality"),
        "series_description": _text(ds, "SeriesDescription"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "patient_id": _text(ds, "PatientID"),
        "photometric_interpretation": _text(ds, "PhotometricInterpretation"),
        "transfer_syntax": "" if syntax is None else str(syntax),
        "transfer_syntax_name": "" if syntax is None else syntax.name,
        "inverted_monochrome1": inverted,
        "notes": notes,
    }


# ==================================================================================== one file
def _corrupt(exc: Exception, path: Path) -> InputError:
    """The error for a file pydicom cannot parse (first line of its message only)."""
    return InputError(f"cannot read this DICOM file, it may be truncated or corrupt ({exc})".splitlines()[0], path)


def _read_full(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # corrupt files fail in many ways inside pydicom
        raise _corrupt(exc, path) from None
    _ensure_transfer_syntax(ds)
    return ds


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Old files without file meta information: record the encoding pydicom found, which its
    pixel decoding needs."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    if implicit:
        syntax = pydicom.uid.ImplicitVRLittleEndian
    else:
        syntax = pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = meta = pydicom.dataset.FileMetaDataset()
    meta.TransferSyntaxUID = syntax


def _read_file(path: Path, shown_path: Path | None = None, notes: list[str] | None = None) -> MedicalImage:
    """One file: single-frame -> 2D image, multi-frame -> 3D volume.

    A 2D image lives in its own plane: ``origin`` is ``(0, 0)`` at the centre of the first pixel,
    ``direction`` is the identity, and the plane's place in the patient is kept in
    ``metadata["image_position_patient"]`` and ``["image_orientation_patient"]`` (when present)
    so that a writer can map in-plane coordinates back to LPS.
    """
    notes = [] if notes is None else notes
    ds = _read_full(path)
    if "Rows" not in ds or "Columns" not in ds:
        raise InputError("the file holds no image (no Rows/Columns; not an image, or truncated)", path)
    frame_count = int(ds.get("NumberOfFrames", 1) or 1)
    if frame_count > 1:
        return _read_multiframe(ds, path, shown_path or path, notes)
    values, inverted = _pixel_values(ds, path, notes)
    spacing = _in_plane_spacing(ds, path, notes)
    metadata = _metadata(ds, "dicom", notes, inverted)
    for keyword, count, key in (
        ("ImagePositionPatient", 3, "image_position_patient"),
        ("ImageOrientationPatient", 6, "image_orientation_patient"),
    ):
        values_3d = _floats(ds, keyword, count, path)
        if values_3d is not None:
            metadata[key] = [float(v) for v in values_3d]
    return MedicalImage(
        array=values[0],
        spacing=spacing,
        origin=(0.0, 0.0),
        direction=np.eye(2),
        metadata=metadata,
        path=str(shown_path or path),
        dicom_headers=[_strip_pixels(ds, path)],
    )


def _group_item(ds: Dataset, group: str, index: int, sequence: str) -> Dataset | None:
    """Item 0 of ``sequence`` inside item ``index`` of functional group ``group``, if present."""
    groups = ds.get(group)
    if not groups or index >= len(groups):
        return None
    inner = groups[index].get(sequence)
    return inner[0] if inner else None


def _frame_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """A functional-group item for ``frame``: the per-frame one, else the shared one."""
    own = _group_item(ds, "PerFrameFunctionalGroupsSequence", frame, sequence)
    return own if own is not None else _group_item(ds, "SharedFunctionalGroupsSequence", 0, sequence)


def _read_multiframe(ds: Dataset, path: Path, shown_path: Path, notes: list[str]) -> MedicalImage:
    """A multi-frame file as a volume; geometry from the functional groups when present."""
    frame_count = int(ds.NumberOfFrames)
    values, inverted = _pixel_values(ds, path, notes)
    if values.shape[0] != frame_count:
        raise InputError(f"NumberOfFrames is {frame_count} but {values.shape[0]} frames were decoded", path)
    measures = _frame_item(ds, 0, "PixelMeasuresSequence")
    spacing_i, spacing_j = _in_plane_spacing(ds, path, notes, item=measures)
    orientation_item = _frame_item(ds, 0, "PlaneOrientationSequence")
    iop = _floats(orientation_item, "ImageOrientationPatient", 6, path) if orientation_item is not None else None
    if iop is None:
        iop = _floats(ds, "ImageOrientationPatient", 6, path)
    positions = []
    for frame in range(frame_count):
        item = _frame_item(ds, frame, "PlanePositionSequence")
        positions.append(None if item is None else _floats(item, "ImagePositionPatient", 3, path))
    if iop is not None and all(p is not None for p in positions):
        labels = [f"frame {f + 1}" for f in range(frame_count)]
        stack = _stack_from_positions(np.asarray(positions), iop, labels, path, what="frames")
        if not np.array_equal(stack.order, np.arange(frame_count)):
            notes.append("frames reordered by their position along the slice normal")
    else:
        spacing_k, source = _header_slice_spacing(ds, measures, path)
        top_position = _floats(ds, "ImagePositionPatient", 3, path)
        stack = _stack_without_positions(
            frame_count, [None] * frame_count, iop, [top_position] * frame_count, spacing_k, source, path,
            why="no per-frame positions (Plane Position Sequence)", what="frames",
        )
    notes.extend(stack.notes)
    metadata = _metadata(ds, "dicom-multiframe", notes, inverted)
    metadata["slice_spacing_max_relative_deviation"] = stack.max_relative_deviation
    return MedicalImage(
        array=values[stack.order],
        spacing=(spacing_i, spacing_j, stack.spacing_k),
        origin=tuple(stack.origin),
        direction=stack.direction,
        metadata=metadata,
        path=str(shown_path),
        dicom_headers=[_strip_pixels(ds, path)],
    )


def _header_slice_spacing(ds: Dataset, measures: Dataset | None, where: Path) -> tuple[float | None, str]:
    """Slice spacing of a multi-frame file without positions, and where it came from."""
    for source, keyword in ((measures, "SpacingBetweenSlices"), (ds, "SpacingBetweenSlices"),
                            (measures, "SliceThickness"), (ds, "SliceThickness")):
        if source is None:
            continue
        value = _floats(source, keyword, 1, where)
        if value is not None and value[0] > 0:
            return float(value[0]), keyword
    return None, ""


# ==================================================================================== a folder
def _scan_folder(folder: Path) -> tuple[list[tuple[Path, Dataset]], int]:
    """Headers of every DICOM image file below ``folder`` (sorted walk), and how many DICOM files
    without an image were skipped. Hidden entries (e.g. half-written outputs) are ignored."""
    images: list[tuple[Path, Dataset]] = []
    skipped = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root, name).absolute()
            if name.startswith(".") or not is_dicom_file(path):
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except Exception as exc:  # a corrupt header: say which file, do not guess its series
                raise _corrupt(exc, path) from None
            if "Rows" in ds and "Columns" in ds:
                images.append((path, ds))
            elif _is_image_storage(ds):  # an image file cut short: refuse it rather than read a gap
                raise InputError("this image file is truncated or corrupt (its header stops before the image "
                                 "size); replace or remove it", path)
            else:
                skipped += 1
    return images, skipped


def _is_image_storage(ds: Dataset) -> bool:
    """Whether the file's SOP class is an image storage class (MR/CT/CR/DX/... Image Storage)."""
    meta = getattr(ds, "file_meta", None)
    uid = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    try:
        return uid is not None and "Image Storage" in pydicom.uid.UID(str(uid)).name
    except Exception:  # noqa: BLE001 - an unparsable UID is simply not known to be an image
        return False


def _choose_series(folder: Path, images: list[tuple[Path, Dataset]], notes: list[str]) -> list[tuple[Path, Dataset]]:
    """The series with the most image files (ties: an ORIGINAL one, then the first found)."""
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for path, ds in images:
        series.setdefault(_text(ds, "SeriesInstanceUID"), []).append((path, ds))

    def rank(members: list[tuple[Path, Dataset]]) -> tuple[int, bool]:
        image_type = [str(v).upper() for v in (members[0][1].get("ImageType") or [])]
        return len(members), "DERIVED" not in image_type

    uid, chosen = max(series.items(), key=lambda item: rank(item[1]))
    if len(series) > 1:
        others = len(series) - 1
        message = (
            f"{len(series)} DICOM series found; reading series {uid or '(no SeriesInstanceUID)'} "
            f"({_text(chosen[0][1], 'SeriesDescription') or 'no description'!r}, {len(chosen)} image files) "
            f"and skipping {others} other series ({len(images) - len(chosen)} files)"
        )
        notes.append(message)
        warnings.warn(f"{folder}: {message}", UserWarning, stacklevel=4)
    return chosen


def _read_folder(folder: Path) -> MedicalImage:
    images, skipped = _scan_folder(folder)
    if not images:
        raise InputError("no DICOM images found in this folder", folder)
    notes: list[str] = []
    if skipped:
        notes.append(f"skipped {skipped} DICOM file(s) that hold no image (DICOMDIR, reports, truncated files...)")
    members = _choose_series(folder, images, notes)
    if len(members) == 1:
        notes.append("the series holds a single file")
        return _read_file(members[0][0], shown_path=folder, notes=notes)
    return _read_series(folder, members, notes)


def _read_series(folder: Path, members: list[tuple[Path, Dataset]], notes: list[str]) -> MedicalImage:
    """Several single-frame files of one series -> a volume sorted along the slice normal."""
    paths = [p for p, _ in members]
    headers = [ds for _, ds in members]
    _check_series_is_uniform(folder, paths, headers)
    stack = _series_stack(folder, paths, headers)
    notes.extend(stack.notes)
    frames: list[np.ndarray] = []
    rescales: list[_Rescale] = []
    any_colour = inverted = False
    for index in stack.order:
        ds = _read_full(paths[index])
        slice_frames, is_colour, inverted = _stored_frames(ds, paths[index], notes)
        if slice_frames.shape[0] != 1:
            raise InputError(_MULTIFRAME_IN_SERIES, paths[index])
        any_colour |= is_colour
        frames.append(slice_frames[0])
        rescales.extend(_frame_rescales(ds, 1, paths[index]))
    if any_colour:
        values = np.stack(frames).astype(np.float32)
    else:
        values = _modality_values(frames, rescales, notes)
    first = headers[stack.order[0]]
    spacing_i, spacing_j = _in_plane_spacing(first, paths[stack.order[0]], notes)
    metadata = _metadata(first, "dicom-series", _unique(notes), inverted)
    metadata["slice_spacing_max_relative_deviation"] = stack.max_relative_deviation
    metadata["number_of_files"] = len(paths)
    return MedicalImage(
        array=values,
        spacing=(spacing_i, spacing_j, stack.spacing_k),
        origin=tuple(stack.origin),
        direction=stack.direction,
        metadata=metadata,
        path=str(folder),
        dicom_headers=[_strip_pixels(headers[i], paths[i]) for i in stack.order],
    )


def _check_series_is_uniform(folder: Path, paths: list[Path], headers: list[Dataset]) -> None:
    """Refuse series whose files cannot form one volume (sizes differ, multi-frame files)."""
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in headers}
    if len(sizes) > 1:
        raise InputError(f"the slices of the series have different sizes {sorted(sizes)}; it is not one volume", folder)
    for path, ds in zip(paths, headers):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(_MULTIFRAME_IN_SERIES, path)


def _series_stack(folder: Path, paths: list[Path], headers: list[Dataset]) -> _Stack:
    """Slice order and grid of a series from ImagePositionPatient / ImageOrientationPatient."""
    orientations = [_floats(ds, "ImageOrientationPatient", 6, p) for p, ds in zip(paths, headers)]
    positions = [_floats(ds, "ImagePositionPatient", 3, p) for p, ds in zip(paths, headers)]
    iop = next((o for o in orientations if o is not None), None)
    if iop is not None and all(p is not None for p in positions) and all(o is not None for o in orientations):
        for path, other in zip(paths, orientations):
            if np.max(np.abs(other - iop)) > 1e-4:
                raise InputError(
                    f"the slices have different orientations ({path.name} differs from {paths[0].name}); "
                    "a localizer or several stacks share this series",
                    folder,
                )
        return _stack_from_positions(np.asarray(positions), iop, [p.name for p in paths], folder)
    numbers = []
    for path, ds in zip(paths, headers):
        number = _floats(ds, "InstanceNumber", 1, path)
        numbers.append(None if number is None else int(number[0]))
    spacing_k, source = _header_slice_spacing(headers[0], None, paths[0])
    return _stack_without_positions(len(paths), numbers, iop, positions, spacing_k, source, folder)


def _unique(notes: list[str]) -> list[str]:
    """Notes without repeats (each slice of a colour series adds the same one), in order."""
    return list(dict.fromkeys(notes))
