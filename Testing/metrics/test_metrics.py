"""Fidelity, frequency and perceptual metrics on real BraTS FLAIR slices, against independent references."""

from __future__ import annotations

import importlib.util
import sys
import warnings

import numpy as np
import pytest
import torch

from LatentSRLib.metrics import (
    SUBBANDS,
    LPIPSMetric,
    fidelity_metrics,
    haar_subband_psnr,
    haar_subbands,
    ms_ssim,
    ms_ssim_min_size,
    ms_ssim_size_problem,
    psnr,
    radial_power_spectrum,
    ssim,
    subband_names,
)
from LatentSRLib.io import read_image
from LatentSRLib.transforms.degradations import BicubicDownUp
from LatentSRLib.transforms.slicing import resize_slices


@pytest.fixture(scope="module")
def hr(brats_flair) -> torch.Tensor:
    """FLAIR scaled to [0, 1] by the volume's min/max, axial slices 70, 72, .., 78 resized to
    256x256: the true high-resolution images, (5, 1, 256, 256) float32."""
    volume = read_image(brats_flair).array.astype(np.float64)
    volume = (volume - volume.min()) / (volume.max() - volume.min())
    return resize_slices(volume[70:79:2], (256, 256))[:, None]


@pytest.fixture(scope="module")
def degraded(hr) -> dict[int, torch.Tensor]:
    """The paper's bicubic down-up degradation of ``hr`` at 2x, 4x and 8x."""
    return {scale: BicubicDownUp(scale)(hr) for scale in (2, 4, 8)}


def numpy_psnr(prediction, target, data_range: float = 1.0) -> np.ndarray:
    """Independent reference: 10 log10(R^2 / MSE) per image, float64 numpy."""
    p = np.asarray(prediction, dtype=np.float64).reshape(len(prediction), -1)
    t = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    return 10 * np.log10(data_range**2 / np.mean((p - t) ** 2, axis=1))


# ----------------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_of_bicubic_4x_matches_numpy_formula(hr, degraded):
    scores = psnr(degraded[4], hr)
    assert scores.shape == (hr.shape[0],) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, numpy_psnr(degraded[4], hr), atol=1e-4, rtol=0)
    assert 25 < scores.mean() < 40  # a plausible 4x bicubic PSNR on brain MRI
    # the data range is the peak: the same images on a 0..255 scale give the same PSNR
    np.testing.assert_allclose(psnr(255 * degraded[4], 255 * hr, data_range=255), scores, atol=1e-4)


