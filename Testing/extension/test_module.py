"""The Slicer module, headless: its Logic against real MRML nodes (slicer-core), and static checks of
what Slicer would load (the .ui, the CMake lists, the requirements)."""

from __future__ import annotations

import ast
import json
import math
import re
import sys
import time
import tomllib
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from conftest import REPO_ROOT, make_tiny_sr_model
from headless import module_path, scene, slicer  # noqa: F401  (scene is a fixture)

UI_FILE = module_path("Resources", "UI", "LatentSR.ui")


def ui_widget_names() -> set[str]:
    return {w.get("name") for w in ElementTree.parse(UI_FILE).iter("widget")}


# ---- static checks (no Slicer needed) --------------------------------------------------------------
def test_every_ui_widget_the_code_uses_exists_in_the_ui_file():
    source = module_path("LatentSR.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    # names reached through getattr(self.ui, name): the string constants of the tables
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in (
                "PARAMETER_WIDGETS", "NODE_WIDGETS", "OUTPUT_CHECKBOXES"):
            value = ast.literal_eval(node.value)
            entries = value.values() if isinstance(value, dict) else [row[0] for row in value]
            used |= set(entries)
    assert used, "no widgets found: the parser is broken"
    missing = used - ui_widget_names() - {"setMRMLScene"}
    assert not missing, f"used in LatentSR.py but not in {UI_FILE.name}: {sorted(missing)}"


def test_cmake_lists_every_module_file_and_resource():
    cmake = module_path("CMakeLists.txt").read_text()
    scripts = set(re.findall(r"^\s*(\w+\.py)\s*$", cmake, flags=re.MULTILINE))
    on_disk = {p.name for p in module_path().glob("*.py")}
    assert scripts == on_disk
    resources = set(re.findall(r"^\s*(Resources/\S+)\s*$", cmake, flags=re.MULTILINE))
    resource_files = {str(p.relative_to(module_path())) for p in module_path("Resources").rglob("*") if p.is_file()}
    assert resources == resource_files
    top = (REPO_ROOT / "CMakeLists.txt").read_text()
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                     "EXTENSION_SCREENSHOTURLS", "EXTENSION_CONTRIBUTORS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({variable} "[^"]+"\)', top), f"{variable} is empty"
    catalog = json.loads((REPO_ROOT / "LatentSR.json").read_text())
    assert catalog["build_dependencies"] == ["PyTorch"] and catalog["category"] == "Filtering"


def test_extension_requirements_follow_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    name = lambda text: re.split(r"[<>=!~; \[]", text, maxsplit=1)[0].lower()  # noqa: E731
    declared = {name(d) for d in project["dependencies"]}
    lines = [line.split("#")[0].strip() for line in module_path("Resources", "requirements.txt").read_text().splitlines()]
    required = {name(line) for line in lines if line}
    # Slicer ships numpy and SimpleITK, torch comes through the PyTorch extension, and the rest
    # serve training, evaluation and the command-line demo only (`latentsr sr` does not need them;
    # MONAI imports ignite, tensorboard and yaml only when they are installed)
    not_in_slicer = {"numpy", "simpleitk", "torch", "torchvision", "pytorch-ignite", "tensorboard", "fire", "pyyaml",
                     "stlpips-pytorch", "spandrel", "nilearn", "pydicom-data"}
    assert required == declared - not_in_slicer


def test_missing_requirements_names_absent_and_outdated_packages(tmp_path):
    from LatentSRLogic import missingRequirements

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nnumpy>=1.0\nnumpy<1.0  # impossible\nsurely-not-installed-latentsr-pkg\n")
    missing = missingRequirements(requirements, extra=("scipy",))
    assert missing[0].startswith("numpy<1.0 (found ") and missing[1] == "surely-not-installed-latentsr-pkg"
    assert missingRequirements(module_path("Resources", "requirements.txt")) == []


def test_module_imports_without_torch_and_widget_parameters_have_defaults():
    # Slicer imports the module at start-up, before any dependency may be installed: only Slicer's
    # own packages at module level; torch and LatentSRLib's engine are imported inside functions
    allowed = {"__future__", "json", "logging", "math", "os", "shutil", "sys", "tempfile", "time", "pathlib",
               "numpy", "qt", "ctk", "vtk", "slicer", "LatentSRLogic"}
    for name in ("LatentSR.py", "LatentSRLogic.py"):
        tree = ast.parse(module_path(name).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        modules = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                   for n in top for a in (n.names if isinstance(n, ast.Import) else [n])}
        assert modules <= allowed, f"{name} imports at start-up: {sorted(modules - allowed)}"
    import LatentSR
    import LatentSRLogic

    assert {key for _, key, _ in LatentSR.PARAMETER_WIDGETS} <= set(LatentSRLogic.DEFAULTS)
    assert set(LatentSR.OUTPUT_CHECKBOXES) <= set(LatentSRLogic.OUTPUTS)


def test_metrics_rows_and_time_formatting():
    from LatentSRLogic import formatDuration, metricsRows, remainingSeconds

    rows = metricsRows({"consistency_mean": 0.01, "seconds_per_slice": 0.5, "reference": {
        "psnr_sr": 31.234, "psnr_lr": 29.0, "ssim_sr": 0.9, "ssim_lr": 0.8, "psnr_ae_ceiling": 35.0,
        "hallucinated_fraction": 0.0123, "lost_fraction": 0.2,
        "regions": {"inside": {"psnr_sr": 25.0, "psnr_lr": 24.0, "ssim_sr": 0.7, "ssim_lr": 0.6}}}})
    table = {measure: (sr, lr) for measure, sr, lr in rows}
    assert table["PSNR whole volume (dB)"] == ("31.23", "29.00")
    assert table["PSNR tumour/ROI (dB)"] == ("25.00", "24.00")
    assert table["Hallucinated pixels (%)"] == ("1.23", "")
    assert [r[0] for r in metricsRows({"seconds_per_slice": 1.0})] == [
        "Mean |degrade(SR) - LR| (window units)", "Seconds per slice"]
    assert remainingSeconds(0.25, 10.0) == pytest.approx(30.0) and remainingSeconds(0.0, 5.0) is None
    assert formatDuration(75) == "01:15" and formatDuration(3725) == "1:02:05" and formatDuration(None) == "--:--"


# ---- the Logic on real MRML nodes --------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_tiny_sr_model(tmp_path_factory.mktemp("slicer-model"), grid=64)


def volume_node(scene, image, name, label=False):
    from LatentSRLogic import LatentSRLogic

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode", name)
    LatentSRLogic.updateVolumeNodeFromImage(node, image)
    return node


@pytest.fixture()
def brats_case(scene, brats_flair, brats_tumour_mask):
    """A 20-slice crop of the BraTS FLAIR through the tumour, and its approximate tumour mask as a
    segmentation node, as a radiologist would have them loaded."""
    from LatentSRLib.io import MedicalImage, read_image

    flair, mask = read_image(brats_flair), read_image(brats_tumour_mask)
    crop = slice(70, 90)
    origin = tuple((flair.index_to_world() @ np.array([0, 0, crop.start, 1.0]))[:3])
    volume = volume_node(scene, MedicalImage(flair.array[crop], flair.spacing, origin, flair.direction), "FLAIR")
    labels = volume_node(scene, MedicalImage((mask.array[crop] > 0).astype(np.uint8), mask.spacing, origin,
                                             mask.direction), "tumour-labels", label=True)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tumour")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    scene.RemoveNode(labels)
    return volume, segmentation


def configured(logic, volume, segmentation, model_folder):
    parameters = logic.getParameterNode()
    parameters.SetNodeReferenceID("InputVolume", volume.GetID())
    parameters.SetNodeReferenceID("Segmentation", segmentation.GetID())
    parameters.SetParameter("ModelPath", str(model_folder))
    parameters.SetParameter("Simulate", "true")
    parameters.SetParameter("Steps", "1")
    parameters.SetParameter("Device", "cpu")
    return parameters


def render(view) -> np.ndarray:
    """The composited slice view (background, foreground, label) as an (H, W, 4) uint8 array."""
    from vtk.util.numpy_support import vtk_to_numpy

    producer = view.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1).copy()


