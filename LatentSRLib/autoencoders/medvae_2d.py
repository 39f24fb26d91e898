"""``medvae:<name>`` — the 2D MedVAE models through the ``medvae`` package (optional extra).

``medvae.MVAE(name, modality)`` fetches its YAML config and checkpoint from the Hugging Face repo
``stanfordmimi/MedVAE`` with ``huggingface_hub.hf_hub_download``: the first use downloads, later
uses read the cache (``HF_HUB_CACHE``), also with ``HF_HUB_OFFLINE=1`` or when the hub cannot be
reached. MedVAE's own 2D transform scales each image to ``[0, 1]`` and then to ``[-1, 1]`` and
averages RGB to gray for the 1-channel models; here images are already windowed to ``[0, 1]``, so
they are mapped to ``[-1, 1]`` without a per-image rescale (that would undo the caller's window),
repeated to the encoder's input channels, and the decoder's channels are averaged back.

Latents are MedVAE's stage-1 latents (the posterior of ``model.encode``), the ones its decoder
takes; the projected "stage-2" latent ``MVAE.forward`` returns cannot be decoded. ``MVAE.encode``
samples with the global RNG; here the mean is the default and a sample honours a generator.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping

import torch

from LatentSRLib.autoencoders.base import Autoencoder, channels_to_gray, gray_to_channels
from LatentSRLib.autoencoders.sources import first_line, spec_error

__all__ = ["MedVAEAutoencoder", "load_medvae", "MEDVAE_2D_MODELS", "MEDVAE_INSTALL_HINT"]

#: the 2D models of the ``medvae`` package: name -> (downsampling factor, latent channels)
MEDVAE_2D_MODELS: Mapping[str, tuple[int, int]] = {
    "medvae_4_1_2d": (4, 1),
    "medvae_4_3_2d": (4, 3),
    "medvae_4_4_2d": (4, 4),
    "medvae_8_1_2d": (8, 1),
    "medvae_8_4_2d": (8, 4),
}
MEDVAE_INSTALL_HINT = "medvae is not installed: pip install 'latentsr[medvae]'"
# medvae passes the modality to its file transforms only; for 2D models every modality gets the
# same one, and this class does its own preprocessing anyway.
_MODALITY = "mri"


class MedVAEAutoencoder(Autoencoder):
    """A 2D MedVAE (``MVAE(...).model``) behind the :class:`Autoencoder` interface; input ``[-1, 1]``."""

    def _encode_native(self, images: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        x = gray_to_channels(images * 2.0 - 1.0, self.network.encoder.conv_in.in_channels)
        posterior = self.network.encode(x)
        return self._posterior_sample(posterior.mean, posterior.std, generator) if sample else posterior.mean

    def _decode_native(self, latents: torch.Tensor) -> torch.Tensor:
        return (channels_to_gray(self.network.decode(latents)) + 1.0) / 2.0


def _checkpoint_keys_missing(name: str, network: torch.nn.Module) -> list[str]:
    """Parameters of ``network`` that MedVAE's checkpoint did not provide.

    ``medvae`` loads checkpoints with ``strict=False`` and only prints what is missing, so a
    truncated or mismatched download would silently leave random weights: check it here. The
    checkpoint is already in the cache, so this reads it again (memory-mapped) without downloading.
    """
    from medvae.utils.factory import FILE_DICT_ASSOCIATIONS, download_model_weights

    path = download_model_weights(FILE_DICT_ASSOCIATIONS[name]["ckpt"])
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip-format checkpoint: cannot be memory-mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else {}
    return sorted(set(network.state_dict()) - set(state))


def load_medvae(spec: str, target: str) -> MedVAEAutoencoder:
    """Load ``medvae:<name>`` (float32, CPU), downloading the weights on first use."""
    name = target.strip()
    if name not in MEDVAE_2D_MODELS:
        hint = " (3D MedVAE models are not supported: LatentSR works on 2D slices)" if name.endswith("_3d") else ""
        raise spec_error(spec, f"unknown MedVAE model {name!r}{hint}; choose one of {', '.join(MEDVAE_2D_MODELS)}")
    try:
        from medvae import MVAE
    except ImportError:
        raise spec_error(spec, MEDVAE_INSTALL_HINT) from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # medvae prints shapes and key counts
            mvae = MVAE(model_name=name, modality=_MODALITY)
            missing = _checkpoint_keys_missing(name, mvae.model)
    except Exception as exc:  # hub, cache, YAML and checkpoint errors come in many types
        raise spec_error(
            spec,
            f"cannot get the MedVAE weights ({first_line(exc)}); they download from the Hugging Face repo "
            "stanfordmimi/MedVAE on first use: connect once, or set HF_HUB_CACHE to a cache that holds them",
        ) from None
    if missing:
        raise spec_error(spec, f"the MedVAE checkpoint lacks {len(missing)} weights (e.g. {missing[0]}); "
                               "delete it from the Hugging Face cache and download it again")
    network = mvae.model
    factor, channels = MEDVAE_2D_MODELS[name]
    return MedVAEAutoencoder(
        spec,
        network,
        name=name,
        latent_channels=int(network.embed_dim),  # read from the network, not trusted from the name
        downsampling_factor=2 ** (network.encoder.num_resolutions - 1),
        stochastic=True,
        stats_path=None,
        info={
            "backend": "medvae.MVAE",
            "input_range": [-1.0, 1.0],
            "in_channels": int(network.encoder.conv_in.in_channels),
            "nominal": {"downsampling_factor": factor, "latent_channels": channels},
        },
    )
