"""Simulated low-resolution inputs, checked on real BraTS FLAIR slices prepared as in the paper."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from LatentSRLib.transforms import (
    DEGRADATION_MODES,
    AddNoise,
    AddNoised,
    BicubicDownUp,
    BicubicDownUpd,
    BlurDownUp,
    BlurDownUpd,
    KSpaceTruncation,
    KSpaceTruncationd,
    make_degradation,
)


def psnr(estimate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) over the last two axes, data range 1 (the paper's 10 log10(1 / MSE))."""
    mse = np.mean((np.asarray(estimate, np.float64) - reference) ** 2, axis=(-2, -1))
    return 10 * np.log10(1.0 / mse)


@pytest.fixture(scope="module")
def hr(brats_flair) -> np.ndarray:
    """Paper preprocessing: FLAIR normalised to [0, 1] per volume, axial slices 40..110 with brain,
    each resized to 256x256 (bilinear). Shape (71, 256, 256), float32."""
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(brats_flair))).astype(np.float32)
    volume = (volume - volume.min()) / (volume.max() - volume.min())
    slices = torch.from_numpy(volume[40:111]).unsqueeze(1)
    resized = torch.nn.functional.interpolate(slices, size=(256, 256), mode="bilinear", align_corners=False)
    return resized[:, 0].numpy()


# ------------------------------------------------------------------------------------- bicubic
def test_bicubic_psnr_matches_the_paper_and_falls_with_scale(hr):
    means = {scale: float(psnr(BicubicDownUp(scale)(hr), hr).mean()) for scale in (2, 4, 8)}
    print("bicubic PSNR on BraTS FLAIR slices 40..110 (dB):", {k: round(v, 2) for k, v in means.items()})
    assert 27.0 <= means[4] <= 34.0  # paper Table S4: 29.91 +- 1.84 dB
    assert means[2] > means[4] > means[8]


def test_bicubic_output_range_shape_and_dtype(hr):
    lr = BicubicDownUp(4)(hr)
    assert lr.shape == hr.shape and lr.dtype == np.float32 and isinstance(lr, np.ndarray)
    assert lr.min() >= hr.min() and lr.max() <= hr.max()
    unclipped = BicubicDownUp(4, clip=False)(hr)
    assert unclipped.max() > hr.max() or unclipped.min() < hr.min()  # bicubic overshoot exists
    np.testing.assert_array_equal(BicubicDownUp(1)(hr[:2]), hr[:2])
    assert BicubicDownUp(4)(hr[:2].astype(np.float64)).dtype == np.float64
    assert BicubicDownUp(4)((hr[:2] * 1000).astype(np.int16)).dtype == np.float32


def test_bicubic_matches_pil(hr):
    Image = pytest.importorskip("PIL.Image")
    image = np.ascontiguousarray(hr[30])
    low = Image.fromarray(image).resize((64, 64), Image.BICUBIC)
    pil = np.asarray(low.resize((256, 256), Image.BICUBIC))
    ours = BicubicDownUp(4, clip=False)(image)
    np.testing.assert_allclose(ours, pil, atol=1e-5)


def test_blur_refinement_is_milder_than_4x(hr):
    blurred = BlurDownUp(sigma=1.0, scale=2)(hr)
    assert blurred.shape == hr.shape
    refine = psnr(blurred, hr).mean()
    sr4 = psnr(BicubicDownUp(4)(hr), hr).mean()
    assert refine > sr4
    # blur loses detail: worse than a plain 2x bicubic down-up
    assert refine < psnr(BicubicDownUp(2)(hr), hr).mean()
    # a constant image stays constant (normalised kernel, mirror padding: no dark border)
    flat = np.full((32, 32), 0.25, np.float32)
    np.testing.assert_allclose(BlurDownUp(sigma=2.0)(flat), flat, atol=1e-6)


# ------------------------------------------------------------------------------------- k-space
def test_kspace_scale_one_returns_the_input(hr):
    np.testing.assert_allclose(KSpaceTruncation(scale=1)(hr[:4]), hr[:4], atol=1e-5)


