"""The package's promises about itself: no GUI imports in the engine, every file in the Slicer package."""

from __future__ import annotations

import ast
import re

import numpy as np

from LatentSRLib.io import MedicalImage
from conftest import REPO_ROOT

LIB = REPO_ROOT / "LatentSRLib"
FORBIDDEN = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "slicer_core"}


def test_engine_never_imports_slicer_qt_ctk_or_vtk():
    offenders = []
    for path in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders


def test_slicer_cmake_lists_every_library_file():
    cmake = (REPO_ROOT / "LatentSR" / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"^\s*(LatentSRLib/\S+\.py)\s*$", cmake, flags=re.MULTILINE))
    on_disk = {str(p.relative_to(REPO_ROOT)) for p in LIB.rglob("*.py")}
    assert on_disk - listed == set(), "files missing from LatentSR/CMakeLists.txt (left out of the extension)"
    assert listed - on_disk == set(), "files listed in LatentSR/CMakeLists.txt that do not exist"
    assert (REPO_ROOT / "LatentSR" / "LatentSR.py").exists()


def test_ijk_to_ras_round_trip():
    # Slicer's volume nodes carry IJK-to-RAS; the engine works in LPS: the bridge must be exact
    rotation = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    image = MedicalImage(np.zeros((4, 5, 6)), (0.5, 0.7, 2.0), (10.0, -20.0, 30.0), rotation)
    again = MedicalImage.from_ijk_to_ras(image.array, image.ijk_to_ras())
    assert again.has_same_geometry(image, atol=1e-12)
    ras_of_first_voxel = image.ijk_to_ras() @ np.array([0, 0, 0, 1.0])
    assert np.allclose(ras_of_first_voxel[:3], [-10.0, 20.0, 30.0])
