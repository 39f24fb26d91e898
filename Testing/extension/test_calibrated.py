"""The Slicer module with a calibrated model (issue 18): the calibrated interval and the trust mask as
MRML nodes equal to the engine's outputs, as overlays in the compare view, coverage in the metrics
table; an uncalibrated model gets neither and says "uncalibrated"."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import make_tiny_sr_model
from headless import scene, slicer  # noqa: F401  (scene is a fixture)

SAMPLES = 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny untrained sr4 model and a copy of it with a calibration.json."""
    from LatentSRLib.metrics.calibration import Calibration

    root = tmp_path_factory.mktemp("slicer-calibrated")
    plain = make_tiny_sr_model(root, grid=32)
    calibrated = root / "calibrated"
    shutil.copytree(plain, calibrated)
    Calibration(lam=1.7, alpha=0.1, delta=0.1, samples=SAMPLES, split="val", images=30, dataset="ds", steps=1,
                floor=0.02).save(calibrated)
    return plain, calibrated


def scan_and_mask():
    """A float scan (no rounding of the SR node) with a bright textured square, and a two-label mask."""
    from LatentSRLib.io import MedicalImage

    rng = np.random.default_rng(0)
    array = np.zeros((3, 40, 36), dtype=np.float32)
    array[:, 8:32, 6:30] = 300 + rng.integers(0, 200, (3, 24, 24))
    image = MedicalImage(array, (0.9, 0.9, 3.0), (5.0, -3.0, 12.0), np.eye(3))
    labels = np.zeros(array.shape, dtype=np.uint8)
    labels[:, 12:20, 10:20] = 1
    labels[:, 22:28, 10:26] = 2
    return image, image.with_array(labels)


def load_case(scene, model):
    """The scan and its mask as nodes, the module's parameters set for an in-process run (simulate: the
    scan is its own reference)."""
    from LatentSRLogic import LatentSRLogic

    image, mask = scan_and_mask()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "scan")
    LatentSRLogic.updateVolumeNodeFromImage(volume, image)
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "regions")
    LatentSRLogic.updateVolumeNodeFromImage(labels, mask)
    logic = LatentSRLogic()
    parameters = logic.getParameterNode()
    parameters.SetNodeReferenceID("InputVolume", volume.GetID())
    parameters.SetNodeReferenceID("Segmentation", labels.GetID())
    parameters.SetParameter("ModelPath", str(model))
    parameters.SetParameter("Simulate", "true")
    parameters.SetParameter("Steps", "1")
    parameters.SetParameter("Samples", str(SAMPLES))
    parameters.SetParameter("DataConsistency", "false")  # as calibrated
    parameters.SetParameter("Device", "cpu")
    return logic, parameters, volume, image, mask


def engine_run(model, image, mask, tolerance):
    """The engine itself, as `latentsr sr --simulate-scale 4` runs it: the independent answer."""
    from LatentSRLib.inference import SRSettings, super_resolve_volume
    from LatentSRLib.model.folder import load_sr_model

    return super_resolve_volume(load_sr_model(model, device="cpu"), image, settings=SRSettings(steps=1, samples=SAMPLES),
                                mask=mask, simulate=True, device="cpu", tolerance=tolerance)


def table_rows(parameters) -> dict[str, str]:
    table = parameters.GetNodeReference("MetricsTable")
    return {table.GetCellText(r, 0): table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())}


def render(view) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    producer = view.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[..., :3].astype(int)


