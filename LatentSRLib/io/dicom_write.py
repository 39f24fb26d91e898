"""Write a :class:`MedicalImage` as a NEW derived DICOM series (one single-frame file per slice).

The result belongs to the same patient, study and frame of reference as the source series it was
computed from (its pixel-less headers, ``image.dicom_headers``), with new Series and SOP Instance
UIDs, ImageType ``DERIVED\\SECONDARY`` and the geometry of the image itself. Pixels are stored
uncompressed (Explicit VR Little Endian), MONOCHROME2, 16 bits, with RescaleSlope and
RescaleIntercept chosen so that the values round-trip: integers exactly when they fit in 16 bits,
anything else to within half a quantisation step (``slope / 2``).

Writing is atomic (the whole folder appears at once) and never touches the source files.
"""

from __future__ import annotations

import copy
import datetime
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DS

from LatentSRLib.errors import OutputError
from LatentSRLib.io.atomic import atomic_directory, check_output_folder
from LatentSRLib.io.dicom_read import is_dicom_file
from LatentSRLib.io.image import MedicalImage

__all__ = ["write_dicom_series"]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
# Single-frame image storage classes whose modules a derived MONOCHROME2 image still satisfies;
# any other source class (enhanced multi-frame, colour-only...) is mapped by modality instead.
_SINGLE_FRAME_CLASSES = {
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    SECONDARY_CAPTURE_STORAGE,
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX for processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # MG for presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # MG for processing
    "1.2.840.10008.5.1.4.1.1.128",  # PET
}

# Elements of the source header that would be wrong for the new pixels, or belong to the
# multi-frame source only; removed before the new values are filled in.
_DROPPED = (
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "NumberOfFrames", "FrameIncrementPointer",
    "PlanarConfiguration", "PixelAspectRatio", "SmallestImagePixelValue", "LargestImagePixelValue",
    "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
    "VOILUTFunction", "PresentationLUTShape", "PresentationLUTSequence", "IconImageSequence",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData", "PaletteColorLookupTableUID",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData", "SequenceOfUltrasoundRegions",
    "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "DimensionIndexSequence",
    "DimensionOrganizationSequence", "DimensionOrganizationType", "DerivationCodeSequence",
    "SourceImageSequence", "InStackPositionNumber", "StackID", "ImagesInAcquisition",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
)
# Type 2 attributes (must be present, may be empty) of the modules every derived image carries.
_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber", "Manufacturer",
    "PositionReferenceIndicator", "InstanceNumber",
)


