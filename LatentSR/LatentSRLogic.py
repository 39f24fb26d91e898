"""The LatentSR module's Logic: MRML nodes <-> LatentSRLib, with no GUI dependency.

Everything the module does that is not a widget lives here, so it runs (and is tested) headless
against real MRML nodes (``slicer-core``):

* node <-> :class:`LatentSRLib.io.MedicalImage` conversion, geometry exact (IJK-to-RAS);
* the run: in-process (:meth:`LatentSRLogic.process`, for scripts and tests) or in a background
  PythonSlicer process (:meth:`LatentSRLogic.startBackground`, what the GUI uses: Slicer stays
  responsive and Cancel stops the work at once);
* results into output nodes created on demand, the hallucination map as a label map; with a calibrated
  model (``calibration.json`` in its folder) the calibrated interval's half-width and, with a trust
  tolerance, the trust mask (a label map, untrusted pixels highlighted); an uncalibrated model says so
  and gets neither (no interval is ever made from the raw maps);
* the compare layout: original left, SR right with the chosen map as a coloured foreground, views
  linked, the metrics in a table node below;
* every setting and output in the module's parameter node, so it is saved with the scene.

The science (windowing, slicing, sampling, maps, metrics) is all in LatentSRLib.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

# A development checkout (the module folder added to Slicer's module paths) has LatentSRLib beside
# the module folder; an installed extension has it in the module's lib dir, already on sys.path.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "LatentSRLib" / "__init__.py").is_file() and str(_CHECKOUT) not in sys.path:
    sys.path.append(str(_CHECKOUT))

PLANES = ("axial", "coronal", "sagittal")
DEVICES = ("auto", "cuda", "cpu")
# maps that can be shown as the coloured foreground over the SR volume; a calibrated model adds
# CALIBRATED_OVERLAYS (:meth:`LatentSRLogic.overlayChoices`)
OVERLAYS = ("none", "difference", "uncertainty", "consistency")
CALIBRATED_OVERLAYS = ("interval", "trust")
# output role -> (parameter-node reference, node name suffix)
OUTPUTS = {
    "sr": ("OutputSR", "SR"),
    "uncertainty": ("OutputUncertainty", "uncertainty"),
    "consistency": ("OutputConsistency", "consistency"),
    "difference": ("OutputDifference", "difference"),
    "hallucination": ("OutputHallucination", "hallucination"),
    "lr": ("OutputLR", "simulated LR"),
    "interval": ("OutputInterval", "interval half-width"),
    "trust": ("OutputTrust", "trust"),
}
# label values of the hallucination label map (the engine's +1 / -1)
HALLUCINATED, LOST = 1, 2
# label values of the trust label map: the engine's 1 (half-width <= tolerance) and 0. Untrusted is not 0,
# the value a slice view shows outside the volume, so that it can be highlighted
TRUSTED, UNTRUSTED = 1, 2
# what the metrics and the module say for a model without calibration.json (the engine's word)
UNCALIBRATED = "uncalibrated"
CALIBRATION_FILE = "calibration.json"
LAYOUT_ID = 57001  # a custom layout: two linked slice views side by side, the metrics table below
GEOMETRY_TOLERANCE_MM = 1e-3

# parameter-node keys and defaults (strings, as MRML stores them)
DEFAULTS = {
    "ModelPath": "",
    "Axis": "axial",
    "Steps": "0",  # 0: the model's default
    "Samples": "1",
    "Device": "auto",
    "DataConsistency": "true",
    "Simulate": "false",
    "Seed": "0",
    "Outputs": "uncertainty,consistency,difference,hallucination",
    "Overlay": "difference",
    "OverlayOpacity": "0.5",
    "ShowHallucination": "true",
    "TrustTolerance": "",  # intensity units; empty: no trust mask (needs a calibrated model)
}
INPUT_REFERENCES = ("InputVolume", "ReferenceVolume", "Segmentation")


def moduleRepositoryRoot() -> Path:
    """The folder holding ``LatentSRLib`` (the repository in development, the module's lib dir when installed)."""
    import LatentSRLib

    return Path(LatentSRLib.__file__).resolve().parent.parent


DEFAULT_MODEL_NAME = "brain-sr4"


def defaultModelPath() -> str:
    """The bundled reference model: ``$LATENTSR_MODEL``, else ``brain-sr4`` (the first model folder when
    it is absent) under ``Resources/Models`` beside this file or ``Training/models`` of the
    repository; "" when none."""
    if os.environ.get("LATENTSR_MODEL"):
        return os.environ["LATENTSR_MODEL"]
    candidates = [Path(__file__).resolve().parent / "Resources" / "Models"]
    try:
        candidates.append(moduleRepositoryRoot() / "Training" / "models")
    except ImportError:
        pass
    for folder in candidates:
        if folder.is_dir():
            if (folder / DEFAULT_MODEL_NAME / "config.json").is_file():
                return str(folder / DEFAULT_MODEL_NAME)
            for config in sorted(folder.glob("*/config.json")):
                return str(config.parent)
    return ""


_CONFIGS: dict[tuple[str, int], dict] = {}


def readModelConfig(modelPath: str) -> dict:
    """A model folder's ``config.json``, parsed once per change of the file (the GUI asks on every
    parameter change). Raises OSError / ValueError when it is missing or unreadable."""
    config = Path(modelPath) / "config.json"
    key = (str(config), config.stat().st_mtime_ns)
    if key not in _CONFIGS:
        _CONFIGS.clear()  # one model at a time is in use; never grows
        _CONFIGS[key] = json.loads(config.read_text())
    return _CONFIGS[key]


_CALIBRATIONS: dict[tuple[str, int], dict] = {}


def readModelCalibration(modelPath: str) -> dict | None:
    """A model folder's ``calibration.json`` (written by ``latentsr calibrate``), parsed once per change
    of the file; None when the model is uncalibrated. Plain JSON, so the GUI can ask before torch is
    installed (the engine itself validates the file when it runs). Raises ValueError when the file is
    unreadable."""
    path = Path(modelPath) / CALIBRATION_FILE if modelPath else None
    if path is None or not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _CALIBRATIONS:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not all(isinstance(data.get(k), (int, float)) for k in ("lam", "alpha")):
                raise ValueError("it has no numeric lam and alpha")
        except (OSError, ValueError) as error:
            raise ValueError(f"damaged calibration {path}: {error}") from None
        _CALIBRATIONS.clear()
        _CALIBRATIONS[key] = data
    return _CALIBRATIONS[key]


def missingRequirements(requirementsFile, extra=()) -> list[str]:
    """The requirements (lines of ``requirementsFile`` plus ``extra``) whose distribution is not
    installed or whose version does not satisfy the specifier. Never imports them (that would load
    torch at module start-up)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    lines = [line.split("#", 1)[0].strip() for line in Path(requirementsFile).read_text().splitlines()]
    missing = []
    for text in [*extra, *(line for line in lines if line)]:
        requirement = Requirement(text)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (found {version})")
    return missing


def remainingSeconds(fraction: float, elapsed: float) -> float | None:
    """Estimated seconds left after ``elapsed`` seconds at ``fraction`` done (None before any progress)."""
    if fraction <= 0 or elapsed <= 0:
        return None
    return max(0.0, elapsed * (1.0 - fraction) / fraction)


def formatDuration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60:02d}:{seconds % 60:02d}"


def metricsRows(metrics: dict) -> list[tuple[str, str, str]]:
    """The rows of the metrics table: ``(measure, SR, LR input)`` as display strings.

    Whole-volume PSNR/SSIM against the reference, the same inside each mask region and in the
    background, the autoencoder's ceiling, hallucinated and lost pixel fractions, the mean data
    consistency and the time per slice. Empty without a reference (only the last two rows).
    """

    def number(value, digits=2, scale=1.0):
        return "" if value is None else f"{value * scale:.{digits}f}"

    rows: list[tuple[str, str, str]] = []
    reference = metrics.get("reference")
    if reference:
        rows.append(("PSNR whole volume (dB)", number(reference.get("psnr_sr")), number(reference.get("psnr_lr"))))
        rows.append(("SSIM whole volume", number(reference.get("ssim_sr"), 4), number(reference.get("ssim_lr"), 4)))
        for name, region in (reference.get("regions") or {}).items():
            label = "tumour/ROI" if name == "inside" else name.replace("_", " ")
            rows.append((f"PSNR {label} (dB)", number(region.get("psnr_sr")), number(region.get("psnr_lr"))))
            rows.append((f"SSIM {label}", number(region.get("ssim_sr"), 4), number(region.get("ssim_lr"), 4)))
        rows.append(("Autoencoder ceiling PSNR (dB)", number(reference.get("psnr_ae_ceiling")), ""))
        rows.append(("Hallucinated pixels (%)", number(reference.get("hallucinated_fraction"), 2, 100), ""))
        rows.append(("Lost pixels (%)", number(reference.get("lost_fraction"), 2, 100), ""))
    rows += calibrationRows(metrics.get("calibration"))
    rows.append(("Mean |degrade(SR) - LR| (window units)", number(metrics.get("consistency_mean"), 4), ""))
    rows.append(("Seconds per slice", number(metrics.get("seconds_per_slice"), 3), ""))
    return rows


def calibrationRows(calibration) -> list[tuple[str, str, str]]:
    """The metrics table's rows for the calibrated interval (``metrics["calibration"]`` of the engine).

    Uncalibrated: one row saying so. Calibrated: the nominal coverage ``1 - alpha``; with a reference,
    the coverage reached (the fraction of the reference's foreground pixels inside ``SR +- interval``)
    with the nominal beside it and the mean half-width (intensity units), for the whole volume and each
    mask label; with a tolerance, the trusted fraction. Nothing for a run that predates calibration.
    """
    if calibration is None:
        return []
    if not isinstance(calibration, dict):
        return [("Calibrated interval", str(calibration), "")]  # "uncalibrated"

    def percent(value):
        return "" if value is None else f"{100 * value:.2f}"

    def width(value):
        return "" if value is None else f"{value:.4g}"

    nominal = calibration.get("nominal")
    nominalText = "" if nominal is None else f"{100 * nominal:.4g}"
    rows = [("Calibrated interval: nominal coverage (%)", nominalText, "")]
    regions = []
    if "coverage" in calibration:
        regions.append(("whole volume", calibration))
    for label, entry in (calibration.get("labels") or {}).items():
        regions.append(("foreground outside the mask" if str(label) == "0" else f"mask label {label}", entry))
    for name, entry in regions:
        rows.append((f"Interval coverage, {name} (%; nominal {nominalText})", percent(entry.get("coverage")), ""))
        rows.append((f"Mean interval half-width, {name}", width(entry.get("mean_half_width")), ""))
    if calibration.get("tolerance") is not None:
        rows.append((f"Trusted pixels (%; half-width <= {calibration['tolerance']:g})",
                     percent(calibration.get("trusted_fraction")), ""))
    return rows


def calibrationStatus(metrics: dict) -> str:
    """One line about the run's calibrated interval, for the module's status: "uncalibrated ..." or the
    coverage reached against the nominal one. "" for a run without a calibration entry."""
    calibration = metrics.get("calibration")
    if calibration is None:
        return ""
    if not isinstance(calibration, dict):
        return (f"Model {calibration}: no calibrated interval or trust mask (the uncertainty map is not an "
                "interval; run `latentsr calibrate` on the model).")
    nominal = 100 * float(calibration.get("nominal", 0.0))
    text = f"Calibrated interval (nominal coverage {nominal:.4g}%)"
    if calibration.get("coverage") is not None:
        text += f": coverage {100 * calibration['coverage']:.2f}% of the reference's foreground"
    if calibration.get("trusted_fraction") is not None:
        text += f"; {100 * calibration['trusted_fraction']:.2f}% of pixels trusted at {calibration['tolerance']:g}"
    return text + "."


class LatentSRJob:
    """A super-resolution run in a background process, followed from the GUI's timer.

    ``poll()`` returns new progress events; when ``running`` turns False, ``finish()`` loads the
    results into the scene (or raises the command's one-line error). ``cancel()`` stops it at once.
    """

    def __init__(self, logic: LatentSRLogic, parameterNode, workDirectory: Path, background) -> None:
        self.logic = logic
        self.parameterNode = parameterNode
        self.workDirectory = Path(workDirectory)
        self.background = background
        self.startTime = time.monotonic()
        self.fraction = 0.0

    @property
    def outputDirectory(self) -> Path:
        return self.workDirectory / "outputs"

    @property
    def running(self) -> bool:
        return self.background.running

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.startTime

    def poll(self):
        events = self.background.poll()
        if events:
            self.fraction = events[-1].fraction
        return events

    def remaining(self) -> float | None:
        return remainingSeconds(self.fraction, self.elapsed)

    def cancel(self) -> None:
        self.background.cancel()
        self.cleanup()

    def finish(self) -> dict:
        """Load the results of a completed run; returns its metrics. Raises RuntimeError on failure."""
        code = self.background.wait()
        try:
            if self.background.cancelled:
                raise RuntimeError("cancelled")
            if code != 0:
                raise RuntimeError(self.background.error or f"latentsr sr exited with status {code}")
            return self.logic.loadResultsFromFolder(self.parameterNode, self.outputDirectory)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        if not self.running:
            shutil.rmtree(self.workDirectory, ignore_errors=True)


class LatentSRLogic(ScriptedLoadableModuleLogic):
    """Slicer <-> LatentSRLib: volume nodes in, volume, label-map and table nodes out, geometry kept."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    # ---- parameters ------------------------------------------------------------------------------
    def setDefaultParameters(self, parameterNode) -> None:
        for key, value in DEFAULTS.items():
            if not parameterNode.GetParameter(key):
                parameterNode.SetParameter(key, value)
        if not parameterNode.GetParameter("ModelPath"):
            parameterNode.SetParameter("ModelPath", defaultModelPath())

    @staticmethod
    def flag(parameterNode, key: str) -> bool:
        return parameterNode.GetParameter(key).lower() == "true"

    @staticmethod
    def requestedOutputs(parameterNode) -> list[str]:
        return [name for name in parameterNode.GetParameter("Outputs").split(",") if name]

    def settings(self, parameterNode):
        from LatentSRLib.inference import SRSettings

        steps = int(parameterNode.GetParameter("Steps") or 0)
        return SRSettings(steps=steps or None, samples=int(parameterNode.GetParameter("Samples") or 1),
                          seed=int(parameterNode.GetParameter("Seed") or 0),
                          data_consistency=self.flag(parameterNode, "DataConsistency"))

    @staticmethod
    def trustTolerance(parameterNode) -> float | None:
        """The ``TrustTolerance`` parameter (intensity units), None when empty. Raises ValueError for
        anything but a finite number >= 0."""
        text = parameterNode.GetParameter("TrustTolerance").strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"The trust tolerance must be a number >= 0 in the input's intensity units (or empty "
                             f"for no trust mask), not '{text}'.")
        return value

    @staticmethod
    def modelCalibration(parameterNode) -> dict | None:
        """The chosen model's calibration (``calibration.json``), None when it is uncalibrated or unreadable
        (:meth:`validate` reports a damaged one)."""
        try:
            return readModelCalibration(parameterNode.GetParameter("ModelPath"))
        except ValueError:
            return None

    def runTolerance(self, parameterNode) -> float | None:
        """The tolerance the run asks the engine for: the trust tolerance with a calibrated model, else None
        (an uncalibrated model has no interval to compare it with; the module says "uncalibrated")."""
        tolerance = self.trustTolerance(parameterNode)
        return tolerance if tolerance is not None and self.modelCalibration(parameterNode) is not None else None

    def calibrationNote(self, parameterNode) -> str:
        """What the chosen model's calibration promises, or that it is uncalibrated; "" without a model."""
        modelPath = parameterNode.GetParameter("ModelPath")
        if not modelPath or not (Path(modelPath) / "config.json").is_file():
            return ""
        try:
            calibration = readModelCalibration(modelPath)
        except ValueError as error:
            return f"Calibration unreadable: {error}"
        if calibration is None:
            return ("Uncalibrated: no calibrated interval or trust mask for this model (run `latentsr calibrate` "
                    "on it); the uncertainty map is the raw spread of the samples.")
        alpha = float(calibration["alpha"])
        samples = calibration.get("samples")
        delta = calibration.get("delta")
        if calibration.get("method", "rcps-hoeffding-bentkus") == "rcps-hoeffding-bentkus" and delta is not None:
            how = f"confidence {1 - float(delta):g}"
        else:
            how = "conformal risk control"
        note = (f"Calibrated: SR +- interval holds the truth for {100 * (1 - alpha):.4g}% of foreground pixels, on "
                f"average over images (risk {alpha:g}, {how}, "
                f"{calibration.get('images', '?')} {calibration.get('split', '')} images, {samples} sample(s)).")
        if samples is not None and str(samples) != (parameterNode.GetParameter("Samples") or "1"):
            note += f" Warning: set Samples to {samples}, as calibrated; the guarantee holds for that."
        return note

    def overlayChoices(self, parameterNode) -> list[str]:
        """The overlays on offer: the plain maps, and with a calibrated model (or this run's nodes) the
        calibrated interval, and the trust mask when a trust tolerance is set."""
        calibrated = self.modelCalibration(parameterNode) is not None
        try:
            tolerance = self.trustTolerance(parameterNode)
        except ValueError:
            tolerance = None
        choices = list(OVERLAYS)
        if calibrated or parameterNode.GetNodeReference(OUTPUTS["interval"][0]) is not None:
            choices.append("interval")
        if (calibrated and tolerance is not None) or parameterNode.GetNodeReference(OUTPUTS["trust"][0]) is not None:
            choices.append("trust")
        return choices

    def validate(self, parameterNode) -> None:
        """Raise ValueError with a message for the user when the inputs cannot be run."""
        inputNode = parameterNode.GetNodeReference("InputVolume")
        if inputNode is None:
            raise ValueError("Select an input volume.")
        if inputNode.GetImageData() is None:
            raise ValueError(f"The input volume '{inputNode.GetName()}' holds no image data.")
        modelPath = parameterNode.GetParameter("ModelPath")
        if not modelPath or not (Path(modelPath) / "config.json").is_file():
            raise ValueError(f"'{modelPath}' is not a LatentSR model folder (it needs a config.json); "
                             "choose the folder a training run wrote under model/.")
        if parameterNode.GetParameter("Axis") not in PLANES:
            raise ValueError(f"Axis must be one of {', '.join(PLANES)}.")
        reference = parameterNode.GetNodeReference("ReferenceVolume")
        simulate = self.flag(parameterNode, "Simulate")
        for role, node in (("reference", reference), ("segmentation", parameterNode.GetNodeReference("Segmentation"))):
            if node is not None and node.IsA("vtkMRMLVolumeNode") and not self.sameGeometry(node, inputNode):
                raise ValueError(f"The {role} '{node.GetName()}' is not on the input volume's grid "
                                 "(resample it first, e.g. with the Resample Scalar/Vector/DWI Volume module).")
        segmentation = parameterNode.GetNodeReference("Segmentation")
        if segmentation is not None and reference is None and not simulate:
            raise ValueError("Region metrics need a high-resolution reference (or 'simulate low resolution').")
        readModelCalibration(modelPath)  # a damaged calibration.json is named before any work
        self.trustTolerance(parameterNode)

    def resolutionNote(self, parameterNode) -> str:
        """Input and output pixel sizes of the chosen model on the input volume: an ``sr`` model writes on a
        grid ``s`` times finer in-plane (simulation: back onto the input's grid); others keep the grid.
        With a warning when the output pixels are more than 2x away from the model's training pixel
        size (the model records it). "" when there is nothing to say yet."""
        inputNode = parameterNode.GetNodeReference("InputVolume")
        modelPath = parameterNode.GetParameter("ModelPath")
        if inputNode is None or inputNode.GetImageData() is None or not modelPath:
            return ""
        try:
            config = readModelConfig(modelPath)
            task, gridInfo = config["task"], config.get("grid", {})
        except (OSError, ValueError, KeyError):
            return ""
        matrix = self.ijkToRas(inputNode)[:3, :3]
        spacing = np.linalg.norm(matrix, axis=0)
        # the index axis pointing most along the plane's normal (RAS: L-R, P-A, I-S) is the slice axis
        normal = {"sagittal": 0, "coronal": 1, "axial": 2}.get(parameterNode.GetParameter("Axis"), 2)
        sliceAxis = int(np.argmax(np.abs(matrix[normal]) / spacing))
        inPlane = [float(spacing[a]) for a in range(3) if a != sliceAxis]
        refines = task.get("mode") == "sr" and not self.flag(parameterNode, "Simulate")
        factor = int(task.get("scale", 1)) if refines else 1
        output = [s / factor for s in inPlane]
        text = (f"Input pixels {inPlane[0]:.2f} x {inPlane[1]:.2f} mm; output pixels {output[0]:.2f} x {output[1]:.2f} mm"
                + (f" ({factor}x finer in-plane, same field of view)." if factor > 1 else " (the input's grid)."))
        trained = gridInfo.get("pixel_size_mm")
        if trained:
            ratio = max(max(output) / trained, trained / min(output))
            if ratio > 2:
                text += (f" Warning: the model was trained at {trained:g} mm pixels ({ratio:.1f}x away): detail at "
                         "other scales than it learned may be wrong.")
        return text

    # ---- node <-> image --------------------------------------------------------------------------
    @staticmethod
    def ijkToRas(volumeNode) -> np.ndarray:
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    @classmethod
    def sameGeometry(cls, nodeA, nodeB) -> bool:
        a, b = nodeA.GetImageData(), nodeB.GetImageData()
        if a is None or b is None or a.GetDimensions() != b.GetDimensions():
            return False
        return bool(np.allclose(cls.ijkToRas(nodeA), cls.ijkToRas(nodeB), atol=GEOMETRY_TOLERANCE_MM))

    @classmethod
    def imageFromVolumeNode(cls, volumeNode):
        from LatentSRLib.io import MedicalImage

        array = slicer.util.arrayFromVolume(volumeNode)  # (k, j, i), as LatentSRLib expects
        return MedicalImage.from_ijk_to_ras(np.array(array), cls.ijkToRas(volumeNode),
                                            metadata={"name": volumeNode.GetName()})

    @staticmethod
    def updateVolumeNodeFromImage(volumeNode, image, geometryFrom=None) -> None:
        """Fill ``volumeNode`` with ``image``; with ``geometryFrom`` (a volume node) its IJK-to-RAS is
        copied exactly after checking that the image's agrees within 1e-3 mm (files store geometry in
        single precision, the scene in double)."""
        ijkToRas = image.ijk_to_ras()
        if geometryFrom is not None:
            target = LatentSRLogic.ijkToRas(geometryFrom)
            shape = tuple(reversed(geometryFrom.GetImageData().GetDimensions()))
            if image.array.shape != shape or not np.allclose(ijkToRas, target, atol=GEOMETRY_TOLERANCE_MM):
                raise ValueError(f"result for '{volumeNode.GetName()}' is not on the grid of '{geometryFrom.GetName()}'")
            ijkToRas = target
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(ijkToRas[r, c]))
        slicer.util.updateVolumeFromArray(volumeNode, np.ascontiguousarray(image.array))
        volumeNode.SetIJKToRASMatrix(matrix)
        volumeNode.CreateDefaultDisplayNodes()

    @staticmethod
    def sameGridNode(image, volumeNode):
        """``volumeNode`` when ``image`` lies on its grid (within 1e-3 mm), else None."""
        shape = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
        target = LatentSRLogic.ijkToRas(volumeNode)
        if image.array.shape == shape and np.allclose(image.ijk_to_ras(), target, atol=GEOMETRY_TOLERANCE_MM):
            return volumeNode
        return None

    def labelImage(self, node, referenceVolume):
        """A label map or segmentation node as a label image on ``referenceVolume``'s grid."""
        if node.IsA("vtkMRMLSegmentationNode"):
            labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__latentsr_mask")
            try:
                exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(
                    node, labelNode, referenceVolume)
                if not exported:
                    raise ValueError(f"Could not export the segments of '{node.GetName()}' to a label map.")
                return self.imageFromVolumeNode(labelNode)
            finally:
                slicer.mrmlScene.RemoveNode(labelNode)
        return self.imageFromVolumeNode(node)

    # ---- running ---------------------------------------------------------------------------------
    def process(self, parameterNode, progress=None, cancelled=None) -> dict:
        """Super-resolve in this process (blocks; scripts and tests). Returns the metrics."""
        from LatentSRLib.inference import super_resolve_volume
        from LatentSRLib.model.folder import load_sr_model

        self.validate(parameterNode)
        inputNode = parameterNode.GetNodeReference("InputVolume")
        referenceNode = parameterNode.GetNodeReference("ReferenceVolume")
        segmentationNode = parameterNode.GetNodeReference("Segmentation")
        simulate = self.flag(parameterNode, "Simulate")
        device = parameterNode.GetParameter("Device")
        model = load_sr_model(parameterNode.GetParameter("ModelPath"), device="cpu")
        result = super_resolve_volume(
            model, self.imageFromVolumeNode(inputNode), plane=parameterNode.GetParameter("Axis"),
            settings=self.settings(parameterNode),
            reference=None if simulate or referenceNode is None else self.imageFromVolumeNode(referenceNode),
            mask=None if segmentationNode is None else self.labelImage(segmentationNode, inputNode),
            simulate=simulate, device=device, progress=progress, cancelled=cancelled,
            tolerance=self.runTolerance(parameterNode))
        images = dict(result.outputs())
        if simulate:
            images["lr"] = result.lr
        return self.loadResults(parameterNode, images, result.metrics)

    def backgroundArguments(self, parameterNode, workDirectory: Path) -> list[str]:
        """Write the inputs into ``workDirectory/inputs`` (NRRD: double-precision geometry) and return
        the ``latentsr sr`` arguments that write into ``workDirectory/outputs``."""
        from LatentSRLib.io import write_image

        self.validate(parameterNode)
        inputs = workDirectory / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        inputNode = parameterNode.GetNodeReference("InputVolume")
        inputPath = write_image(self.imageFromVolumeNode(inputNode), inputs / "input.nrrd")
        arguments = [str(inputPath), "-o", str(workDirectory / "outputs"),
                     "--model", parameterNode.GetParameter("ModelPath"),
                     "--axis", parameterNode.GetParameter("Axis"),
                     "--samples", parameterNode.GetParameter("Samples") or "1",
                     "--seed", parameterNode.GetParameter("Seed") or "0",
                     "--device", parameterNode.GetParameter("Device") or "auto",
                     "--format", "nrrd"]
        if int(parameterNode.GetParameter("Steps") or 0) > 0:
            arguments += ["--steps", parameterNode.GetParameter("Steps")]
        tolerance = self.runTolerance(parameterNode)
        if tolerance is not None:
            arguments += ["--tolerance", repr(tolerance)]
        # explicit either way: the command's default is the fidelity end (on)
        arguments.append("--data-consistency" if self.flag(parameterNode, "DataConsistency") else "--no-data-consistency")
        if self.flag(parameterNode, "Simulate"):
            config = readModelConfig(parameterNode.GetParameter("ModelPath"))
            arguments += ["--simulate-scale", str(config["task"]["scale"])]
        elif parameterNode.GetNodeReference("ReferenceVolume") is not None:
            reference = self.imageFromVolumeNode(parameterNode.GetNodeReference("ReferenceVolume"))
            arguments += ["--reference", str(write_image(reference, inputs / "reference.nrrd"))]
        segmentationNode = parameterNode.GetNodeReference("Segmentation")
        if segmentationNode is not None:
            mask = self.labelImage(segmentationNode, inputNode)
            arguments += ["--mask", str(write_image(mask, inputs / "mask.nrrd"))]
        return arguments

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's PythonSlicer (a Python with Slicer's environment), else this interpreter."""
        found = shutil.which("PythonSlicer")
        if found:
            return found
        beside = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        return str(beside) if beside.exists() else sys.executable

    def startBackground(self, parameterNode, python: str | None = None) -> LatentSRJob:
        """Start ``latentsr sr`` in a background process; follow it with the returned job."""
        from LatentSRLib.inference.background import BackgroundSR

        workDirectory = Path(tempfile.mkdtemp(prefix="latentsr-"))
        try:
            arguments = self.backgroundArguments(parameterNode, workDirectory)
        except Exception:
            shutil.rmtree(workDirectory, ignore_errors=True)
            raise
        # the child must find LatentSRLib where this process found it (the extension's lib dir)
        pythonPath = os.pathsep.join(p for p in (str(moduleRepositoryRoot()), os.environ.get("PYTHONPATH", "")) if p)
        background = BackgroundSR(arguments, python=python or self.pythonExecutable(), env={"PYTHONPATH": pythonPath})
        logging.info("LatentSR: " + " ".join(background.command))
        return LatentSRJob(self, parameterNode, workDirectory, background.start())

    # ---- results ---------------------------------------------------------------------------------
    def loadResultsFromFolder(self, parameterNode, folder) -> dict:
        """Load what ``latentsr sr`` wrote into ``folder`` (its metrics.json names the files)."""
        from LatentSRLib.io import read_image

        metrics = json.loads((Path(folder) / "metrics.json").read_text())
        images = {name: read_image(path) for name, path in metrics.get("outputs", {}).items() if name in OUTPUTS}
        return self.loadResults(parameterNode, images, metrics)

    def outputNode(self, parameterNode, role: str, className: str = "vtkMRMLScalarVolumeNode"):
        """The node of output ``role``, created (and referenced from the parameter node) on demand."""
        reference, suffix = OUTPUTS[role]
        node = parameterNode.GetNodeReference(reference)
        if node is not None and not node.IsA(className):
            node = None
        if node is None:
            inputNode = parameterNode.GetNodeReference("InputVolume")
            name = slicer.mrmlScene.GenerateUniqueName(f"{inputNode.GetName()} {suffix}")
            node = slicer.mrmlScene.AddNewNodeByClass(className, name)
            parameterNode.SetNodeReferenceID(reference, node.GetID())
        return node

    def loadResults(self, parameterNode, images: dict, metrics: dict) -> dict:
        """Put each result image into its output node, fill the metrics table and record everything in
        the parameter node. A result on the input's grid takes the input node's exact geometry; one on
        the SR grid (s times finer in-plane) or the simulated coarse grid keeps its own. Returns ``metrics``."""
        inputNode = parameterNode.GetNodeReference("InputVolume")
        # the calibrated maps come whenever the engine made them (a calibrated model; trust: a tolerance)
        wanted = set(self.requestedOutputs(parameterNode)) | {"sr", "lr", "interval", "trust"}
        loaded = set()
        for role, image in images.items():
            if role not in wanted or role not in OUTPUTS:
                continue
            loaded.add(role)
            if role in ("hallucination", "trust"):
                node = self.outputNode(parameterNode, role, "vtkMRMLLabelMapVolumeNode")
                labels = np.zeros(image.array.shape, dtype=np.uint8)
                if role == "hallucination":
                    labels[image.array > 0] = HALLUCINATED
                    labels[image.array < 0] = LOST
                    colors = self.hallucinationColorNode()
                else:
                    labels[image.array > 0] = TRUSTED
                    labels[image.array <= 0] = UNTRUSTED
                    colors = self.trustColorNode()
                self.updateVolumeNodeFromImage(node, image.with_array(labels), geometryFrom=self.sameGridNode(image, inputNode))
                node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
            else:
                node = self.outputNode(parameterNode, role)
                self.updateVolumeNodeFromImage(node, image, geometryFrom=self.sameGridNode(image, inputNode))
                self.configureDisplay(node, role, inputNode)
        # a map this run did not make is not this run's: forget the previous run's node (it stays in the
        # scene), so that an uncalibrated run never shows an old interval or trust mask as its own
        for role, (reference, _) in OUTPUTS.items():
            if role not in loaded and role != "sr":
                parameterNode.SetNodeReferenceID(reference, None)
        parameterNode.SetParameter("Metrics", json.dumps(metrics))
        self.updateMetricsTable(parameterNode, metrics)
        return metrics

    def configureDisplay(self, node, role: str, inputNode) -> None:
        display = node.GetDisplayNode()
        array = slicer.util.arrayFromVolume(node)
        if role in ("sr", "lr"):
            inputDisplay = inputNode.GetDisplayNode() if inputNode is not None else None
            if inputDisplay is not None:  # same window as the original: differences are real
                display.SetAutoWindowLevel(False)
                display.SetWindowLevel(inputDisplay.GetWindow(), inputDisplay.GetLevel())
            return
        extent = float(np.percentile(np.abs(array), 99.5)) or float(np.abs(array).max()) or 1.0
        display.SetAutoWindowLevel(False)
        if role == "interval":
            # never zero (the calibration's floor): the colours start at the narrowest interval, so they
            # show where it widens beyond the floor; the value under the cursor is the half-width itself
            lowest = float(array.min())
            display.SetWindowLevelMinMax(lowest, extent if extent > lowest else lowest + 1.0)
            display.SetAndObserveColorNodeID(self.intervalColorNode().GetID())
            return
        signed = role == "difference"
        if signed:  # symmetric window: zero in the middle of the table
            display.SetWindowLevelMinMax(-extent, extent)
        else:
            display.SetWindowLevelMinMax(0.0, extent)
        display.SetAndObserveColorNodeID(self.overlayColorNode(signed).GetID())

    @staticmethod
    def overlayColorNode(signed: bool):
        """The overlay colours, transparent near zero so the SR shows through where a map is small:
        signed (difference) blue for negative, red for positive; magnitude (uncertainty,
        consistency) dark red to yellow. Opacity grows with the magnitude from 15% (signed) or 10%
        of the display range, so a map's faint floor does not tint the whole view."""
        node, created = LatentSRLogic.colorTable("LatentSR signed map" if signed else "LatentSR magnitude map", 256)
        if not created:
            return node
        for index in range(256):
            if signed:
                t = (index - 127.5) / 127.5
                rgb = (1.0, 0.25, 0.1) if t > 0 else (0.15, 0.45, 1.0)
                alpha = min(1.0, max(0.0, (abs(t) - 0.15) / 0.5))
            else:
                t = index / 255.0
                rgb = (min(1.0, 0.4 + 1.8 * t), min(1.0, max(0.0, 2.0 * t - 0.4)), max(0.0, 3.0 * t - 2.0))
                alpha = min(1.0, max(0.0, (t - 0.1) / 0.5))
            node.SetColor(index, "", *rgb, alpha)
        return node

    @staticmethod
    def intervalColorNode():
        """The interval's colours: a sequential scale (dark purple, blue, green to yellow, after viridis),
        transparent at the narrowest interval and growing opaque over the first half of the range."""
        node, created = LatentSRLogic.colorTable("LatentSR interval", 256)
        if not created:
            return node
        anchors = np.array([[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551],
                            [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]])
        positions = np.linspace(0.0, 1.0, len(anchors))
        for index in range(256):
            t = index / 255.0
            rgb = [float(np.interp(t, positions, anchors[:, c])) for c in range(3)]
            node.SetColor(index, "", *rgb, min(1.0, max(0.0, (t - 0.05) / 0.5)))
        return node

    @staticmethod
    def trustColorNode():
        """A colour table: 0 transparent, 1 trusted (transparent: the SR shows through), 2 untrusted
        (magenta, apart from the hallucination map's orange and blue)."""
        node, created = LatentSRLogic.colorTable("LatentSR trust", 3)
        if created:
            node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
            node.SetColor(TRUSTED, "trusted", 0.2, 0.8, 0.3, 0.0)
            node.SetColor(UNTRUSTED, "untrusted", 1.0, 0.1, 0.85, 1.0)
        return node

    @staticmethod
    def hallucinationColorNode():
        """A colour table: 0 transparent, 1 hallucinated (orange-red), 2 lost (cyan-blue)."""
        node, created = LatentSRLogic.colorTable("LatentSR hallucination", 3)
        if created:
            node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
            node.SetColor(HALLUCINATED, "hallucinated", 1.0, 0.35, 0.0, 1.0)
            node.SetColor(LOST, "lost", 0.0, 0.6, 1.0, 1.0)
        return node

    @staticmethod
    def colorTable(name: str, colors: int):
        """The scene's user colour table ``name``, or a new one of ``colors`` entries to fill:
        ``(node, created)``. One per scene, shared by every run."""
        node = slicer.mrmlScene.GetFirstNodeByName(name)
        if node is not None and node.IsA("vtkMRMLColorTableNode"):
            return node, False
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
        node.SetTypeToUser()
        node.SetNumberOfColors(colors)
        node.SetAttribute("Category", "LatentSR")
        return node, True

    def updateMetricsTable(self, parameterNode, metrics: dict):
        table = parameterNode.GetNodeReference("MetricsTable")
        if table is None:
            inputNode = parameterNode.GetNodeReference("InputVolume")
            table = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode", slicer.mrmlScene.GenerateUniqueName(f"{inputNode.GetName()} SR metrics"))
            parameterNode.SetNodeReferenceID("MetricsTable", table.GetID())
        table.RemoveAllColumns()
        columns = []
        for title in ("Measure", "SR", "LR input"):
            column = vtk.vtkStringArray()
            column.SetName(title)
            columns.append(column)
        for row in metricsRows(metrics):
            for column, value in zip(columns, row):
                column.InsertNextValue(value)
        for column in columns:
            table.AddColumn(column)
        table.SetUseColumnTitleAsColumnHeader(True)
        table.SetLocked(True)  # a record of the run, not for editing
        return table

    # ---- display ---------------------------------------------------------------------------------
    @staticmethod
    def viewNode(className: str, layoutName: str):
        """The scene's ``className`` node of the view called ``layoutName`` ("Red", "Yellow", ...)."""
        for i in range(slicer.mrmlScene.GetNumberOfNodesByClass(className)):
            node = slicer.mrmlScene.GetNthNodeByClass(i, className)
            if node.GetLayoutName() == layoutName:
                return node
        return None

    @classmethod
    def sliceCompositeNode(cls, layoutName: str):
        return cls.viewNode("vtkMRMLSliceCompositeNode", layoutName)

    @staticmethod
    def compareLayoutDescription(orientation: str) -> str:
        views = "".join(
            f'<item><view class="vtkMRMLSliceNode" singletontag="{tag}">'
            f'<property name="orientation" action="default">{orientation}</property>'
            f'<property name="viewlabel" action="default">{label}</property>'
            f'<property name="viewcolor" action="default">{color}</property></view></item>'
            for tag, label, color in (("Red", "R", "#F34A33"), ("Yellow", "Y", "#EDD54C")))
        return ('<layout type="vertical" split="true">'
                f'<item splitSize="700"><layout type="horizontal" split="true">{views}</layout></item>'
                '<item splitSize="300"><view class="vtkMRMLTableViewNode" singletontag="TableView1">'
                '<property name="viewlabel" action="default">T</property></view></item>'
                '</layout>')

    def showComparison(self, parameterNode) -> None:
        """Original (or the simulated LR) left, SR right with the chosen overlay and the
        hallucination label map, views linked, the metrics table below."""
        inputNode = parameterNode.GetNodeReference("InputVolume")
        left = parameterNode.GetNodeReference("OutputLR") if self.flag(parameterNode, "Simulate") else None
        left = left or inputNode
        srNode = parameterNode.GetNodeReference("OutputSR")
        if srNode is None:
            raise ValueError("Nothing to compare yet: run the super-resolution first.")
        overlay = parameterNode.GetParameter("Overlay")
        overlayNode = parameterNode.GetNodeReference(OUTPUTS[overlay][0]) if overlay in OUTPUTS else None
        opacity = float(parameterNode.GetParameter("OverlayOpacity") or 0.5)
        labelNode = parameterNode.GetNodeReference("OutputHallucination") if self.flag(parameterNode, "ShowHallucination") else None
        orientation = parameterNode.GetParameter("Axis").capitalize()

        layoutNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layoutNode is not None:
            if not layoutNode.IsLayoutDescription(LAYOUT_ID):
                layoutNode.AddLayoutDescription(LAYOUT_ID, self.compareLayoutDescription(orientation))
            else:
                layoutNode.SetLayoutDescription(LAYOUT_ID, self.compareLayoutDescription(orientation))
            layoutNode.SetViewArrangement(LAYOUT_ID)

        for layoutName, background, foreground, label in (("Red", left, None, None),
                                                         ("Yellow", srNode, overlayNode, labelNode)):
            composite = self.sliceCompositeNode(layoutName)
            if composite is None:
                continue  # the layout manager creates the views; none exist without a GUI
            composite.SetBackgroundVolumeID(background.GetID())
            composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
            composite.SetForegroundOpacity(opacity if foreground is not None else 0.0)
            composite.SetLabelVolumeID(label.GetID() if label is not None else None)
            composite.SetLabelOpacity(1.0)
            composite.SetLinkedControl(True)
            composite.SetHotLinkedControl(True)
            sliceNode = self.viewNode("vtkMRMLSliceNode", layoutName)
            if sliceNode is not None:
                sliceNode.SetOrientation(orientation)

        table = parameterNode.GetNodeReference("MetricsTable")
        if table is not None:
            selection = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSelectionNode")
            if selection is not None:
                selection.SetActiveTableID(table.GetID())
            for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableViewNode")):
                slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLTableViewNode").SetTableNodeID(table.GetID())
        application = getattr(getattr(slicer, "app", None), "applicationLogic", None)
        if application is not None:  # inside Slicer: fit both views to the volumes
            slicer.app.applicationLogic().FitSliceToAll()
