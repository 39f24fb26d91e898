"""FID per method (``LatentSRLib.metrics.fid``) on real BraTS FLAIR slices: zero for a set with
itself, growing with degradation, the Fréchet formula checked against an independent numpy/scipy
computation on the same features, the small-n warning, the label naming the network, and the
offline fallback that never waits on a download."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from LatentSRLib.metrics import fid as fid_module
from LatentSRLib.metrics.fid import FID_MIN_SAMPLES, FIDMetric, FIDSampleSizeWarning
from LatentSRLib.io import read_image
from LatentSRLib.transforms.intensity import PercentileWindow

SIZE = 64
N = 16


@pytest.fixture(scope="module")
def fid() -> FIDMetric:
    metric = FIDMetric(allow_download=False, device="cpu")
    if not metric.available:
        pytest.skip(f"no FID feature network available offline: {metric.reason}")
    return metric


@pytest.fixture(scope="module")
def slices(brats_flair) -> torch.Tensor:
    """Real data: 16 axial FLAIR slices (every 3rd from 50) windowed to [0, 1], area-reduced to 64x64:
    ``(16, 1, 64, 64)`` float32 as the TRUE images."""
    volume, _ = PercentileWindow(nonzero=True)(read_image(brats_flair).array.astype(np.float32))
    picked = torch.from_numpy(np.ascontiguousarray(volume[50 : 50 + 3 * N : 3], dtype=np.float32))[:, None]
    return F.interpolate(picked, size=(SIZE, SIZE), mode="area").clamp(0, 1)


def _noised(images: torch.Tensor, sd: float) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    return (images + sd * noise).clamp(0, 1)


def _blurred(images: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False)


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)), covariances with ddof 1, independently."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * np.real(root)))


@pytest.mark.filterwarnings("ignore::LatentSRLib.metrics.fid.FIDSampleSizeWarning")
def test_zero_for_the_same_set_and_grows_with_degradation(fid, slices):
    same = fid(slices, slices)
    assert same.n == same.n_true == N
    mild, strong, blurred = (fid(x, slices) for x in (_noised(slices, 0.02), _noised(slices, 0.1), _blurred(slices)))
    assert same.value == pytest.approx(0.0, abs=1e-3 * mild.value)
    assert 0 < mild.value < strong.value
    assert blurred.value > 0
    # a set statistic: the order of the images does not matter
    shuffled = fid(slices[torch.randperm(N, generator=torch.Generator().manual_seed(1))], slices)
    assert shuffled.value == pytest.approx(0.0, abs=1e-3 * mild.value)


@pytest.mark.filterwarnings("ignore::LatentSRLib.metrics.fid.FIDSampleSizeWarning")
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 16 images, 256 features: singular covariances
def test_agrees_with_scipy_on_the_same_features(fid, slices):
    for prediction in (_noised(slices, 0.05), _blurred(slices)):
        a, b = fid.features(prediction).numpy(), fid.features(slices).numpy()
        assert a.shape == (N, fid.num_features) and a.dtype == np.float64
        assert fid(prediction, slices).value == pytest.approx(_scipy_frechet(a, b), rel=1e-5)


def test_gray_images_become_three_equal_channels(fid, slices):
    features = fid.features(slices[:4])
    # (B, H, W) is the same batch; another intensity scale is mapped back by data_range
    np.testing.assert_array_equal(fid.features(slices[:4, 0]).numpy(), features.numpy())
    np.testing.assert_allclose(fid.features(slices[:4] * 255, data_range=255).numpy(), features.numpy(),
                               rtol=1e-5, atol=1e-9)
    if fid.backend == "stlpips":  # the same network fed an explicit RGB image in [-1, 1]
        from LatentSRLib.metrics.perceptual import _stlpips_network

        network = _stlpips_network()
        rgb = torch.cat([slices[:4]] * 3, dim=1) * 2 - 1
        with torch.no_grad():
            expected = network.net(network.scaling_layer(rgb)).relu5.mean(dim=(2, 3))
        np.testing.assert_allclose(features.numpy(), expected.double().numpy(), rtol=1e-5, atol=1e-9)


def test_streaming_sets_match_whole_sets(fid, slices):
    predictions = {"noised": _noised(slices, 0.05), "blurred": _blurred(slices)}
    fid.reset()
    for start in range(0, N, 5):  # batches of 5, 5, 5, 1
        fid.update(slices[start : start + 5], {k: v[start : start + 5] for k, v in predictions.items()})
    with pytest.warns(FIDSampleSizeWarning):
        results = fid.compute()
        whole = {k: fid(v, slices) for k, v in predictions.items()}
    assert list(results) == ["noised", "blurred"]
    for name, result in results.items():
        assert result.n == result.n_true == N
        assert result.value == pytest.approx(whole[name].value, rel=1e-6)  # float32 features, other batches
    fid.reset()
    assert fid.compute() == {}


def test_small_sets_warn_and_too_small_sets_are_nan(fid, slices):
    with pytest.warns(FIDSampleSizeWarning, match=f"n = {N} < {FID_MIN_SAMPLES}"):
        result = fid(slices, slices)
    assert str(FID_MIN_SAMPLES) in result.warning and result.to_dict()["n"] == N
    with pytest.warns(FIDSampleSizeWarning, match="at least 2"):
        single = fid(slices[:1], slices)
    assert math.isnan(single.value) and single.n == 1 and single.n_true == N


def test_label_names_the_network(fid):
    assert fid.name in ("fid_inception", "fd_st_alexnet") and "lpips" not in fid.name  # not taken for the LPIPS column
    if fid.backend == "stlpips":
        assert fid.name == "fd_st_alexnet" and fid.num_features == 256
        assert fid.label.startswith("FD (") and "ST-LPIPS AlexNet" in fid.label
        assert "not comparable with Inception FID" in fid.label
        assert fid.reason  # says why Inception FID was not used
    else:
        assert "Inception-v3" in fid.label and fid.num_features == 2048
    assert fid.label in repr(fid)


def test_offline_fallback_never_waits_on_a_download(monkeypatch, tmp_path):
    monkeypatch.setattr(fid_module, "_fidelity_installed", lambda: True)
    monkeypatch.setattr(fid_module, "_inception_weights", lambda: tmp_path / "not-cached.pth")

    def refuse():
        raise AssertionError("a download was attempted with allow_download=False")

    monkeypatch.setattr(fid_module, "_build_inception", refuse)
    metric = FIDMetric(allow_download=False, device="cpu")
    assert "not cached" in metric.reason and "downloads disabled" in metric.reason
    assert metric.backend in ("stlpips", None)

    timeouts = []

    def unreachable():
        timeouts.append(socket.getdefaulttimeout())
        raise OSError("network is unreachable")

    monkeypatch.setattr(fid_module, "_build_inception", unreachable)
    before = socket.getdefaulttimeout()
    metric = FIDMetric(allow_download=True, download_timeout=5, device="cpu")
    assert timeouts == [5] and socket.getdefaulttimeout() == before  # bounded, then restored
    assert "could not get" in metric.reason and "network is unreachable" in metric.reason
    only = FIDMetric(backend="torchmetrics", allow_download=True, device="cpu")
    assert not only.available and only.name is None
    with pytest.raises(RuntimeError, match="not available"):
        only.features(torch.zeros(2, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="backend"):
        FIDMetric(backend="inception")
