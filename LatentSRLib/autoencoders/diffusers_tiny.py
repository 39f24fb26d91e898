"""``tiny:`` — the TAESD family (TAESD, TAESDXL, TAEF1, TAEF2...) through diffusers' ``AutoencoderTiny``.

Targets:
    * a hub id or a ``save_pretrained`` folder (``config.json`` + weights), ``#subfolder`` allowed;
    * ``path/to/x_encoder.pth,path/to/x_decoder.pth``: the raw state dicts the TAESD repository
      publishes (mapped by :mod:`.taesd_weights`), ``.pt``/``.safetensors`` too;
    * a folder holding one such ``*encoder.*`` / ``*decoder.*`` pair.

The networks take RGB in ``[0, 1]`` (diffusers' wrapper expects ``[-1, 1]`` and converts); they
have no posterior, so encoding is deterministic whatever :attr:`Autoencoder.deterministic` says.
"""

from __future__ import annotations

from pathlib import Path

import torch

from LatentSRLib.autoencoders.base import Autoencoder, channels_to_gray, gray_to_channels
from LatentSRLib.autoencoders.latent_stats import STATS_FILE_NAME
from LatentSRLib.autoencoders.sources import first_line, load_with_offline_fallback, resolve_location, spec_error, split_subfolder

__all__ = ["TinyAutoencoder", "load_tiny"]

_WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")


class TinyAutoencoder(Autoencoder):
    """A diffusers ``AutoencoderTiny`` behind the :class:`Autoencoder` interface.

    Native latents are the encoder's raw output (no ``scale_latents`` byte packing).
    """

    def _encode_native(self, images: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        x = gray_to_channels(images * 2.0 - 1.0, self.network.config.in_channels)
        return self.network.encode(x).latents

    def _decode_native(self, latents: torch.Tensor) -> torch.Tensor:
        y = self.network.decode(latents).sample
        return (channels_to_gray(y) + 1.0) / 2.0


def _role(path: Path) -> str | None:
    stem = path.name.lower()
    return "encoder" if "encoder" in stem else "decoder" if "decoder" in stem else None


def _pair_in_folder(spec: str, folder: Path) -> tuple[Path, Path] | None:
    """The one ``<prefix>encoder.<ext>`` / ``<prefix>decoder.<ext>`` pair in ``folder``, if any."""
    pairs = []
    for encoder in sorted(folder.iterdir()):
        if encoder.suffix in _WEIGHT_SUFFIXES and encoder.stem.lower().endswith("encoder"):
            decoder = encoder.with_name(encoder.stem[: -len("encoder")] + "decoder" + encoder.suffix)
            if decoder.is_file():
                pairs.append((encoder, decoder))
    if len(pairs) > 1:
        raise spec_error(spec, f"{folder} holds several encoder/decoder pairs ({', '.join(p[0].name for p in pairs)}); "
                               "name the two files: tiny:ENCODER,DECODER")
    return pairs[0] if pairs else None


def _pair_name(encoder: Path) -> str:
    stem = encoder.stem
    for tail in ("_encoder", "-encoder", "encoder"):
        if stem.lower().endswith(tail):
            return stem[: -len(tail)] or stem
    return stem


def _load_pair(spec: str, encoder_path: Path, decoder_path: Path) -> TinyAutoencoder:
    from LatentSRLib.autoencoders.taesd_weights import build_tiny_autoencoder, read_state_dict

    weights = {}
    for role, path in (("encoder", encoder_path), ("decoder", decoder_path)):
        if not path.is_file():
            raise spec_error(spec, f"no such {role} file: {path}")
        try:
            weights[role] = read_state_dict(path)
        except Exception as exc:  # pickle, zip and safetensors errors come in many types
            raise spec_error(spec, f"cannot read the {role} weights {path.name}: {first_line(exc)}") from None
    try:
        model, layout = build_tiny_autoencoder(weights["encoder"], weights["decoder"])
    except ValueError as exc:
        raise spec_error(spec, f"not a TAESD-family encoder/decoder pair: {exc}") from None
    return TinyAutoencoder(
        spec,
        model,
        name=_pair_name(encoder_path),
        latent_channels=layout.latent_channels,
        downsampling_factor=layout.downsampling_factor,
        stochastic=False,
        stats_path=encoder_path.parent / STATS_FILE_NAME,
        info={
            "backend": "diffusers.AutoencoderTiny (raw TAESD weights)",
            "input_range": [0.0, 1.0],
            "in_channels": layout.in_channels,
            "encoder_weights": str(encoder_path),
            "decoder_weights": str(decoder_path),
            "pool_blocks": {"encoder": sorted(layout.encoder_pools), "decoder": sorted(layout.decoder_pools)},
            "config": layout.diffusers_config(),
        },
    )


def _wrap_pretrained(spec: str, model, name: str, stats_path: Path | None) -> TinyAutoencoder:
    config = model.config
    return TinyAutoencoder(
        spec,
        model,
        name=name,
        latent_channels=config.latent_channels,
        downsampling_factor=2 ** (len(config.num_encoder_blocks) - 1),
        stochastic=False,
        stats_path=stats_path,
        info={
            "backend": "diffusers.AutoencoderTiny",
            "input_range": [0.0, 1.0],
            "in_channels": config.in_channels,
            "scaling_factor": getattr(config, "scaling_factor", None),  # recorded, not applied
            "shift_factor": getattr(config, "shift_factor", None),
        },
    )


def load_tiny(spec: str, target: str) -> TinyAutoencoder:
    """Load ``tiny:<hub id | folder[#subfolder] | encoder,decoder | folder with a pair>`` (float32, CPU)."""
    from diffusers import AutoencoderTiny

    if "," in target:
        first, _, second = (part.strip() for part in target.partition(","))
        paths = [resolve_location(spec, first), resolve_location(spec, second)]
        if not all(isinstance(p, Path) and p.is_file() for p in paths):
            raise spec_error(spec, "tiny:ENCODER,DECODER needs two weight files")
        encoder, decoder = paths
        if _role(encoder) == "decoder" and _role(decoder) == "encoder":  # given the other way round
            encoder, decoder = decoder, encoder
        return _load_pair(spec, encoder, decoder)

    location, subfolder = split_subfolder(target)
    where = resolve_location(spec, location)
    if isinstance(where, str):
        model = load_with_offline_fallback(
            spec, lambda offline: AutoencoderTiny.from_pretrained(where, subfolder=subfolder, local_files_only=offline)
        )
        return _wrap_pretrained(spec, model, where + (f"#{subfolder}" if subfolder else ""), None)
    if where.is_file():
        raise spec_error(spec, f"{where} is one file; give the encoder and the decoder: tiny:ENCODER,DECODER")
    folder = where / subfolder if subfolder else where
    if not folder.is_dir():
        raise spec_error(spec, f"not a folder: {folder}")
    if (folder / "config.json").is_file():
        try:
            model = AutoencoderTiny.from_pretrained(str(where), subfolder=subfolder, local_files_only=True)
        except Exception as exc:  # diffusers reports missing/corrupt weights with several types
            raise spec_error(spec, f"cannot load the AutoencoderTiny in {folder}: {first_line(exc)}") from None
        return _wrap_pretrained(spec, model, folder.name, folder / STATS_FILE_NAME)
    pair = _pair_in_folder(spec, folder)
    if pair is None:
        raise spec_error(spec, f"no AutoencoderTiny config.json and no *_encoder/*_decoder weight pair in {folder}")
    return _load_pair(spec, *pair)
