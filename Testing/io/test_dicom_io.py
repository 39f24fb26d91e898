"""DICOM reading and writing on real data: the knee and brain series, pydicom's test files.

SimpleITK's ImageSeriesReader is the independent reference for geometry and pixels.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import apply_modality_lut

from LatentSRLib.errors import InputError, OutputError
from LatentSRLib.io.dicom_read import is_dicom_file, read_dicom
from LatentSRLib.io.dicom_write import write_dicom_series
from LatentSRLib.io.image import MedicalImage
from conftest import registry_dicom

METADATA_KEYS = {
    "format", "modality", "series_description", "series_instance_uid", "study_instance_uid", "patient_id",
    "photometric_interpretation", "transfer_syntax", "notes",
}


# ==================================================================================== helpers
def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_matches_sitk(image: MedicalImage, reference: sitk.Image, atol: float = 1e-5) -> None:
    """Same grid and pixels as SimpleITK's reading of the same data."""
    np.testing.assert_allclose(image.spacing, reference.GetSpacing(), atol=atol)
    np.testing.assert_allclose(image.origin, reference.GetOrigin(), atol=atol)
    np.testing.assert_allclose(image.direction.ravel(), reference.GetDirection(), atol=atol)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(reference))


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(path.name.encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def copy_series(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.dcm")):
        shutil.copy(path, target / path.name)
    return target


@pytest.fixture(scope="module")
def knee(knee_dicom_dir: Path) -> MedicalImage:
    return read_dicom(knee_dicom_dir)


# ==================================================================================== reading series
@pytest.mark.shared_data
def test_knee_series_matches_simpleitk(knee: MedicalImage, knee_dicom_dir: Path) -> None:
    assert knee.shape == (80, 512, 512)
    assert knee.array.dtype == np.int16
    assert_matches_sitk(knee, sitk_series(knee_dicom_dir))
    meta = knee.metadata
    assert METADATA_KEYS <= set(meta)
    assert meta["format"] == "dicom-series" and meta["modality"] == "MR"
    assert meta["number_of_files"] == 80 and not meta["inverted_monochrome1"]
    # ITK warns about this series; we accept it, measure it and say so
    assert 0 < meta["slice_spacing_max_relative_deviation"] < 1e-3
    assert any("non-uniform" in note for note in meta["notes"])
    assert len(knee.dicom_headers) == 80
    assert all("PixelData" not in ds for ds in knee.dicom_headers)
    assert all(Path(ds.filename).parent == knee_dicom_dir.resolve() for ds in knee.dicom_headers)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in knee.dicom_headers])
    assert np.all(np.diff(positions @ knee.direction[:, 2]) > 0), "headers follow the array order"


@pytest.mark.shared_data
def test_three_slice_series(t1_3slice_dir: Path) -> None:
    image = read_dicom(t1_3slice_dir)
    assert image.shape == (3, 512, 512) and image.array.dtype == np.uint16
    assert_matches_sitk(image, sitk_series(t1_3slice_dir))
    assert image.metadata["patient_id"] == "VS-SEG-001"
    assert image.metadata["transfer_syntax"] == pydicom.uid.ImplicitVRLittleEndian
    assert image.orientation() == "LPS"


