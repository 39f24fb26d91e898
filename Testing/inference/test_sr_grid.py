"""Real super-resolution geometry: a low-resolution scan in, a grid s times finer out (same field of
view), and simulate mode feeding the model exactly the LR of a prepared dataset."""

from __future__ import annotations

import numpy as np
import pytest

from LatentSRLib.data.dataset import PreparedDataset, SplitRule, prepare_dataset
from LatentSRLib.data.slice_source import SliceSelection
from LatentSRLib.errors import InputError
from LatentSRLib.inference import SRSettings, super_resolve_volume
from LatentSRLib.inference.engine import simulate_measurement
from LatentSRLib.io import MedicalImage, read_image, write_image
from LatentSRLib.model.folder import load_sr_model
from LatentSRLib.transforms.intensity import PercentileWindow
from LatentSRLib.transforms.slicing import SliceLayout
from LatentSRLib.transforms.tasks import parse_task
from conftest import install_pooling_model, make_tiny_sr_model

S = 4


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_tiny_sr_model(tmp_path_factory.mktemp("model"), grid=32)


@pytest.fixture()
def pooling_model(model_folder, monkeypatch):
    """The latent path replaced by 4x average pooling and nearest up-sampling (SR ~ the LR on the
    fine grid), so where a marker lands tests the grids, not the untrained networks."""
    return install_pooling_model(load_sr_model(model_folder), monkeypatch)


def oblique() -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return rotation @ np.diag([-1.0, -1.0, 1.0])


def low_resolution_scan(direction: np.ndarray) -> MedicalImage:
    """A coarse scan (4 mm in-plane, 3 mm slices) with a bright 2x2-pixel marker at a known place."""
    array = np.full((6, 12, 14), 100, dtype=np.int16)
    array[:, 2:10, 2:12] = 300
    array[:, 5:7, 8:10] = 1000
    return MedicalImage(array, (4.0, 4.0, 3.0), (10.0, -20.0, 30.0), direction)


def world_centroid(image: MedicalImage, threshold: float) -> np.ndarray:
    """Intensity-weighted LPS centroid of the voxels above ``threshold`` (one slice: index k = 0)."""
    volume = image.array[0].astype(float)
    weights = np.where(volume > threshold, volume - threshold, 0.0)
    j, i = np.nonzero(weights)
    w = weights[j, i]
    index = np.stack([i, j, np.zeros_like(i), np.ones_like(i)]).astype(float)
    world = (image.index_to_world() @ index)[:3]
    return (world * w).sum(1) / w.sum()


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), oblique()], ids=["LPS", "RAS", "oblique"])
def test_sr_lands_on_a_finer_grid_over_the_same_field_of_view(pooling_model, direction):
    lr = low_resolution_scan(direction)
    result = super_resolve_volume(pooling_model, lr, plane="axial", settings=SRSettings(batch_size=4), device="cpu")
    sr = result.sr
    assert sr.shape == (6, 48, 56) and np.allclose(sr.spacing, (1.0, 1.0, 3.0))
    # the outer pixel edges coincide: first fine centre = first coarse centre - (4 - 1) / 2 fine pixels
    expected_origin = np.array(lr.origin) - direction[:, 0] * 1.5 - direction[:, 1] * 1.5
    np.testing.assert_allclose(sr.origin, expected_origin, atol=1e-6)
    np.testing.assert_allclose(sr.direction, direction)
    for output in result.outputs().values():
        assert output.has_same_geometry(sr)
    # the marker's physical centre is where it was measured, within half a fine pixel
    np.testing.assert_allclose(world_centroid(sr, 650), world_centroid(lr, 650), atol=0.5)
    assert result.metrics["refined_grid"] and result.metrics["output_grid"]["shape"] == [6, 48, 56]


def test_same_grid_and_refine_tasks_keep_the_input_grid(pooling_model):
    lr = low_resolution_scan(np.eye(3))
    same = super_resolve_volume(pooling_model, lr, settings=SRSettings(batch_size=4), same_grid=True, device="cpu")
    assert same.sr.has_same_geometry(lr) and not same.metrics["refined_grid"]


