"""Per-channel latent normalisation, estimated on the user's own images and stored with the model.

Different VAEs put their latents on very different scales (SD's ~5x larger than MedVAE's, TAEF2's
32 channels each with its own offset). A diffusion model's noise schedule assumes roughly unit
variance data, so without normalisation the same schedule means a different signal-to-noise ratio
for each VAE, which confounds comparisons between them (rule 4 (docs/science.md)). Here each channel ``c`` is
mapped by ``(z_c - shift_c) / scale_c`` with ``shift`` the mean and ``scale`` the standard
deviation of that channel over every latent pixel of a sample of images (posterior means).

The statistics are a small JSON file kept beside the model (``latent_stats.json`` in a model
folder), recording the spec they were estimated for, how many images, and the preprocessing
(intensity window, slicing plane, model grid) of those images.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from LatentSRLib.errors import InputError
from LatentSRLib.io.atomic import atomic_path

__all__ = ["LatentStats", "STATS_FILE_NAME"]

#: file name of the statistics inside a model folder
STATS_FILE_NAME = "latent_stats.json"
_FORMAT = "latentsr.latent_stats"
_VERSION = 1
# A channel whose std is below this is constant on the sample: only shift it (dividing would
# blow tiny numerical noise up to unit variance).
_MIN_SCALE = 1e-8


class NativeEncoder(Protocol):
    """What :meth:`LatentStats.estimate` needs of an autoencoder (every :class:`~.base.Autoencoder` is one;
    a protocol, so that the statistics do not import the interface that applies them)."""

    def encode_native(self, images: torch.Tensor, *, sample: bool = False) -> torch.Tensor: ...


@dataclass(frozen=True)
class LatentStats:
    """Per-channel shift and scale of an autoencoder's latents.

    Attributes:
        shift: per-channel mean of the native latents (length ``C``).
        scale: per-channel standard deviation (length ``C``, all positive).
        n_images: number of images the statistics were estimated on.
        spec: spec string of the autoencoder they belong to.
        preprocessing: how those images were prepared (window, plane, grid...), free-form JSON.
        n_values: latent pixels per channel that went into each estimate.
    """

    shift: tuple[float, ...]
    scale: tuple[float, ...]
    n_images: int = 0
    spec: str = ""
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    n_values: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shift", tuple(float(v) for v in self.shift))
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "preprocessing", dict(self.preprocessing))
        if len(self.shift) != len(self.scale) or not self.shift:
            raise ValueError(f"shift ({len(self.shift)}) and scale ({len(self.scale)}) need one value per channel")
        if not all(math.isfinite(v) for v in self.shift + self.scale):
            raise ValueError("latent statistics must be finite")
        if min(self.scale) <= 0:
            raise ValueError(f"latent scales must be positive, got {min(self.scale)}")

    @property
    def channels(self) -> int:
        return len(self.shift)

    # ---- the mapping ---------------------------------------------------------------------------
    def _broadcast(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.ndim < 2 or z.shape[1] != self.channels:
            raise ValueError(f"expected latents (B, {self.channels}, ...), got shape {tuple(z.shape)}")
        view = (1, self.channels) + (1,) * (z.ndim - 2)
        dtype = z.dtype if z.is_floating_point() else torch.float32
        shift = torch.tensor(self.shift, dtype=dtype, device=z.device).view(view)
        scale = torch.tensor(self.scale, dtype=dtype, device=z.device).view(view)
        return shift, scale

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """Native latents ``(B, C, ...)`` -> ``(z - shift) / scale`` (same shape, device and dtype)."""
        shift, scale = self._broadcast(z)
        return (z - shift) / scale

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalise`: ``z * scale + shift``."""
        shift, scale = self._broadcast(z)
        return z * scale + shift

    # ---- estimation ----------------------------------------------------------------------------
    @classmethod
    def estimate(
        cls,
        autoencoder: NativeEncoder,
        images: Iterable[torch.Tensor | np.ndarray],
        *,
        max_images: int | None = 1000,
        batch_size: int = 16,
        preprocessing: Mapping[str, Any] | None = None,
    ) -> LatentStats:
        """Estimate the statistics of ``autoencoder``'s posterior-mean latents on ``images``.

        Args:
            autoencoder: any :class:`~.base.Autoencoder`; its own normalisation and
                :attr:`~.base.Autoencoder.deterministic` setting are ignored (native posterior means).
            images: an iterable of ``(H, W)`` images, ``(B, H, W)`` or ``(B, 1, H, W)`` batches,
                numpy or torch, in ``[0, 1]`` (e.g. windowed slices on the model grid).
            max_images: stop after this many images (``None``: use them all).
            batch_size: images per forward pass.
            preprocessing: how the images were prepared, stored with the statistics.

        Raises:
            InputError: no images.
        """
        count = 0
        mean = m2 = None  # running per-channel mean and sum of squared deviations (float64)
        n_values = 0
        for chunk in _batches(images, batch_size, max_images):
            with torch.no_grad():
                z = autoencoder.encode_native(chunk, sample=False).double()
            count += z.shape[0]
            values = z.transpose(0, 1).reshape(z.shape[1], -1)  # (C, pixels)
            n_b = values.shape[1]
            mean_b = values.mean(dim=1)
            m2_b = ((values - mean_b[:, None]) ** 2).sum(dim=1)
            if mean is None:
                mean, m2, n_values = mean_b, m2_b, n_b
            else:  # Chan et al.'s pairwise update: stable for many batches
                delta = mean_b - mean
                total = n_values + n_b
                mean = mean + delta * (n_b / total)
                m2 = m2 + m2_b + delta**2 * (n_values * n_b / total)
                n_values = total
        if mean is None:
            raise InputError(f"no images to estimate the latent statistics of {autoencoder.spec!r}")
        std = torch.sqrt(m2 / n_values)
        scale = torch.where(std < _MIN_SCALE, torch.ones_like(std), std)
        return cls(
            shift=tuple(mean.cpu().tolist()),
            scale=tuple(scale.cpu().tolist()),
            n_images=count,
            spec=autoencoder.spec,
            preprocessing=dict(preprocessing or {}),
            n_values=n_values,
        )

    # ---- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "spec": self.spec,
            "channels": self.channels,
            "shift": list(self.shift),
            "scale": list(self.scale),
            "n_images": self.n_images,
            "n_values": self.n_values,
            "latents": "posterior mean",
            "preprocessing": dict(self.preprocessing),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatentStats:
        missing = {"shift", "scale"} - set(data)
        if missing:
            raise ValueError(f"latent statistics need {sorted(missing)}")
        return cls(
            shift=data["shift"],
            scale=data["scale"],
            n_images=int(data.get("n_images", 0)),
            spec=str(data.get("spec", "")),
            preprocessing=data.get("preprocessing") or {},
            n_values=int(data.get("n_values", 0)),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics as JSON (atomically); a folder gets ``latent_stats.json`` inside."""
        path = Path(path)
        if path.is_dir():
            path = path / STATS_FILE_NAME
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatentStats:
        """Read statistics written by :meth:`save` (a file, or a folder holding ``latent_stats.json``).

        Raises:
            InputError: missing, unreadable or malformed file.
        """
        path = Path(path)
        if path.is_dir():
            path = path / STATS_FILE_NAME
        if not path.is_file():
            raise InputError("no latent statistics file here", path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read latent statistics ({exc})", path) from None
        if not isinstance(data, dict) or data.get("format", _FORMAT) != _FORMAT:
            raise InputError("not a LatentSR latent statistics file", path)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise InputError(f"malformed latent statistics: {exc}", path) from None


def _as_batch(item: torch.Tensor | np.ndarray) -> torch.Tensor:
    """An image or a batch of images -> ``(B, 1, H, W)`` float tensor."""
    x = torch.as_tensor(np.ascontiguousarray(item) if isinstance(item, np.ndarray) else item)
    if not x.is_floating_point():
        x = x.float()
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] == 1:
        return x
    raise ValueError(f"expected (H, W), (B, H, W) or (B, 1, H, W) images, got shape {tuple(x.shape)}")


def _batches(images: Iterable[torch.Tensor | np.ndarray], batch_size: int, max_images: int | None):
    """Regroup an iterable of images/batches into batches of ``batch_size``, at most ``max_images``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pending: list[torch.Tensor] = []
    held = taken = 0
    for item in images:
        if max_images is not None and taken >= max_images:
            break
        x = _as_batch(item)
        if max_images is not None:
            x = x[: max_images - taken]
        if not len(x):
            continue
        taken += len(x)
        pending.append(x)
        held += len(x)
        while held >= batch_size:
            joined = torch.cat(pending)
            yield joined[:batch_size]
            rest = joined[batch_size:]
            pending, held = ([rest] if len(rest) else []), len(rest)
    if held:
        yield torch.cat(pending)