# ---- pure functions ----------------------------------------------------------------------------------
def test_calibration_rows_and_status_lines():
    from LatentSRLogic import calibrationStatus, metricsRows

    calibrated = {"nominal": 0.9, "alpha": 0.1, "coverage": 0.9312, "mean_half_width": 12.3456, "tolerance": 20.0,
                  "trusted_fraction": 0.25,
                  "labels": {"0": {"coverage": 0.5, "mean_half_width": 3.0}, "1": {"coverage": 1.0, "mean_half_width": 7.5}}}
    rows = {m: (sr, lr) for m, sr, lr in metricsRows({"calibration": calibrated})}
    assert rows["Calibrated interval: nominal coverage (%)"] == ("90", "")
    assert rows["Interval coverage, whole volume (%; nominal 90)"] == ("93.12", "")
    assert rows["Mean interval half-width, whole volume"] == ("12.35", "")
    assert rows["Interval coverage, mask label 1 (%; nominal 90)"] == ("100.00", "")
    assert rows["Interval coverage, foreground outside the mask (%; nominal 90)"] == ("50.00", "")
    assert rows["Trusted pixels (%; half-width <= 20)"] == ("25.00", "")
    # without a reference: the nominal only
    plain = [m for m, _, _ in metricsRows({"calibration": {"nominal": 0.9}})]
    assert "Calibrated interval: nominal coverage (%)" in plain and not any("Interval coverage" in m for m in plain)
    assert ("Calibrated interval", "uncalibrated", "") in metricsRows({"calibration": "uncalibrated"})
    assert not any("nterval" in m for m, _, _ in metricsRows({}))  # a run from before calibration existed
    assert "uncalibrated" in calibrationStatus({"calibration": "uncalibrated"})
    assert calibrationStatus({"calibration": calibrated}) == (
        "Calibrated interval (nominal coverage 90%): coverage 93.12% of the reference's foreground; "
        "25.00% of pixels trusted at 20.")
    assert calibrationStatus({}) == ""


