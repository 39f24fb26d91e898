"""FID per method: a set statistic, saying which network computed it (rule 10 (docs/science.md)).

The Fréchet distance between two image sets fits a Gaussian to each set's network features and
measures ``||mu_p - mu_t||^2 + Tr(S_p + S_t - 2 (S_p S_t)^(1/2))`` (Heusel et al., 2017). It is
one number per set pair: here all of a method's predictions against all the TRUE high-resolution
images of the split (rule 1 (docs/science.md)), per method and dataset. Two feature networks, tried in this
order by ``backend="auto"`` (as :mod:`.perceptual` does for LPIPS):

1. ``"torchmetrics"``: the published FID, Inception-v3 pool3 features (2048-d) of
   ``torchmetrics.image.fid.FrechetInceptionDistance``. It needs the PyPI package
   ``torch-fidelity`` and its Inception weights, which are downloaded into the torch hub cache on
   first use; with no network this backend is unavailable unless they are already cached
   (``allow_download=False`` skips the attempt entirely; a download attempt is bounded by a socket
   timeout, so an unreachable host cannot hang an evaluation).
2. ``"stlpips"``: an offline stand-in, the Fréchet distance of the globally averaged last
   convolutional features (relu5, 256-d) of the ST-LPIPS AlexNet trunk whose weights the PyPI
   package ``stlpips-pytorch`` bundles (the network :class:`.perceptual.LPIPSMetric` falls back
   to). A different network and feature space: its values are NOT comparable with Inception FID
   and are labelled so (``"FD (...)"``, not "FID").

Either way torchmetrics' ``FrechetInceptionDistance`` accumulates the feature statistics (float64
sums) and computes the distance: it accepts any feature ``nn.Module`` without torch-fidelity.
Features are extracted here first, once per batch for the true images, and handed to one
torchmetrics metric per method through an identity "feature network"; so the true images are not
run through the network again for every method.

Inputs: ``(B, 1, H, W)`` / ``(B, H, W)`` grayscale images in ``[0, data_range]``, scaled to
``[0, 1]`` and clipped there, repeated to three channels. Inception: quantised to uint8 as
torchmetrics does for ``normalize=True`` (``(x * 255).byte()``) and resized to 299x299 inside the
network. ST-LPIPS AlexNet: mapped to ``[-1, 1]`` and through LPIPS's ImageNet scaling layer at the
native size (all images of a split share one grid).

Sample size: FID is biased upwards for small sets and its bias depends on n, so values are only
comparable at equal n; :data:`FID_MIN_SAMPLES` (2048, the usual floor: the Inception feature
dimension) or more images per set are expected, fewer raise a :class:`FIDSampleSizeWarning`.
A set of fewer than 2 images has no covariance: its value is NaN.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from LatentSRLib.metrics.quality import as_image_batch, check_data_range
from LatentSRLib.metrics.perceptual import (
    DOWNLOAD_TIMEOUT,
    _BackendUnavailable,
    _socket_timeout,
    _stlpips_network,
    check_backend_arguments,
    default_device,
    first_available_backend,
)

__all__ = ["FID_BACKENDS", "FID_MIN_SAMPLES", "FIDMetric", "FIDResult", "FIDSampleSizeWarning", "sample_size_warning"]

FID_BACKENDS = ("auto", "torchmetrics", "stlpips")
#: fewer images per set than this draw a warning (FID is biased at small n; 2048 = Inception's feature size)
FID_MIN_SAMPLES = 2048
# names avoid the substring "lpips": rows.lpips_column() finds the LPIPS column by it
_LABELS = {
    "torchmetrics": ("fid_inception", "FID (Inception-v3 pool3 features, 2048-d, torchmetrics / torch-fidelity)"),
    "stlpips": (
        "fd_st_alexnet",
        "FD (offline ST-LPIPS AlexNet features, relu5 256-d, stlpips-pytorch; not comparable with Inception FID)",
    ),
}
_SHORT = {"torchmetrics": "Inception FID (torchmetrics)", "stlpips": "ST-LPIPS AlexNet FD"}


class FIDSampleSizeWarning(UserWarning):
    """A set has fewer than :data:`FID_MIN_SAMPLES` images: its FID is biased and depends on n."""


@dataclass(frozen=True)
class FIDResult:
    """One set pair's Fréchet distance.

    Attributes:
        value: the distance, >= 0 (eigenvalue round-off below 0 of near-identical sets is clipped
            to 0); lower is closer to the true images; NaN when a set has fewer than 2 images.
        n: images in the method's set; n_true: images in the true set.
        name: short key of the feature network (``"fid_inception"`` or ``"fd_st_alexnet"``).
        label: what computed it (see :class:`FIDMetric`).
        warning: why the value should be read with care (small n), or ``None``.
    """

    value: float
    n: int
    n_true: int
    name: str
    label: str
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (NaN kept as NaN)."""
        return asdict(self)


