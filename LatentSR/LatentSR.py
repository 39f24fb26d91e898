"""LatentSR 3D Slicer module: super-resolve a loaded volume slice by slice and review it beside the original.

A thin layer: the widget (``Resources/UI/LatentSR.ui``) edits the parameter node and follows a
background run; :mod:`LatentSRLogic` does the work with no GUI dependency; all science lives in
LatentSRLib. Python dependencies are installed only after the user agrees, never at import.
"""

import logging
from pathlib import Path

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LatentSRLogic import (
    OUTPUTS,
    LatentSRLogic,
    calibrationStatus,
    formatDuration,
    missingRequirements,
    readModelConfig,
)

REQUIREMENTS = Path(__file__).resolve().parent / "Resources" / "requirements.txt"
# the widgets that edit a plain parameter: (widget name, parameter, kind)
PARAMETER_WIDGETS = (
    ("modelPathLineEdit", "ModelPath", "path"),
    ("axisComboBox", "Axis", "combo"),
    ("stepsSpinBox", "Steps", "spin"),
    ("samplesSpinBox", "Samples", "spin"),
    ("deviceComboBox", "Device", "combo"),
    ("dataConsistencyCheckBox", "DataConsistency", "check"),
    ("simulateCheckBox", "Simulate", "check"),
    ("overlayComboBox", "Overlay", "combo"),
    ("overlayOpacitySliderWidget", "OverlayOpacity", "slider"),
    ("showHallucinationCheckBox", "ShowHallucination", "check"),
    ("trustToleranceLineEdit", "TrustTolerance", "text"),
)
# the widgets that select a node: (widget name, parameter-node reference)
NODE_WIDGETS = (
    ("inputVolumeSelector", "InputVolume"),
    ("referenceVolumeSelector", "ReferenceVolume"),
    ("segmentationSelector", "Segmentation"),
    ("srVolumeSelector", "OutputSR"),
)
OUTPUT_CHECKBOXES = {
    "uncertainty": "uncertaintyCheckBox",
    "consistency": "consistencyCheckBox",
    "difference": "differenceCheckBox",
    "hallucination": "hallucinationCheckBox",
}