def test_a_2d_image_is_refined_too(pooling_model):
    array = np.zeros((20, 16), dtype=np.uint16)
    array[4:16, 3:13] = 500
    array[9:11, 6:8] = 3000
    image = MedicalImage(array, (0.8, 0.6), (0.0, 0.0), np.eye(2))
    result = super_resolve_volume(pooling_model, image, settings=SRSettings(batch_size=1), device="cpu")
    assert result.sr.shape == (80, 64) and np.allclose(result.sr.spacing, (0.2, 0.15))
    np.testing.assert_allclose(result.sr.origin, (-0.8 * 3 / 8, -0.6 * 3 / 8), atol=1e-6)  # (i, j): half a coarse less half a fine pixel
    bright = np.argwhere(result.sr.array > 1500).mean(0)
    np.testing.assert_allclose(bright, (39.5, 27.5), atol=1.0)  # the 2x2 marker's fine-grid centre


def test_a_reference_must_lie_on_the_sr_grid(pooling_model):
    lr = low_resolution_scan(np.eye(3))
    with pytest.raises(InputError, match="not on the SR grid"):
        super_resolve_volume(pooling_model, lr, reference=lr, device="cpu")


def test_simulate_feeds_the_model_the_lr_of_a_prepared_dataset(tmp_path, brats_flair):
    volume = read_image(brats_flair)
    crop = volume.array[74:76, 56:184, 56:184]  # two axial slices, 128 x 128 (a multiple of the scale)
    scan = MedicalImage(crop, volume.spacing, volume.origin, volume.direction)
    write_image(scan, tmp_path / "scan.nii.gz")
    dataset = prepare_dataset([tmp_path / "scan.nii.gz"], tmp_path / "dataset", parse_task("sr4"),
                              selection=SliceSelection(size=(128, 128), fit="tile", min_foreground=0.0),
                              split_rule=SplitRule(val_fraction=0, test_fraction=0), progress=False)
    prepared = PreparedDataset(dataset.folder)
    layout = SliceLayout.for_image(scan, "axial")
    window = PercentileWindow(0.5, 99.5, clip=True).compute(scan.array)
    hr_slices = np.ascontiguousarray(layout.extract(np.asarray(window.apply(scan.array), dtype=np.float32)))
    lr_fine, lr = simulate_measurement(parse_task("sr4"), hr_slices, scan, layout, window, True, seed=0)
    np.testing.assert_allclose(hr_slices, np.asarray(prepared.hr), atol=1e-6)  # the same truth...
    np.testing.assert_allclose(lr_fine, np.asarray(prepared.lr), atol=1e-5)   # ... and the same LR
    assert lr.shape == (2, 32, 32) and np.allclose(lr.spacing[:2], np.array(scan.spacing[:2]) * 4)


def test_dicom_output_is_a_derived_series_on_the_sr_grid(model_folder, tmp_path, monkeypatch):
    from LatentSRLib.inference.files import super_resolve_file

    lr = low_resolution_scan(np.diag([-1.0, -1.0, 1.0]))
    write_image(lr, tmp_path / "lr.nii.gz")
    model = load_sr_model(model_folder)
    metrics = super_resolve_file(tmp_path / "lr.nii.gz", tmp_path / "out", model, output_format="dicom",
                                 settings=SRSettings(steps=1), device="cpu")
    sr = read_image(tmp_path / "out" / "sr")
    assert sr.shape == (6, 48, 56) and np.allclose(sr.spacing, (1.0, 1.0, 3.0), atol=1e-4)
    expected_origin = np.array(lr.origin) - lr.direction[:, 0] * 1.5 - lr.direction[:, 1] * 1.5
    np.testing.assert_allclose(sr.origin, expected_origin, atol=1e-3)
    np.testing.assert_allclose(sr.direction, lr.direction, atol=1e-6)
    assert metrics["output_grid"]["shape"] == [6, 48, 56]
