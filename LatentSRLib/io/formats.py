"""Reading and writing every supported format through one pair of functions.

* volumes: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``)
  through SimpleITK; FreeSurfer MGH (``.mgz``, ``.mgh``) through nibabel (SimpleITK has no MGH reader);
  a DICOM series folder, single and multi-frame DICOM files through pydicom (:mod:`.dicom_read`);
* 2D images: PNG, JPEG, TIFF (8 and 16 bit; a multi-page TIFF is a volume) through SimpleITK;
* NumPy ``.npy`` arrays (no geometry: unit spacing, identity direction).

Every reader returns a :class:`MedicalImage` in numpy order with LPS geometry; every writer puts the
pixels back on the image's own geometry, atomically, and refuses to overwrite an input.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from LatentSRLib.errors import InputError, OutputError
from LatentSRLib.io.atomic import atomic_path, refuse_overwriting_inputs
from LatentSRLib.io.image import MedicalImage

__all__ = ["read_image", "write_image", "detect_format", "FORMATS", "output_format"]

#: format name -> file name endings (lower case) it is recognised by
FORMATS: dict[str, tuple[str, ...]] = {
    "nifti": (".nii.gz", ".nii"),
    "nrrd": (".nrrd", ".nhdr"),
    "metaimage": (".mha", ".mhd"),
    "mgh": (".mgz", ".mgh"),
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "tiff": (".tif", ".tiff"),
    "numpy": (".npy",),
    "dicom": (".dcm", ".dicom", ".ima"),
}
_ITK_FORMATS = {"nifti", "nrrd", "metaimage", "png", "jpeg", "tiff"}
_SUPPORTED = "NIfTI, NRRD, MHA/MHD, MGZ, DICOM (file or series folder), PNG, JPEG, TIFF, NPY"


def _format_from_name(name: str) -> str | None:
    lower = name.lower()
    for fmt, endings in FORMATS.items():
        if any(lower.endswith(e) for e in endings):
            return fmt
    return None


def detect_format(path: str | os.PathLike) -> str:
    """Format name of an existing ``path``: ``"dicom-series"`` for a folder, else a key of :data:`FORMATS`."""
    path = Path(path)
    if path.is_dir():
        return "dicom-series"
    fmt = _format_from_name(path.name)
    if fmt is not None:
        return fmt
    from LatentSRLib.io.dicom_read import is_dicom_file

    if is_dicom_file(path):  # DICOM files often have no extension at all
        return "dicom"
    raise InputError(f"unknown image format (supported: {_SUPPORTED})", path)


# ----------------------------------------------------------------------------------------- reading
def read_image(path: str | os.PathLike) -> MedicalImage:
    """Read an image or volume with its geometry.

    Args:
        path: a file in one of :data:`FORMATS`, or a folder holding a DICOM series.

    Returns:
        A 2D or 3D :class:`MedicalImage`; ``metadata["format"]`` says how it was read.

    Raises:
        InputError: missing or unreadable file, unknown format, 4D data, no DICOM images, ...
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    fmt = detect_format(path)
    if fmt in ("dicom", "dicom-series"):
        from LatentSRLib.io.dicom_read import read_dicom

        image = read_dicom(path)
    elif fmt == "mgh":
        image = _read_mgh(path)
    elif fmt == "numpy":
        image = _read_npy(path)
    else:
        raw = _check_nifti(path) if fmt == "nifti" else None
        image = _read_itk(path, fmt)
        if raw is not None:
            _restore_non_finite(image, raw)
    _check_spacing(image, path)
    image.path = str(path)
    image.metadata.setdefault("format", fmt)
    image.metadata.setdefault("notes", [])
    return image


