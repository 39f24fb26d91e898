"""``monai:<folder>`` — a MONAI ``AutoencoderKL`` trained by this project, and the format it is saved in.

A model folder holds:

* ``config.json``: ``{"format": "latentsr.monai_autoencoder", "version": 1, "network":
  "monai.networks.nets.AutoencoderKL", "network_args": {constructor arguments}, "input_range":
  [low, high], "weights": "model.safetensors", "metadata": {...}}``;
* the weights: ``model.safetensors`` (written here) or ``model.pt`` (a torch state dict);
* optionally ``latent_stats.json`` (:mod:`.latent_stats`), found by ``latent_stats="auto"``.

:func:`save_monai_autoencoder` writes exactly what :func:`load_monai_kl` reads, so the training
bundle and every consumer agree on one format. ``input_range`` is the intensity range the network
was trained on (``[0, 1]`` by default; ``[-1, 1]`` for a network trained like SD's VAE).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from LatentSRLib.io.atomic import atomic_path
from LatentSRLib.autoencoders.base import Autoencoder, channels_to_gray, gray_to_channels
from LatentSRLib.autoencoders.latent_stats import STATS_FILE_NAME
from LatentSRLib.autoencoders.sources import first_line, resolve_location, spec_error

__all__ = ["MonaiKLAutoencoder", "load_monai_kl", "save_monai_autoencoder", "CONFIG_FILE_NAME", "WEIGHT_FILE_NAMES"]

CONFIG_FILE_NAME = "config.json"
#: weight files looked for, in order
WEIGHT_FILE_NAMES = ("model.safetensors", "model.pt")
_FORMAT = "latentsr.monai_autoencoder"
_VERSION = 1
_NETWORK = "monai.networks.nets.AutoencoderKL"


class MonaiKLAutoencoder(Autoencoder):
    """A MONAI ``AutoencoderKL`` (2D) behind the :class:`Autoencoder` interface.

    ``[0, 1]`` images are mapped linearly onto the network's ``input_range``; the posterior is
    ``(z_mu, z_sigma)`` from ``network.encode``.
    """

    def __init__(self, *args: Any, input_range: Sequence[float] = (0.0, 1.0), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.input_range = (float(input_range[0]), float(input_range[1]))

    def _encode_native(self, images: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        low, high = self.input_range
        x = gray_to_channels(images * (high - low) + low, self.network.encoder.in_channels)
        mean, std = self.network.encode(x)
        return self._posterior_sample(mean, std, generator) if sample else mean

    def _decode_native(self, latents: torch.Tensor) -> torch.Tensor:
        low, high = self.input_range
        return (channels_to_gray(self.network.decode(latents)) - low) / (high - low)


def _build(network_args: Mapping[str, Any]) -> nn.Module:
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(**dict(network_args))


def _check_input_range(input_range: Sequence[float]) -> tuple[float, float]:
    low, high = (float(v) for v in input_range)
    if not high > low:
        raise ValueError(f"input_range must be [low, high] with high > low, got {list(input_range)}")
    return low, high


def save_monai_autoencoder(
    net: nn.Module,
    folder: str | os.PathLike,
    config: Mapping[str, Any],
    *,
    input_range: Sequence[float] = (0.0, 1.0),
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save a MONAI ``AutoencoderKL`` so that ``monai:<folder>`` loads it.

    Args:
        net: the trained network.
        folder: model folder (created; existing weights and config are replaced atomically).
        config: the network's constructor arguments (``spatial_dims=2``, ``channels``,
            ``latent_channels``...); checked by rebuilding the network and comparing every tensor's
            shape, so a config that would not load is refused here rather than later.
        input_range: intensity range the network was trained on.
        metadata: free-form JSON (training data, epochs, losses...), stored in ``config.json``.

    Returns:
        The path of ``config.json``. The weights go in ``model.safetensors`` first, the config last,
        so a folder with a config always has matching weights.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    args = json.loads(json.dumps(dict(config)))  # JSON-clean copy: tuples -> lists, fails on objects
    if int(args.get("spatial_dims", 0)) != 2:
        raise ValueError(f"LatentSR autoencoders are 2D: config needs spatial_dims=2, got {args.get('spatial_dims')}")
    low, high = _check_input_range(input_range)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    expected = _build(args).state_dict()
    mismatched = [k for k in expected if k not in state or tuple(state[k].shape) != tuple(expected[k].shape)]
    extra = [k for k in state if k not in expected]
    if mismatched or extra:
        raise ValueError(f"config does not describe this network: differs at {(mismatched + extra)[:3]}")
    document = {
        "format": _FORMAT,
        "version": _VERSION,
        "network": _NETWORK,
        "network_args": args,
        "input_range": [low, high],
        "weights": WEIGHT_FILE_NAMES[0],
        "metadata": json.loads(json.dumps(dict(metadata or {}))),
    }
    with atomic_path(folder / WEIGHT_FILE_NAMES[0]) as tmp:
        save_file(state, str(tmp), metadata={"format": _FORMAT})
    config_path = folder / CONFIG_FILE_NAME
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
    return config_path


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise ValueError("not a state dict")
    return dict(data)


def load_monai_kl(spec: str, target: str) -> MonaiKLAutoencoder:
    """Load ``monai:<folder>`` (float32, on the CPU)."""
    folder = resolve_location(spec, target)
    if not isinstance(folder, Path) or not folder.is_dir():
        raise spec_error(spec, f"not a model folder: {target}")
    config_path = folder / CONFIG_FILE_NAME
    if not config_path.is_file():
        raise spec_error(spec, f"no {CONFIG_FILE_NAME} in {folder} (write one with save_monai_autoencoder)")
    try:
        document = json.loads(config_path.read_text())
        args = document["network_args"]
        input_range = _check_input_range(document.get("input_range", (0.0, 1.0)))
        if document.get("network", _NETWORK) != _NETWORK:
            raise ValueError(f"network {document['network']!r} is not {_NETWORK}")
        if int(args.get("spatial_dims", 0)) != 2:
            raise ValueError(f"spatial_dims is {args.get('spatial_dims')}; only 2D autoencoders are supported")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise spec_error(spec, f"unusable {config_path.name}: {first_line(exc)}") from None
    names = [document["weights"]] if document.get("weights") else []
    weights = next((folder / n for n in [*names, *WEIGHT_FILE_NAMES] if (folder / n).is_file()), None)
    if weights is None:
        raise spec_error(spec, f"no weights in {folder} (expected {' or '.join(WEIGHT_FILE_NAMES)})")
    try:
        net = _build(args)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        problem = f"network_args in {config_path.name} do not build an AutoencoderKL: {first_line(exc)}"
        raise spec_error(spec, problem) from None
    try:
        net.load_state_dict(_read_weights(weights), strict=True)
    except Exception as exc:  # unreadable file, wrong keys or shapes
        raise spec_error(spec, f"weights {weights.name} do not fit the config: {first_line(exc)}") from None
    return MonaiKLAutoencoder(
        spec,
        net.float(),
        name=folder.resolve().name,
        latent_channels=int(net.latent_channels),
        downsampling_factor=2 ** (len(net.encoder.channels) - 1),
        stochastic=True,
        stats_path=folder / STATS_FILE_NAME,
        input_range=input_range,
        info={
            "backend": _NETWORK,
            "input_range": list(input_range),
            "in_channels": int(net.encoder.in_channels),
            "network_args": args,
            "metadata": document.get("metadata", {}),
        },
    )