# ---- the Logic on real MRML nodes --------------------------------------------------------------------
@pytest.mark.slow
def test_calibrated_model_gives_interval_and_trust_nodes_equal_to_the_engine(scene, models):
    from LatentSRLogic import OUTPUTS, TRUSTED, UNTRUSTED, LatentSRLogic

    _, calibrated = models
    logic, parameters, volume, image, mask = load_case(scene, calibrated)
    # the model's calibration is stated and its overlays are offered (trust once a tolerance is set)
    assert logic.calibrationNote(parameters).startswith("Calibrated: SR +- interval holds the truth for 90%")
    assert logic.overlayChoices(parameters)[-1] == "interval"
    expected = engine_run(calibrated, image, mask, tolerance=None)
    tolerance = float(np.median(expected.interval.array))  # about half the pixels trusted
    parameters.SetParameter("TrustTolerance", f"{tolerance!r}")
    assert logic.overlayChoices(parameters)[-2:] == ["interval", "trust"]
    metrics = logic.process(parameters)

    interval = parameters.GetNodeReference(OUTPUTS["interval"][0])
    trust = parameters.GetNodeReference(OUTPUTS["trust"][0])
    assert interval.IsA("vtkMRMLScalarVolumeNode") and not interval.IsA("vtkMRMLLabelMapVolumeNode")
    assert trust.IsA("vtkMRMLLabelMapVolumeNode")
    for node in (interval, trust):  # simulation: back on the input's exact grid
        assert np.array_equal(LatentSRLogic.ijkToRas(node), LatentSRLogic.ijkToRas(volume))
    # the arrays are the engine's: the half-width in the input's units, and the trust labels
    # (1 trusted where the engine's trust is 1, 2 untrusted where it is 0)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(interval), expected.interval.array, rtol=1e-5, atol=1e-4)
    engine_trust = (expected.interval.array <= tolerance)
    labels = slicer.util.arrayFromVolume(trust)
    assert set(np.unique(labels)) == {TRUSTED, UNTRUSTED}
    assert np.array_equal(labels == TRUSTED, engine_trust) and np.array_equal(labels == UNTRUSTED, ~engine_trust)
    assert metrics["calibration"]["tolerance"] == tolerance
    assert metrics["calibration"]["trusted_fraction"] == pytest.approx(engine_trust.mean())
    assert metrics["calibration"]["coverage"] == pytest.approx(expected.metrics["calibration"]["coverage"], abs=1e-6)
    # displayed: the interval on the sequential colour table from the narrowest interval up, trust labelled
    display = interval.GetDisplayNode()
    assert display.GetColorNode().GetName() == "LatentSR interval"
    assert display.GetWindowLevelMin() == pytest.approx(float(expected.interval.array.min()), rel=1e-4)
    assert trust.GetDisplayNode().GetColorNode().GetName() == "LatentSR trust"
    colors = trust.GetDisplayNode().GetColorNode()
    rgba = [0.0] * 4
    colors.GetColor(UNTRUSTED, rgba)
    assert rgba[3] == 1.0 and rgba[0] > 0.8 and rgba[1] < 0.3  # untrusted: opaque magenta
    colors.GetColor(0, rgba)
    assert rgba[3] == 0.0  # outside the volume: transparent

    # the metrics table: coverage beside the nominal, mean half-width, whole volume and per mask label;
    # recomputed from the nodes: the truth (the input, windowed) within SR +- interval over its foreground
    rows = table_rows(parameters)
    lower, upper = metrics["window"]["lower"], metrics["window"]["upper"]
    hr = np.clip(slicer.util.arrayFromVolume(volume).astype(np.float64), lower, upper)
    sr = slicer.util.arrayFromVolume(parameters.GetNodeReference("OutputSR")).astype(np.float64)
    half = slicer.util.arrayFromVolume(interval).astype(np.float64)
    inside = np.abs(hr - sr) <= half + 1e-3
    foreground = (hr - lower) / (upper - lower) > 0.05
    assert rows["Calibrated interval: nominal coverage (%)"] == "90"
    assert float(rows["Interval coverage, whole volume (%; nominal 90)"]) == pytest.approx(
        100 * inside[foreground].mean(), abs=0.2)
    assert float(rows["Mean interval half-width, whole volume"]) == pytest.approx(half[foreground].mean(), rel=1e-3)
    regions = mask.array
    for label in (1, 2):
        assert float(rows[f"Interval coverage, mask label {label} (%; nominal 90)"]) == pytest.approx(
            100 * inside[regions == label].mean(), abs=0.2)
        assert float(rows[f"Mean interval half-width, mask label {label}"]) == pytest.approx(
            half[regions == label].mean(), rel=1e-3)
    assert "Interval coverage, foreground outside the mask (%; nominal 90)" in rows
    assert float(rows[f"Trusted pixels (%; half-width <= {tolerance:g})"]) == pytest.approx(
        100 * engine_trust.mean(), abs=0.006)

    # the overlay choices display them over the SR, in their colours
    parameters.SetParameter("ShowHallucination", "false")
    parameters.SetParameter("OverlayOpacity", "1.0")
    yellow = logic.sliceCompositeNode("Yellow")
    view = scene.views["Yellow"]
    view.GetSliceNode().SetDimensions(144, 160, 1)
    parameters.SetParameter("Overlay", "none")
    logic.showComparison(parameters)
    view.FitSliceToAll()
    view.SetSliceOffset(float((LatentSRLogic.ijkToRas(volume) @ np.array([0, 0, 1, 1.0]))[2]))
    plain = render(view)
    parameters.SetParameter("Overlay", "interval")
    logic.showComparison(parameters)
    assert yellow.GetForegroundVolumeID() == interval.GetID()
    assert np.any(render(view) != plain, axis=-1).mean() > 0.05, "the interval overlay does not show"
    parameters.SetParameter("Overlay", "trust")
    logic.showComparison(parameters)
    assert yellow.GetForegroundVolumeID() == trust.GetID()
    shown = render(view)
    changed = np.any(shown != plain, axis=-1)
    # untrusted pixels in magenta (red and blue over green), trusted ones left as the SR shows them
    untrusted_fraction = float((labels[1] == UNTRUSTED).mean())
    assert changed.mean() == pytest.approx(untrusted_fraction, abs=0.15), "the trust mask does not show as computed"
    magenta = (shown[changed][:, 0] > shown[changed][:, 1] + 60) & (shown[changed][:, 2] > shown[changed][:, 1] + 60)
    assert magenta.mean() > 0.95


@pytest.mark.slow
def test_uncalibrated_model_has_no_interval_and_says_so(scene, models):
    from LatentSRLogic import OUTPUTS, calibrationStatus

    plain, calibrated = models
    logic, parameters, *_ = load_case(scene, calibrated)
    parameters.SetParameter("TrustTolerance", "40")
    logic.process(parameters)  # a calibrated run first: its nodes must not pass for the next run's
    assert parameters.GetNodeReference(OUTPUTS["interval"][0]) is not None

    def interval_nodes():
        return [n for n in scene.GetNodesByClass("vtkMRMLVolumeNode") if "interval" in n.GetName() or "trust" in n.GetName()]

    before = interval_nodes()
    assert len(before) == 2

    parameters.SetParameter("ModelPath", str(plain))
    note = logic.calibrationNote(parameters)
    assert note.startswith("Uncalibrated: no calibrated interval or trust mask")
    assert logic.runTolerance(parameters) is None  # the tolerance is not sent to an uncalibrated model
    metrics = logic.process(parameters)
    assert metrics["calibration"] == "uncalibrated"
    assert parameters.GetNodeReference(OUTPUTS["interval"][0]) is None
    assert parameters.GetNodeReference(OUTPUTS["trust"][0]) is None
    assert logic.overlayChoices(parameters) == ["none", "difference", "uncertainty", "consistency"]
    assert table_rows(parameters)["Calibrated interval"] == "uncalibrated"
    assert not any("coverage" in measure.lower() for measure in table_rows(parameters))
    assert "uncalibrated" in calibrationStatus(metrics)
    # an interval overlay left selected shows nothing rather than a stale or faked map
    parameters.SetParameter("Overlay", "interval")
    logic.showComparison(parameters)
    assert logic.sliceCompositeNode("Yellow").GetForegroundVolumeID() is None
    # and no interval was made for this run (from the raw uncertainty or otherwise): the calibrated run's
    # two nodes stay in the scene, untouched, and nothing refers to them
    assert interval_nodes() == before