def _check_nifti(path: Path) -> np.ndarray | None:
    """Refuse a NIfTI file that is truncated, declares more data than it holds, or has a zero voxel
    size, before ITK reads it (ITK fills missing voxels with zeros and zero sizes with 1 mm).

    Returns:
        The raw floating-point voxels (nibabel's (i, j, k) order) when some are NaN/Inf, which ITK's
        NIfTI reader turns into 0 without a word; else ``None``.
    """
    import gzip

    import nibabel as nib

    gz = path.name.lower().endswith(".gz")
    try:  # the header as stored: nibabel's loader would quietly repair a zero voxel size
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as stream:
            start = stream.read(4)
            size = int.from_bytes(start, "little") if len(start) == 4 else 0
            if size not in (348, 540) and int.from_bytes(start, "big") not in (348, 540):
                raise InputError("not a NIfTI file (no NIfTI-1 or NIfTI-2 header)", path)
            stream.seek(0)
            kind = nib.Nifti2Header if 540 in (size, int.from_bytes(start, "big")) else nib.Nifti1Header
            header = kind.from_fileobj(stream, check=False)
        shape = tuple(int(n) for n in header.get_data_shape())
        dtype = header.get_data_dtype()
        offset = int(header.get("vox_offset", 0))
    except InputError:
        raise
    except Exception as exc:  # nibabel and gzip raise many types for a damaged header
        raise InputError(f"cannot read this NIfTI header ({_first_line(exc)})", path) from None
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError("complex-valued voxels are not supported; give a magnitude image", path)
    expected = offset + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    held = _gunzipped_size(path, expected) if gz else path.stat().st_size
    if held < expected:
        raise InputError(f"the file is truncated or damaged: its header declares {'x'.join(map(str, shape))} voxels "
                         f"({expected} bytes with the header) but it holds {held} bytes", path)
    spatial = min(len(shape), 3)
    zooms = [float(z) for z in header["pixdim"][1:1 + spatial]]
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise InputError(f"the voxel size in the header (pixdim {zooms}) is not positive; the scan's geometry is "
                         "unknown (fix the header, e.g. with nibabel or fslhd/fslcreatehd)", path)
    if not np.issubdtype(dtype, np.floating):
        return None
    with nib.imageglobals.LoggingOutputSuppressor():
        raw = np.asanyarray(nib.load(str(path)).dataobj)
    return raw if not np.isfinite(raw).all() else None


def _gunzipped_size(path: Path, enough: int) -> int:
    """Bytes a gzip file decompresses to (counting stops past ``enough``); a damaged stream is an error."""
    import gzip
    import zlib

    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total <= enough and (chunk := stream.read(1 << 22)):
                total += len(chunk)
    except EOFError:
        return total  # truncated: the caller reports how much there is
    except (OSError, zlib.error) as exc:
        raise InputError(f"the compressed file is damaged ({_first_line(exc)})", path) from None
    return total


def _restore_non_finite(image: MedicalImage, raw: np.ndarray) -> None:
    """Put back the NaN/Inf voxels ITK zeroed, so that they are reported (not silently read as 0)."""
    raw = raw.reshape(raw.shape[: image.ndim]) if raw.ndim > image.ndim else raw
    values = np.transpose(raw)  # nibabel (i, j, k) -> numpy order (k, j, i), as ITK stores it
    if values.shape != image.shape:
        return
    bad = ~np.isfinite(values)
    array = image.array.astype(np.float32) if not np.issubdtype(image.array.dtype, np.floating) else image.array
    array[bad] = values[bad]
    image.array = array


def _check_companion_file(path: Path) -> None:
    """A detached header (.mhd, .nhdr) whose data file is missing: say so, before ITK prints to the console."""
    lower = path.name.lower()
    key = "ElementDataFile" if lower.endswith(".mhd") else "data file" if lower.endswith(".nhdr") else None
    if key is None:
        return
    try:
        with open(path, "rb") as header:
            text = header.read(1 << 16).decode("latin-1")
    except OSError as exc:
        raise InputError(f"cannot read this file ({exc.strerror})", path) from None
    for line in text.splitlines():
        name, _, value = line.partition(":" if key == "data file" else "=")
        if name.strip().lower() in (key.lower(), "datafile"):
            target = value.strip()
            if target.upper() in ("LOCAL", "LIST") or target.upper().startswith("LIST") or "%" in target:
                return
            if not (path.parent / target).is_file():
                raise InputError(f"its data file {target!r} is missing (it must lie beside the header)", path)
            return


def _check_spacing(image: MedicalImage, path: Path) -> None:
    spacing = np.asarray(image.spacing, dtype=np.float64)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputError(f"the voxel size {tuple(float(s) for s in spacing)} mm is not positive; the scan's "
                         "geometry is unknown", path)


