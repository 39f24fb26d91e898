"""The volume SR engine and `latentsr sr`: geometry, maps, batching, seeds and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from LatentSRLib.errors import InputError
from LatentSRLib.inference import SRSettings, super_resolve_volume
from LatentSRLib.model.devices import run_in_batches
from LatentSRLib.inference.engine import Cancelled
from LatentSRLib.transforms.consistency import consistency_map
from LatentSRLib.transforms.degradations import task_degradation
from LatentSRLib.io import MedicalImage, read_image
from LatentSRLib.model.folder import load_sr_model
from LatentSRLib.transforms.tasks import parse_task
from conftest import REPO_ROOT, install_pooling_model, make_tiny_sr_model

GRID = 64


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_tiny_sr_model(tmp_path_factory.mktemp("model"), grid=GRID)


@pytest.fixture()
def model(model_folder):
    return load_sr_model(model_folder)


def small_volume(direction: np.ndarray, shape=(20, 24, 28), spacing=(1.0, 1.2, 1.5)) -> MedicalImage:
    array = np.zeros(shape, dtype=np.int16)
    array[4:16, 5:19, 6:22] = 100  # a block of anatomy
    array[9:14, 8:13, 14:20] = 1000  # a bright marker (over 0.5% of voxels: inside the intensity window)
    return MedicalImage(array, spacing, (10.0, -20.0, 30.0), direction)


def oblique() -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return rotation @ np.diag([-1.0, -1.0, 1.0])  # RAS-stored, rotated


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), oblique()], ids=["LPS", "RAS", "oblique"])
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_output_overlays_the_input(model, monkeypatch, direction, plane):
    install_pooling_model(model, monkeypatch)
    image = small_volume(direction)
    result = super_resolve_volume(model, image, same_grid=True, plane=plane, settings=SRSettings(batch_size=8), device="cpu")
    for output in result.outputs().values():
        assert output.has_same_geometry(image)
    assert result.sr.array.dtype == np.int16  # back in the input's units and dtype
    marker = np.argwhere(image.array == 1000).mean(0)
    found = np.unravel_index(np.argmax(result.sr.array), image.shape)
    assert np.abs(np.array(found) - marker).max() <= 3, (found, marker)
    assert np.corrcoef(result.sr.array.ravel(), image.array.ravel())[0, 1] > 0.7


@pytest.fixture(scope="module")
def tile_model_folder(tmp_path_factory):
    return make_tiny_sr_model(tmp_path_factory.mktemp("tile-model"), grid=32, fit="tile")


def radiograph_like(shape=(90, 75)) -> MedicalImage:
    array = np.zeros(shape, dtype=np.uint16)
    array[10:80, 8:70] = 400  # a "chest"
    array[60:66, 50:57] = 4000  # a bright marker (over 0.5% of pixels)
    return MedicalImage(array, (0.4, 0.4), (0.0, 0.0), np.eye(2))


def test_tile_model_keeps_native_pixels_and_blends_tiles(tile_model_folder, monkeypatch):
    model = load_sr_model(tile_model_folder)
    install_pooling_model(model, monkeypatch)
    image = radiograph_like()
    result = super_resolve_volume(model, image, same_grid=True, settings=SRSettings(batch_size=2), device="cpu")
    for output in result.outputs().values():
        assert output.has_same_geometry(image)
    marker = np.argwhere(image.array == 4000).mean(0)
    found = np.unravel_index(np.argmax(result.sr.array), image.shape)
    assert np.abs(np.array(found) - marker).max() <= 4, (found, marker)
    # blending leaves no seams: SR ~ the 4x-pooled input everywhere, tile borders included
    assert np.corrcoef(result.sr.array.ravel().astype(float), image.array.ravel())[0, 1] > 0.8


def test_a_larger_tile_runs_fewer_windows_and_gives_the_same_image(tile_model_folder, monkeypatch):
    from LatentSRLib.errors import InputError

    model = load_sr_model(tile_model_folder)  # trained on 32 x 32 tiles; tiny denoiser: 3 levels, AE 4x
    install_pooling_model(model, monkeypatch)
    encode = model.autoencoder.encode
    encoded = []

    def counting(x, **kwargs):
        encoded.append(int(x.shape[0]))
        return encode(x, **kwargs)

    monkeypatch.setattr(model.autoencoder, "encode", counting)
    image = radiograph_like()  # 90 x 75 pixels
    results = {}
    for tile in (None, 96):
        encoded.clear()
        results[tile] = super_resolve_volume(model, image, same_grid=True, device="cpu",
                                             settings=SRSettings(tile=tile, skip_background=False))
        results[tile].windows = sum(encoded)
    assert results[96].windows == 1 < results[None].windows  # the whole image in one window
    assert results[96].metrics["settings"]["tile"] == 96 and results[None].metrics["settings"]["tile"] is None
    # the echo model's SR is the pooled input: where the tiles meet changes nothing but the blending
    a, b = (results[t].sr.array.astype(float) for t in (None, 96))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    with pytest.raises(InputError, match="multiple of 16"):
        super_resolve_volume(model, image, same_grid=True, device="cpu", settings=SRSettings(tile=40))
    # a smaller overlap covers the image with fewer windows: ceil((n - tile) / stride) + 1 per axis
    for overlap in (0.5, 0.0):
        encoded.clear()
        result = super_resolve_volume(model, image, same_grid=True, device="cpu",
                                      settings=SRSettings(overlap=overlap, skip_background=False))
        stride = int(32 * (1 - overlap))
        expected = int(np.prod([np.ceil((n - 32) / stride) + 1 for n in image.shape]))
        assert sum(encoded) == expected and result.metrics["settings"]["overlap"] == overlap
        assert np.corrcoef(result.sr.array.ravel().astype(float), a.ravel())[0, 1] > 0.99
    assert results[None].windows == int(np.prod([np.ceil((n - 32) / 24) + 1 for n in image.shape]))  # the model's 0.25
    with pytest.raises(ValueError, match="overlap"):
        SRSettings(overlap=1.0)


def test_tile_noise_is_per_tile_so_batching_does_not_matter(tile_model_folder, monkeypatch):
    model = load_sr_model(tile_model_folder)
    image = radiograph_like()
    one = super_resolve_volume(model, image, same_grid=True, settings=SRSettings(batch_size=1, seed=5, samples=2), device="cpu")
    many = super_resolve_volume(model, image, same_grid=True, settings=SRSettings(batch_size=6, seed=5, samples=2), device="cpu")
    np.testing.assert_allclose(one.sr.array.astype(float), many.sr.array, atol=2)
    assert float(one.uncertainty.array.max()) > 0
    # progress within the one slice, tile batch by tile batch, and a cancel between them
    reports = []
    super_resolve_volume(model, image, same_grid=True, settings=SRSettings(batch_size=2), device="cpu",
                         progress=lambda fraction, message: reports.append((fraction, message)))
    assert len(reports) > 3 and reports[-1][0] == 1.0 and "tiles" in reports[0][1]
    assert [f for f, _ in reports] == sorted(f for f, _ in reports)
    calls = []
    with pytest.raises(Cancelled):
        super_resolve_volume(model, image, same_grid=True, settings=SRSettings(batch_size=1), device="cpu",
                             cancelled=lambda: calls.append(1) or len(calls) > 2)
    other = super_resolve_volume(model, image, same_grid=True, settings=SRSettings(batch_size=1, seed=6), device="cpu")
    assert np.abs(one.sr.array.astype(float) - other.sr.array).max() > 10
    # with a reference: the review maps (autoencoder round trip of the whole slice) come out on the input grid;
    # keep what the round trip returned to recompute the ceiling's PSNR with numpy
    from LatentSRLib.inference import review as review_module

    round_trips = []
    real_round_trip = review_module._autoencoder_round_trip
    monkeypatch.setattr(review_module, "_autoencoder_round_trip",
                        lambda *args, **kwargs: round_trips.append(real_round_trip(*args, **kwargs)) or round_trips[-1])
    reviewed = super_resolve_volume(model, image, simulate=True, device="cpu")
    assert reviewed.hallucination.shape == image.shape and len(round_trips) == 1
    # PSNR in the run's [0, 1] window with peak 1; the reference is the input itself (simulated LR)
    lower, upper = reviewed.metrics["window"]["lower"], reviewed.metrics["window"]["upper"]
    hr = np.clip((image.array.astype(np.float64) - lower) / (upper - lower), 0, 1).astype(np.float32)
    ae = round_trips[0].astype(np.float64).reshape(hr.shape)  # one 2D slice
    assert 0 <= ae.min() and ae.max() <= 1 and np.abs(ae - hr).max() > 0.01  # a lossy round trip, in the window
    expected_ceiling = 10 * np.log10(1.0 / np.mean((ae - hr.astype(np.float64)) ** 2))
    review = reviewed.metrics["reference"]
    assert review["psnr_ae_ceiling"] == pytest.approx(expected_ceiling, abs=1e-6)
    # and the SR's PSNR from the difference map the review returned (SR - HR in intensity units)
    difference = reviewed.difference.array.astype(np.float64) / (upper - lower)
    assert review["psnr_sr"] == pytest.approx(10 * np.log10(1.0 / np.mean(difference ** 2)), abs=1e-4)


def test_background_tiles_keep_the_input_and_the_others_do_not_change(tile_model_folder):
    """Tiles with no pixel above the model's background level are not sampled (the rule that kept such
    images out of training): there the SR is the up-sampled input itself, every other tile is sampled
    with its own seeded noise exactly as before, and metrics.json counts the skipped tiles."""
    model = load_sr_model(tile_model_folder)
    array = np.zeros((120, 100), dtype=np.uint16)  # an empty margin around the "anatomy"
    array[70:110, 55:95] = 400
    array[90:96, 80:86] = 4000
    image = MedicalImage(array, (0.4, 0.4), (0.0, 0.0), np.eye(2))
    skipping = super_resolve_volume(model, image, same_grid=True, settings=SRSettings(seed=3, samples=2), device="cpu")
    sampling = super_resolve_volume(model, image, same_grid=True, device="cpu",
                                    settings=SRSettings(seed=3, samples=2, skip_background=False))
    skipped = skipping.metrics["background_tiles_skipped"]
    assert skipped > 0 and sampling.metrics["background_tiles_skipped"] == 0
    # the empty corner, away from any sampled tile's reach (tiles of 32, stride 24): input kept, std 0
    assert np.all(skipping.sr.array[:30, :30] == array[:30, :30])
    assert np.all(skipping.uncertainty.array[:30, :30] == 0) and sampling.uncertainty.array[:30, :30].max() > 0
    # the anatomy's tiles are sampled with the same noise either way
    np.testing.assert_allclose(skipping.sr.array[80:110, 70:95].astype(float), sampling.sr.array[80:110, 70:95], atol=1)


def test_anatomy_windows_cover_the_anatomy_with_a_margin_inside_the_slice():
    from LatentSRLib.inference.engine import ANATOMY_MARGIN, anatomy_windows

    slices = torch.zeros(3, 1, 240, 240)
    slices[0, 0, 60:150, 70:200] = 0.5  # a head: 90 x 130 pixels
    slices[1, 0, 5:40, 200:236] = 0.5  # anatomy at a corner: its window is pushed back inside the slice
    (height, width), places = anatomy_windows(slices, level=0.05, step=32, limit=(256, 256), align=4)
    # one size for the batch: the largest box plus the margin on each side, rounded up to whole steps
    assert (height, width) == (32 * -(-(90 + 2 * ANATOMY_MARGIN) // 32), 32 * -(-(130 + 2 * ANATOMY_MARGIN) // 32))
    assert places[2] is None  # an empty slice has no window
    for index, (top, left) in enumerate(places[:2]):
        rows, cols = np.nonzero(slices[index, 0].numpy() > 0.05)
        assert 0 <= top and top + height <= 240 and 0 <= left and left + width <= 240
        assert top % 4 == 0 and left % 4 == 0  # on the latent grid of the sliding window's tiles
        assert top <= rows.min() and rows.max() < top + height and left <= cols.min() and cols.max() < left + width
    assert places[0][0] <= 60 - ANATOMY_MARGIN and places[0][0] + height >= 150 + ANATOMY_MARGIN
    # a box larger than the limit (or the slice) is left to the sliding window
    assert anatomy_windows(slices, level=0.05, step=32, limit=(128, 128)) is None


def test_anatomy_windows_shrink_the_margin_at_the_slice_edge_and_still_cover_the_anatomy():
    from LatentSRLib.inference.engine import anatomy_windows

    # a head filling most of a 240-pixel slice: box + margin is 248, more than the slice; the window is
    # the largest whole number of steps inside the slice (224) instead of falling back to tiles
    slices = torch.zeros(1, 1, 240, 240)
    slices[0, 0, 30:230, 20:220] = 0.5
    (height, width), ((top, left),) = anatomy_windows(slices, level=0.05, step=32, limit=(256, 256), margin=24,
                                                      align=4)
    assert (height, width) == (224, 224)
    assert top <= 30 and top + height >= 230 and left <= 20 and left + width >= 220
    # anatomy that leaves no room for the aligned start is still tiled
    slices[0, 0, 8:234, 8:234] = 0.5
    assert anatomy_windows(slices, level=0.05, step=32, limit=(256, 256), margin=24, align=4) is None

    # whatever the box, a returned window lies inside the slice, on the latent grid, and covers the box
    generator = np.random.default_rng(0)
    for _ in range(300):
        height_px, width_px = (int(v) for v in generator.integers(64, 300, size=2))
        top_px, left_px = int(generator.integers(0, height_px - 2)), int(generator.integers(0, width_px - 2))
        bottom_px = int(generator.integers(top_px + 1, height_px + 1))
        right_px = int(generator.integers(left_px + 1, width_px + 1))
        one = torch.zeros(1, 1, height_px, width_px)
        one[0, 0, top_px:bottom_px, left_px:right_px] = 1.0
        found = anatomy_windows(one, level=0.05, step=32, limit=(256, 256), align=4)
        if found is None:
            continue
        (h, w), ((t, l),) = found
        assert h % 32 == 0 and w % 32 == 0
        # on the latent grid, unless pushed back against the slice's far edge (which may not be on it)
        assert (t % 4 == 0 or t + h == height_px) and (l % 4 == 0 or l + w == width_px)
        assert 0 <= t and t + h <= height_px and 0 <= l and l + w <= width_px
        assert t <= top_px and bottom_px <= t + h and l <= left_px and right_px <= l + w


def test_an_anatomy_window_samples_once_per_slice_and_keeps_the_input_outside(tile_model_folder, monkeypatch):
    from LatentSRLib.inference.engine import ANATOMY_MARGIN

    model = load_sr_model(tile_model_folder)  # 32 x 32 tiles, windows a multiple of 16
    install_pooling_model(model, monkeypatch)
    encode, encoded = model.autoencoder.encode, []
    monkeypatch.setattr(model.autoencoder, "encode", lambda x, **kw: encoded.append(tuple(x.shape)) or encode(x, **kw))
    array = np.zeros((4, 96, 80), dtype=np.float32)
    array[:3, 30:70, 25:55] = 300  # anatomy in three slices, the fourth empty
    array[:3, 44:48, 32:36] = 3000
    image = MedicalImage(array, (0.5, 0.5, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    windowed = super_resolve_volume(model, image, same_grid=True, device="cpu",
                                    settings=SRSettings(anatomy_window=True, batch_size=4))
    tiled = super_resolve_volume(model, image, same_grid=True, device="cpu", settings=SRSettings(batch_size=4))
    # one window per slice with anatomy (40 x 30 plus the margin each side, in whole 16s), in calls of no
    # more pixels than the tiles' batch (4 tiles of 32 x 32): memory stays that of tiling
    height, width = (16 * -(-(extent + 2 * ANATOMY_MARGIN) // 16) for extent in (40, 30))
    per_call = max(1, 4 * 32 * 32 // (height * width))
    calls = [(min(per_call, 3 - start), 1, height, width) for start in range(0, 3, per_call)]
    assert per_call < 3 and encoded[: len(calls)] == calls
    assert windowed.metrics["tiling"]["anatomy_window"] is True and tiled.metrics["tiling"]["anatomy_window"] is False
    assert windowed.metrics["background_tiles_skipped"] == 1
    # outside the windows the input is kept exactly; inside, the echo model gives what the tiles gave
    assert np.all(windowed.sr.array[3] == array[3]) and np.all(windowed.sr.array[:3, :5] == array[:3, :5])
    inside = (slice(0, 3), slice(28, 72), slice(23, 57))  # the anatomy and a few pixels around it
    assert np.corrcoef(windowed.sr.array[inside].ravel(), tiled.sr.array[inside].ravel())[0, 1] > 0.99
    # the setting is the model's recorded default when the caller gives none, and needs skip_background
    model.config.setdefault("sampling", {})["anatomy_window"] = True
    again = super_resolve_volume(model, image, same_grid=True, device="cpu", settings=SRSettings(batch_size=4))
    np.testing.assert_array_equal(again.sr.array, windowed.sr.array)
    assert super_resolve_volume(model, image, same_grid=True, device="cpu", settings=SRSettings(
        batch_size=4, skip_background=False)).metrics["tiling"]["anatomy_window"] is False


def test_consistency_is_zero_when_sr_is_the_truth(brats_flair):
    from LatentSRLib.transforms.intensity import PercentileWindow

    volume = read_image(brats_flair)
    hr = torch.from_numpy(np.asarray(PercentileWindow(0.5, 99.5)(volume.array[70:74])[0], dtype=np.float32))[:, None]
    task = parse_task("sr4")
    lr = torch.as_tensor(task_degradation(task)(hr))
    assert float(consistency_map(hr, lr, task).max()) < 1e-5
    blurred = F.avg_pool2d(hr, 3, stride=1, padding=1)
    assert float(consistency_map(blurred, lr, task).mean()) > 1e-4


def test_uncertainty_samples_and_seed(model):
    image = small_volume(np.eye(3))
    one = super_resolve_volume(model, image, same_grid=True, settings=SRSettings(samples=1, seed=3), device="cpu")
    assert float(np.abs(one.uncertainty.array).max()) == 0.0
    again = super_resolve_volume(model, image, same_grid=True, settings=SRSettings(samples=1, seed=3, batch_size=3), device="cpu")
    # same seed, other batch size: the same volume, up to float rounding of batched convolutions
    np.testing.assert_allclose(one.sr.array, again.sr.array, atol=2)
    other = super_resolve_volume(model, image, same_grid=True, settings=SRSettings(samples=1, seed=4), device="cpu")
    assert np.abs(one.sr.array.astype(float) - other.sr.array).max() > 10
    two = super_resolve_volume(model, image, same_grid=True, settings=SRSettings(samples=2, seed=3), device="cpu")
    assert float(two.uncertainty.array.max()) > 0.0


def test_channels_last_layout_gives_the_same_volume_and_is_the_cpu_default(brats_flair):
    """The engine runs the networks channels-last on the CPU (faster there: bench_real_scan.py); the
    layout changes how the weights are stored, not the image. On the shipped brain model and real 4 mm
    slices (an untrained network on constant padding is too ill-conditioned to compare this way)."""
    from LatentSRLib.inference.real_scans import slab_of
    from LatentSRLib.transforms.simulation import simulate_coarse_scan

    model = load_sr_model(REPO_ROOT / "Training" / "models" / "brain-sr4")
    truth = read_image(brats_flair)
    coarse = simulate_coarse_scan(slab_of(truth, "axial", range(76, 78)), 4, plane="axial")
    runs = {}
    for channels_last in (False, None):
        settings = SRSettings(data_consistency=True, channels_last=channels_last)
        runs[channels_last] = super_resolve_volume(model, coarse, settings=settings, device="cpu").sr.array
        conv = next(p for p in model.autoencoder.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) is (channels_last is None)
    assert runs[None].shape == (2, 240, 240)
    scale = float(np.percentile(runs[False], 99.5))
    assert np.abs(runs[False].astype(float) - runs[None]).max() <= 1e-3 * scale


def test_out_of_memory_halves_the_batch():
    seen = []

    def work(chunk):
        if len(chunk) > 3:  # a fake allocator limit of three slices
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        seen.extend(chunk)
        return len(chunk)

    final = run_in_batches(list(range(10)), 16, work, lambda chunk, result: None)
    assert final == 2 and seen == list(range(10))
    with pytest.raises(RuntimeError, match="other"):
        run_in_batches([1], 4, lambda chunk: (_ for _ in ()).throw(RuntimeError("other failure")), lambda *a: None)


def test_bad_inputs_give_clear_errors(model, model_folder, tmp_path):
    with pytest.raises(InputError, match="not a LatentSR model folder"):
        load_sr_model(model_folder.parent / "vae")
    image = small_volume(np.eye(3))
    other = small_volume(np.eye(3), shape=(20, 24, 30))
    with pytest.raises(InputError, match="reference is not on the input's grid"):
        super_resolve_volume(model, image, reference=other, same_grid=True, device="cpu")
    with pytest.raises(InputError, match="need a reference"):
        super_resolve_volume(model, image, mask=image, same_grid=True, device="cpu")


@pytest.mark.shared_data
def test_sr_command_on_brain_with_mask(model_folder, tmp_path, brats_flair, brats_tumour_mask, capsys):
    from LatentSRLib.cli import main

    # a 24-slice crop keeps the test fast on two cores
    volume, mask = read_image(brats_flair), read_image(brats_tumour_mask)
    crop = slice(66, 90)
    origin = tuple((volume.index_to_world() @ np.array([0, 0, crop.start, 1.0]))[:3])
    small = MedicalImage(volume.array[crop], volume.spacing, origin, volume.direction)
    small_mask = MedicalImage(mask.array[crop], mask.spacing, small.origin, mask.direction)
    from LatentSRLib.io import write_image

    write_image(small, tmp_path / "flair.nii.gz")
    write_image(small_mask, tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    code = main(["sr", str(tmp_path / "flair.nii.gz"), "-o", str(out), "--model", str(model_folder),
                 "--simulate-scale", "4", "--mask", str(tmp_path / "mask.nii.gz"), "--samples", "2", "--steps", "2"])
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["consistency.nii.gz", "difference.nii.gz", "hallucination.nii.gz", "lr.nii.gz", "metrics.json",
                     "sr.nii.gz", "uncertainty.nii.gz"]
    metrics = json.loads((out / "metrics.json").read_text())
    review = metrics["reference"]
    # whole-volume PSNRs recomputed with numpy from the written volumes, in the run's [0, 1] window (peak 1);
    # the reference is the crop itself (simulated LR)
    lower, upper = metrics["window"]["lower"], metrics["window"]["upper"]

    def windowed(array):
        return np.clip((array.astype(np.float64) - lower) / (upper - lower), 0, 1).astype(np.float32).astype(np.float64)

    def psnr(mse):
        return 10 * np.log10(1.0 / mse)

    hr = windowed(small.array)
    # the simulated scan is on the coarse grid (4x the in-plane spacing); it is scored as its bicubic
    # up-sampling (PIL-style, clipped to each true slice's range), the baseline a user would compare with
    lr = read_image(out / "lr.nii.gz")
    assert lr.shape == (24, 60, 60) and np.allclose(lr.spacing[:2], np.array(small.spacing[:2]) * 4)
    raw = ((lr.array.astype(np.float64) - lower) / (upper - lower)).astype(np.float32)  # not clipped before bicubic
    up = F.interpolate(torch.from_numpy(raw)[:, None], scale_factor=4, mode="bicubic",
                       antialias=True, align_corners=False)[:, 0].numpy()
    up = np.clip(up, hr.min(axis=(1, 2), keepdims=True), hr.max(axis=(1, 2), keepdims=True))
    lr_psnr = psnr(np.mean((up - hr) ** 2))
    assert review["psnr_lr"] == pytest.approx(lr_psnr, abs=0.01) and review["psnr_lr"] > 20
    difference = read_image(out / "difference.nii.gz").array.astype(np.float64) / (upper - lower)
    assert review["psnr_sr"] == pytest.approx(psnr(np.mean(difference ** 2)), abs=1e-4)
    # the SR volume as written (rounded to the input's dtype) gives the same PSNR up to that rounding
    assert review["psnr_sr"] == pytest.approx(psnr(np.mean((windowed(read_image(out / "sr.nii.gz").array) - hr) ** 2)),
                                              abs=0.05)
    assert review["per_slice"] and {"psnr_sr", "psnr_lr", "ssim_sr", "ssim_lr"} <= set(review["per_slice"][0])
    assert set(review["regions"]) == {"inside", "background"}
    assert review["regions"]["inside"]["pixels"] > 0
    sr = read_image(out / "sr.nii.gz")
    assert sr.has_same_geometry(small) and sr.array.dtype == small.array.dtype
    labels = read_image(out / "hallucination.nii.gz").array
    assert set(np.unique(labels)) <= {-1, 0, 1}
    # a second run into the same folder is allowed; a folder of other files is refused
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    assert main(["sr", str(tmp_path / "flair.nii.gz"), "-o", str(tmp_path / "foreign"), "--model", str(model_folder)]) == 2
    assert "not a previous" in capsys.readouterr().err


@pytest.mark.shared_data
def test_sr_command_on_knee_dicom(model_folder, tmp_path, knee_dicom_dir, capsys):
    from LatentSRLib.cli import main

    out = tmp_path / "knee"
    code = main(["sr", str(knee_dicom_dir), "-o", str(out), "--model", str(model_folder), "--axis", "sagittal", "--same-grid",
                 "--steps", "1", "--batch-size", "16"])
    assert code == 0, capsys.readouterr().err
    sr = read_image(out / "sr.nii.gz")
    knee = read_image(knee_dicom_dir)
    assert sr.has_same_geometry(knee, atol=1e-3)
    assert "80 slices" in capsys.readouterr().out


def test_cancel_between_batches_and_progress(model):
    from LatentSRLib.inference import Cancelled

    image = small_volume(np.eye(3))
    reports = []
    result = super_resolve_volume(model, image, same_grid=True, settings=SRSettings(batch_size=5), device="cpu",
                                  progress=lambda fraction, message: reports.append((fraction, message)))
    assert [r[0] for r in reports] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and reports[-1][1] == "20/20 slices"
    assert result.metrics["slices"] == 20
    calls = []

    def cancel_after_two_batches() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        super_resolve_volume(model, image, same_grid=True, settings=SRSettings(batch_size=5), device="cpu",
                             cancelled=cancel_after_two_batches)
    assert len(calls) == 3  # stopped at the third batch, the rest never ran


def test_background_run_reports_progress_and_can_be_cancelled(model_folder, tmp_path):
    import time

    from LatentSRLib.inference.background import BackgroundSR
    from LatentSRLib.io import write_image

    image = small_volume(np.eye(3))
    write_image(image, tmp_path / "in.nii.gz")
    env = {"OMP_NUM_THREADS": "1"}
    run = BackgroundSR([str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out"), "--model", str(model_folder),
                        "--batch-size", "5", "--device", "cpu", "--same-grid"], env=env).start()
    assert run.wait(timeout=300) == 0, run.log
    events = run.poll()
    assert [e.fraction for e in events] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert events[-1].message == "20/20 slices" and run.error is None
    assert (tmp_path / "out" / "sr.nii.gz").is_file()

    slow = BackgroundSR([str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "cancelled"), "--model", str(model_folder),
                         "--batch-size", "1", "--samples", "8", "--steps", "50", "--device", "cpu"], env=env).start()
    deadline = time.time() + 120
    while not slow.poll() and time.time() < deadline:  # wait until it is really working
        time.sleep(0.2)
    slow.cancel()
    assert not slow.running and slow.cancelled and slow.error is None
    assert not (tmp_path / "cancelled" / "metrics.json").exists()  # nothing half-written

    failing = BackgroundSR([str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "x"), "--model", str(model_folder)],
                           env=env).start()
    assert failing.wait(timeout=120) == 2
    assert "missing.nii.gz" in failing.error and "error" in failing.error


def test_packaged_model_is_movable_and_half_precision_is_faithful(model_folder, tmp_path, capsys):
    import shutil

    from LatentSRLib.cli import main

    assert main(["package", str(model_folder), "-o", str(tmp_path / "packaged")]) == 0
    assert "packaged" in capsys.readouterr().out
    moved = tmp_path / "elsewhere" / "brain-sr4"
    shutil.move(str(tmp_path / "packaged"), moved)
    config = json.loads((moved / "config.json").read_text())
    assert config["autoencoder"]["spec"] == "monai:autoencoder" and config["weights_dtype"] == "float16"
    original, packaged = load_sr_model(model_folder), load_sr_model(moved)
    assert packaged.autoencoder.spec.endswith(str(moved / "autoencoder"))
    lr = torch.rand(2, 1, GRID, GRID)
    a, b = original.super_resolve(lr).mean, packaged.super_resolve(lr).mean  # the same ids: the same noise
    # fp16 storage of the weights changes the output very little (max about 2e-3 on this net)
    assert 10 * torch.log10(1 / ((a - b) ** 2).mean()) > 55 and (a - b).abs().max() < 1e-2
    # never into the model itself; never over a folder of other files
    assert main(["package", str(model_folder), "-o", str(model_folder / "copy")]) == 2
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    assert main(["package", str(model_folder), "-o", str(tmp_path / "busy")]) == 2
    assert "not a previous model folder" in capsys.readouterr().err


def test_models_shipped_together_can_share_one_autoencoder(model_folder, tmp_path, capsys):
    from LatentSRLib.autoencoders.monai_kl import save_monai_autoencoder
    from LatentSRLib.cli import main
    from LatentSRLib.training.autoencoder import autoencoder_config, build_autoencoder

    shelf = tmp_path / "models"
    assert main(["package", str(model_folder), "-o", str(shelf / "first")]) == 0
    assert main(["package", str(model_folder), "-o", str(shelf / "second"), "--autoencoder-from", str(shelf / "first")]) == 0
    assert not (shelf / "second" / "autoencoder").exists()
    assert json.loads((shelf / "second" / "config.json").read_text())["autoencoder"]["spec"] == "monai:../first/autoencoder"
    moved = tmp_path / "moved"
    shelf.rename(moved)  # the pair moves together
    assert load_sr_model(moved / "second").autoencoder.spec.endswith(str(moved / "second" / ".." / "first" / "autoencoder"))
    capsys.readouterr()
    # another model's autoencoder (other weights) or a folder that is not beside the output: refused
    torch.manual_seed(1)
    config = autoencoder_config(downsampling=4, latent_channels=2, width=8)
    save_monai_autoencoder(build_autoencoder(config), moved / "other" / "autoencoder", config)
    assert main(["package", str(model_folder), "-o", str(moved / "third"), "--autoencoder-from", str(moved / "other")]) == 2
    assert "not the one this model was trained with" in capsys.readouterr().err
    assert main(["package", str(model_folder), "-o", str(tmp_path / "apart"), "--autoencoder-from", str(moved / "first")]) == 2
    assert "beside" in capsys.readouterr().err and not (tmp_path / "apart").exists()


def _taef2_space_model(root, spec: str):
    """An untrained tiny denoiser in TAEF2's latent space (32 channels, 8x), its autoencoder given by ``spec``."""
    from LatentSRLib.autoencoders import load_autoencoder, weights_fingerprint
    from LatentSRLib.autoencoders.latent_stats import LatentStats
    from LatentSRLib.diffusion import DDPMObjective, build_denoiser
    from LatentSRLib.model.folder import save_sr_model

    autoencoder = load_autoencoder(spec, latent_stats=None)
    stats = LatentStats.estimate(autoencoder, [np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)])
    torch.manual_seed(0)
    denoiser = build_denoiser("tiny", 32)
    with torch.no_grad():
        for parameter in denoiser.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return save_sr_model(root, denoiser, objective=DDPMObjective().to_dict(),
                         autoencoder={"spec": spec, "name": "taef2", "weights_sha256": weights_fingerprint(autoencoder),
                                      "latent_channels": 32, "downsampling_factor": 8},
                         latent_stats=stats, task=parse_task("sr4").to_dict(),
                         grid={"size": [64, 64], "fit": "pad", "lower_percentile": 0.5, "upper_percentile": 99.5},
                         sampling={"sampler": "ddim", "steps": 2})