@pytest.mark.shared_data
def test_positions_missing_fall_back_to_instance_number(t1_3slice_dir: Path, tmp_path: Path) -> None:
    expected = read_dicom(t1_3slice_dir).array
    for index, path in enumerate(sorted(t1_3slice_dir.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(tmp_path / f"z{9 - index}.dcm")  # file names in reverse slice order
    image = read_dicom(tmp_path)
    np.testing.assert_array_equal(image.array, expected)
    assert image.spacing[2] == pytest.approx(1.5)  # from SliceThickness
    assert any("InstanceNumber" in note for note in image.metadata["notes"])


@pytest.mark.shared_data
def test_two_series_reads_the_largest_and_says_so(t1_3slice_dir: Path, tmp_path: Path) -> None:
    copy_series(t1_3slice_dir, tmp_path / "a" / "t1")
    shutil.copy(registry_dicom("MR_small.dcm"), tmp_path / "a" / "mr_small.dcm")
    (tmp_path / "a" / "README.txt").write_text("not a DICOM file")
    with pytest.warns(UserWarning, match=r"2 DICOM series found.*3 image files.*skipping 1 other series"):
        image = read_dicom(tmp_path / "a")
    assert image.shape == (3, 512, 512)
    assert image.metadata["series_description"] == "t1_mpr_tra_gk_v4"
    assert any("skipping 1 other series" in note for note in image.metadata["notes"])


# ==================================================================================== single files
def test_monochrome1_radiograph_is_inverted() -> None:
    path = registry_dicom("RG1_UNCI.dcm")
    image = read_dicom(path)
    stored = pydicom.dcmread(path).pixel_array
    assert image.ndim == 2 and image.shape == (1955, 1841)
    assert image.metadata["inverted_monochrome1"] and image.metadata["photometric_interpretation"] == "MONOCHROME1"
    np.testing.assert_array_equal(image.array, (2**15 - 1) - stored.astype(np.int64))  # 15 bits stored
    lung_right = image.array[430:530, 430:530].mean()
    lung_left = image.array[470:570, 1310:1410].mean()
    spine = image.array[750:850, 870:970].mean()
    assert lung_right < spine and lung_left < spine, "lungs are dark on display, so lower after reading"
    # its PixelSpacing is [0, 0]: ignored with a note rather than producing a zero spacing
    assert image.spacing == (1.0, 1.0)
    assert any("not a valid spacing" in note for note in image.metadata["notes"])


def test_single_frame_mr_is_2d() -> None:
    path = registry_dicom("MR_small.dcm")
    image = read_dicom(path)
    ds = pydicom.dcmread(path)
    assert image.shape == (64, 64) and image.ndim == 2
    assert image.metadata["format"] == "dicom"
    np.testing.assert_array_equal(image.array, ds.pixel_array)
    assert image.spacing == (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))
    np.testing.assert_array_equal(image.direction, np.eye(2))
    assert image.metadata["image_position_patient"] == [float(v) for v in ds.ImagePositionPatient]
    assert len(image.dicom_headers) == 1 and "PixelData" not in image.dicom_headers[0]


def test_ct_rescale_gives_hounsfield_units() -> None:
    path = registry_dicom("CT_small.dcm")
    image = read_dicom(path)
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleIntercept) == -1024
    assert np.issubdtype(image.array.dtype, np.signedinteger), "slope 1, integral intercept: integers kept"
    np.testing.assert_array_equal(image.array, apply_modality_lut(ds.pixel_array, ds))
    assert image.array.min() < -800  # air around the patient is near -1000 HU


def test_colour_image_becomes_luminance() -> None:
    image = read_dicom(registry_dicom("SC_rgb.dcm"))
    rgb = pydicom.dcmread(registry_dicom("SC_rgb.dcm")).pixel_array.astype(np.float64)
    assert image.shape == (100, 100) and image.array.dtype == np.float32
    np.testing.assert_allclose(image.array, rgb @ [0.299, 0.587, 0.114], atol=1e-3)
    assert any("luminance" in note for note in image.metadata["notes"])


def test_multiframe_without_functional_groups() -> None:
    path = registry_dicom("emri_small.dcm")
    image = read_dicom(path)
    assert image.shape == (10, 64, 64) and image.metadata["format"] == "dicom-multiframe"
    np.testing.assert_array_equal(image.array, pydicom.dcmread(path).pixel_array)
    assert image.spacing[2] == pytest.approx(1.2)
    assert any("SpacingBetweenSlices" in note for note in image.metadata["notes"])
    assert len(image.dicom_headers) == 1


