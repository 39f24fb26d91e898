"""LPIPS, saying which network computed it (rule 10 (docs/science.md)).

The paper's LPIPS is the AlexNet variant of Zhang et al. (inputs mapped to ``[-1, 1]``). Two
backends, tried in this order by ``backend="auto"``:

1. ``"torchmetrics"``: ``LearnedPerceptualImagePatchSimilarity(net_type="alex")``, the published
   LPIPS. torchmetrics ships the LPIPS linear layers, but the AlexNet trunk comes from torchvision's
   ImageNet weights, which are downloaded into the torch hub cache on first use. With no network
   (as on the development machines) this backend is unavailable unless the weights are already
   cached (``allow_download=False`` skips the download attempt entirely).
2. ``"stlpips"``: the shift-tolerant LPIPS (ST-LPIPS, Ghildyal and Liu, ECCV 2022) from the PyPI
   package ``stlpips-pytorch``, whose wheel bundles its AlexNet trunk AND linear layers, so it works
   offline. It is a different network (blur-pooled, stride-1 first layer, retrained): its scores are
   an offline stand-in, NOT comparable with published LPIPS values, and are labelled so.

If neither works, ``available`` is False and ``reason`` says why; callers skip the LPIPS column.

Inputs: ``(B, 1, H, W)`` / ``(B, H, W)`` grayscale images in ``[0, data_range]``. Inside: scaled to
``[0, 1]`` and clipped there (a perceptual network sees a displayable image), repeated to three
channels, mapped to ``[-1, 1]``. Output: ``(B,)`` float64 scores, 0 for identical images, higher
is more different. Images should be at least 64x64 pixels.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import socket
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from LatentSRLib.metrics.quality import as_image_pair, check_data_range

__all__ = ["LPIPS_BACKENDS", "LPIPSMetric"]

LPIPS_BACKENDS = ("auto", "torchmetrics", "stlpips")

_LABELS = {
    "torchmetrics": ("lpips_alex", "LPIPS (AlexNet, torchmetrics)"),
    "stlpips": (
        "stlpips_alex",
        "ST-LPIPS (shift-tolerant AlexNet, stlpips-pytorch; offline stand-in, not comparable with published LPIPS)",
    ),
}


class _BackendUnavailable(RuntimeError):
    pass


def _cached_alexnet_weights() -> Path:
    """Where torchvision keeps (or would keep) the ImageNet AlexNet weights."""
    from torchvision.models import AlexNet_Weights

    filename = AlexNet_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


#: seconds a weights download may wait on the network before the offline stand-in is used
DOWNLOAD_TIMEOUT = 30.0


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every blocking socket operation (torch.hub's urllib download) to ``seconds``, then restore."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def check_backend_arguments(backend: str, backends: tuple[str, ...], batch_size: int) -> None:
    """The arguments every network-backed metric (LPIPS, FID) validates alike."""
    if backend not in backends:
        raise ValueError(f"backend must be one of {backends}, got {backend!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")


def default_device(device: str | torch.device | None) -> torch.device:
    """The device a metric network runs on: the one given, else the CPU. Choosing the best device is
    the caller's (the one resolver, :func:`LatentSRLib.model.devices.resolve_device`)."""
    return torch.device(device if device is not None else "cpu")


def first_available_backend(
    backend: str, loaders: dict[str, Callable[[], torch.nn.Module]], short_names: dict[str, str]
) -> tuple[str | None, torch.nn.Module | None, str | None]:
    """Load ``backend``'s network, or with ``"auto"`` the first of ``loaders`` (in order) that loads.

    Returns ``(backend, network, reason)``: ``reason`` says why each backend tried before was not
    usable (``None`` when the first one loaded); ``(None, None, reason)`` when none did.
    """
    order = list(loaders) if backend == "auto" else [backend]
    problems: list[str] = []
    for candidate in order:
        try:
            network = loaders[candidate]()
        except _BackendUnavailable as exc:
            problems.append(f"{short_names[candidate]}: {exc}")
            continue
        return candidate, network, "; ".join(problems) or None
    return None, None, "; ".join(problems) or None


def _torchmetrics_network(allow_download: bool) -> torch.nn.Module:
    try:
        weights = _cached_alexnet_weights()
    except Exception as exc:  # torchvision missing or broken
        raise _BackendUnavailable(f"torchvision AlexNet is not importable ({type(exc).__name__}: {exc})") from exc
    if not weights.is_file() and not allow_download:
        raise _BackendUnavailable(
            f"torchvision's ImageNet AlexNet weights are not cached at {weights} (downloads disabled)"
        )
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT):  # an unreachable host must not hang an evaluation
            return LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="none", normalize=False)
    except Exception as exc:  # URLError / OSError / HTTP errors when offline
        raise _BackendUnavailable(
            f"could not get torchvision's ImageNet AlexNet weights ({type(exc).__name__}: {exc}); "
            f"place alexnet weights at {weights} to use the published LPIPS offline"
        ) from exc