@pytest.mark.parametrize("as_pair", [False, True], ids=["folder", "encoder,decoder files"])
def test_a_model_in_taef2_space_packages_with_its_autoencoder_and_the_mit_notice(tmp_path, capsys, as_pair):
    """A model trained in a pretrained tiny autoencoder's latent space ships self-contained: the
    weights copied beside it, unchanged (the recorded fingerprint holds), with TAESD's MIT notice."""
    import shutil

    from conftest import shared_path
    from LatentSRLib.cli import main

    weights = shared_path("weights", "taef2")
    spec = (f"tiny:{weights / 'taef2_encoder.pth'},{weights / 'taef2_decoder.pth'}" if as_pair
            else f"tiny:{weights}")
    source = _taef2_space_model(tmp_path / "trained", spec)
    assert main(["package", str(source), "-o", str(tmp_path / "packaged"), "--float32"]) == 0
    moved = tmp_path / "elsewhere" / "brain-taef2"
    shutil.move(str(tmp_path / "packaged"), moved)
    assert json.loads((moved / "config.json").read_text())["autoencoder"]["spec"] == "tiny:autoencoder"
    for name in ("taef2_encoder.pth", "taef2_decoder.pth"):
        assert (moved / "autoencoder" / name).read_bytes() == (weights / name).read_bytes()
    notice = (moved / "autoencoder" / "LICENSE").read_text()
    assert "MIT License" in notice and "taesd" in notice
    original, packaged = load_sr_model(source), load_sr_model(moved)
    assert str(moved / "autoencoder") in packaged.autoencoder.spec
    lr = torch.rand(1, 1, 64, 64)
    assert torch.equal(original.super_resolve(lr).mean, packaged.super_resolve(lr).mean)