# ==================================================================================== public API
def write_dicom_series(
    image: MedicalImage,
    folder: str | os.PathLike,
    *,
    series_description: str = "LatentSR super-resolution",
    reference: list | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> list[Path]:
    """Write ``image`` as a new derived DICOM series, one file per slice, into ``folder``.

    Args:
        image: a 3D volume ``(k, j, i)`` (one file per ``k``) or a 2D image ``(rows, cols)`` (one
            file). Its spacing, origin and direction (LPS) become PixelSpacing,
            ImagePositionPatient of slice ``k`` = ``origin + k * spacing[2] * direction[:, 2]``,
            ImageOrientationPatient = direction columns 0 and 1, and SliceThickness /
            SpacingBetweenSlices = ``spacing[2]``. A 2D image read from DICOM keeps the plane of
            its source (its origin and direction are taken as in-plane coordinates of that plane).
        folder: the output folder; created, or replaced as a whole when it already holds only
            DICOM files (a previous output). Files are named ``IM-0001.dcm``, ``IM-0002.dcm``...
        series_description: SeriesDescription of the new series (also in DerivationDescription).
        reference: source headers (pixel-less pydicom datasets) whose patient, study, frame of
            reference and acquisition attributes the new series keeps; defaults to
            ``image.dicom_headers``. Slice ``k`` takes the header at the same relative position.
            Without any, a standalone series is made (new study, PatientID ``ANONYMOUS``).
        inputs: further paths that must not be overwritten (the source files of the headers and
            ``image.path`` are always protected).

    Returns:
        The written files, in slice order.

    Raises:
        OutputError: the folder holds (or is) a source file, holds unrelated files, cannot be
            written, or the image cannot be represented (non-finite values, non-orthogonal axes).
    """
    target = Path(folder)
    headers = list(image.dicom_headers or []) if reference is None else list(reference)
    _refuse_unsafe_target(target, image, headers, inputs)
    values = _volume_values(image, target)
    encoding = _encode(values, _prefers_signed(headers))
    plan = _SeriesPlan.create(image, headers, series_description)
    names = [f"IM-{k + 1:0{max(4, len(str(values.shape[0])))}d}.dcm" for k in range(values.shape[0])]
    with atomic_directory(target) as tmp:
        for k, name in enumerate(names):
            ds = plan.slice_dataset(k, values.shape[0], encoding)
            try:
                pydicom.dcmwrite(tmp / name, ds, enforce_file_format=True)
            except OSError as exc:
                raise OutputError(f"cannot write {name} ({exc.strerror or exc})", target) from None
    return [target / name for name in names]


# ==================================================================================== safety
def _refuse_unsafe_target(
    target: Path, image: MedicalImage, headers: Sequence[Dataset], inputs: Iterable[str | os.PathLike | None]
) -> None:
    """Refuse a folder that is, holds or lies in a source, or that holds anything but DICOM files.

    The output folder is replaced as a whole, so a folder with unrelated files (a home folder
    given by mistake) would lose them: only an absent, empty or DICOM-only folder is accepted.
    """
    sources = [image.path, *inputs, *(getattr(ds, "filename", None) for ds in headers)]
    check_output_folder(target, [s for s in sources if isinstance(s, (str, os.PathLike))],
                        is_ours=_holds_only_dicom, what="DICOM series folder")


def _holds_only_dicom(folder: Path) -> bool:
    return all(entry.name.startswith(".") or (entry.is_file() and is_dicom_file(entry)) for entry in folder.iterdir())


# ==================================================================================== pixels
@dataclass
class _Encoding:
    """Stored 16-bit values ``(k, rows, cols)`` and the line mapping them back to real values."""

    stored: np.ndarray
    slope: str
    intercept: str
    signed: bool
    window: tuple[float, float]


def _volume_values(image: MedicalImage, target: Path) -> np.ndarray:
    """The image as ``(k, rows, cols)``; refuses values DICOM cannot hold."""
    values = np.asarray(image.array)
    if values.dtype == np.bool_:
        values = values.astype(np.uint8)
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise OutputError(f"cannot store pixels of type {values.dtype} in DICOM", target)
    if values.size == 0:
        raise OutputError(f"the image is empty (shape {values.shape})", target)
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
        raise OutputError("the image holds NaN or infinite values, which DICOM cannot store", target)
    return values[np.newaxis] if values.ndim == 2 else values


def _prefers_signed(headers: Sequence[Dataset]) -> bool | None:
    """Whether the source stored signed pixels (so the copy does too when it fits)."""
    if not headers or "PixelRepresentation" not in headers[0]:
        return None
    return int(headers[0].PixelRepresentation) == 1


def _format_ds(value: float) -> str:
    """``value`` as a DICOM decimal string (at most 16 characters)."""
    return str(DS(float(value), auto_format=True))


def _encode(values: np.ndarray, prefer_signed: bool | None) -> _Encoding:
    """Choose 16-bit storage for ``values``.

    Integral values that fit in int16 or uint16 are stored exactly (slope 1, intercept 0), in the
    source's signedness when possible. Everything else maps linearly onto ``[0, 65534]`` uint16
    with intercept = minimum and slope = range / 65534, computed from the decimal strings actually
    written, so reading back is exact up to half a step.
    """
    lo, hi = float(values.min()), float(values.max())
    window = ((lo + hi) / 2.0, max(hi - lo, 1.0))
    integral = np.issubdtype(values.dtype, np.integer) or bool(np.all(values == np.round(values)))
    if integral:
        signed_first = prefer_signed if prefer_signed is not None else lo < 0
        for signed in (signed_first, not signed_first):
            dtype = np.dtype("<i2" if signed else "<u2")
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return _Encoding(values.astype(dtype), "1", "0", signed, window)
        if np.issubdtype(values.dtype, np.integer):
            warnings.warn(
                f"integer values span [{lo:g}, {hi:g}], more than 16 bits hold: stored with a rescale slope, "
                "so they no longer round-trip exactly",
                UserWarning,
                stacklevel=3,
            )
    intercept = _format_ds(lo)
    span = hi - float(intercept)
    slope = _format_ds(span / 65534.0) if span > 0 else "1"
    stored = np.rint((values.astype(np.float64) - float(intercept)) / float(slope))
    return _Encoding(np.clip(stored, 0, 65535).astype("<u2"), slope, intercept, False, window)


# ==================================================================================== headers
def _now() -> tuple[str, str]:
    moment = datetime.datetime.now()
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


def _clean_copy(template: Dataset) -> Dataset:
    """A deep copy of a source header without private tags, overlays and pixel-specific elements."""
    ds = copy.deepcopy(template)
    ds.remove_private_tags()
    for keyword in _DROPPED:
        if keyword in ds:
            delattr(ds, keyword)
    for tag in [t for t in ds.keys() if 0x6000 <= t.group <= 0x60FF or 0x5000 <= t.group <= 0x50FF]:
        del ds[tag]  # overlays and curves are drawn on the source pixel grid
    if hasattr(ds, "file_meta"):
        del ds.file_meta
    return ds


def _is_multiframe(ds: Dataset) -> bool:
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def _sop_class(template: Dataset | None, modality: str) -> str:
    """Keep the source's single-frame class; map multi-frame or missing sources by modality."""
    source_class = "" if template is None else str(template.get("SOPClassUID", ""))
    if template is not None and source_class in _SINGLE_FRAME_CLASSES and not _is_multiframe(template):
        return source_class
    return {"MR": MR_IMAGE_STORAGE, "CT": CT_IMAGE_STORAGE}.get(modality, SECONDARY_CAPTURE_STORAGE)


def _fill_class_requirements(ds: Dataset, sop_class: str) -> None:
    """Type 1 and 2 attributes of the class's image module that a mapped source may lack."""
    required: dict[str, Any] = {}
    if sop_class == MR_IMAGE_STORAGE:
        # "RM" (research mode) and "NONE" are the neutral values for a derived image
        required = {"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "",
                    "RepetitionTime": "", "EchoTime": "", "EchoTrainLength": ""}
    elif sop_class == CT_IMAGE_STORAGE:
        required = {"KVP": "", "AcquisitionNumber": ""}
    elif sop_class == SECONDARY_CAPTURE_STORAGE:
        required = {"ConversionType": "WSD", "PatientOrientation": ""}
    for keyword, value in required.items():
        if keyword not in ds or (ds.get(keyword) in (None, "") and value != ""):
            setattr(ds, keyword, value)


@dataclass
class _SeriesPlan:
    """Everything shared by the files of one output series."""

    image: MedicalImage
    headers: list[Dataset]
    series_description: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    series_number: int
    date: str
    time: str

    @classmethod
    def create(cls, image: MedicalImage, headers: list[Dataset], series_description: str) -> _SeriesPlan:
        first = headers[0] if headers else Dataset()
        number = first.get("SeriesNumber")
        date, time = _now()
        return cls(
            image=image,
            headers=headers,
            series_description=series_description,
            series_uid=generate_uid(),
            study_uid=str(first.get("StudyInstanceUID") or generate_uid()),
            frame_of_reference_uid=str(first.get("FrameOfReferenceUID") or generate_uid()),
            series_number=(int(number) if number not in (None, "") else 0) + 1000,
            date=date,
            time=time,
        )

    def _template(self, k: int, count: int) -> Dataset | None:
        """The source header at the same relative position as slice ``k`` of ``count``."""
        if not self.headers:
            return None
        if len(self.headers) == count:
            return self.headers[k]
        return self.headers[round(k * (len(self.headers) - 1) / max(count - 1, 1))]

    def _base(self, template: Dataset | None) -> Dataset:
        """The source header cleaned, or a fresh standalone one (new study, anonymous patient)."""
        if template is not None:
            return _clean_copy(template)
        ds = Dataset()
        ds.PatientID = "ANONYMOUS"
        ds.PatientName = ""
        ds.StudyDate, ds.StudyTime = self.date, self.time
        ds.Modality = str(self.image.metadata.get("modality") or "OT")
        ds.Manufacturer = "LatentSR"
        return ds

    def slice_dataset(self, k: int, count: int, encoding: _Encoding) -> Dataset:
        """The complete dataset (with file meta) of output slice ``k``."""
        template = self._template(k, count)
        ds = self._base(template)
        ds.Modality = str(ds.get("Modality") or self.image.metadata.get("modality") or "OT")
        sop_class = _sop_class(template, ds.Modality)
        self._set_identity(ds, template, sop_class, k)
        _fill_class_requirements(ds, sop_class)
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        _set_geometry(ds, self.image, template, k)
        _set_pixels(ds, encoding, k)
        ds.file_meta = _file_meta(ds)
        return ds

    def _set_identity(self, ds: Dataset, template: Dataset | None, sop_class: str, k: int) -> None:
        """UIDs, numbers, dates and the derivation record."""
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid
        ds.FrameOfReferenceUID = self.frame_of_reference_uid
        ds.SeriesNumber = self.series_number
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = self.series_description
        ds.ImageType = ["DERIVED", "SECONDARY"]
        source_series = str(template.get("SeriesInstanceUID", "")) if template is not None else ""
        ds.DerivationDescription = (
            f"{self.series_description}: computed by LatentSR"
            + (f" from series {source_series}" if source_series else "")
        )[:1024]
        ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = self.date
        ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = self.time
        if not self.series_description.isascii():
            # decode every text value in the source's character set, then write all of it as UTF-8
            ds.decode()
            ds.SpecificCharacterSet = "ISO_IR 192"
        if template is not None and template.get("SOPInstanceUID") and template.get("SOPClassUID"):
            source = Dataset()
            source.ReferencedSOPClassUID = template.SOPClassUID
            source.ReferencedSOPInstanceUID = template.SOPInstanceUID
            ds.SourceImageSequence = DicomSequence([source])


def _ds_list(values: Iterable[float]) -> list[str]:
    return [_format_ds(v) for v in values]


def _plane_of(template: Dataset | None, metadata: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Position of the first pixel and row/column cosines of a 2D image's source plane."""
    position = orientation = None
    if template is not None and template.get("ImagePositionPatient") and template.get("ImageOrientationPatient"):
        position, orientation = template.ImagePositionPatient, template.ImageOrientationPatient
    elif metadata.get("image_position_patient") and metadata.get("image_orientation_patient"):
        position, orientation = metadata["image_position_patient"], metadata["image_orientation_patient"]
    if position is None:
        return None
    cosines = np.asarray([float(v) for v in orientation])
    return np.asarray([float(v) for v in position]), cosines[:3], cosines[3:]


def _set_geometry(ds: Dataset, image: MedicalImage, template: Dataset | None, k: int) -> None:
    """ImagePositionPatient, ImageOrientationPatient, PixelSpacing (and slice spacing) of slice ``k``."""
    direction = np.asarray(image.direction, dtype=np.float64)
    if image.ndim == 3:
        axis_i, axis_j, axis_k = direction[:, 0], direction[:, 1], direction[:, 2]
        position = np.asarray(image.origin) + k * image.spacing[2] * axis_k
        ds.SliceThickness = ds.SpacingBetweenSlices = _format_ds(image.spacing[2])
        ds.SliceLocation = _format_ds(position @ np.cross(axis_i, axis_j))
    else:
        plane = _plane_of(template, image.metadata)
        if plane is None:  # no source plane: the image's own 2D frame, placed at z = 0
            origin, row, col = np.zeros(3), np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
        else:
            origin, row, col = plane
        # in-plane coordinates (u, v) of a 2D image map to origin + u * row + v * col
        axis_i = direction[0, 0] * row + direction[1, 0] * col
        axis_j = direction[0, 1] * row + direction[1, 1] * col
        position = origin + image.origin[0] * row + image.origin[1] * col
    if not np.allclose(np.column_stack([axis_i, axis_j]).T @ np.column_stack([axis_i, axis_j]), np.eye(2), atol=1e-3):
        raise OutputError(
            "the image's row and column directions are not orthonormal, which DICOM cannot represent; "
            "resample it first",
            image.path,
        )
    ds.ImagePositionPatient = _ds_list(position)
    ds.ImageOrientationPatient = _ds_list(np.concatenate([axis_i, axis_j]))
    ds.PixelSpacing = _ds_list([image.spacing[1], image.spacing[0]])
    if "ImagerPixelSpacing" in ds:  # the detector grid changed with the pixel grid
        ds.ImagerPixelSpacing = ds.PixelSpacing


def _set_pixels(ds: Dataset, encoding: _Encoding, k: int) -> None:
    """Image Pixel module and rescale of slice ``k``: 16-bit MONOCHROME2, uncompressed."""
    stored = np.ascontiguousarray(encoding.stored[k])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if encoding.signed else 0
    ds.RescaleSlope = encoding.slope
    ds.RescaleIntercept = encoding.intercept
    ds.WindowCenter = _format_ds(encoding.window[0])
    ds.WindowWidth = _format_ds(encoding.window[1])
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    return meta
