"""A corpus of bad and awkward inputs, written with the file formats' own libraries (SimpleITK,
nibabel, pydicom, numpy, Pillow), not with LatentSR's writers, so a reader bug cannot hide itself.

:func:`build_corpus` writes every input under ``root/inputs`` and returns the :class:`Case` list:
each case is one command line, whether it must be refused (exit 2, one line naming ``culprit``) or
must succeed, and the outputs it may create. ``Testing/cli/test_robustness.py`` runs them.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REFUSE, SUCCEED = "refuse", "succeed"


@dataclass(frozen=True)
class Case:
    """One command on one input.

    Attributes:
        name: the case's id.
        argv: the ``latentsr`` arguments.
        expect: ``"refuse"`` (exit 2, one line naming ``culprit``) or ``"succeed"`` (exit 0).
        culprit: text the refusal must name (the bad file's name, or the option).
        outputs: paths the command may create (a success must create the first one).
        says: text a success must print (a warning on stderr, or a finding on stdout).
    """

    name: str
    argv: tuple[str, ...]
    expect: str
    culprit: str = ""
    outputs: tuple[str, ...] = field(default=())
    says: str = ""


def _smooth_volume(shape=(8, 40, 36), seed=0) -> np.ndarray:
    """A blob phantom in [0, 1000]: anatomy-like, not constant, no background-only slices."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grids[1:])
    volume = 800 * np.exp(-3 * r2) + 150 * np.sin(6 * grids[-1]) ** 2 + 20 * rng.random(shape)
    return volume.astype(np.float32)


def _write_sitk(array: np.ndarray, path: Path, spacing=None, direction=None, origin=None) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array, isVector=array.ndim == 3 and array.shape[-1] in (3, 4) and path.suffix == ".png")
    if spacing is not None:
        image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    if origin is not None:
        image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _write_nifti(array: np.ndarray, path: Path, pixdim=(1.0, 1.0, 1.0), affine=None) -> Path:
    """``array`` in nibabel's (i, j, k[, t]) order."""
    import nibabel as nib

    if affine is None:
        affine = np.diag([*pixdim[:3], 1.0])
    image = nib.Nifti1Image(array, affine)
    image.header.set_zooms(tuple(pixdim) + (1.0,) * (array.ndim - len(pixdim)))
    nib.save(image, str(path))
    return path


def _dicom_slice(path: Path, pixels: np.ndarray, z: float, series_uid: str, study_uid: str, number: int) -> Path:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.PatientName, ds.Modality = "ROBUST01", "Robust^Test", "MR"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _dicom_series(folder: Path, volume: np.ndarray, positions=None, series_uid=None, study_uid=None) -> list[Path]:
    from pydicom.uid import generate_uid

    series_uid, study_uid = series_uid or generate_uid(), study_uid or generate_uid()
    positions = positions if positions is not None else [2.0 * k for k in range(volume.shape[0])]
    return [_dicom_slice(folder / f"im{k:03d}.dcm", volume[k], positions[k], series_uid, study_uid, k + 1)
            for k in range(volume.shape[0])]