def test_a_model_in_a_shipped_tiny_autoencoders_space_refers_to_it_instead_of_a_copy(tmp_path, capsys):
    """``--autoencoder-from`` a shipped tiny autoencoder folder: no copy, a relative spec that still
    loads when the tree moves as a whole; a folder with other weights is refused in one line."""
    import shutil

    from conftest import shared_path
    from LatentSRLib.autoencoders import load_autoencoder
    from LatentSRLib.autoencoders.diffusers_tiny import package_tiny_autoencoder, save_tiny_autoencoder
    from LatentSRLib.cli import main

    taef2 = load_autoencoder(f"tiny:{shared_path('weights', 'taef2')}", latent_stats=None)
    save_tiny_autoencoder(taef2.network, tmp_path / "tuned", taef2)
    tree = tmp_path / "Training"
    shipped = package_tiny_autoencoder(tmp_path / "tuned", tree / "autoencoders" / "taef2-x")
    source = _taef2_space_model(tmp_path / "trained", f"tiny:{shipped}")
    target = tree / "models" / "sr-x"
    assert main(["package", str(source), "-o", str(target), "--autoencoder-from", str(shipped), "--float32"]) == 0
    assert json.loads((target / "config.json").read_text())["autoencoder"]["spec"] == "tiny:../../autoencoders/taef2-x"
    assert not (target / "autoencoder").exists()
    lr = torch.rand(1, 1, 64, 64)
    expected = load_sr_model(source).super_resolve(lr).mean
    shutil.move(str(tree), tmp_path / "moved")
    moved = load_sr_model(tmp_path / "moved" / "models" / "sr-x")
    assert torch.equal(expected, moved.super_resolve(lr).mean)
    shutil.move(str(tmp_path / "moved"), tree)
    # the same architecture with other weights is not the model's autoencoder
    save_tiny_autoencoder(taef2.network, tmp_path / "other", taef2)
    state = torch.load(tmp_path / "other" / "taef2_decoder.pth", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1.0
    torch.save(state, tmp_path / "other" / "taef2_decoder.pth")
    capsys.readouterr()
    assert main(["package", str(source), "-o", str(tmp_path / "refused"), "--autoencoder-from", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "not the one the model was trained with" in err and err.count("\n") == 1 and not (tmp_path / "refused").exists()


@pytest.mark.parametrize("given, expected", [("false", False), ("False", False), ("true", True), (False, False), ("0", False)])
def test_the_bundle_reads_a_yes_no_setting_from_the_command_line_as_meant(given, expected):
    """``--data_consistency false`` arrives from the bundle's command line as the string "false", which
    Python would take for True: the detail end must be reachable from the bundle."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "Training" / "configs" / "inference.yaml"))
    parser.update({"data_consistency": given})
    assert parser.get_parsed_content("settings").data_consistency is expected


def test_every_yes_no_setting_of_every_bundle_entry_is_read_through_flag():
    """A top-level true/false setting that an expression uses raw would take "false" for True."""
    import re

    import yaml

    for path in sorted((REPO_ROOT / "Training" / "configs").glob("*.yaml")):
        text = path.read_text()
        switches = [key for key, value in (yaml.safe_load(text) or {}).items() if isinstance(value, bool)]
        for key in switches:
            raw = re.findall(rf"(?<!flag\()@{key}\b", text)
            assert not raw, f"{path.name}: @{key} is used without flag()"