@contextlib.contextmanager
def _placeholder_modules(names: tuple[str, ...]) -> Iterator[None]:
    """Empty stand-ins for modules that stlpips-pytorch imports but never uses for scoring.

    Its ``invariant_networks`` does ``from IPython import embed`` and ``stlpips`` does ``from
    torchsummary import summary`` (debugging helpers; neither is a declared dependency). Only
    modules that are really missing get a placeholder, and the placeholders are removed again
    after the import, so nothing else (matplotlib, tqdm) ever sees a fake IPython.
    """
    added = []
    for name in names:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            module = types.ModuleType(name)
            module.__getattr__ = lambda attr, _name=name: _unused(_name, attr)  # type: ignore[method-assign]
            sys.modules[name] = module
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _unused(module: str, attr: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"{module}.{attr} is a placeholder: {module} is not installed")

    return refuse


def _stlpips_network() -> torch.nn.Module:
    spec = importlib.util.find_spec("stlpips_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise _BackendUnavailable("the offline stand-in needs the PyPI package stlpips-pytorch (not installed)")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    weights = package_dir / "weights" / "vST0.0" / "alex_shift_tolerant.pth"
    if not weights.is_file():
        raise _BackendUnavailable(f"stlpips-pytorch is installed but its bundled weights are missing: {weights}")
    try:
        with _placeholder_modules(("IPython", "torchsummary")):
            stlpips = importlib.import_module("stlpips_pytorch.stlpips")
        network = stlpips.LPIPS(net="alex", variant="shift_tolerant", pretrained=True, verbose=False)
        # the package loads its weights with strict=False: check that every parameter was set.
        state = torch.load(weights, map_location="cpu", weights_only=True)
        result = network.load_state_dict(state, strict=False)
    except Exception as exc:
        raise _BackendUnavailable(f"stlpips-pytorch failed to build its network ({type(exc).__name__}: {exc})") from exc
    # lin0..lin4 are also registered as lins.0..4 (same tensors), which the file stores once.
    missing = [k for k in result.missing_keys if not (k.startswith("lins.") and k.replace("lins.", "lin", 1) in state)]
    if missing or result.unexpected_keys:
        raise _BackendUnavailable(
            f"stlpips-pytorch weights do not match its network (missing {missing[:3]}, "
            f"unexpected {list(result.unexpected_keys)[:3]})"
        )
    return network.eval()


class LPIPSMetric:
    """Per-image LPIPS with the network named in :attr:`label`.

    Args:
        backend: ``"auto"`` (torchmetrics' AlexNet LPIPS, else the offline ST-LPIPS),
            ``"torchmetrics"`` or ``"stlpips"`` to insist on one.
        device: where the network runs (default: the CPU; callers pass the resolved device).
        allow_download: let torchvision try to download the AlexNet weights when not cached.
        batch_size: images per forward pass.

    Attributes:
        available: whether a network could be built; when False, ``reason`` says why and calling
            the metric raises ``RuntimeError``.
        backend: ``"torchmetrics"``, ``"stlpips"`` or ``None``.
        name: short column name, ``"lpips_alex"`` or ``"stlpips_alex"`` (``None`` if unavailable).
        label: what computed the score, for tables and figure axes, e.g.
            ``"LPIPS (AlexNet, torchmetrics)"``.
        reason: why the preferred backend (or every backend) is not used; ``None`` otherwise.
    """

    def __init__(
        self,
        backend: Literal["auto", "torchmetrics", "stlpips"] = "auto",
        *,
        device: str | torch.device | None = None,
        allow_download: bool = True,
        batch_size: int = 16,
    ) -> None:
        check_backend_arguments(backend, LPIPS_BACKENDS, batch_size)
        self.device = default_device(device)
        self.batch_size = int(batch_size)
        self.available = False
        self.backend: str | None = None
        self.name: str | None = None
        self.label: str | None = None
        self.reason: str | None = None
        self._network: torch.nn.Module | None = None

        loaders = {"torchmetrics": lambda: _torchmetrics_network(allow_download), "stlpips": _stlpips_network}
        short = {name: label.split(";")[0] for name, (_, label) in _LABELS.items()}
        self.backend, network, self.reason = first_available_backend(backend, loaders, short)
        if network is not None:
            self._network = network.to(self.device)
            self.name, self.label = _LABELS[self.backend]
            self.available = True

    def __repr__(self) -> str:
        if self.available:
            return f"LPIPSMetric({self.label!r}, device={str(self.device)!r})"
        return f"LPIPSMetric(unavailable: {self.reason})"

    def _scores(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert self._network is not None
        if self.backend == "torchmetrics":
            metric = self._network
            metric.reset()
            metric.update(prediction, target)
            return metric.compute().reshape(-1)
        return self._network(prediction, target, normalize=False).reshape(-1)

    def __call__(self, prediction, target, data_range: float = 1.0) -> np.ndarray:
        """LPIPS of each ``prediction`` against the TRUE image ``target``: ``(B,)`` float64, 0 if identical."""
        if not self.available:
            raise RuntimeError(f"LPIPS is not available here: {self.reason}")
        p, t = as_image_pair(prediction, target)
        data_range = check_data_range(data_range)
        out = []
        with torch.inference_mode():
            for start in range(0, p.shape[0], self.batch_size):
                chunk = [
                    # [0, R] -> [0, 1] (clipped) -> gray to RGB -> [-1, 1], LPIPS's input convention
                    (x[start : start + self.batch_size] / data_range)
                    .clamp(0, 1)
                    .repeat(1, 3, 1, 1)
                    .mul(2)
                    .sub(1)
                    .to(self.device, torch.float32)
                    for x in (p, t)
                ]
                out.append(self._scores(*chunk).to("cpu", torch.float64))
        return torch.cat(out).numpy()