@pytest.mark.shared_data
@pytest.mark.slow
def test_super_resolve_compare_and_measure_a_brats_case(scene, brats_case, model_folder, tmp_path):
    from LatentSRLogic import HALLUCINATED, LOST, OUTPUTS, LatentSRLogic

    volume, segmentation = brats_case
    logic = LatentSRLogic()
    parameters = configured(logic, volume, segmentation, model_folder)
    assert parameters.GetParameter("DataConsistency") == "true"  # the module's default: the fidelity end
    # the detail end here: the untrained test model's raw samples give the overlays enough to render
    parameters.SetParameter("DataConsistency", "false")
    metrics = logic.process(parameters)
    assert metrics["settings"]["data_consistency"] is False

    # every output on the input's exact grid (IJK-to-RAS and dimensions): simulation super-resolves back onto it
    expected = LatentSRLogic.ijkToRas(volume)
    for role in ("sr", "uncertainty", "consistency", "difference", "hallucination"):
        node = parameters.GetNodeReference(OUTPUTS[role][0])
        assert node is not None, role
        assert np.array_equal(LatentSRLogic.ijkToRas(node), expected), role
        assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions(), role
    # the simulated low-resolution scan lies on the coarse grid: 4x the in-plane spacing, same field of view
    lr_node = parameters.GetNodeReference("OutputLR")
    dims = volume.GetImageData().GetDimensions()
    assert lr_node.GetImageData().GetDimensions() == (-(-dims[0] // 4), -(-dims[1] // 4), dims[2])
    coarse = LatentSRLogic.ijkToRas(lr_node)
    np.testing.assert_allclose(coarse[:3, :2], expected[:3, :2] * 4, atol=1e-4)
    np.testing.assert_allclose(coarse[:3, 3], expected[:3, 3] + 1.5 * (expected[:3, 0] + expected[:3, 1]), atol=1e-3)
    hallucination = parameters.GetNodeReference("OutputHallucination")
    assert hallucination.IsA("vtkMRMLLabelMapVolumeNode")
    labels = slicer.util.arrayFromVolume(hallucination)
    assert set(np.unique(labels)) <= {0, HALLUCINATED, LOST} and labels.any()
    assert hallucination.GetDisplayNode().GetColorNode().GetName() == "LatentSR hallucination"

    # the metrics table: whole volume, tumour and background, against the LR input
    table = parameters.GetNodeReference("MetricsTable")
    rows = {table.GetCellText(r, 0): (table.GetCellText(r, 1), table.GetCellText(r, 2))
            for r in range(table.GetNumberOfRows())}
    reference = metrics["reference"]
    inside, background = reference["regions"]["inside"], reference["regions"]["background"]
    # each cell is the value of the run's metrics (2 decimals for PSNR and %, 4 for SSIM), SR and LR input
    expected_cells = {
        "PSNR whole volume (dB)": (reference["psnr_sr"], reference["psnr_lr"], 2, 1),
        "SSIM whole volume": (reference["ssim_sr"], reference["ssim_lr"], 4, 1),
        "PSNR tumour/ROI (dB)": (inside["psnr_sr"], inside["psnr_lr"], 2, 1),
        "SSIM tumour/ROI": (inside["ssim_sr"], inside["ssim_lr"], 4, 1),
        "PSNR background (dB)": (background["psnr_sr"], background["psnr_lr"], 2, 1),
        "Autoencoder ceiling PSNR (dB)": (reference["psnr_ae_ceiling"], None, 2, 1),
        "Hallucinated pixels (%)": (reference["hallucinated_fraction"], None, 2, 100),
        "Lost pixels (%)": (reference["lost_fraction"], None, 2, 100),
    }
    for measure, (sr_value, lr_value, digits, scale) in expected_cells.items():
        assert measure in rows, measure
        assert sr_value is not None and math.isfinite(sr_value), measure
        assert float(rows[measure][0]) == pytest.approx(sr_value * scale, abs=0.51 * 10 ** -digits), measure
        if lr_value is None:
            assert rows[measure][1] == "", measure
        else:
            assert float(rows[measure][1]) == pytest.approx(lr_value * scale, abs=0.51 * 10 ** -digits), measure
    assert inside["pixels"] > 0
    # whole-volume PSNR recomputed with numpy from the nodes, in the run's [0, 1] window (peak 1): the
    # reference is the input volume itself (simulate), the LR the simulated input; the SR two ways: the
    # SR node (cast back to the input's dtype) and the difference node (SR - HR in intensity units)
    lower, upper = metrics["window"]["lower"], metrics["window"]["upper"]

    def windowed(node):
        array = slicer.util.arrayFromVolume(node).astype(np.float64)
        return np.clip((array - lower) / (upper - lower), 0, 1).astype(np.float32).astype(np.float64)

    def psnr(mse):
        return 10 * math.log10(1.0 / mse)

    hr = windowed(volume)
    # the LR input as scored: the coarse scan up-sampled 4x in-plane (PIL-style bicubic), clipped to each
    # true slice's range, cropped to the input's size
    import torch
    import torch.nn.functional as F

    raw = (slicer.util.arrayFromVolume(lr_node).astype(np.float64) - lower) / (upper - lower)  # not clipped:
    coarse_slices = torch.from_numpy(raw.astype(np.float32))[:, None]  # bicubic sees the measurement as it is
    up = F.interpolate(coarse_slices, scale_factor=4, mode="bicubic", antialias=True, align_corners=False)
    up = up[:, 0, : hr.shape[1], : hr.shape[2]].numpy()
    up = np.clip(up, hr.min(axis=(1, 2), keepdims=True), hr.max(axis=(1, 2), keepdims=True))
    lr_mse = np.mean((up - hr) ** 2)
    sr_mse = np.mean((windowed(parameters.GetNodeReference("OutputSR")) - hr) ** 2)
    difference = slicer.util.arrayFromVolume(parameters.GetNodeReference("OutputDifference")).astype(np.float64)
    assert float(rows["PSNR whole volume (dB)"][1]) == pytest.approx(psnr(lr_mse), abs=0.006)
    assert float(rows["PSNR whole volume (dB)"][0]) == pytest.approx(psnr(np.mean((difference / (upper - lower)) ** 2)),
                                                                     abs=0.006)
    assert float(rows["PSNR whole volume (dB)"][0]) == pytest.approx(psnr(sr_mse), abs=0.02)
    # fractions and SSIMs within their ranges; the AE ceiling is a real PSNR of a lossy round trip
    assert 0 <= float(rows["Hallucinated pixels (%)"][0]) <= 100 and 0 <= float(rows["Lost pixels (%)"][0]) <= 100
    assert all(-1 <= float(rows[m][i]) <= 1 for m in ("SSIM whole volume", "SSIM tumour/ROI") for i in (0, 1))
    assert 5 < float(rows["Autoencoder ceiling PSNR (dB)"][0]) < 100

    # the comparison: simulated LR left, SR right with the difference overlay and the label map
    parameters.SetParameter("Overlay", "difference")
    parameters.SetParameter("OverlayOpacity", "0.6")
    logic.showComparison(parameters)
    red, yellow = logic.sliceCompositeNode("Red"), logic.sliceCompositeNode("Yellow")
    assert red.GetBackgroundVolumeID() == parameters.GetNodeReferenceID("OutputLR")
    assert yellow.GetBackgroundVolumeID() == parameters.GetNodeReferenceID("OutputSR")
    assert yellow.GetForegroundVolumeID() == parameters.GetNodeReferenceID("OutputDifference")
    assert yellow.GetForegroundOpacity() == pytest.approx(0.6)
    assert yellow.GetLabelVolumeID() == hallucination.GetID()
    assert red.GetLinkedControl() and yellow.GetLinkedControl()
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == 57001 and "vtkMRMLTableViewNode" in layout.GetCurrentLayoutDescription()
    assert scene.GetFirstNodeByClass("vtkMRMLTableViewNode").GetTableNodeID() == table.GetID()

    # rendered through vtkMRMLSliceLogic: the overlays colour the view where their maps are non-zero
    view = scene.views["Yellow"]
    view.GetSliceNode().SetDimensions(240, 240, 1)
    view.FitSliceToAll()
    tumour_slice = int(np.argmax(slicer.util.arrayFromVolume(parameters.GetNodeReference("OutputHallucination"))
                                 .reshape(labels.shape[0], -1).astype(bool).sum(1)))
    view.SetSliceOffset(float((expected @ np.array([0, 0, tumour_slice, 1.0]))[2]))
    with_overlays = render(view)
    yellow.SetLabelVolumeID(None)
    without_label = render(view)
    yellow.SetForegroundOpacity(0.0)
    plain = render(view)
    label_pixels = np.any(with_overlays != without_label, axis=-1)
    assert label_pixels.sum() > 20, "the hallucination label map does not show"
    coloured = with_overlays[label_pixels][:, :3].astype(int)
    orange, blue = coloured[:, 0] > coloured[:, 2], coloured[:, 2] > coloured[:, 0]
    assert np.mean(orange | blue) > 0.95, "label pixels are not in the hallucinated/lost colours"
    overlay_pixels = np.any(without_label != plain, axis=-1)
    assert overlay_pixels.mean() > 0.05, "the difference overlay does not show"


@pytest.mark.shared_data
def test_parameter_node_is_saved_with_the_scene(scene, brats_case, model_folder, tmp_path):
    from LatentSRLogic import LatentSRLogic

    volume, segmentation = brats_case
    logic = LatentSRLogic()
    parameters = configured(logic, volume, segmentation, model_folder)
    parameters.SetParameter("Axis", "coronal")
    parameters.SetParameter("Samples", "3")
    parameters.SetParameter("Overlay", "uncertainty")
    parameters.SetParameter("TrustTolerance", "25")
    scene.SetRootDirectory(str(tmp_path))
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()

    again = slicer.vtkMRMLScene()
    again.SetURL(str(tmp_path / "scene.mrml"))
    again.Connect()
    slicer.mrmlScene = again
    restored = LatentSRLogic().getParameterNode()
    for key in ("Axis", "Samples", "Overlay", "ModelPath", "Simulate", "Steps", "Outputs", "TrustTolerance"):
        assert restored.GetParameter(key) == parameters.GetParameter(key), key
    assert restored.GetNodeReference("InputVolume").GetName() == "FLAIR"
    assert restored.GetNodeReference("Segmentation").GetName() == "tumour"


def test_clear_errors_for_bad_inputs(scene, model_folder, tmp_path):
    from LatentSRLib.io import MedicalImage
    from LatentSRLogic import LatentSRLogic

    logic = LatentSRLogic()
    parameters = logic.getParameterNode()
    with pytest.raises(ValueError, match="Select an input volume"):
        logic.validate(parameters)
    volume = volume_node(scene, MedicalImage(np.random.default_rng(0).random((4, 32, 32), dtype=np.float32),
                                             (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), np.eye(3)), "scan")
    parameters.SetNodeReferenceID("InputVolume", volume.GetID())
    parameters.SetParameter("ModelPath", str(tmp_path))
    with pytest.raises(ValueError, match="not a LatentSR model folder"):
        logic.validate(parameters)
    parameters.SetParameter("ModelPath", str(model_folder))
    shifted = volume_node(scene, MedicalImage(np.zeros((4, 32, 32), np.float32), (1.0, 1.0, 3.0), (5.0, 0.0, 0.0),
                                              np.eye(3)), "elsewhere")
    parameters.SetNodeReferenceID("ReferenceVolume", shifted.GetID())
    with pytest.raises(ValueError, match="'elsewhere' is not on the input volume's grid"):
        logic.validate(parameters)
    with pytest.raises(ValueError, match="run the super-resolution first"):
        logic.showComparison(parameters)


@pytest.mark.slow
def test_background_run_loads_results_and_cancel_cleans_up(scene, model_folder):
    from LatentSRLib.io import MedicalImage
    from LatentSRLogic import LatentSRLogic

    rotation = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    k, j, i = np.mgrid[0:6, 0:40, 0:36]
    image = MedicalImage((100 + 50 * np.sin(i / 4.0) * np.cos(j / 6.0) + k).astype(np.int16), (0.9, 1.1, 2.5),
                         (12.5, -40.0, 7.25), rotation)
    volume = volume_node(scene, image, "oblique scan")
    logic = LatentSRLogic()
    parameters = logic.getParameterNode()
    parameters.SetNodeReferenceID("InputVolume", volume.GetID())
    parameters.SetParameter("ModelPath", str(model_folder))
    parameters.SetParameter("Steps", "1")
    parameters.SetParameter("Axis", "coronal")
    parameters.SetParameter("Device", "cpu")

    job = logic.startBackground(parameters, python=sys.executable)
    fractions = []
    deadline = time.monotonic() + 240
    while job.running and time.monotonic() < deadline:
        fractions += [event.fraction for event in job.poll()]
        time.sleep(0.1)
    fractions += [event.fraction for event in job.poll()]
    metrics = job.finish()
    assert fractions and fractions[-1] == pytest.approx(1.0)
    assert metrics["plane"] == "coronal" and not job.workDirectory.exists()
    sr = parameters.GetNodeReference("OutputSR")
    # an sr4 model writes on the grid 4x finer in the coronal plane (index axes j and k here; i is the
    # coronal normal): those IJK-to-RAS columns / 4, the origin moved back by 3/8 of each, i unchanged
    source = LatentSRLogic.ijkToRas(volume)
    expected = source.copy()
    expected[:3, 1:3] /= 4
    expected[:3, 3] -= 3 / 8 * (source[:3, 1] + source[:3, 2])
    np.testing.assert_allclose(LatentSRLogic.ijkToRas(sr), expected, atol=1e-3)
    assert sr.GetImageData().GetDimensions() == (36, 160, 24)
    assert slicer.util.arrayFromVolume(sr).dtype == np.int16  # the input's units and type
    assert parameters.GetNodeReference("OutputDifference") is None  # no reference, no difference map

    cancelled = logic.startBackground(parameters, python=sys.executable)
    cancelled.cancel()
    assert not cancelled.running and not cancelled.workDirectory.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        cancelled.finish()


def test_default_model_is_the_shipped_reference_model(scene, monkeypatch):
    from LatentSRLogic import LatentSRLogic, defaultModelPath

    monkeypatch.delenv("LATENTSR_MODEL", raising=False)
    assert defaultModelPath() == str(REPO_ROOT / "Training" / "models" / "brain-sr4")
    assert LatentSRLogic().getParameterNode().GetParameter("ModelPath") == defaultModelPath()
    cmake = module_path("CMakeLists.txt").read_text()
    assert "Training/models" in cmake  # installed with the extension, beside LatentSRLib


def test_resolution_note_states_input_and_output_pixels(scene, model_folder, tmp_path):
    import json

    from LatentSRLib.io import MedicalImage
    from LatentSRLogic import LatentSRLogic

    logic = LatentSRLogic()
    parameters = logic.getParameterNode()
    parameters.SetParameter("ModelPath", str(model_folder))  # an sr4 model
    coarse = volume_node(scene, MedicalImage(np.zeros((3, 60, 50), np.float32), (4.0, 3.0, 5.0), (0.0, 0.0, 0.0),
                                             np.eye(3)), "coarse")
    parameters.SetNodeReferenceID("InputVolume", coarse.GetID())
    note = logic.resolutionNote(parameters)
    assert "Input pixels 4.00 x 3.00 mm; output pixels 1.00 x 0.75 mm (4x finer" in note and "Warning" not in note
    parameters.SetParameter("Axis", "sagittal")  # in-plane: j and k, 3 x 5 mm
    assert "output pixels 0.75 x 1.25 mm" in logic.resolutionNote(parameters)
    parameters.SetParameter("Axis", "axial")
    parameters.SetParameter("Simulate", "true")  # simulation super-resolves back onto the input's grid
    assert "output pixels 4.00 x 3.00 mm (the input's grid)" in logic.resolutionNote(parameters)
    parameters.SetParameter("Simulate", "false")
    # a model that records its training pixel size warns when the output is more than 2x away from it
    config_path = model_folder / "config.json"
    original = config_path.read_text()
    config = json.loads(original)
    config["grid"]["pixel_size_mm"] = 0.25
    config_path.write_text(json.dumps(config))
    try:
        assert "Warning: the model was trained at 0.25 mm pixels (4.0x away)" in logic.resolutionNote(parameters)
    finally:
        config_path.write_text(original)