def sample_size_warning(n: int, n_true: int, minimum: int = FID_MIN_SAMPLES) -> str | None:
    """The warning text for sets of ``n`` and ``n_true`` images, or ``None`` when both are large enough."""
    smallest = min(int(n), int(n_true))
    if smallest < 2:
        return f"n = {smallest} image(s): a Fréchet distance needs at least 2 images per set (value n/a)"
    if smallest < minimum:
        return (f"n = {smallest} < {minimum} images per set: FID is biased upwards at small n and depends on n; "
                "compare values only at equal n, never with published FIDs")
    return None


# ----------------------------------------------------------------------------------- feature networks
class _InceptionFeatures(torch.nn.Module):
    """torchmetrics' Inception-v3 (torch-fidelity weights): ``(B, 1, H, W)`` in [0, 1] -> ``(B, 2048)`` float64."""

    num_features = 2048

    def __init__(self, inception: torch.nn.Module) -> None:
        super().__init__()
        self.inception = inception

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the same quantisation as FrechetInceptionDistance(normalize=True): truncation, not rounding
        rgb = (images.repeat(1, 3, 1, 1) * 255).byte()
        return self.inception(rgb).reshape(images.shape[0], -1).double()


class _AlexNetFeatures(torch.nn.Module):
    """ST-LPIPS AlexNet trunk: ``(B, 1, H, W)`` in [0, 1] -> spatial mean of relu5, ``(B, 256)`` float64."""

    num_features = 256

    def __init__(self, lpips_network: torch.nn.Module) -> None:
        super().__init__()
        self.scaling = lpips_network.scaling_layer
        self.trunk = lpips_network.net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.repeat(1, 3, 1, 1).mul(2).sub(1)  # LPIPS's input convention, [-1, 1]
        # relu5: the last convolutional layer, the analogue of Inception's pool3 (before the classifier)
        return self.trunk(self.scaling(rgb)).relu5.mean(dim=(2, 3)).double()


class _GivenFeatures(torch.nn.Module):
    """Identity "feature network": the torchmetrics metric accumulates features extracted beforehand."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)  # torchmetrics reads it instead of probing with a dummy image

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _inception_weights() -> Path:
    """Where torch-fidelity keeps (or would keep) its Inception-v3 FID weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]


def _fidelity_installed() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


