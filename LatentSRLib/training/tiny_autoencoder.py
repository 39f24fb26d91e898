"""Domain adaptation of a pretrained tiny autoencoder (the TAESD family, e.g. TAEF2) in ``train_autoencoder``.

``--init_from tiny:PATH`` fine-tunes the pretrained network on a prepared dataset's HR slices at
their own pixel pitch instead of training a MONAI ``AutoencoderKL`` (:mod:`.autoencoder` dispatches
here):

* :func:`is_tiny` / :func:`tiny_config`: the network "config" recorded for a tiny source (its spec
  and architecture, read from the weights);
* :class:`TinyAutoencoderNetwork`: the trainable module: ``[0, 1]`` gray slices in, reconstruction
  out, through the same conversions :class:`~LatentSRLib.autoencoders.diffusers_tiny.TinyAutoencoder`
  uses at inference; ``train_encoder=False`` freezes the encoder (decoder-only fine-tuning: its
  weights get no gradient and stay bit-identical, so latents of the generic model stay valid);
* :func:`export_tiny`: the model folder ``tiny:<folder>`` loads (the raw weight pair with the
  source files' keys, ``config.json`` recording the source weights' SHA-256, the fine-tuning
  settings and the licence, the source's licence notice).

There is no posterior, so the loss is L1 + ``perceptual_weight`` x perceptual (no KL term).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from LatentSRLib.autoencoders.diffusers_tiny import TinyAutoencoder, save_tiny_autoencoder, tiny_decode, tiny_encode
from LatentSRLib.autoencoders.spec import load_autoencoder, parse_spec

__all__ = ["TinyAutoencoderNetwork", "build_tiny_network", "export_tiny", "is_tiny", "tiny_config"]

#: the ``kind`` of a tiny source's network config
TINY_KIND = "tiny"


def is_tiny(spec: str | os.PathLike | None) -> bool:
    """Whether ``spec`` (an ``init_from`` value) names a TAESD-family autoencoder (``tiny:...``)."""
    return spec is not None and str(spec).strip().lower().startswith("tiny:")


def _load_source(spec: str) -> TinyAutoencoder:
    scheme, _ = parse_spec(spec)
    if scheme != TINY_KIND:
        raise ValueError(f"{spec!r} is not a tiny: autoencoder spec")
    autoencoder = load_autoencoder(spec, latent_stats=None)  # float32 on the CPU
    assert isinstance(autoencoder, TinyAutoencoder)
    return autoencoder


def tiny_config(spec: str) -> dict[str, Any]:
    """The network config of a tiny source: ``{"kind": "tiny", "init_from": spec, "name",
    "latent_channels", "downsampling_factor", "architecture"}`` (JSON-clean)."""
    source = _load_source(str(spec))
    architecture = source.info.get("config") or dict(source.network.config)
    return {
        "kind": TINY_KIND,
        "init_from": source.spec,
        "name": source.name,
        "latent_channels": source.latent_channels,
        "downsampling_factor": source.downsampling_factor,
        "architecture": {k: (list(v) if isinstance(v, tuple) else v) for k, v in architecture.items()
                         if not str(k).startswith("_")},
    }


class TinyAutoencoderNetwork(nn.Module):
    """A TAESD-family ``AutoencoderTiny`` to fine-tune: ``(B, 1, H, W)`` in ``[0, 1]`` -> reconstruction.

    ``forward`` returns the decoded image, not clamped (the L1 term sees overshoots); ``H`` and
    ``W`` must be multiples of :attr:`downsampling_factor`. With ``train_encoder=False`` the
    encoder's parameters do not require gradients and it runs without autograd.

    Args:
        source: the pretrained autoencoder (its network is taken over and unfrozen).
        train_encoder: fine-tune encoder and decoder (True) or the decoder only.
    """

    def __init__(self, source: TinyAutoencoder, train_encoder: bool = True) -> None:
        super().__init__()
        self.network = source.network
        self.network.requires_grad_(True)
        self.train_encoder = bool(train_encoder)
        if not self.train_encoder:
            self.network.encoder.requires_grad_(False)
        self.latent_channels = source.latent_channels
        self.downsampling_factor = source.downsampling_factor
        self.source_spec = source.spec
        self.train()

    def train(self, mode: bool = True) -> TinyAutoencoderNetwork:
        super().train(mode)
        if not self.train_encoder:
            self.network.encoder.eval()
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        f = self.downsampling_factor
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(f"images must be (B, 1, H, W) with H and W multiples of {f}; got {tuple(images.shape)} "
                             "(choose a patch_size that is a multiple of the downsampling factor)")
        if self.train_encoder:
            return tiny_encode(self.network, images)
        with torch.no_grad():
            return tiny_encode(self.network, images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return tiny_decode(self.network, latents)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))


def build_tiny_network(config: Mapping[str, Any], train_encoder: bool = True) -> TinyAutoencoderNetwork:
    """The trainable network for a :func:`tiny_config`, holding the pretrained weights."""
    source = _load_source(str(config["init_from"]))
    expected = (int(config["latent_channels"]), int(config["downsampling_factor"]))
    if (source.latent_channels, source.downsampling_factor) != expected:
        raise ValueError(f"{config['init_from']}: the weights changed since the run started "
                         f"({source.latent_channels} latent channels, {source.downsampling_factor}x; expected {expected})")
    return TinyAutoencoderNetwork(source, train_encoder=train_encoder)


def export_tiny(network: TinyAutoencoderNetwork, config: Mapping[str, Any], folder: str | os.PathLike,
                metadata: Mapping[str, Any]) -> str:
    """Write ``network`` (fine-tuned from ``config["init_from"]``) as a ``tiny:<folder>`` model; returns that spec."""
    source = _load_source(str(config["init_from"]))
    save_tiny_autoencoder(network.network, folder, source, metadata=metadata)
    return f"tiny:{Path(folder)}"