@pytest.mark.parametrize("taper", [None, "hamming", "tukey"])
def test_kspace_keeps_only_the_central_band(hr, taper):
    transform = KSpaceTruncation(scale=4, taper=taper)
    weights = transform.weights(256, 256)
    band = KSpaceTruncation(scale=4).weights(256, 256) > 0
    assert band.sum() == 64 * 64
    assert np.all(weights[~band] == 0)  # a taper only weights lines inside the band
    assert weights[0, 0] == pytest.approx(1.0)  # DC untouched: mean intensity kept

    band_limited = transform.complex_image(hr[50]).numpy()
    spectrum = np.fft.fft2(band_limited)
    outside = np.abs(spectrum[~band])
    assert outside.max() < 1e-4 * np.abs(spectrum).max()
    # inside the band the spectrum is the input's, weighted by the taper
    inside = weights > 0
    np.testing.assert_allclose(spectrum[inside], (np.fft.fft2(hr[50]) * weights)[inside], atol=1e-2)

    magnitude = transform(hr[50])
    np.testing.assert_allclose(magnitude, np.abs(band_limited), atol=1e-6)
    assert magnitude.min() >= 0


def test_kspace_taper_reduces_ringing(hr):
    def total_variation(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x, axis=-1)).sum() + np.abs(np.diff(x, axis=-2)).sum())

    sharp = KSpaceTruncation(4)(hr)
    hamming = KSpaceTruncation(4, taper="hamming")(hr)
    tukey = KSpaceTruncation(4, taper="tukey")(hr)
    assert total_variation(hamming) < total_variation(tukey) < total_variation(sharp)

    # Gibbs overshoot at a step edge: ~9 % with a sharp cut-off, almost none with a Hamming taper
    step = np.zeros((64, 64), np.float32)
    step[:, 16:48] = 1.0
    assert KSpaceTruncation(4)(step).max() > 1.05
    assert KSpaceTruncation(4, taper="hamming")(step).max() < 1.01


# ------------------------------------------------------------------------------------- noise
def test_noise_is_seeded():
    image = np.full((128, 128), 0.5, np.float32)
    first = AddNoise(0.05, seed=7)(image)
    np.testing.assert_array_equal(first, AddNoise(0.05, seed=7)(image))
    assert not np.array_equal(first, AddNoise(0.05, seed=8)(image))
    noise = AddNoise(0.05, seed=7)
    assert not np.array_equal(noise(image), noise(image))  # successive calls draw anew
    noise.set_random_state(seed=7)
    np.testing.assert_array_equal(noise(image), first)


def test_gaussian_noise_has_the_requested_std():
    image = np.full((256, 256), 0.5, np.float32)
    noisy = AddNoise(0.05, kind="gaussian", seed=0)(image)
    assert noisy.dtype == np.float32
    assert np.std(noisy - image) == pytest.approx(0.05, rel=0.03)
    assert np.mean(noisy) == pytest.approx(0.5, abs=1e-3)
    np.testing.assert_array_equal(AddNoise(0.0)(image), image)


def test_rician_noise_is_non_negative_on_background():
    background = torch.zeros(2, 64, 64)
    noisy = AddNoise(0.02, kind="rician", seed=1)(background)
    assert isinstance(noisy, torch.Tensor) and noisy.shape == background.shape
    assert noisy.min() >= 0 and noisy.mean() > 0


# ------------------------------------------------------------------------------------- forms and types
TRANSFORMS = {
    "bicubic": lambda: BicubicDownUp(4),
    "blur": lambda: BlurDownUp(1.0, 2),
    "kspace": lambda: KSpaceTruncation(4, taper="tukey"),
    "noise": lambda: AddNoise(0.02, kind="rician", seed=3),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_numpy_and_torch_inputs_agree(hr, name):
    image = hr[45:48]
    from_numpy = TRANSFORMS[name]()(image)
    from_torch = TRANSFORMS[name]()(torch.from_numpy(image.copy()))
    assert isinstance(from_numpy, np.ndarray) and isinstance(from_torch, torch.Tensor)
    assert type(from_torch) is torch.Tensor and from_torch.dtype == torch.float32
    assert from_numpy.shape == image.shape
    np.testing.assert_array_equal(from_torch.numpy(), from_numpy)


@pytest.mark.parametrize("name", ["bicubic", "blur", "kspace"])
def test_volume_equals_slice_by_slice(hr, name):
    volume = hr[50:56]  # (K, J, I)
    transform = TRANSFORMS[name]()
    whole = transform(volume)
    per_slice = np.stack([transform(s) for s in volume])
    np.testing.assert_allclose(whole, per_slice, atol=1e-6)
    # channel-first items and batches are the same images
    batch = transform(volume[:, None])
    assert batch.shape == (6, 1, 256, 256)
    np.testing.assert_allclose(batch[:, 0], whole, atol=1e-6)


def test_metatensor_keeps_its_metadata(hr):
    item = MetaTensor(torch.from_numpy(hr[None, 60].copy()), affine=torch.diag(torch.tensor([0.9, 0.9, 1.0, 1.0])))
    out = BicubicDownUp(4)(item)
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, item.affine)