def test_multiframe_geometry_from_functional_groups() -> None:
    path = registry_dicom("eCT_Supplemental.dcm")
    image = read_dicom(path)
    ds = pydicom.dcmread(path)
    assert image.shape == (2, 512, 512)
    assert image.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    # orientation (-1,0,0 / 0,1,0): the normal points to -z, frame 2 (z=-149) comes first
    np.testing.assert_allclose(image.direction, [[-1, 0, 0], [0, 1, 0], [0, 0, -1]], atol=1e-9)
    assert image.origin == pytest.approx((99.5, -301.5, -149.0))
    # the intercept comes from the Pixel Value Transformation functional group
    np.testing.assert_array_equal(image.array, ds.pixel_array[::-1].astype(np.int32) - 1024)
    assert any("reordered" in note for note in image.metadata["notes"])


@pytest.mark.parametrize(
    ("compressed", "plain"),
    [
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
        ("emri_small_RLE.dcm", "emri_small.dcm"),
        ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ],
)
def test_compressed_equals_uncompressed(compressed: str, plain: str) -> None:
    packed, reference = read_dicom(registry_dicom(compressed)), read_dicom(registry_dicom(plain))
    assert packed.metadata["transfer_syntax"] != reference.metadata["transfer_syntax"]
    assert packed.array.dtype == reference.array.dtype
    np.testing.assert_array_equal(packed.array, reference.array)
    assert packed.has_same_geometry(reference)


def test_jpeg_lossless_matches_gdcm() -> None:
    path = registry_dicom("JPEG-LL.dcm")
    image = read_dicom(path)  # NumberOfFrames = 1: a 2D image
    assert image.shape == (1024, 256)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0])


def test_is_dicom_file(tmp_path: Path) -> None:
    assert is_dicom_file(registry_dicom("MR_small.dcm"))
    (tmp_path / "notes.txt").write_text("hello")
    assert not is_dicom_file(tmp_path / "notes.txt")
    assert not is_dicom_file(tmp_path)
    # an old file without the 128-byte preamble and DICM marker is still DICOM
    ds = pydicom.dcmread(registry_dicom("MR_small.dcm"))
    del ds.file_meta
    ds.preamble = None
    raw = tmp_path / "raw"
    pydicom.dcmwrite(raw, ds, implicit_vr=True, little_endian=True)
    assert raw.read_bytes()[128:132] != b"DICM"
    assert is_dicom_file(raw)
    np.testing.assert_array_equal(read_dicom(raw).array, pydicom.dcmread(registry_dicom("MR_small.dcm")).pixel_array)


# ==================================================================================== bad input
def test_empty_and_non_dicom_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no DICOM images found in this folder"):
        read_dicom(tmp_path)
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "b.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(500))
    with pytest.raises(InputError, match="no DICOM images found in this folder") as info:
        read_dicom(tmp_path)
    assert info.value.path == str(tmp_path)
    with pytest.raises(InputError, match="no such file or folder"):
        read_dicom(tmp_path / "missing")
    with pytest.raises(InputError, match="not a DICOM file"):
        read_dicom(tmp_path / "b.dcm")


def test_truncated_files_name_the_file(tmp_path: Path) -> None:
    data = registry_dicom("MR_small.dcm").read_bytes()
    short_pixels = tmp_path / "pixels.dcm"
    short_pixels.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot decode the pixel data") as info:
        read_dicom(short_pixels)
    assert info.value.path == str(short_pixels)
    short_header = tmp_path / "header.dcm"
    short_header.write_bytes(data[:700])
    with pytest.raises(InputError, match="holds no image") as info:
        read_dicom(short_header)
    assert info.value.path == str(short_header)


@pytest.mark.shared_data
def test_truncated_slice_in_a_series(t1_3slice_dir: Path, tmp_path: Path) -> None:
    copy_series(t1_3slice_dir, tmp_path)
    victim = tmp_path / "1-002.dcm"
    victim.write_bytes(victim.read_bytes()[:-1000])
    with pytest.raises(InputError) as info:
        read_dicom(tmp_path)
    assert info.value.path == str(victim.resolve())