def _build_inception() -> torch.nn.Module:
    """torchmetrics' FID Inception-v3 (loads, or downloads, torch-fidelity's weights)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=2048, normalize=True).inception


def _torchmetrics_features(allow_download: bool, timeout: float) -> torch.nn.Module:
    if not _fidelity_installed():
        raise _BackendUnavailable("torchmetrics' Inception FID needs the PyPI package torch-fidelity (not installed)")
    try:
        weights = _inception_weights()
    except Exception as exc:  # torch-fidelity present but broken
        raise _BackendUnavailable(f"torch-fidelity is not importable ({type(exc).__name__}: {exc})") from exc
    if not weights.is_file() and not allow_download:
        raise _BackendUnavailable(f"torch-fidelity's Inception-v3 weights are not cached at {weights} "
                                  "(downloads disabled)")
    try:
        with _socket_timeout(timeout):
            inception = _build_inception()
    except Exception as exc:  # URLError / OSError / timeouts when offline
        raise _BackendUnavailable(
            f"could not get torch-fidelity's Inception-v3 weights ({type(exc).__name__}: {exc}); "
            f"place them at {weights} to use Inception FID offline"
        ) from exc
    return _InceptionFeatures(inception)


def _stlpips_features() -> torch.nn.Module:
    return _AlexNetFeatures(_stlpips_network())


def _new_set(num_features: int):
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=_GivenFeatures(num_features), normalize=True)


# ----------------------------------------------------------------------------------- the metric
class FIDMetric:
    """FID of image sets against the true images, with the feature network named in :attr:`label`.

    Usage in an evaluation: :meth:`update` once per batch with the true images and every method's
    predictions, then :meth:`compute` (one :class:`FIDResult` per method). :meth:`__call__`
    compares two whole sets at once; :meth:`features` gives the features themselves.

    Args:
        backend: ``"auto"`` (torchmetrics' Inception FID, else the offline ST-LPIPS AlexNet
            stand-in), ``"torchmetrics"`` or ``"stlpips"`` to insist on one.
        device: where the feature network runs (default: the CPU; callers pass the resolved device).
        allow_download: let torch-fidelity try to download its Inception weights when not cached.
        batch_size: images per forward pass.
        download_timeout: seconds a download attempt may wait on the network.

    Attributes:
        available: whether a feature network could be built; when False, ``reason`` says why and
            using the metric raises ``RuntimeError``.
        backend: ``"torchmetrics"``, ``"stlpips"`` or ``None``.
        name: short key, ``"fid_inception"`` or ``"fd_st_alexnet"`` (``None`` if unavailable).
        label: what computes the distance, for tables and the report, e.g.
            ``"FID (Inception-v3 pool3 features, 2048-d, torchmetrics / torch-fidelity)"``.
        reason: why the preferred backend (or every backend) is not used; ``None`` otherwise.
        num_features: the feature dimension (2048 or 256).
    """

    def __init__(
        self,
        backend: Literal["auto", "torchmetrics", "stlpips"] = "auto",
        *,
        device: str | torch.device | None = None,
        allow_download: bool = True,
        batch_size: int = 16,
        download_timeout: float = DOWNLOAD_TIMEOUT,
    ) -> None:
        check_backend_arguments(backend, FID_BACKENDS, batch_size)
        if not (math.isfinite(float(download_timeout)) and float(download_timeout) > 0):
            raise ValueError(f"download_timeout must be a positive number of seconds, got {download_timeout!r}")
        self.device = default_device(device)
        self.batch_size = int(batch_size)
        self.available = False
        self.backend: str | None = None
        self.name: str | None = None
        self.label: str | None = None
        self.reason: str | None = None
        self.num_features: int | None = None
        self._network: torch.nn.Module | None = None
        self._sets: dict[str, Any] = {}

        loaders = {"torchmetrics": lambda: _torchmetrics_features(bool(allow_download), float(download_timeout)),
                   "stlpips": _stlpips_features}
        self.backend, network, self.reason = first_available_backend(backend, loaders, _SHORT)
        if network is not None:
            self._network = network.to(self.device).eval()
            self.name, self.label = _LABELS[self.backend]
            self.num_features = int(network.num_features)
            self.available = True

    def __repr__(self) -> str:
        if self.available:
            return f"FIDMetric({self.label!r}, device={str(self.device)!r})"
        return f"FIDMetric(unavailable: {self.reason})"

    def _check(self) -> None:
        if not self.available:
            raise RuntimeError(f"FID is not available here: {self.reason}")

    def features(self, images, data_range: float = 1.0) -> torch.Tensor:
        """Network features of ``(B, 1, H, W)`` / ``(B, H, W)`` images: ``(B, num_features)`` float64 on the CPU."""
        self._check()
        assert self._network is not None
        batch = as_image_batch(images)
        data_range = check_data_range(data_range)
        out = []
        with torch.no_grad():
            for start in range(0, batch.shape[0], self.batch_size):
                # [0, R] -> [0, 1], clipped: the network sees a displayable image
                chunk = (batch[start : start + self.batch_size] / data_range).clamp(0, 1)
                out.append(self._network(chunk.to(self.device, torch.float32)).to("cpu", torch.float64))
        return torch.cat(out)

    def update(self, target, predictions: Mapping[str, Any], data_range: float = 1.0) -> None:
        """Add one batch: the TRUE images ``target`` and each method's predictions ``{name: images}``.

        The true images' features are computed once and added to every method's true set.
        """
        self._check()
        true = self.features(target, data_range)
        for name, images in predictions.items():
            if name not in self._sets:
                self._sets[name] = _new_set(self.num_features)
            metric = self._sets[name]
            metric.update(true, real=True)
            metric.update(self.features(images, data_range), real=False)

    def reset(self) -> None:
        """Forget every set (the network stays loaded)."""
        self._sets = {}

    def _result(self, metric) -> FIDResult:
        n = int(metric.fake_features_num_samples)
        n_true = int(metric.real_features_num_samples)
        value = math.nan
        if min(n, n_true) >= 2:
            # a distance: a negative value is eigenvalue round-off of (nearly) identical sets
            value = max(float(metric.compute()), 0.0)
        return FIDResult(value=value, n=n, n_true=n_true, name=self.name, label=self.label,
                         warning=sample_size_warning(n, n_true))

    def compute(self) -> dict[str, FIDResult]:
        """The distance of each method's set to the true set, ``{name: FIDResult}`` in update order.

        Warns (:class:`FIDSampleSizeWarning`, once) when a set has fewer than
        :data:`FID_MIN_SAMPLES` images.
        """
        self._check()
        results = {name: self._result(metric) for name, metric in self._sets.items()}
        messages = sorted({r.warning for r in results.values() if r.warning})
        if messages:
            warnings.warn(f"{self.name}: " + "; ".join(messages), FIDSampleSizeWarning, stacklevel=2)
        return results

    def __call__(self, prediction, target, data_range: float = 1.0) -> FIDResult:
        """The distance between the set ``prediction`` and the set of TRUE images ``target`` (sizes may differ).

        Warns (:class:`FIDSampleSizeWarning`) when a set has fewer than :data:`FID_MIN_SAMPLES` images.
        """
        self._check()
        metric = _new_set(self.num_features)
        metric.update(self.features(target, data_range), real=True)
        metric.update(self.features(prediction, data_range), real=False)
        result = self._result(metric)
        if result.warning:
            warnings.warn(f"{self.name}: {result.warning}", FIDSampleSizeWarning, stacklevel=2)
        return result