def _read_itk(path: Path, fmt: str) -> MedicalImage:
    import SimpleITK as sitk

    _check_companion_file(path)
    try:
        itk = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read this {fmt} file ({_first_line(exc)})", path) from None
    notes: list[str] = []
    if "complex" in itk.GetPixelIDTypeAsString():
        raise InputError("complex-valued pixels are not supported; give a magnitude image", path)
    if itk.GetDimension() == 4:
        itk = _drop_singleton_fourth_axis(itk, path)
    if itk.GetDimension() not in (2, 3):
        raise InputError(f"{itk.GetDimension()}D images are not supported", path)
    if itk.GetNumberOfComponentsPerPixel() > 1:
        itk, note = _to_grayscale(itk, path)
        notes.append(note)
    image = MedicalImage.from_sitk(itk, metadata={"format": fmt, "notes": notes})
    if image.ndim == 3 and fmt in ("png", "jpeg") and image.shape[0] == 1:
        image = _squeeze_to_2d(image)
    return image


def _drop_singleton_fourth_axis(itk, path: Path):
    import SimpleITK as sitk

    size = list(itk.GetSize())
    if size[3] != 1:
        raise InputError(
            f"4D data of size {tuple(size)} (i, j, k, t) where a 3D volume is expected; extract one volume first",
            path,
        )
    size[3] = 0  # ExtractImageFilter collapses axes of size 0
    return sitk.Extract(itk, size=size, index=[0, 0, 0, 0])


def _to_grayscale(itk, path: Path):
    """Luminance (ITU-R BT.601) of an RGB(A) image; grayscale stored as RGB is returned unchanged."""
    import SimpleITK as sitk

    channels = itk.GetNumberOfComponentsPerPixel()
    if channels not in (3, 4):
        raise InputError(f"images with {channels} components per pixel are not supported", path)
    array = sitk.GetArrayFromImage(itk)  # (..., channels)
    rgb = array[..., :3].astype(np.float64)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        gray = array[..., 0]
        note = "stored as RGB with equal channels: first channel used"
    else:
        gray = rgb @ np.array([0.299, 0.587, 0.114])
        if np.issubdtype(array.dtype, np.integer):
            info = np.iinfo(array.dtype)
            gray = np.clip(np.rint(gray), info.min, info.max).astype(array.dtype)
        else:
            gray = gray.astype(np.float32)
        note = "colour image converted to grayscale luminance"
    out = sitk.GetImageFromArray(gray)
    out.CopyInformation(sitk.VectorIndexSelectionCast(itk, 0))
    return out, note


def _squeeze_to_2d(image: MedicalImage) -> MedicalImage:
    return MedicalImage(
        array=image.array[0],
        spacing=image.spacing[:2],
        origin=image.origin[:2],
        direction=image.direction[:2, :2],
        metadata=image.metadata,
    )


