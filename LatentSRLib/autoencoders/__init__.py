"""Autoencoders (VAEs) behind one interface: encode ``[0, 1]`` gray images to normalised latents and back.

* :mod:`.base`: the :class:`Autoencoder` interface (shapes, ranges, batching, sampling) and
  :func:`weights_fingerprint` (which weights a model was trained with);
* :mod:`.spec`: :func:`load_autoencoder` from a spec string (``diffusers:``, ``tiny:``,
  ``monai:``, ``medvae:``);
* :mod:`.latent_stats`: per-channel latent normalisation estimated on the user's data;
* one module per backend: :mod:`.diffusers_kl`, :mod:`.diffusers_tiny` (with
  :mod:`.taesd_weights` for raw TAESD/TAEF2 weights), :mod:`.monai_kl`, :mod:`.medvae_2d`;
* :mod:`.sources`: local paths, hub ids, offline fallback and the errors they raise.

Backends import their libraries (diffusers, MONAI's networks, medvae) only when used, so importing
this package is cheap and works without the optional ``medvae`` extra.
"""

from LatentSRLib.autoencoders.base import Autoencoder, weights_fingerprint
from LatentSRLib.autoencoders.latent_stats import STATS_FILE_NAME, LatentStats
from LatentSRLib.autoencoders.medvae_2d import MEDVAE_2D_MODELS
from LatentSRLib.autoencoders.monai_kl import save_monai_autoencoder
from LatentSRLib.autoencoders.spec import SCHEMES, load_autoencoder, parse_spec

__all__ = [
    "Autoencoder",
    "LatentStats",
    "MEDVAE_2D_MODELS",
    "SCHEMES",
    "STATS_FILE_NAME",
    "load_autoencoder",
    "parse_spec",
    "save_monai_autoencoder",
    "weights_fingerprint",
]

