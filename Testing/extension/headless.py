"""Headless Slicer for the module's tests: real MRML nodes from ``slicer-core`` plus a small shim.

(Imported by the tests beside it rather than being a conftest, so that the suite's own
``conftest`` stays the only module of that name.)

3D Slicer cannot be installed on the development and CI machines. ``slicer-core`` (PyPI) provides
Slicer's MRML and logic classes without Qt; what the module imports beyond them (qt, ctk and
``slicer.ScriptedLoadableModule``) is supplied here, as thin stand-ins. The ``scene`` fixture plays
the part of Slicer's application: a fresh scene with the default colour tables, the selection and
layout nodes, and the Red and Yellow slice views (with their composite nodes) that the layout
manager would create.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from conftest import REPO_ROOT

MODULE_DIR = REPO_ROOT / "LatentSR"

try:
    import slicer_core  # noqa: F401  (the real MRML classes; a different package named "slicer" lacks it)
    import slicer
    import vtk  # noqa: F401
except ImportError:  # pragma: no cover - installed by the test extra
    slicer = None


def _install_shim() -> None:
    """qt, ctk and slicer.ScriptedLoadableModule stand-ins (what Slicer's application provides)."""
    for name in ("qt", "ctk"):
        sys.modules.setdefault(name, types.ModuleType(name))

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

        def resourcePath(self, filename):
            return str(MODULE_DIR / "Resources" / filename)

    class ScriptedLoadableModuleLogic:
        """As Slicer's: the module's singleton parameter node, created with the module's defaults."""

        def __init__(self, parent=None):
            self.moduleName = type(self).__name__.removesuffix("Logic")

        def getParameterNode(self):
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is not None:
                return node
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetModuleName(self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            if hasattr(self, "setDefaultParameters"):
                self.setDefaultParameters(node)
            return scene.AddNode(node)

    class ScriptedLoadableModuleTest:
        def delayDisplay(self, message, msec=0):
            print(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(scripted, cls.__name__, cls)
    sys.modules["slicer.ScriptedLoadableModule"] = scripted
    slicer.ScriptedLoadableModule = scripted
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))


if slicer is not None:
    _install_shim()


def make_scene():
    """A fresh MRML scene set as ``slicer.mrmlScene``, with what Slicer's GUI would have created:
    colour tables, layout node, the Red and Yellow slice views (``scene.views``: their slice logics,
    for rendering) and a table view."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    application = slicer.vtkMRMLApplicationLogic()
    application.SetMRMLScene(scene)
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    if scene.GetFirstNodeByClass("vtkMRMLLayoutNode") is None:
        scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    views = {}
    for name in ("Red", "Yellow"):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(application)
        logic.AddSliceNode(name)
        views[name] = logic
    table_view = scene.AddNewNodeByClass("vtkMRMLTableViewNode")
    table_view.SetSingletonTag("TableView1")
    scene.views = views
    scene.keep_alive = (application, colors)
    return scene


def close_scene(scene) -> None:
    """Detach the slice and application logics from ``scene`` and clear it: left to the interpreter's
    exit, VTK destroys them in an order that crashes (a segmentation fault after the work is done)."""
    for logic in getattr(scene, "views", {}).values():
        logic.SetMRMLScene(None)
    for logic in getattr(scene, "keep_alive", ()):
        logic.SetMRMLScene(None)
    scene.Clear(True)
    if slicer.mrmlScene is scene:
        slicer.mrmlScene = None


@pytest.fixture()
def scene():
    """:func:`make_scene` for one test."""
    if slicer is None:
        pytest.skip("slicer-core is not installed (pip install -e '.[test]')")
    yield make_scene()
    slicer.mrmlScene = None


def module_path(*parts: str) -> Path:
    return MODULE_DIR.joinpath(*parts)