def test_image_batches_in_any_accepted_layout(hr, degraded):
    lr = degraded[4]
    reference = psnr(lr, hr)
    np.testing.assert_array_equal(psnr(lr[:, 0], hr[:, 0]), reference)  # (B, H, W)
    np.testing.assert_array_equal(psnr(lr.numpy(), hr.numpy()), reference)  # numpy
    assert psnr(lr[0, 0], hr[0, 0]).shape == (1,)  # a single (H, W) image is a batch of one
    assert ssim(lr[:1], hr[:1]).shape == (1,)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(lr[:2], hr[:3])
    with pytest.raises(ValueError, match="channels"):
        psnr(lr.repeat(1, 3, 1, 1), hr.repeat(1, 3, 1, 1))
    broken = lr.clone()
    broken[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ssim(broken, hr)


def test_identical_images_psnr_inf_ssim_one(hr):
    assert np.all(np.isposinf(psnr(hr, hr)))
    np.testing.assert_allclose(ssim(hr, hr), 1.0, atol=1e-6)
    np.testing.assert_allclose(ms_ssim(hr, hr), 1.0, atol=1e-6)


def test_ssim_and_ms_ssim_decrease_with_stronger_degradation(hr, degraded):
    s = {scale: ssim(lr, hr) for scale, lr in degraded.items()}
    m = {scale: ms_ssim(lr, hr) for scale, lr in degraded.items()}
    for scores in (s, m):
        assert scores[2].shape == (hr.shape[0],)
        assert np.all(scores[2] > scores[4]) and np.all(scores[4] > scores[8])
        assert np.all(scores[2] < 1) and np.all(scores[8] > 0)


def test_ms_ssim_small_images_give_nan_with_the_reason(hr, degraded):
    assert ms_ssim_min_size() == 176
    small_hr, small_lr = hr[:, :, 96:160, 96:160], degraded[4][:, :, 96:160, 96:160]
    assert "176x176" in ms_ssim_size_problem(64, 64)
    with pytest.warns(UserWarning, match="at least 176x176 pixels.*got 64x64"):
        scores = ms_ssim(small_lr, small_hr)
    assert scores.shape == (hr.shape[0],) and np.all(np.isnan(scores))
    # the stated minimum is exactly torchmetrics' limit: 176 works without a warning
    assert ms_ssim_size_problem(176, 176) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        at_limit = ms_ssim(degraded[4][:, :, 40:216, 40:216], hr[:, :, 40:216, 40:216])
    assert np.all((at_limit > 0.5) & (at_limit < 1))


def test_fidelity_metrics_bundle(hr, degraded):
    metrics = fidelity_metrics(degraded[4], hr)
    assert list(metrics) == ["psnr", "ssim", "ms_ssim"]
    for values in metrics.values():
        assert values.shape == (hr.shape[0],) and np.all(np.isfinite(values))
    np.testing.assert_array_equal(metrics["psnr"], psnr(degraded[4], hr))


# ----------------------------------------------------------------------------------- Haar subbands
def test_subband_names_and_order(hr, degraded):
    assert SUBBANDS == ("LL3", "LH3", "HL3", "HH3", "LH2", "HL2", "HH2", "LH1", "HL1", "HH1")
    assert subband_names(2) == ("LL2", "LH2", "HL2", "HH2", "LH1", "HL1", "HH1")
    bands = haar_subband_psnr(degraded[4], hr)
    assert tuple(bands) == SUBBANDS
    for values in bands.values():
        assert values.shape == (hr.shape[0],)
    shapes = {name: band.shape for name, band in haar_subbands(hr).items()}
    assert shapes["LL3"] == shapes["HH3"] == (hr.shape[0], 32, 32)
    assert shapes["LH1"] == (hr.shape[0], 128, 128)


def test_identical_images_are_inf_in_every_band(hr):
    bands = haar_subband_psnr(hr, hr)
    assert all(np.all(np.isposinf(v)) for v in bands.values())


def test_band_naming_follows_edge_orientation():
    """LH = pywt cH answers horizontal edges (rows differ), HL = cV vertical edges, HH = cD."""
    horizontal = np.zeros((16, 16))
    horizontal[5:, :] = 1.0  # edge between rows 4 and 5, inside a level-1 Haar pair
    bands = haar_subbands(horizontal, levels=1)
    assert np.abs(bands["LH1"]).sum() > 0 and np.abs(bands["HL1"]).sum() == 0 and np.abs(bands["HH1"]).sum() == 0
    bands = haar_subbands(horizontal.T, levels=1)
    assert np.abs(bands["HL1"]).sum() > 0 and np.abs(bands["LH1"]).sum() == 0
    checker = np.indices((16, 16)).sum(axis=0) % 2.0
    bands = haar_subbands(checker, levels=1)
    assert np.abs(bands["HH1"]).sum() > 0 and np.abs(bands["LH1"]).sum() == np.abs(bands["HL1"]).sum() == 0


def test_haar_coefficient_ranges_pin_the_theoretical_peaks():
    """For images in [0, 1], LL_l reaches 2**l and level-l details span [-2**(l-1), 2**(l-1)]: width 2**l."""
    ones = haar_subbands(np.ones((16, 16)), levels=3)
    assert np.allclose(ones["LL3"], 8.0)
    for level in (1, 2, 3):
        worst = np.zeros((16, 16))
        block = 2**level
        worst[: block // 2, :] = 1.0  # top half of the first block bright: maximal horizontal detail
        detail = haar_subbands(worst, levels=level)[f"LH{level}"]
        assert np.isclose(np.abs(detail).max(), 2.0 ** (level - 1))


def test_parseval_bands_add_up_to_pixel_error(hr, degraded):
    """Haar is orthonormal: squared errors over all bands sum to the pixel-space squared error, and
    with the theoretical peaks the band PSNRs combine into the image PSNR."""
    lr = degraded[4].double()
    pred_bands, true_bands = haar_subbands(lr), haar_subbands(hr)
    band_sse = sum(((pred_bands[b] - true_bands[b]) ** 2).sum(axis=(-2, -1)) for b in SUBBANDS)
    pixel_sse = ((lr - hr.double()) ** 2).sum(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(band_sse, pixel_sse, rtol=1e-10)

    band_psnr = haar_subband_psnr(lr, hr)
    combined = -10 * np.log10(sum(10 ** (-band_psnr[b] / 10) for b in SUBBANDS))
    np.testing.assert_allclose(combined, numpy_psnr(lr, hr), atol=1e-4)


def test_blur_hurts_the_finest_bands_far_more_than_ll3(hr, degraded):
    lr = degraded[4]
    pred_bands, true_bands = haar_subbands(lr), haar_subbands(hr)

    def lost(band: str) -> np.ndarray:  # error energy relative to the true band's energy
        err = ((pred_bands[band] - true_bands[band]) ** 2).sum(axis=(-2, -1))
        return err / (true_bands[band] ** 2).sum(axis=(-2, -1))

    assert np.all(lost("HH1") > 0.5) and np.all(lost("LL3") < 0.01)
    # with the paper's per-image peak (max of the true band) that shows as a PSNR gap of >10 dB
    paper = haar_subband_psnr(lr, hr, peak="target_max")
    assert np.all(paper["LL3"] - paper["HH1"] > 10)


def test_paired_band_differences_do_not_depend_on_the_peak(hr, degraded):
    """The peak depends only on the true image, so method-vs-method differences are convention-free."""
    for peak in ("theoretical", "target_max"):
        a = haar_subband_psnr(degraded[2], hr, peak=peak)
        b = haar_subband_psnr(degraded[4], hr, peak=peak)
        if peak == "theoretical":
            reference = {band: a[band] - b[band] for band in SUBBANDS}
        else:
            for band in SUBBANDS:
                np.testing.assert_allclose(a[band] - b[band], reference[band], atol=1e-9)
    with pytest.raises(ValueError, match="peak"):
        haar_subband_psnr(hr, hr, peak="max")


# ----------------------------------------------------------------------------------- spectrum
def test_radial_spectrum_blur_removes_high_frequencies(hr, degraded):
    frequencies, power = radial_power_spectrum(hr)
    assert frequencies.shape == (129,) and power.shape == (hr.shape[0], 129)
    assert frequencies[0] == 0 and frequencies[-1] == pytest.approx(0.5)
    assert np.all(np.isfinite(power))
    # bin 0 holds only the DC sample: |sum|^2 / (H W) = H W mean^2
    means = hr.double().mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(power[:, 0], 256 * 256 * means**2, rtol=1e-10)
    _, blurred = radial_power_spectrum(degraded[4])
    high = frequencies > 0.25
    assert np.all(blurred[:, high].sum(axis=1) < 0.1 * power[:, high].sum(axis=1))
    low = frequencies < 0.05
    np.testing.assert_allclose(blurred[:, low].sum(axis=1), power[:, low].sum(axis=1), rtol=0.05)


# ----------------------------------------------------------------------------------- LPIPS
@pytest.fixture(scope="module")
def lpips() -> LPIPSMetric:
    metric = LPIPSMetric(allow_download=False, device="cpu")
    if not metric.available:
        pytest.skip(f"no LPIPS network available offline: {metric.reason}")
    return metric


def test_lpips_zero_for_identical_and_grows_with_degradation(lpips, hr, degraded):
    crop = (slice(None), slice(None), slice(64, 192), slice(64, 192))
    target = hr[:2][crop]
    same = lpips(target, target)
    assert same.shape == (2,) and np.allclose(same, 0, atol=1e-6)
    scores = {scale: lpips(degraded[scale][:2][crop], target) for scale in (2, 4, 8)}
    assert np.all(scores[2] > 0)
    assert np.all(scores[2] < scores[4]) and np.all(scores[4] < scores[8])


def test_lpips_label_names_the_network(lpips):
    assert "AlexNet" in lpips.label
    assert lpips.name in ("lpips_alex", "stlpips_alex")
    if lpips.backend == "stlpips":
        assert "offline stand-in" in lpips.label and "not comparable" in lpips.label
        assert lpips.reason  # says why the published LPIPS was not used
        if importlib.util.find_spec("IPython") is None:
            assert "IPython" not in sys.modules  # the import placeholders were removed again


def test_lpips_unavailable_backend_says_why():
    with pytest.raises(ValueError, match="backend"):
        LPIPSMetric(backend="vgg")
    metric = LPIPSMetric(backend="torchmetrics", allow_download=False, device="cpu")
    if metric.available:
        pytest.skip("torchvision's AlexNet weights are cached here: the published LPIPS is available")
    assert metric.name is None and "not cached" in metric.reason
    with pytest.raises(RuntimeError, match="not available"):
        metric(np.zeros((1, 64, 64)), np.zeros((1, 64, 64)))
