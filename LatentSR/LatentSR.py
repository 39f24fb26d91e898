"""LatentSR 3D Slicer module: a thin layer over LatentSRLib (all science lives in the library).

This first version simulates a low-resolution acquisition of a loaded volume (the input of the
super-resolution task) on the volume's own grid. Super-resolution, maps and metrics build on it.
"""

import logging

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

DEGRADATION_MODES = ("sr", "refine", "kspace")
PLANES = ("axial", "coronal", "sagittal")


class LatentSR(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LatentSR"
        self.parent.categories = ["Filtering"]
        self.parent.contributors = ["LatentSR developers"]
        self.parent.helpText = (
            "Latent-diffusion super-resolution for MRI and X-ray, slice by slice, with maps for review. "
            "For research and demonstration, not for diagnosis."
        )
        self.parent.acknowledgementText = "Built on MONAI, PyTorch, SimpleITK and pydicom."


class LatentSRWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        import ctk
        import qt

        self.logic = LatentSRLogic()
        box = ctk.ctkCollapsibleButton()
        box.text = "Simulate low resolution"
        self.layout.addWidget(box)
        form = qt.QFormLayout(box)

        self.inputSelector = self._volumeSelector(addEnabled=False)
        form.addRow("Input volume:", self.inputSelector)
        self.modeCombo = qt.QComboBox()
        self.modeCombo.addItems(list(DEGRADATION_MODES))
        form.addRow("Degradation:", self.modeCombo)
        self.scaleSpin = qt.QSpinBox()
        self.scaleSpin.setRange(1, 16)
        self.scaleSpin.value = 4
        form.addRow("Scale:", self.scaleSpin)
        self.planeCombo = qt.QComboBox()
        self.planeCombo.addItems(list(PLANES))
        form.addRow("Slice plane:", self.planeCombo)
        self.outputSelector = self._volumeSelector(addEnabled=True)
        form.addRow("Output volume:", self.outputSelector)
        self.applyButton = qt.QPushButton("Apply")
        form.addRow(self.applyButton)
        self.applyButton.connect("clicked(bool)", self.onApply)
        self.layout.addStretch(1)

    def _volumeSelector(self, addEnabled):
        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        selector.addEnabled = addEnabled
        selector.removeEnabled = addEnabled
        selector.noneEnabled = addEnabled
        selector.renameEnabled = addEnabled
        selector.setMRMLScene(slicer.mrmlScene)
        return selector

    def onApply(self):
        with slicer.util.tryWithErrorDisplay("Simulating low resolution failed.", waitCursor=True):
            inputNode = self.inputSelector.currentNode()
            if inputNode is None:
                raise ValueError("Select an input volume first.")
            outputNode = self.outputSelector.currentNode()
            if outputNode is None:
                outputNode = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLScalarVolumeNode", f"{inputNode.GetName()}_lowres")
                self.outputSelector.setCurrentNode(outputNode)
            self.logic.simulateLowResolution(
                inputNode, outputNode, mode=self.modeCombo.currentText, scale=self.scaleSpin.value,
                plane=self.planeCombo.currentText)
            slicer.util.setSliceViewerLayers(background=outputNode, foreground=inputNode, foregroundOpacity=0.0)


class LatentSRLogic(ScriptedLoadableModuleLogic):
    """Slicer <-> LatentSRLib: volume nodes in, volume nodes out, geometry kept (IJK-to-RAS)."""

    @staticmethod
    def imageFromVolumeNode(volumeNode):
        import numpy as np
        import vtk

        from LatentSRLib.io import MedicalImage

        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        ijkToRas = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        array = slicer.util.arrayFromVolume(volumeNode)  # (k, j, i), as LatentSRLib expects
        return MedicalImage.from_ijk_to_ras(np.array(array), ijkToRas, metadata={"name": volumeNode.GetName()})

    @staticmethod
    def updateVolumeNodeFromImage(volumeNode, image):
        import vtk

        matrix = vtk.vtkMatrix4x4()
        ijkToRas = image.ijk_to_ras()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(ijkToRas[r, c]))
        slicer.util.updateVolumeFromArray(volumeNode, image.array)
        volumeNode.SetIJKToRASMatrix(matrix)
        volumeNode.CreateDefaultDisplayNodes()

    def simulateLowResolution(self, inputNode, outputNode, mode="sr", scale=4, plane="axial"):
        """Write into ``outputNode`` a low-resolution version of ``inputNode`` on the same grid."""
        from LatentSRLib.simulate import simulate_low_resolution

        image = self.imageFromVolumeNode(inputNode)
        low = simulate_low_resolution(image, mode=mode, scale=scale, plane=plane)
        self.updateVolumeNodeFromImage(outputNode, low)
        logging.info(f"LatentSR: simulated {mode} x{scale} ({plane}) of {inputNode.GetName()}")
        return outputNode


class LatentSRTest(ScriptedLoadableModuleTest):
    def runTest(self):
        import numpy as np

        slicer.mrmlScene.Clear()
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ramp")
        k, j, i = np.mgrid[0:8, 0:32, 0:32]
        slicer.util.updateVolumeFromArray(node, (i * j + k).astype(np.float32))
        node.SetSpacing(0.5, 0.5, 2.0)
        out = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "low")
        LatentSRLogic().simulateLowResolution(node, out, scale=2)
        self.assertEqual(out.GetSpacing(), node.GetSpacing())
        self.assertEqual(slicer.util.arrayFromVolume(out).shape, (8, 32, 32))
        self.delayDisplay("LatentSR simulate test passed")
