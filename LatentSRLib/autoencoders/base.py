"""One interface over every autoencoder (VAE) LatentSR can put a diffusion model on.

Callers only ever see grayscale images ``(B, 1, H, W)`` in ``[0, 1]`` and latents ``(B, C, H/f,
W/f)``; each backend converts to what its network was trained on (gray -> RGB, ``[-1, 1]``...)
inside :meth:`Autoencoder._encode_native` and :meth:`Autoencoder._decode_native`, and nowhere
else. Latents are normalised per channel with :class:`~.latent_stats.LatentStats` when the
autoencoder has them, so every VAE hands the diffusion model latents of about zero mean and unit
variance (the paper's code used raw latents, so the effective noise schedule differed per VAE).
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from LatentSRLib.autoencoders.latent_stats import LatentStats

__all__ = ["Autoencoder", "channels_to_gray", "gray_to_channels", "weights_fingerprint"]

# Inputs outside this band are not slightly-overshooting [0, 1] images but unwindowed intensities
# or [-1, 1] images: refuse them rather than clamp them into garbage.
_INPUT_TOLERANCE = 0.5


def gray_to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, channels, H, W)`` by repeating the gray channel (a view)."""
    return images if channels == 1 else images.expand(-1, channels, -1, -1)


def channels_to_gray(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, 1, H, W)``: the mean over channels (the gray an RGB model means)."""
    return images if images.shape[1] == 1 else images.mean(dim=1, keepdim=True)


class Autoencoder(nn.Module, abc.ABC):
    """A frozen image autoencoder with normalised latents.

    Shapes and ranges:
        images: ``(B, 1, H, W)`` floating point in ``[0, 1]`` (small overshoots, e.g. from added
            noise, are clamped); ``H`` and ``W`` multiples of :attr:`downsampling_factor`.
        latents: ``(B, latent_channels, H / f, W / f)`` float32, normalised by
            :attr:`latent_stats` when :attr:`normalised` (about zero mean, unit std per channel),
            otherwise in the network's native latent space.
        decoded images: ``(B, 1, H, W)`` float32 clamped to ``[0, 1]``.

    Encoding is deterministic by default (the posterior mean, rule 6 (docs/science.md)); set
    :attr:`deterministic` to ``False`` to draw from the posterior, reproducibly when a
    ``torch.Generator`` is passed. Autoencoders without a posterior (the TAESD family) return the
    same latents either way (:attr:`stochastic` is ``False``).

    The wrapped network is frozen (no gradients to its weights) and in eval mode; gradients still
    flow to the inputs, e.g. for a data-consistency step through the decoder. Move it with
    ``.to(device, dtype)``; computations run in the network's dtype (float16 on a GPU by default),
    while latents and images come back in float32.

    Subclasses set :attr:`network` and implement :meth:`_encode_native` / :meth:`_decode_native`.
    """

    def __init__(
        self,
        spec: str,
        network: nn.Module,
        *,
        name: str,
        latent_channels: int,
        downsampling_factor: int,
        stochastic: bool,
        info: Mapping[str, Any] | None = None,
        stats_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self._spec = spec
        self._name = name
        self._latent_channels = int(latent_channels)
        self._downsampling_factor = int(downsampling_factor)
        self._stochastic = bool(stochastic)
        self._deterministic = True
        self._stats: LatentStats | None = None
        self._stats_path = None if stats_path is None else Path(stats_path)
        self.info: dict[str, Any] = dict(info or {})

    # ---- description -------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        """The spec string this autoencoder was loaded from (``"tiny:/path/taef2_encoder.pth,..."``)."""
        return self._spec

    @property
    def name(self) -> str:
        """A short human name (model name, folder name or hub id)."""
        return self._name

    @property
    def latent_channels(self) -> int:
        return self._latent_channels

    @property
    def downsampling_factor(self) -> int:
        """Spatial factor ``f`` between image and latent grids (4 or 8 for the VAEs in the paper)."""
        return self._downsampling_factor

    @property
    def stochastic(self) -> bool:
        """Whether the encoder has a posterior to sample from (False for the TAESD family)."""
        return self._stochastic

    @property
    def deterministic(self) -> bool:
        """True (default): encode to the posterior mean. False: draw a sample from the posterior."""
        return self._deterministic

    @deterministic.setter
    def deterministic(self, value: bool) -> None:
        self._deterministic = bool(value)

    @property
    def default_stats_path(self) -> Path | None:
        """Where latent statistics live beside the model (``latent_stats.json`` in its folder).

        ``None`` for models without a local folder (hub ids, MedVAE): give a path yourself.
        """
        return self._stats_path

    @property
    def latent_stats(self) -> LatentStats | None:
        return self._stats

    @latent_stats.setter
    def latent_stats(self, stats: LatentStats | None) -> None:
        if stats is not None and stats.channels != self.latent_channels:
            raise ValueError(
                f"latent statistics for {stats.channels} channels (estimated for {stats.spec!r}) "
                f"do not fit {self.spec!r}, which has {self.latent_channels} latent channels"
            )
        self._stats = stats

    @property
    def normalised(self) -> bool:
        """Whether :meth:`encode` returns normalised latents (False: native latents, identity)."""
        return self._stats is not None

    @property
    def device(self) -> torch.device:
        return next(self._tensors()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._tensors()).dtype

    def _tensors(self) -> Iterator[torch.Tensor]:
        yield from self.network.parameters()
        yield from self.network.buffers()

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly record of this autoencoder (for configs, caches and reports)."""
        return {
            "spec": self.spec,
            "name": self.name,
            "latent_channels": self.latent_channels,
            "downsampling_factor": self.downsampling_factor,
            "deterministic": self.deterministic,
            "stochastic": self.stochastic,
            "normalised": self.normalised,
            "latent_stats": None if self._stats is None else self._stats.to_dict(),
            **{k: v for k, v in self.info.items() if k not in ("spec", "name")},
        }

    def train(self, mode: bool = True) -> Autoencoder:
        """Stay in eval mode: the autoencoder is frozen, so dropout and the like never switch on."""
        return super().train(False)

    def extra_repr(self) -> str:
        return (f"spec={self.spec!r}, latent_channels={self.latent_channels}, "
                f"downsampling_factor={self.downsampling_factor}, normalised={self.normalised}")

    # ---- backend hooks -----------------------------------------------------------------------
    @abc.abstractmethod
    def _encode_native(self, images: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        """``(B, 1, H, W)`` in ``[0, 1]``, in the network's dtype and device -> native latents.

        ``sample``: draw from the posterior (use :meth:`_posterior_sample` so ``generator`` is honoured).
        """

    @abc.abstractmethod
    def _decode_native(self, latents: torch.Tensor) -> torch.Tensor:
        """Native latents (network dtype and device) -> ``(B, 1, H, W)`` roughly in ``[0, 1]``."""

    @staticmethod
    def _posterior_sample(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``mean + std * noise`` with the noise drawn in float32 on the generator's own device.

        Drawing on the generator's device makes a seeded CPU generator give the same latents
        whatever device the network runs on.
        """
        noise_device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=torch.float32)
        return mean + std * noise.to(device=mean.device, dtype=mean.dtype)

    # ---- encode / decode ---------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W) grayscale; got shape {tuple(images.shape)}")
        f = self.downsampling_factor
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(
                f"image size {tuple(images.shape[-2:])} is not a multiple of {self.name}'s "
                f"downsampling factor {f}; resample or pad to the model grid first"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], not {images.dtype}")
        if images.numel():
            low, high = float(images.min()), float(images.max())
            if low < -_INPUT_TOLERANCE or high > 1 + _INPUT_TOLERANCE:
                raise ValueError(
                    f"images must be in [0, 1]; got values in [{low:.3g}, {high:.3g}] "
                    "(window the intensities first)"
                )
        return images.to(device=self.device, dtype=self.dtype).clamp(0.0, 1.0)

    def encode_native(self, images: torch.Tensor, *, sample: bool | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode without normalisation: ``(B, 1, H, W)`` in ``[0, 1]`` -> native float32 latents.

        Args:
            sample: draw from the posterior; ``None`` follows :attr:`deterministic`.
            generator: seeds the posterior sample (any device; noise is drawn on its device).
        """
        sample = (not self.deterministic) if sample is None else bool(sample)
        latents = self._encode_native(self._check_images(images), sample and self.stochastic, generator)
        return latents.float()

    def decode_native(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode native (un-normalised) latents to ``(B, 1, H, W)`` float32 in ``[0, 1]``."""
        latents = torch.as_tensor(latents)
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be (B, {self.latent_channels}, h, w) for {self.name}; got shape {tuple(latents.shape)}"
            )
        images = self._decode_native(latents.to(device=self.device, dtype=self.dtype))
        return images.float().clamp(0.0, 1.0)

    def encode(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, 1, H, W)`` in ``[0, 1]`` -> latents ``(B, C, H/f, W/f)`` float32, normalised when :attr:`normalised`.

        The posterior mean unless :attr:`deterministic` is False; ``generator`` seeds the sample.
        The latents are on the network's device.
        """
        latents = self.encode_native(images, generator=generator)
        return latents if self._stats is None else self._stats.normalise(latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents as :meth:`encode` gives them -> ``(B, 1, H, W)`` float32 clamped to ``[0, 1]``."""
        latents = torch.as_tensor(latents)
        if self._stats is not None:
            latents = self._stats.denormalise(latents.float())
        return self.decode_native(latents)

    def reconstruct(self, images: torch.Tensor, *, batch_size: int | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode then decode (the "AE ceiling"): ``(B, 1, H, W)`` -> ``(B, 1, H, W)`` in ``[0, 1]``.

        With ``batch_size`` the images go through in batches (without gradients) and the result is
        returned on the images' device; otherwise in one pass on the network's device.
        """
        if batch_size is None:
            return self.decode(self.encode(images, generator=generator))
        with torch.no_grad():
            return self._batched(images, batch_size, lambda x: self.decode(self.encode(x, generator=generator)))

    def encode_batched(self, images: torch.Tensor, batch_size: int = 16, *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """:meth:`encode` in batches of ``batch_size`` without gradients; latents on the images' device.

        ``images`` may be a large CPU tensor ``(N, 1, H, W)``; each batch is moved to the network.
        """
        with torch.no_grad():
            return self._batched(images, batch_size, lambda x: self.encode(x, generator=generator))

    def decode_batched(self, latents: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """:meth:`decode` in batches of ``batch_size`` without gradients; images on the latents' device."""
        with torch.no_grad():
            return self._batched(latents, batch_size, self.decode)

    @staticmethod
    def _batched(inputs: torch.Tensor, batch_size: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        inputs = torch.as_tensor(inputs)
        outputs = [fn(chunk).to(inputs.device) for chunk in torch.split(inputs, batch_size)]
        if not outputs:
            raise ValueError("no images to process (empty batch)")
        return torch.cat(outputs)


def weights_fingerprint(autoencoder: Autoencoder) -> str:
    """SHA-256 of the network's weights (as float32), so a retrained model in the same folder is a
    different autoencoder."""
    digest = hashlib.sha256()
    for name, tensor in sorted(autoencoder.network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
