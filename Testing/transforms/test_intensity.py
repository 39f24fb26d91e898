"""Intensity windowing: percentile windows, exact inversion, dict forms, JSON storage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LatentSRLib.errors import InputError
from LatentSRLib.transforms import IntensityWindow, InvertWindowd, PercentileWindow, PercentileWindowd


@pytest.fixture(scope="module")
def flair(brats_flair) -> np.ndarray:
    """The BraTS FLAIR volume, int16, (155, 240, 240) in numpy (k, j, i) order."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(brats_flair)))


def test_window_round_trips_int16_volume_exactly_inside_the_window(flair):
    assert flair.dtype == np.int16
    windowed, window = PercentileWindow()(flair)
    assert windowed.dtype == np.float32 and windowed.shape == flair.shape
    assert windowed.min() >= 0.0 and windowed.max() <= 1.0
    assert window.source_dtype == "int16"

    back = window.invert(windowed)
    assert back.dtype == np.int16
    inside = (flair >= window.lower) & (flair <= window.upper)
    assert inside.mean() > 0.99
    np.testing.assert_array_equal(back[inside], flair[inside])
    # outside the window the clip is what is lost: values come back at the window's edge
    expected = np.round(np.clip(flair, window.lower, window.upper)).astype(np.int16)
    np.testing.assert_array_equal(back, expected)


def test_unclipped_window_round_trips_every_voxel(flair):
    windowed, window = PercentileWindow(clip=False)(flair)
    assert windowed.max() > 1.0  # the top 0.5 % lies above the window
    np.testing.assert_array_equal(window.invert(windowed), flair)


def test_percentiles_are_honoured(flair):
    window = PercentileWindow(lower_percentile=2.0, upper_percentile=98.0).compute(flair)
    assert window.lower == pytest.approx(np.percentile(flair, 2.0))
    assert window.upper == pytest.approx(np.percentile(flair, 98.0))
    assert np.mean(flair > window.upper) == pytest.approx(0.02, abs=0.005)

    full = PercentileWindow(0.0, 100.0).compute(flair)
    assert (full.lower, full.upper) == (float(flair.min()), float(flair.max()))


def test_nonzero_ignores_the_background(flair):
    plain = PercentileWindow().compute(flair)
    brain = PercentileWindow(nonzero=True).compute(flair)
    foreground = flair[flair != 0]
    assert plain.lower == 0.0  # skull-stripped: most voxels are background
    assert brain.lower == pytest.approx(np.percentile(foreground, 0.5))
    assert brain.upper == pytest.approx(np.percentile(foreground, 99.5))
    assert brain.lower > 0


def test_torch_input_matches_numpy(flair):
    slab = flair[60:70]
    windowed_np, window_np = PercentileWindow(nonzero=True)(slab)
    windowed_t, window_t = PercentileWindow(nonzero=True)(torch.from_numpy(slab.copy()))
    assert isinstance(windowed_t, torch.Tensor) and windowed_t.dtype == torch.float32
    assert window_t == window_np
    np.testing.assert_array_equal(windowed_t.numpy(), windowed_np)
    back = window_t.invert(windowed_t)
    assert isinstance(back, torch.Tensor) and back.dtype == torch.int16


@pytest.mark.parametrize("as_torch", [False, True])
def test_constant_image_is_refused(as_torch):
    image = np.full((4, 8, 8), 7, dtype=np.int16)
    with pytest.raises(InputError, match="constant image, cannot window"):
        PercentileWindow()(torch.from_numpy(image) if as_torch else image)


def test_unusable_images_are_refused():
    with pytest.raises(InputError, match="NaN"):
        PercentileWindow()(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(InputError, match="empty"):
        PercentileWindow()(np.zeros((0, 4)))
    mostly_zero = np.zeros((100, 100), np.float32)
    mostly_zero[0, :3] = (1.0, 2.0, 3.0)
    with pytest.raises(InputError, match="nearly constant"):
        PercentileWindow()(mostly_zero)
    assert PercentileWindow(nonzero=True).compute(mostly_zero).upper > 1.0


@pytest.mark.parametrize("lower, upper", [(50, 50), (60, 40), (-1, 99), (1, 101)])
def test_bad_percentiles(lower, upper):
    with pytest.raises(ValueError, match="percentiles"):
        PercentileWindow(lower, upper)


def test_dict_forms_round_trip(flair):
    slab = flair[70:80]
    data = {"image": slab, "label": np.ones(3)}
    windowed = PercentileWindowd(keys="image", nonzero=True)(data)
    window = windowed["image_window"]
    assert isinstance(window, IntensityWindow)
    assert windowed["label"] is data["label"]
    np.testing.assert_array_equal(windowed["image"], PercentileWindow(nonzero=True)(slab)[0])

    restored = InvertWindowd(keys="image")(windowed)
    inside = (slab >= window.lower) & (slab <= window.upper)
    np.testing.assert_array_equal(restored["image"][inside], slab[inside])

    # a model output inverted with its input's window, the window kept in dict form (collatable)
    stored = PercentileWindowd(keys="image", window_key_postfix="win", store_dict=True)(data)
    assert isinstance(stored["image_win"], dict)
    stored["pred"] = stored["image"]
    out = InvertWindowd(keys="pred", window_key="image_win")(stored)
    assert out["pred"].dtype == np.int16

    with pytest.raises(KeyError, match="no intensity window"):
        InvertWindowd(keys="image")({"image": windowed["image"]})


def test_collated_window_dict_is_accepted():
    window = IntensityWindow(-1000.0, 400.0, "int16")
    collated = {k: ([v] if isinstance(v, str) else torch.tensor([v])) for k, v in window.to_dict().items()}
    assert IntensityWindow.coerce(collated) == window


def test_window_json_round_trip():
    window = IntensityWindow(lower=102.0, upper=2621.5, source_dtype=np.dtype("int16"), clip=False)
    text = json.dumps({"window": window.to_dict()})
    again = IntensityWindow.from_dict(json.loads(text)["window"])
    assert again == window
    assert again.source_dtype == "int16" and again.clip is False


def test_float_and_unsigned_sources():
    window = IntensityWindow(-1024.0, 3071.0, "float64")
    hu = np.linspace(-1024.0, 3071.0, 1001)
    back = window.invert(window.apply(hu))
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, hu, atol=1e-3)  # float32 windowed values: ~1e-7 of the width

    byte = IntensityWindow(0.0, 255.0, "uint8", clip=False)
    np.testing.assert_array_equal(byte.invert(np.array([-0.5, 0.5, 2.0])), np.array([0, 128, 255], np.uint8))


def test_invalid_windows():
    with pytest.raises(ValueError, match="greater"):
        IntensityWindow(1.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        IntensityWindow(0.0, float("inf"))
    with pytest.raises(ValueError, match="needs"):
        IntensityWindow.from_dict({"lower": 0.0})
