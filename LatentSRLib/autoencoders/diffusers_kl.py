"""``diffusers:`` — any diffusers ``AutoencoderKL`` (SD's sd-vae-ft-ema / -mse, SDXL's VAE, ...).

The network takes RGB in ``[-1, 1]``: gray images are repeated to its input channels, and its
output channels are averaged back to gray. Its ``scaling_factor`` (and ``shift_factor``) are
recorded in :attr:`Autoencoder.info` but not applied: latents are normalised with statistics
estimated on the user's data instead (:mod:`.latent_stats`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from LatentSRLib.autoencoders.base import Autoencoder, channels_to_gray, gray_to_channels
from LatentSRLib.autoencoders.latent_stats import STATS_FILE_NAME
from LatentSRLib.autoencoders.sources import first_line, load_with_offline_fallback, resolve_location, spec_error, split_subfolder

__all__ = ["DiffusersKLAutoencoder", "load_diffusers_kl"]


class DiffusersKLAutoencoder(Autoencoder):
    """A diffusers ``AutoencoderKL`` behind the :class:`Autoencoder` interface.

    Native latents are the posterior of ``vae.encode``: mean (deterministic) or a sample, before
    any ``scaling_factor``. Input ``(B, 1, H, W)`` in ``[0, 1]`` -> ``[-1, 1]`` RGB for the network.
    """

    def _encode_native(self, images: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        x = gray_to_channels(images * 2.0 - 1.0, self.network.config.in_channels)
        posterior = self.network.encode(x).latent_dist
        return self._posterior_sample(posterior.mean, posterior.std, generator) if sample else posterior.mean

    def _decode_native(self, latents: torch.Tensor) -> torch.Tensor:
        y = self.network.decode(latents).sample
        return (channels_to_gray(y) + 1.0) / 2.0


def load_diffusers_kl(spec: str, target: str) -> DiffusersKLAutoencoder:
    """Load ``diffusers:<hub id or folder>[#subfolder]`` (float32, on the CPU)."""
    from diffusers import AutoencoderKL

    location, subfolder = split_subfolder(target)
    where = resolve_location(spec, location)
    if isinstance(where, Path):
        folder = where / subfolder if subfolder else where
        if not folder.is_dir():
            raise spec_error(spec, f"not a folder: {folder}")
        if not (folder / "config.json").is_file():
            raise spec_error(spec, f"no config.json in {folder} (expected a diffusers save_pretrained folder)")
        try:
            vae = AutoencoderKL.from_pretrained(str(where), subfolder=subfolder, local_files_only=True)
        except Exception as exc:  # diffusers reports missing/corrupt weights with several types
            raise spec_error(spec, f"cannot load the AutoencoderKL in {folder}: {first_line(exc)}") from None
        stats_path = folder / STATS_FILE_NAME
        name = folder.name
    else:
        vae = load_with_offline_fallback(
            spec, lambda offline: AutoencoderKL.from_pretrained(where, subfolder=subfolder, local_files_only=offline)
        )
        stats_path = None
        name = where + (f"#{subfolder}" if subfolder else "")
    config = vae.config
    return DiffusersKLAutoencoder(
        spec,
        vae,
        name=name,
        latent_channels=config.latent_channels,
        downsampling_factor=2 ** (len(config.block_out_channels) - 1),
        stochastic=True,
        stats_path=stats_path,
        info={
            "backend": "diffusers.AutoencoderKL",
            "input_range": [-1.0, 1.0],
            "in_channels": config.in_channels,
            "scaling_factor": getattr(config, "scaling_factor", None),  # recorded, not applied
            "shift_factor": getattr(config, "shift_factor", None),
            "force_upcast": bool(getattr(config, "force_upcast", True)),
        },
    )