@pytest.mark.parametrize(
    "name, make_dict",
    [
        ("bicubic", lambda **kw: BicubicDownUpd(scale=4, **kw)),
        ("blur", lambda **kw: BlurDownUpd(sigma=1.0, scale=2, **kw)),
        ("kspace", lambda **kw: KSpaceTruncationd(scale=4, taper="tukey", **kw)),
        ("noise", lambda **kw: AddNoised(sigma=0.02, kind="rician", seed=3, **kw)),
    ],
)
def test_dict_forms_make_training_pairs(hr, name, make_dict):
    image = hr[None, 70]  # (C, H, W)
    expected = TRANSFORMS[name]()(image)

    pair = make_dict(keys="hr", output_keys="lr")({"hr": image, "id": "BraTS-GLI-00001-000"})
    assert pair["hr"] is image and pair["id"] == "BraTS-GLI-00001-000"
    np.testing.assert_array_equal(pair["lr"], expected)

    in_place = make_dict(keys="hr")({"hr": image})
    np.testing.assert_array_equal(in_place["hr"], expected)


def test_make_degradation_builds_each_mode(hr):
    image = hr[55]
    np.testing.assert_array_equal(make_degradation("sr", 4)(image), BicubicDownUp(4)(image))
    np.testing.assert_array_equal(make_degradation("refine", 2, sigma=1.0)(image), BlurDownUp(1.0, 2)(image))
    np.testing.assert_array_equal(
        make_degradation("kspace", 4, taper="hamming")(image), KSpaceTruncation(4, "hamming")(image)
    )
    noisy = make_degradation("sr", 4, noise=0.01, seed=5)
    assert isinstance(noisy, Compose) and len(noisy.transforms) == 2
    expected = AddNoise(0.01, seed=5)(BicubicDownUp(4)(image))
    np.testing.assert_array_equal(noisy(image), expected)
    # Compose.set_random_state reseeds the noise through AddNoise.set_random_state
    noisy.set_random_state(seed=11)
    again = noisy(image)
    noisy.set_random_state(seed=11)
    np.testing.assert_array_equal(noisy(image), again)
    assert not np.array_equal(again, expected)
    assert set(DEGRADATION_MODES) == {"sr", "refine", "kspace", "thick"}
    assert all(isinstance(text, str) and "\n" not in text for text in DEGRADATION_MODES.values())


@pytest.mark.parametrize(
    "build",
    [
        lambda: BicubicDownUp(0),
        lambda: BicubicDownUp(-2),
        lambda: BicubicDownUp(2.5),
        lambda: BicubicDownUp(True),
        lambda: BicubicDownUp("4"),
        lambda: BlurDownUp(sigma=-1.0),
        lambda: BlurDownUp(sigma=float("nan")),
        lambda: KSpaceTruncation(4, taper="hann"),
        lambda: KSpaceTruncation(4, taper="tukey", tukey_alpha=1.5),
        lambda: AddNoise(-0.1),
        lambda: AddNoise(0.1, kind="poisson"),
        lambda: make_degradation("sr", 4, noise=-1.0),
        lambda: make_degradation("sr", 4, sigma=1.0),  # the bicubic mode has no blur
    ],
)
def test_bad_arguments(build):
    with pytest.raises(ValueError):
        build()


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match="sr, refine, kspace"):
        make_degradation("bilinear", 4)


@pytest.mark.parametrize("transform", [BicubicDownUp(4), BlurDownUp(), KSpaceTruncation(4)])
def test_bad_images(transform):
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        transform(np.zeros(16, np.float32))
    with pytest.raises(ValueError, match="larger than the image"):
        transform(np.zeros((3, 1, 64), np.float32))