class LatentSR(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LatentSR"
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["LatentSR developers"]
        self.parent.helpText = (
            "Latent-diffusion super-resolution of MRI and X-ray volumes, slice by slice on the local GPU "
            "(CPU fallback), shown beside the original with difference, hallucination and uncertainty maps "
            "and region metrics. For research and demonstration, not for diagnosis."
        )
        self.parent.acknowledgementText = "Built on MONAI, PyTorch, SimpleITK and pydicom."


class LatentSRWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUI = False
        self.job = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LatentSR.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LatentSRLogic()

        self.timer = qt.QTimer()
        self.timer.setInterval(250)
        self.timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for name, _ in NODE_WIDGETS:
            getattr(self.ui, name).connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        for name in ("axisComboBox", "deviceComboBox", "overlayComboBox"):
            getattr(self.ui, name).connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        for name in ("stepsSpinBox", "samplesSpinBox"):
            getattr(self.ui, name).connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.overlayOpacitySliderWidget.connect("valueChanged(double)", self.updateParameterNodeFromGUI)
        self.ui.trustToleranceLineEdit.connect("textChanged(QString)", self.updateParameterNodeFromGUI)
        for name in ("dataConsistencyCheckBox", "simulateCheckBox", "showHallucinationCheckBox", *OUTPUT_CHECKBOXES.values()):
            getattr(self.ui, name).connect("toggled(bool)", self.updateParameterNodeFromGUI)
        # overlay settings apply to an existing comparison at once
        self.ui.overlayComboBox.connect("currentIndexChanged(int)", self.refreshComparison)
        self.ui.overlayOpacitySliderWidget.connect("valueChanged(double)", self.refreshComparison)
        self.ui.showHallucinationCheckBox.connect("toggled(bool)", self.refreshComparison)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        if self.job is not None and self.job.running:
            self.job.cancel()
        self.timer.stop()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk_modified_event(), self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ---- parameter node <-> GUI ------------------------------------------------------------------
    def initializeParameterNode(self):
        parameterNode = self.logic.getParameterNode()
        if not parameterNode.GetNodeReference("InputVolume"):
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first is not None:
                parameterNode.SetNodeReferenceID("InputVolume", first.GetID())
        self.setParameterNode(parameterNode)

    def setParameterNode(self, parameterNode):
        if parameterNode is not None:
            self.logic.setDefaultParameters(parameterNode)
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk_modified_event(), self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode is not None:
            self.addObserver(self._parameterNode, vtk_modified_event(), self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            node = self._parameterNode
            self.updateOverlayChoices(self.logic.overlayChoices(node))
            for name, reference in NODE_WIDGETS:
                getattr(self.ui, name).setCurrentNode(node.GetNodeReference(reference))
            for name, key, kind in PARAMETER_WIDGETS:
                widget, value = getattr(self.ui, name), node.GetParameter(key)
                if kind == "path":
                    widget.currentPath = value
                elif kind == "combo":
                    widget.setCurrentIndex(max(0, widget.findText(value)))
                elif kind == "spin":
                    widget.value = int(value or 0)
                elif kind == "slider":
                    widget.value = float(value or 0)
                elif kind == "text":
                    if widget.text != value:  # keep the cursor while typing
                        widget.text = value
                else:
                    widget.checked = value.lower() == "true"
            outputs = set(self.logic.requestedOutputs(node))
            for role, name in OUTPUT_CHECKBOXES.items():
                getattr(self.ui, name).checked = role in outputs
            simulate = self.logic.flag(node, "Simulate")
            self.ui.referenceVolumeSelector.enabled = not simulate
            notes = [self.modelDescription(node.GetParameter("ModelPath")), self.logic.resolutionNote(node),
                     self.logic.calibrationNote(node)]
            self.ui.modelInfoLabel.text = "\n".join(note for note in notes if note)
            calibrated = self.logic.modelCalibration(node) is not None
            self.ui.trustToleranceLineEdit.enabled = calibrated
            self.ui.trustToleranceLineEdit.toolTip = (
                "Intensity units of the input: pixels whose calibrated interval half-width is at most this are "
                "trusted; the others are highlighted. Empty: no trust mask." if calibrated else
                "Needs a calibrated model (latentsr calibrate); this model is uncalibrated.")
            running = self.job is not None
            self.ui.applyButton.enabled = not running and node.GetNodeReference("InputVolume") is not None
            self.ui.applyButton.toolTip = "Super-resolve the input volume." if self.ui.applyButton.enabled else "Select an input volume."
            self.ui.cancelButton.enabled = running
            self.ui.compareButton.enabled = node.GetNodeReference("OutputSR") is not None and not running
        finally:
            self._updatingGUI = False

    def updateParameterNodeFromGUI(self, *_):
        if self._parameterNode is None or self._updatingGUI:
            return
        node = self._parameterNode
        wasModified = node.StartModify()
        try:
            for name, reference in NODE_WIDGETS:
                current = getattr(self.ui, name).currentNode()
                node.SetNodeReferenceID(reference, current.GetID() if current is not None else None)
            for name, key, kind in PARAMETER_WIDGETS:
                widget = getattr(self.ui, name)
                if kind == "path":
                    value = widget.currentPath
                elif kind == "combo":
                    value = widget.currentText
                elif kind in ("spin", "slider"):
                    value = str(widget.value)
                elif kind == "text":
                    value = widget.text.strip()
                else:
                    value = "true" if widget.checked else "false"
                node.SetParameter(key, value)
            node.SetParameter("Outputs", ",".join(role for role, name in OUTPUT_CHECKBOXES.items()
                                                  if getattr(self.ui, name).checked))
        finally:
            node.EndModify(wasModified)

    def updateOverlayChoices(self, choices):
        """Offer exactly ``choices`` in the overlay box (the calibrated ones come and go with the model);
        no signals while the items change: the parameter node keeps its choice."""
        combo = self.ui.overlayComboBox
        if [combo.itemText(i) for i in range(combo.count)] == list(choices):
            return
        combo.blockSignals(True)
        try:
            combo.clear()
            for choice in choices:
                combo.addItem(choice)
        finally:
            combo.blockSignals(False)

    @staticmethod
    def modelDescription(path):
        if not path or not (Path(path) / "config.json").is_file():
            return "No model selected: choose a trained model folder."
        try:
            info = readModelConfig(path)
            task = info.get("task", {})
            autoencoder = info.get("autoencoder", {})
            grid = info.get("grid", {}).get("size")
            return (f"{task.get('name', '?')} ({task.get('mode', '?')} x{task.get('scale', '?')}) in the latent space of "
                    f"{autoencoder.get('name', '?')}, {info.get('denoiser', {}).get('preset', '?')} denoiser, grid {grid}")
        except (OSError, ValueError) as error:
            return f"Cannot read {Path(path) / 'config.json'}: {error}"

    # ---- dependencies ----------------------------------------------------------------------------
    def ensureDependencies(self):
        """Install missing Python packages after asking; returns True when everything is there."""
        missing = missingRequirements(REQUIREMENTS, extra=("torch",))
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                "LatentSR needs Python packages that are not installed yet:\n\n" + "\n".join(missing)
                + "\n\nInstall them now? PyTorch alone is a download of several GB; Slicer stays usable "
                  "but installing takes a few minutes.", windowTitle="LatentSR: install dependencies"):
            return False
        with slicer.util.WaitCursor():
            if "torch" in missing:
                try:
                    import PyTorchUtils  # the PyTorch extension picks the build for this GPU

                    if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                        raise RuntimeError("PyTorch could not be installed")
                except ImportError:
                    slicer.util.pip_install("torch torchvision")
            pydeps = getattr(slicer, "pydeps", None)
            if pydeps is not None and hasattr(pydeps, "pip_ensure"):
                pydeps.pip_ensure(pydeps.load_requirements(str(REQUIREMENTS)), requester="LatentSR",
                                  skip_packages=["torch", "torchvision", "SimpleITK"])
            else:
                slicer.util.pip_install(["-r", str(REQUIREMENTS)])
        still = missingRequirements(REQUIREMENTS, extra=("torch",))
        if still:
            raise RuntimeError("Still missing after installation: " + ", ".join(still))
        return True

    # ---- running ---------------------------------------------------------------------------------
    def onApplyButton(self):
        with slicer.util.tryWithErrorDisplay("LatentSR could not start.", waitCursor=True):
            if not self.ensureDependencies():
                return
            self.updateParameterNodeFromGUI()
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self.job = self.logic.startBackground(self._parameterNode)
            self.ui.statusLabel.text = "Starting..."
            self.appendLog(" ".join(self.job.background.command))
            self.timer.start()
            self.updateGUIFromParameterNode()

    def onCancelButton(self):
        if self.job is not None:
            self.job.cancel()
            self.ui.statusLabel.text = "Cancelled."
            self.appendLog("Cancelled by the user; nothing was written.")
        self.job = None
        self.timer.stop()
        self.updateGUIFromParameterNode()

    def onTimer(self):
        job = self.job
        if job is None:
            self.timer.stop()
            return
        for event in job.poll():
            self.ui.progressBar.value = int(round(event.fraction * 1000))
            self.ui.statusLabel.text = (f"{event.message}, elapsed {formatDuration(job.elapsed)}, "
                                        f"about {formatDuration(job.remaining())} left")
        if job.running:
            return
        self.timer.stop()
        self.job = None
        try:
            metrics = job.finish()
        except RuntimeError as error:
            self.ui.statusLabel.text = "Failed."
            self.appendLog(str(error))
            slicer.util.errorDisplay(f"LatentSR failed: {error}")
        else:
            for line in job.background.log:
                self.appendLog(line)
            self.ui.progressBar.value = 1000
            calibration = calibrationStatus(metrics)
            self.ui.statusLabel.text = (f"Done: {metrics.get('slices')} slices in {metrics.get('seconds', 0):.1f} s "
                                        f"on {metrics.get('device')}." + (f"\n{calibration}" if calibration else ""))
            if calibration:
                self.appendLog(calibration)
            self.logic.showComparison(self._parameterNode)
        self.updateGUIFromParameterNode()

    def appendLog(self, text):
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(f"LatentSR: {text}")

    def onCompareButton(self):
        with slicer.util.tryWithErrorDisplay("Cannot show the comparison.", waitCursor=True):
            self.updateParameterNodeFromGUI()
            self.logic.showComparison(self._parameterNode)

    def refreshComparison(self, *_):
        if self._parameterNode is not None and self._parameterNode.GetNodeReference("OutputSR") is not None and self.job is None:
            self.logic.showComparison(self._parameterNode)


def vtk_modified_event():
    import vtk

    return vtk.vtkCommand.ModifiedEvent


class LatentSRTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode: Reload and Test). Needs a model: $LATENTSR_MODEL or the
    bundled reference model; simulates low resolution from a synthetic volume and checks the outputs."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SimulateSuperResolveAndCompare()

    def test_SimulateSuperResolveAndCompare(self):
        import numpy as np

        logic = LatentSRLogic()
        parameterNode = logic.getParameterNode()
        if not parameterNode.GetParameter("ModelPath"):
            self.delayDisplay("No LatentSR model found (set LATENTSR_MODEL); skipping the run")
            return
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
        k, j, i = np.mgrid[0:6, 0:64, 0:64]
        slicer.util.updateVolumeFromArray(volume, (100 * np.sin(i / 5.0) * np.cos(j / 7.0) + 10 * k).astype(np.float32))
        volume.SetSpacing(0.8, 0.8, 3.0)
        volume.SetOrigin(10, -20, 5)
        parameterNode.SetNodeReferenceID("InputVolume", volume.GetID())
        parameterNode.SetParameter("Simulate", "true")
        parameterNode.SetParameter("Steps", "2")
        parameterNode.SetParameter("Device", "cpu")
        metrics = logic.process(parameterNode)
        self.assertIn("reference", metrics)
        for role in ("sr", "uncertainty", "consistency", "difference", "hallucination"):
            node = parameterNode.GetNodeReference(OUTPUTS[role][0])
            self.assertIsNotNone(node, role)
            self.assertTrue(LatentSRLogic.sameGeometry(node, volume), role)
        # the calibrated interval only from a calibrated model; an uncalibrated one says so
        if logic.modelCalibration(parameterNode) is None:
            self.assertEqual(metrics["calibration"], "uncalibrated")
            self.assertIsNone(parameterNode.GetNodeReference(OUTPUTS["interval"][0]))
            self.assertNotIn("interval", logic.overlayChoices(parameterNode))
        else:
            self.assertIn("coverage", metrics["calibration"])
            self.assertIsNotNone(parameterNode.GetNodeReference(OUTPUTS["interval"][0]))
        logic.showComparison(parameterNode)
        table = parameterNode.GetNodeReference("MetricsTable")
        self.assertGreater(table.GetNumberOfRows(), 3)
        self.delayDisplay("LatentSR test passed")