def test_tolerance_parameter_and_background_arguments(scene, models, tmp_path):
    from LatentSRLogic import LatentSRLogic

    plain, calibrated = models
    logic, parameters, *_ = load_case(scene, calibrated)
    assert logic.trustTolerance(parameters) is None  # empty: no trust mask
    for bad in ("abc", "-1", "nan", "inf"):
        parameters.SetParameter("TrustTolerance", bad)
        with pytest.raises(ValueError, match="trust tolerance must be a number >= 0"):
            logic.validate(parameters)
    parameters.SetParameter("TrustTolerance", " 12.5 ")
    arguments = logic.backgroundArguments(parameters, tmp_path / "calibrated-run")
    assert arguments[arguments.index("--tolerance") + 1] == "12.5"
    parameters.SetParameter("ModelPath", str(plain))
    assert "--tolerance" not in logic.backgroundArguments(parameters, tmp_path / "plain-run")
    # a damaged calibration is named before any work
    damaged = tmp_path / "damaged"
    shutil.copytree(calibrated, damaged)
    (damaged / "calibration.json").write_text("{not json")
    parameters.SetParameter("ModelPath", str(damaged))
    with pytest.raises(ValueError, match="damaged calibration"):
        logic.validate(parameters)
    assert logic.overlayChoices(parameters) == ["none", "difference", "uncertainty", "consistency"]
    assert LatentSRLogic.modelCalibration(parameters) is None


@pytest.mark.slow
def test_the_background_run_output_loads_as_interval_and_trust_nodes(scene, models, tmp_path):
    """What Apply does, minus the child process: `latentsr sr` with the module's own arguments, its
    NRRD outputs loaded into nodes equal to the files."""
    from LatentSRLib.cli import main
    from LatentSRLib.io import read_image
    from LatentSRLogic import OUTPUTS, TRUSTED, UNTRUSTED

    _, calibrated = models
    logic, parameters, *_ = load_case(scene, calibrated)
    parameters.SetParameter("Simulate", "false")  # a real low-resolution scan: outputs on the 4x finer grid
    parameters.SetNodeReferenceID("Segmentation", None)
    parameters.SetParameter("TrustTolerance", "30")
    arguments = logic.backgroundArguments(parameters, tmp_path)
    assert main(["sr", *arguments]) == 0
    metrics = logic.loadResultsFromFolder(parameters, tmp_path / "outputs")
    assert set(metrics["outputs"]) >= {"interval", "trust"}
    interval = read_image(metrics["outputs"]["interval"])
    trust = read_image(metrics["outputs"]["trust"])
    node = parameters.GetNodeReference(OUTPUTS["interval"][0])
    assert node.GetImageData().GetDimensions() == (144, 160, 3)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), interval.array)
    labels = slicer.util.arrayFromVolume(parameters.GetNodeReference(OUTPUTS["trust"][0]))
    assert np.array_equal(labels == TRUSTED, trust.array == 1) and np.array_equal(labels == UNTRUSTED, trust.array == 0)
    rows = table_rows(parameters)
    assert rows["Calibrated interval: nominal coverage (%)"] == "90"  # no reference: no coverage rows
    assert not any(measure.startswith("Interval coverage") for measure in rows)
    assert float(rows["Trusted pixels (%; half-width <= 30)"]) == pytest.approx(100 * trust.array.mean(), abs=0.006)