def _read_mgh(path: Path) -> MedicalImage:
    import nibabel as nib

    try:
        mgh = nib.load(str(path))
        data = np.asanyarray(mgh.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"cannot read this MGH/MGZ file ({_first_line(exc)})", path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{data.ndim}D MGH data of shape {data.shape} where a 3D volume is expected", path)
    # nibabel: array in (i, j, k) order with a RAS affine; MedicalImage: (k, j, i) with LPS geometry
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine = ras_to_lps @ mgh.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return MedicalImage(
        array=np.ascontiguousarray(np.transpose(data, (2, 1, 0))),
        spacing=tuple(spacing),
        origin=tuple(affine[:3, 3]),
        direction=affine[:3, :3] / spacing,
        metadata={"format": "mgh"},
    )


def _read_npy(path: Path) -> MedicalImage:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read this .npy file ({_first_line(exc)})", path) from None
    if array.ndim == 4 and 1 in array.shape:
        array = array.squeeze()
    if array.ndim not in (2, 3):
        raise InputError(f"a 2D image or 3D stack is expected, the array has shape {array.shape}", path)
    n = array.ndim
    return MedicalImage(
        array=array,
        spacing=(1.0,) * n,
        origin=(0.0,) * n,
        direction=np.eye(n),
        metadata={"format": "numpy", "notes": [".npy holds no geometry: unit spacing and identity direction assumed"]},
    )


# ----------------------------------------------------------------------------------------- writing
def output_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The format an output path will be written in (``format`` wins over the file name)."""
    if format is not None:
        aliases = {"nii": "nifti", "nii.gz": "nifti", "mha": "metaimage", "mgz": "mgh", "dicom-series": "dicom"}
        fmt = aliases.get(format, format)
        if fmt not in FORMATS:
            raise OutputError(f"unknown output format {format!r} (choose from {', '.join(FORMATS)})", path)
        return fmt
    fmt = _format_from_name(Path(path).name)
    if fmt is None:
        raise OutputError(
            f"cannot tell the output format from the name; use one of "
            f"{', '.join(e for es in FORMATS.values() for e in es)} or a folder with format 'dicom'",
            path,
        )
    return fmt


def write_image(
    image: MedicalImage,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
    series_description: str = "LatentSR result",
) -> Path:
    """Write ``image`` on its own geometry, atomically.

    Args:
        image: the image to write.
        path: output file, or output folder for a DICOM series (``format="dicom"`` with no ``.dcm``).
        format: a key of :data:`FORMATS`; inferred from ``path`` when omitted.
        inputs: paths that must never be overwritten (``image.path`` is always included).
        series_description: SeriesDescription of a DICOM output.

    Returns:
        The path written.
    """
    path = Path(path)
    fmt = output_format(path, format)
    refuse_overwriting_inputs(path, [image.path, *inputs])
    if fmt == "dicom":
        from LatentSRLib.io.dicom_write import write_dicom_series

        if path.suffix.lower() in FORMATS["dicom"]:
            return _write_single_dicom(image, path, series_description, inputs)
        write_dicom_series(image, path, series_description=series_description, inputs=[image.path, *inputs])
        return path
    with atomic_path(path) as tmp:
        if fmt == "mgh":
            _write_mgh(image, tmp)
        elif fmt == "numpy":
            np.save(tmp, image.array, allow_pickle=False)
        else:
            _write_itk(image, tmp, fmt)
    return path


def _write_itk(image: MedicalImage, tmp: Path, fmt: str) -> None:
    import SimpleITK as sitk

    array = image.array
    if fmt in ("png", "jpeg"):
        if image.ndim != 2:
            raise OutputError(f"{fmt.upper()} holds 2D images; this image is {image.ndim}D", tmp.name)
        allowed = (np.uint8,) if fmt == "jpeg" else (np.uint8, np.uint16)
        if array.dtype not in allowed:
            raise OutputError(
                f"{fmt.upper()} stores {' or '.join(np.dtype(a).name for a in allowed)} pixels, not {array.dtype}; "
                "write NIfTI/NRRD/TIFF or convert back to the source dtype first",
                tmp.name,
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sitk.WriteImage(image.to_sitk(), str(tmp), useCompression=fmt in ("nifti", "nrrd", "metaimage"))
        except RuntimeError as exc:
            raise OutputError(f"cannot write {fmt} ({_first_line(exc)})", tmp.name) from None


def _write_mgh(image: MedicalImage, tmp: Path) -> None:
    import nibabel as nib

    if image.ndim != 3:
        raise OutputError("MGH/MGZ holds 3D volumes", tmp.name)
    array = image.array
    if array.dtype not in (np.uint8, np.int16, np.int32, np.float32):
        array = array.astype(np.float32)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.MGHImage(np.transpose(array, (2, 1, 0)), lps_to_ras @ image.index_to_world()), str(tmp))


def _write_single_dicom(image: MedicalImage, path: Path, series_description: str, inputs) -> Path:
    import tempfile

    from LatentSRLib.io.dicom_write import write_dicom_series

    if image.ndim == 3 and image.shape[0] != 1:
        raise OutputError("a single .dcm file holds one slice; give a folder to write a DICOM series", path)
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as staging:
        files = write_dicom_series(
            image, Path(staging) / "series", series_description=series_description, inputs=[image.path, *inputs]
        )
        with atomic_path(path) as tmp:
            os.replace(files[0], tmp)
    return path


def _first_line(exc: BaseException) -> str:
    """The useful part of a library's error message (ITK's are multi-line with C++ locations)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__
