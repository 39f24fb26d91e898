"""Autoencoder spec strings: the one place ``scheme:target`` is parsed and a backend chosen.

The same strings are used by the CLI (``--vae``), the bundle configs and the Slicer module:

=============================================  ==============================================
``diffusers:<hub id or folder>[#subfolder]``   diffusers ``AutoencoderKL`` (SD, SDXL VAEs...)
``tiny:<hub id, folder, or ENC.pth,DEC.pth>``  TAESD family via diffusers ``AutoencoderTiny``
``monai:<folder>``                             a MONAI ``AutoencoderKL`` saved by this project
``medvae:<name>``                              a 2D MedVAE (``medvae_4_1_2d``, ... ``medvae_8_4_2d``)
=============================================  ==============================================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from LatentSRLib.errors import InputError
from LatentSRLib.autoencoders.base import Autoencoder
from LatentSRLib.autoencoders.latent_stats import LatentStats
from LatentSRLib.autoencoders.sources import spec_error

__all__ = ["SCHEMES", "parse_spec", "load_autoencoder"]


def _diffusers(spec: str, target: str) -> Autoencoder:
    from LatentSRLib.autoencoders.diffusers_kl import load_diffusers_kl

    return load_diffusers_kl(spec, target)


def _tiny(spec: str, target: str) -> Autoencoder:
    from LatentSRLib.autoencoders.diffusers_tiny import load_tiny

    return load_tiny(spec, target)


def _monai(spec: str, target: str) -> Autoencoder:
    from LatentSRLib.autoencoders.monai_kl import load_monai_kl

    return load_monai_kl(spec, target)


def _medvae(spec: str, target: str) -> Autoencoder:
    from LatentSRLib.autoencoders.medvae_2d import load_medvae

    return load_medvae(spec, target)


# Backends are imported on use: medvae is an optional extra and slow to import.
_LOADERS: dict[str, Callable[[str, str], Autoencoder]] = {
    "diffusers": _diffusers,
    "tiny": _tiny,
    "monai": _monai,
    "medvae": _medvae,
}
#: the spec schemes, in the order shown to users
SCHEMES: tuple[str, ...] = tuple(_LOADERS)


def parse_spec(spec: str) -> tuple[str, str]:
    """``"tiny:/w/taef2"`` -> ``("tiny", "/w/taef2")``.

    Raises:
        InputError: no scheme, or an unknown one (the message lists the schemes).
    """
    scheme, sep, target = str(spec).strip().partition(":")
    scheme = scheme.strip().lower()
    if not sep or scheme not in _LOADERS:
        raise spec_error(
            str(spec),
            f"unknown autoencoder scheme {scheme!r}; write SCHEME:TARGET with SCHEME one of "
            f"{', '.join(SCHEMES)} (e.g. medvae:medvae_4_1_2d, tiny:path/to/taef2)",
        )
    return scheme, target.strip()


def _default_dtype(autoencoder: Autoencoder, device: torch.device) -> torch.dtype:
    """float16 on a GPU unless the model asks to run in float32 (diffusers' ``force_upcast``)."""
    if device.type == "cuda" and not autoencoder.info.get("force_upcast", False):
        return torch.float16
    return torch.float32


def load_autoencoder(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    latent_stats: LatentStats | str | os.PathLike | None = "auto",
) -> Autoencoder:
    """Load the autoencoder a spec string names, ready to encode and decode.

    Args:
        spec: ``scheme:target`` (see the module docstring).
        device: where the network runs.
        dtype: its weights' dtype; ``None`` gives float16 on CUDA (float32 for VAEs whose config
            sets ``force_upcast``, such as SD's) and float32 elsewhere.
        latent_stats: ``"auto"`` (default): ``latent_stats.json`` beside the model when there is
            one (a model folder or the folder of a weight pair), otherwise no normalisation;
            a path (file or folder) or a :class:`LatentStats`: use those; ``None``: no
            normalisation (native latents).

    Raises:
        InputError: unknown scheme, missing or unusable weights, weights that cannot be had
            offline, medvae not installed, statistics that do not fit. One line naming the spec.
    """
    scheme, target = parse_spec(spec)
    spec = f"{scheme}:{target}"
    autoencoder = _LOADERS[scheme](spec, target)

    if isinstance(latent_stats, LatentStats):
        stats: LatentStats | None = latent_stats
    elif latent_stats is None:
        stats = None
    elif isinstance(latent_stats, str) and latent_stats == "auto":
        path = autoencoder.default_stats_path
        stats = LatentStats.load(path) if path is not None and path.is_file() else None
    else:
        stats = LatentStats.load(Path(latent_stats))
    try:
        autoencoder.latent_stats = stats
    except ValueError as exc:
        raise InputError(f"autoencoder {spec!r}: {exc}") from None

    device = torch.device(device)
    return autoencoder.to(device=device, dtype=dtype or _default_dtype(autoencoder, device))