def build_corpus(root: Path, model: Path, vae: Path) -> list[Case]:
    """Write the bad inputs under ``root/inputs`` and return the cases (outputs go to ``root/out``).

    ``model`` is a working SR model folder, ``vae`` a working MONAI autoencoder folder: the cases
    that must succeed use them, and the broken-model cases are copies of ``model``.
    """
    inputs, out = root / "inputs", root / "out"
    inputs.mkdir(parents=True)
    out.mkdir()
    volume = _smooth_volume()  # (k, j, i)
    good = _write_sitk(volume, inputs / "good.nii.gz", spacing=(1.0, 1.0, 2.0))
    cases: list[Case] = []

    def refuse(name: str, argv, culprit: str, outputs=()):
        cases.append(Case(name, tuple(str(a) for a in argv), REFUSE, culprit, tuple(str(o) for o in outputs)))

    def succeed(name: str, argv, outputs, says: str = ""):
        cases.append(Case(name, tuple(str(a) for a in argv), SUCCEED, "", tuple(str(o) for o in outputs), says))

    def every_command(name: str, path: Path, culprit: str | None = None, info_says: str | None = None) -> None:
        """The file refused by every command that reads a scan (``info`` describes it when ``info_says``
        is given: what its description must report)."""
        culprit = culprit or path.name
        if info_says is None:
            refuse(f"{name}-info", ["info", path], culprit)
        else:
            succeed(f"{name}-info", ["info", path], [], says=info_says)
        refuse(f"{name}-degrade", ["degrade", path, "-o", out / f"{name}-lr.nii.gz"], culprit, [out / f"{name}-lr.nii.gz"])
        refuse(f"{name}-sr", ["sr", path, "-o", out / f"{name}-sr", "--model", model], culprit, [out / f"{name}-sr"])
        refuse(f"{name}-prepare", ["prepare", path, "-o", out / f"{name}-ds", "--task", "sr4", "--size", "32"],
               culprit, [out / f"{name}-ds"])

    # ---- files that are not images, or not whole ones
    every_command("missing", inputs / "missing.nii.gz")
    (inputs / "empty.nii.gz").write_bytes(b"")
    every_command("empty-file", inputs / "empty.nii.gz")
    (inputs / "notes.nii.gz").write_text("this is a text file, not a scan\n")
    every_command("text-as-nifti", inputs / "notes.nii.gz")
    (inputs / "scan.xyz").write_bytes(good.read_bytes())
    every_command("unknown-extension", inputs / "scan.xyz")
    _write_sitk((volume[0] / 4).astype(np.uint8), inputs / "picture.png")
    shutil.copy(inputs / "picture.png", inputs / "png-named.nii")
    every_command("wrong-extension", inputs / "png-named.nii")
    data = good.read_bytes()
    (inputs / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    every_command("truncated-nii-gz", inputs / "truncated.nii.gz")
    raw = gzip.decompress(data)
    (inputs / "truncated.nii").write_bytes(raw[: len(raw) * 2 // 3])
    every_command("truncated-nii", inputs / "truncated.nii")
    header_only = bytearray(raw[:352])
    huge = np.array([3, 30000, 30000, 30000, 1, 1, 1, 1], dtype=np.int16).tobytes()
    header_only[40:56] = huge  # dim[] of the NIfTI-1 header
    (inputs / "huge-header.nii").write_bytes(bytes(header_only) + raw[352:4000])
    every_command("huge-declared-header", inputs / "huge-header.nii")
    (inputs / "a-folder.nii.gz").mkdir()
    every_command("folder-named-like-a-file", inputs / "a-folder.nii.gz")
    (inputs / "empty-folder").mkdir()
    every_command("empty-folder", inputs / "empty-folder")

    # ---- pixel values and shapes that cannot be super-resolved
    nan_volume = volume.copy()
    nan_volume[3, 10:14, 10:14] = np.nan
    _write_sitk(nan_volume, inputs / "nan.nii.gz")
    every_command("nan-nifti", inputs / "nan.nii.gz", info_says="16 NaN/Inf")
    inf_volume = volume.copy()
    inf_volume[2, 5, 5] = np.inf
    _write_sitk(inf_volume, inputs / "inf.nii.gz")
    every_command("inf-nifti", inputs / "inf.nii.gz", info_says="1 NaN/Inf")
    _write_sitk(nan_volume, inputs / "nan.nrrd")
    every_command("nan-nrrd", inputs / "nan.nrrd", info_says="16 NaN/Inf")
    header = bytearray(raw)
    header[80:84] = np.float32(0.0).tobytes()  # pixdim[2] (the j voxel size) of the NIfTI-1 header
    header[252:256] = np.zeros(2, np.int16).tobytes()  # qform_code, sform_code = 0: pixdim is the geometry
    (inputs / "zero-pixdim.nii.gz").write_bytes(gzip.compress(bytes(header)))
    every_command("zero-pixdim", inputs / "zero-pixdim.nii.gz")
    _write_nifti(np.stack([volume.T] * 3, axis=-1), inputs / "four-d.nii.gz")
    every_command("4d", inputs / "four-d.nii.gz")
    _write_sitk(np.full((1, 1, 1), 7, np.int16), inputs / "one-voxel.nii.gz")
    every_command("1x1x1", inputs / "one-voxel.nii.gz", info_says="1 x 1 x 1")
    _write_sitk(np.zeros((8, 40, 36), np.int16), inputs / "all-zero.nii.gz")
    every_command("constant", inputs / "all-zero.nii.gz", info_says="0")
    _write_nifti((volume.T + 1j * volume.T).astype(np.complex64), inputs / "complex.nii.gz")
    every_command("complex", inputs / "complex.nii.gz")
    np.save(inputs / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    every_command("pickled-npy", inputs / "objects.npy")
    np.save(inputs / "five-d.npy", np.ones((2, 3, 4, 5, 6), np.float32))
    every_command("5d-npy", inputs / "five-d.npy")
    _write_sitk((volume[:, :2, :2]).astype(np.int16), inputs / "tiny-slices.nii.gz")
    refuse("too-small-for-the-factor-sr", ["sr", inputs / "tiny-slices.nii.gz", "-o", out / "tiny-sr", "--model", model],
           "tiny-slices.nii.gz", [out / "tiny-sr"])
    refuse("too-small-for-the-factor-degrade", ["degrade", inputs / "tiny-slices.nii.gz", "-o", out / "tiny-lr.nii.gz"],
           "tiny-slices.nii.gz", [out / "tiny-lr.nii.gz"])
    mhd = inputs / "no-raw.mhd"
    mhd.write_text("ObjectType = Image\nNDims = 3\nDimSize = 36 40 8\nElementType = MET_SHORT\n"
                   "ElementDataFile = no-raw.raw\n")
    every_command("mhd-without-raw", mhd)
    (inputs / "bad-header.nrrd").write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 36 40\nencoding: raw\n\n")
    every_command("malformed-nrrd", inputs / "bad-header.nrrd")

    # ---- DICOM folders
    pixels = np.clip(volume, 0, 4000).astype(np.uint16)
    series = inputs / "dicom-corrupt"
    files = _dicom_series(series, pixels)
    files[3].write_bytes(files[3].read_bytes()[:300])
    every_command("dicom-corrupt-slice", series, culprit=files[3].name)
    mixed = inputs / "dicom-mixed"
    _dicom_series(mixed / "a", pixels[:4])
    _dicom_series(mixed / "b", pixels[:4, :20, :20])
    for sub in ("a", "b"):
        for f in (mixed / sub).iterdir():
            f.rename(mixed / f"{sub}-{f.name}")
        (mixed / sub).rmdir()
    # two series in one folder: the larger (here the first) is read and a one-line warning says so
    succeed("dicom-mixed-series-info", ["info", mixed], [], says="2 DICOM series found")
    succeed("dicom-mixed-series-degrade", ["degrade", mixed, "-o", out / "mixed-lr.nii.gz"], [out / "mixed-lr.nii.gz"],
            says="2 DICOM series found")
    duplicates = inputs / "dicom-duplicates"
    _dicom_series(duplicates, pixels[:4], positions=[0.0, 2.0, 2.0, 4.0])
    every_command("dicom-duplicate-positions", duplicates)
    no_pixels = inputs / "dicom-no-pixels"
    import pydicom

    for path in _dicom_series(no_pixels, pixels[:2]):
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(str(path), enforce_file_format=True)
    every_command("dicom-without-pixel-data", no_pixels)

    # ---- awkward but valid inputs: must work
    oblique = (0.9063078, 0.0, 0.4226183, 0.0, 1.0, 0.0, -0.4226183, 0.0, 0.9063078)  # 25 degrees about y
    _write_sitk(volume, inputs / "oblique.nii.gz", spacing=(1.0, 1.0, 2.0), direction=oblique, origin=(-10.0, 5.0, 3.0))
    flipped = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
    _write_sitk(volume, inputs / "flipped.nrrd", spacing=(1.0, 1.0, 2.0), direction=flipped)
    spaced = inputs / "Patient ü ñ 患者" / "scan with spaces.nii.gz"
    _write_sitk(volume, spaced, spacing=(1.0, 1.0, 2.0))
    _write_sitk(volume.astype(np.int64), inputs / "int64.nii.gz", spacing=(1.0, 1.0, 2.0))
    rgba = np.zeros((40, 36, 4), np.uint8)
    rgba[..., :3] = (volume[4] / 4).astype(np.uint8)[..., None]
    rgba[..., 3] = 255
    from PIL import Image

    Image.fromarray(rgba, "RGBA").save(inputs / "rgba.png")
    for name, path in (("oblique", inputs / "oblique.nii.gz"), ("flipped", inputs / "flipped.nrrd"),
                       ("unicode-spaces", spaced), ("int64", inputs / "int64.nii.gz")):
        succeed(f"{name}-info", ["info", path], [])
        succeed(f"{name}-degrade", ["degrade", path, "-o", out / f"{name} lr.nii.gz"], [out / f"{name} lr.nii.gz"])
        succeed(f"{name}-sr", ["sr", path, "-o", out / f"{name} sr", "--model", model], [out / f"{name} sr"])
    succeed("rgba-png-info", ["info", inputs / "rgba.png"], [])
    succeed("rgba-png-degrade", ["degrade", inputs / "rgba.png", "-o", out / "rgba-lr.png"], [out / "rgba-lr.png"])

    # ---- a reference or mask that does not fit
    other_grid = _write_sitk(_smooth_volume((8, 20, 18)), inputs / "other-grid.nii.gz", spacing=(2.0, 2.0, 2.0))
    refuse("reference-on-another-grid", ["sr", good, "-o", out / "ref-sr", "--model", model, "--reference", other_grid],
           other_grid.name, [out / "ref-sr"])
    refuse("mask-on-another-grid", ["sr", good, "-o", out / "mask-sr", "--model", model, "--simulate-scale", "4",
                                    "--mask", other_grid], other_grid.name, [out / "mask-sr"])
    refuse("reference-missing", ["sr", good, "-o", out / "ref2-sr", "--model", model, "--reference",
                                 inputs / "no-truth.nii.gz"], "no-truth.nii.gz", [out / "ref2-sr"])
    _write_sitk(nan_volume, inputs / "nan-truth.nii.gz", spacing=(1.0, 1.0, 2.0))
    refuse("reference-nan", ["sr", good, "-o", out / "ref3-sr", "--model", model, "--same-grid", "--reference",
                             inputs / "nan-truth.nii.gz"], "nan-truth.nii.gz", [out / "ref3-sr"])

    # ---- broken model folders
    def broken_model(name: str) -> Path:
        folder = inputs / "models" / name
        shutil.copytree(model, folder)
        return folder

    def model_cases(name: str, folder: Path, culprit: str) -> None:
        refuse(f"{name}-sr", ["sr", good, "-o", out / f"{name}-sr", "--model", folder], culprit, [out / f"{name}-sr"])
        refuse(f"{name}-package", ["package", folder, "-o", out / f"{name}-pkg"], culprit, [out / f"{name}-pkg"])

    model_cases("model-missing", inputs / "models" / "nowhere", "nowhere")
    (inputs / "models" / "empty").mkdir(parents=True)
    model_cases("model-empty-folder", inputs / "models" / "empty", "empty")
    folder = broken_model("corrupt-config")
    (folder / "config.json").write_text('{"task": {"mode": "sr", "scale": 4}, "grid": ')
    model_cases("model-corrupt-config", folder, "config.json")
    folder = broken_model("config-list")
    (folder / "config.json").write_text("[1, 2, 3]\n")
    model_cases("model-config-not-an-object", folder, "config.json")
    folder = broken_model("config-missing-keys")
    config = json.loads((folder / "config.json").read_text())
    config.pop("task", None)
    config.pop("denoiser", None)
    (folder / "config.json").write_text(json.dumps(config))
    model_cases("model-config-missing-keys", folder, "config.json")
    folder = broken_model("truncated-weights")
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    model_cases("model-truncated-weights", folder, weights.name)
    folder = broken_model("no-weights")
    next(folder.glob("*.safetensors")).unlink()
    model_cases("model-without-weights", folder, "no-weights")
    folder = broken_model("lost-autoencoder")
    config = json.loads((folder / "config.json").read_text())
    config["autoencoder"]["spec"] = f"monai:{inputs / 'models' / 'gone-vae'}"
    (folder / "config.json").write_text(json.dumps(config))
    model_cases("model-autoencoder-missing", folder, "gone-vae")
    model_cases("model-is-a-file", good, good.name)

    # ---- bad numeric options (the culprit is the option)
    for option, value in (("--steps", "0"), ("--steps", "-3"), ("--steps", "ten"), ("--samples", "0"),
                          ("--batch-size", "0"), ("--simulate-scale", "3"), ("--simulate-scale", "0"),
                          ("--device", "quantum"), ("--tile", "0"), ("--tile", "40")):
        refuse(f"sr{option}={value}", ["sr", good, "-o", out / "opt-sr", "--model", model, option, value],
               {"--simulate-scale=3": "simulated scale of 3", "--device=quantum": "device 'quantum'",
                "--tile=40": "a tile of 40 pixels"}.get(
                   f"{option}={value}", option), [out / "opt-sr"])
    for option, value in (("--scale", "0"), ("--scale", "-2"), ("--noise", "-0.1"), ("--noise", "nan"),
                          ("--noise", "inf")):
        refuse(f"degrade{option}={value}", ["degrade", good, "-o", out / "opt-lr.nii.gz", option, value],
               option, [out / "opt-lr.nii.gz"])
    for option, value in (("--task", "bogus7"), ("--task", "sr0"), ("--size", "0"), ("--every", "0"),
                          ("--val-fraction", "1.5"), ("--subject-pattern", "(unclosed"), ("--max-slices", "0"),
                          ("--min-foreground", "2")):
        refuse(f"prepare{option}={value}", ["prepare", good, "-o", out / "opt-ds", "--task", "sr4", "--size", "32",
                                            option, value], option, [out / "opt-ds"])
    refuse("screen-bad-spec", ["screen", good, "--vae", "nonsense:thing", "-o", out / "screen-bad", "--size", "32",
                               "--no-lpips"], "nonsense", [out / "screen-bad"])
    refuse("screen-batch-size-0", ["screen", good, "--vae", f"monai:{vae}", "-o", out / "screen-bad2", "--size", "32",
                                   "--no-lpips", "--batch-size", "0"], "--batch-size", [out / "screen-bad2"])
    refuse("demo-slices-negative", ["demo", "-o", out / "demo-bad", "--slices", "-1"], "--slices", [out / "demo-bad"])

    # ---- calibration requests that cannot work (nothing may be written into the model folder)
    from LatentSRLib.data.dataset import SplitRule, prepare_dataset
    from LatentSRLib.data.slice_source import SliceSelection
    from LatentSRLib.transforms.tasks import parse_task

    dataset = prepare_dataset([good], inputs / "dataset", parse_task("sr4"), selection=SliceSelection(size=(64, 64)),
                              split_rule=SplitRule(val_fraction=0, test_fraction=0, val_subjects=("good",)),
                              progress=False).folder
    refuse("calibrate-model-missing", ["calibrate", inputs / "models" / "nowhere", "--dataset", inputs / "empty-folder"],
           "nowhere")
    refuse("calibrate-dataset-missing", ["calibrate", model, "--dataset", inputs / "no-dataset"], "no-dataset")
    refuse("calibrate-not-a-dataset", ["calibrate", model, "--dataset", inputs / "empty-folder"], "empty-folder")
    refuse("calibrate-truncated-weights", ["calibrate", inputs / "models" / "truncated-weights", "--dataset", dataset],
           "denoiser.safetensors")
    refuse("calibrate-too-few-images", ["calibrate", model, "--dataset", dataset, "--limit", "3"], "dataset")
    for option, value in (("--alpha", "0"), ("--alpha", "1.5"), ("--delta", "nan"), ("--samples", "0")):
        refuse(f"calibrate{option}={value}", ["calibrate", model, "--dataset", dataset, option, value], option)

    # ---- assessing a stored calibration (--assess): the split, the output, the record itself
    calibrated = inputs / "models" / "calibrated"
    shutil.copytree(model, calibrated)
    (calibrated / "calibration.json").write_text(json.dumps({
        "format": "latentsr.calibration", "lam": 2.0, "alpha": 0.1, "delta": 0.1, "samples": 1, "split": "val",
        "images": 30}))
    damaged = inputs / "models" / "damaged-calibration"
    shutil.copytree(model, damaged)
    (damaged / "calibration.json").write_text('{"lam": 2.0, "split": ')
    refuse("calibrate-assess-uncalibrated", ["calibrate", model, "--dataset", dataset, "--assess", "test", "-o",
                                             out / "assess-a"], "calibration.json", [out / "assess-a"])
    refuse("calibrate-assess-damaged-calibration", ["calibrate", damaged, "--dataset", dataset, "--assess", "test",
                                                    "-o", out / "assess-b"], "calibration.json", [out / "assess-b"])
    refuse("calibrate-assess-the-calibration-split", ["calibrate", calibrated, "--dataset", dataset, "--assess", "val",
                                                      "-o", out / "assess-c"], "--assess", [out / "assess-c"])
    refuse("calibrate-assess-an-empty-split", ["calibrate", calibrated, "--dataset", dataset, "--assess", "test", "-o",
                                               out / "assess-d", "--device", "cpu"], "inputs/dataset", [out / "assess-d"])
    refuse("calibrate-assess-without-output", ["calibrate", calibrated, "--dataset", dataset, "--assess", "test"],
           "--output")
    refuse("calibrate-output-without-assess", ["calibrate", calibrated, "--dataset", dataset, "-o", out / "assess-e"],
           "--assess", [out / "assess-e"])
    refuse("calibrate-assess-with-alpha", ["calibrate", calibrated, "--dataset", dataset, "--assess", "test", "-o",
                                           out / "assess-f", "--alpha", "0.2"], "--alpha", [out / "assess-f"])
    refuse("calibrate-assess-unknown-split", ["calibrate", calibrated, "--dataset", dataset, "--assess", "holdout",
                                              "-o", out / "assess-g"], "--assess", [out / "assess-g"])

    # ---- outputs that cannot be written
    (out / "existing-file").write_text("not a folder\n")
    refuse("package-onto-a-file", ["package", model, "-o", out / "existing-file"], "existing-file")
    refuse("sr-onto-a-file", ["sr", good, "-o", out / "existing-file", "--model", model], "existing-file")
    refuse("calibrate-assess-onto-a-file", ["calibrate", calibrated, "--dataset", dataset, "--assess", "test", "-o",
                                           out / "existing-file"], "existing-file")
    if os.geteuid() != 0:  # root writes anywhere but on a read-only file system (the /proc cases below)
        locked = out / "read-only"
        locked.mkdir()
        locked.chmod(0o555)
        refuse("sr-read-only-folder", ["sr", good, "-o", locked / "sr", "--model", model], "read-only")
        refuse("degrade-read-only-folder", ["degrade", good, "-o", locked / "lr.nii.gz"], "read-only")
    refuse("sr-unwritable", ["sr", good, "-o", "/proc/latentsr-out", "--model", model], "/proc")
    refuse("degrade-unwritable", ["degrade", good, "-o", "/proc/latentsr-lr.nii.gz"], "/proc")
    refuse("prepare-unwritable", ["prepare", good, "-o", "/proc/latentsr-ds", "--task", "sr4", "--size", "32"], "/proc")
    refuse("package-unwritable", ["package", model, "-o", "/proc/latentsr-model"], "/proc")
    dicom_ok = inputs / "dicom-ok"
    _dicom_series(dicom_ok, pixels)
    refuse("sr-output-inside-the-input", ["sr", dicom_ok, "-o", dicom_ok / "sr", "--model", model], "dicom-ok",
           [dicom_ok / "sr"])
    refuse("degrade-onto-its-input", ["degrade", good, "-o", good], "good.nii.gz")
    refuse("prepare-onto-its-input", ["prepare", good, "-o", inputs, "--task", "sr4", "--size", "32"], "inputs")
    refuse("demo-input-text", ["demo", "-o", out / "demo-text", "--case", "brain", "--input", inputs / "notes.nii.gz",
                               "--model", model], "notes.nii.gz", [out / "demo-text"])
    refuse("demo-input-missing", ["demo", "-o", out / "demo-missing", "--case", "chest", "--input",
                                  inputs / "missing.png"], "missing.png", [out / "demo-missing"])
    return cases