def test_missing_pixel_data_and_missing_decoder(tmp_path: Path) -> None:
    ds = pydicom.dcmread(registry_dicom("MR_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "no_pixels.dcm")
    with pytest.raises(InputError, match="no pixel data"):
        read_dicom(tmp_path / "no_pixels.dcm")
    # MPEG2: a real (video) transfer syntax that no installed plugin decodes
    ds = pydicom.dcmread(registry_dicom("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "mpeg2.dcm")
    expected = r"compressed with MPEG2.*1\.2\.840\.10008\.1\.2\.4\.100.*no decoder plugin"
    with pytest.raises(InputError, match=expected) as info:
        read_dicom(tmp_path / "mpeg2.dcm")
    assert info.value.path.endswith("mpeg2.dcm")


@pytest.mark.shared_data
def test_gaps_and_shared_positions_are_refused(t1_3slice_dir: Path, tmp_path: Path) -> None:
    gap = copy_series(t1_3slice_dir, tmp_path / "gap")
    moved = pydicom.dcmread(gap / "1-003.dcm")
    moved.ImagePositionPatient[2] += 1.5  # spacings 1.5 and 3.0 mm: a missing slice
    moved.save_as(gap / "1-003.dcm")
    with pytest.raises(InputError, match="missing or the series has gaps") as info:
        read_dicom(gap)
    assert info.value.path == str(gap)
    twin = copy_series(t1_3slice_dir, tmp_path / "twin")
    copy = pydicom.dcmread(twin / "1-002.dcm")
    copy.SOPInstanceUID = pydicom.uid.generate_uid()
    copy.save_as(twin / "1-002b.dcm")
    with pytest.raises(InputError, match="share a position"):
        read_dicom(twin)


# ==================================================================================== writing
@pytest.mark.shared_data
def test_write_knee_as_derived_series(knee: MedicalImage, knee_dicom_dir: Path, tmp_path: Path) -> None:
    before = folder_digest(knee_dicom_dir)
    out = tmp_path / "derived"
    files = write_dicom_series(knee, out, series_description="knee SR test")
    assert [f.name for f in files] == [f"IM-{k:04d}.dcm" for k in range(1, 81)]
    source = knee.dicom_headers[0]
    written = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert {ds.SeriesInstanceUID for ds in written} != {source.SeriesInstanceUID}
    assert len({ds.SeriesInstanceUID for ds in written}) == 1
    assert len({ds.SOPInstanceUID for ds in written}) == 80
    assert not {ds.SOPInstanceUID for ds in written} & {ds.SOPInstanceUID for ds in knee.dicom_headers}
    for ds in written:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert ds.PatientID == source.get("PatientID", "")
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription == "knee SR test" and ds.SeriesNumber == int(source.SeriesNumber) + 1000
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    # SimpleITK sees the source geometry and the source pixels
    assert_matches_sitk(knee, sitk_series(out), atol=1e-6)
    again = read_dicom(out)
    np.testing.assert_array_equal(again.array, knee.array)
    assert again.has_same_geometry(knee, atol=1e-6)
    assert folder_digest(knee_dicom_dir) == before, "the source series must not change"


@pytest.mark.shared_data
def test_write_keeps_patient_and_refuses_source_folders(t1_3slice_dir: Path, tmp_path: Path) -> None:
    source = copy_series(t1_3slice_dir, tmp_path / "study" / "t1")
    image = read_dicom(source)
    before = folder_digest(source)
    for target in (source, source.parent, source / "1-001.dcm"):
        with pytest.raises(OutputError):
            write_dicom_series(image, target)
    assert folder_digest(source) == before
    out = tmp_path / "out"
    (out).mkdir()
    (out / "keep.txt").write_text("someone else's file")
    with pytest.raises(OutputError, match="not a previous DICOM series folder"):
        write_dicom_series(image, out)
    shutil.rmtree(out)
    files = write_dicom_series(image, out)
    assert pydicom.dcmread(files[0]).PatientID == "VS-SEG-001"
    # a second write replaces the previous output (a DICOM-only folder); text need not be ASCII
    write_dicom_series(image.with_array(image.array // 2), out, series_description="Überauflösung ×2")
    again = read_dicom(out)
    np.testing.assert_array_equal(again.array, image.array // 2)
    assert again.metadata["series_description"] == "Überauflösung ×2"
    assert again.metadata["patient_id"] == "VS-SEG-001"


def test_write_float_volume_without_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = (rng.normal(size=(4, 20, 30)) * 100).astype(np.float32)
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image = MedicalImage(values, (0.7, 0.8, 2.5), (10.0, -20.0, 30.0), direction, metadata={"modality": "MR"})
    files = write_dicom_series(image, tmp_path / "nifti_like")
    ds = pydicom.dcmread(files[0])
    assert ds.PatientID == "ANONYMOUS" and ds.Modality == "MR"
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert ds.StudyInstanceUID and ds.FrameOfReferenceUID
    back = read_dicom(tmp_path / "nifti_like")
    assert back.has_same_geometry(image, atol=1e-6)
    assert np.abs(back.array - values).max() <= float(ds.RescaleSlope) / 2 + 1e-6
    reference = sitk_series(tmp_path / "nifti_like")
    np.testing.assert_allclose(reference.GetDirection(), direction.ravel(), atol=1e-6)
    np.testing.assert_allclose(reference.GetOrigin(), image.origin, atol=1e-6)
    with pytest.raises(OutputError, match="NaN"):
        write_dicom_series(image.with_array(np.full(values.shape, np.nan, np.float32)), tmp_path / "nan")


def test_write_multiframe_source_as_single_frames(tmp_path: Path) -> None:
    image = read_dicom(registry_dicom("emri_small.dcm"))
    files = write_dicom_series(image, tmp_path / "frames")
    assert len(files) == 10
    for ds in (pydicom.dcmread(f) for f in files):
        assert "PerFrameFunctionalGroupsSequence" not in ds and "NumberOfFrames" not in ds
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    back = read_dicom(tmp_path / "frames")
    np.testing.assert_array_equal(back.array, image.array)
    assert back.has_same_geometry(image, atol=1e-6)


def test_write_2d_keeps_the_source_plane(tmp_path: Path) -> None:
    image = read_dicom(registry_dicom("MR_small.dcm"))
    source = image.dicom_headers[0]
    # a 2x finer grid over the same field of view: first pixel centre moves by a quarter pixel
    finer = MedicalImage(
        np.repeat(np.repeat(image.array, 2, 0), 2, 1),
        tuple(s / 2 for s in image.spacing),
        tuple(-s / 4 for s in image.spacing),
        np.eye(2),
        dicom_headers=image.dicom_headers,
    )
    ds = pydicom.dcmread(write_dicom_series(finer, tmp_path / "finer")[0])
    row, col = np.array(source.ImageOrientationPatient[:3], float), np.array(source.ImageOrientationPatient[3:], float)
    expected = np.array(source.ImagePositionPatient, float) - image.spacing[0] / 4 * row - image.spacing[1] / 4 * col
    np.testing.assert_allclose(np.array(ds.ImagePositionPatient, float), expected, atol=1e-6)
    np.testing.assert_allclose(np.array(ds.ImageOrientationPatient, float), source.ImageOrientationPatient, atol=1e-9)
    assert (ds.Rows, ds.Columns) == (128, 128)
    np.testing.assert_array_equal(read_dicom(tmp_path / "finer").array, finer.array)


def test_no_warnings_for_a_clean_series(tmp_path: Path) -> None:
    image = read_dicom(registry_dicom("emri_small.dcm"))
    write_dicom_series(image, tmp_path / "clean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_dicom(tmp_path / "clean")
