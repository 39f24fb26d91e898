"""The conditional denoiser: a MONAI ``DiffusionModelUNet`` that sees the noisy latent and the LR latent.

Super-resolution is conditioned by concatenation: the network input is the noisy high-resolution
latent ``x_t`` stacked on the channel axis with the latent of the low-resolution image encoded on
the high-resolution grid (rule 5 (docs/science.md)), so both have the same shape ``(B, C, h, w)``. The network
input therefore has ``2 * C`` channels and its output ``C`` channels (noise, clean latent or
velocity, as the objective decides).

Time convention ("model time"): the denoiser takes a float tensor ``t`` of shape ``(B,)`` in
``[0, MODEL_TIME_SCALE]`` = ``[0, 1000]``, fed to the UNet's sinusoidal embedding. The objectives
map their own time onto it: a DDPM timestep ``k`` of a ``T``-step schedule becomes
``k * 1000 / T`` (the identity for the usual ``T = 1000``), a rectified-flow time ``s`` in
``[0, 1]`` becomes ``1000 * s``. Keeping one range means the embedding spans the same frequencies
whatever the schedule length or objective.

Architectures are named presets (:data:`DENOISER_PRESETS`) plus overrides; the full argument set is
stored in :attr:`ConditionalDenoiser.config`, a JSON-able dict, and :meth:`ConditionalDenoiser.from_config`
rebuilds the identical network from it without consulting the presets again (a trained model
keeps its architecture even if a preset is later retuned).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

__all__ = [
    "DENOISER_PRESETS",
    "MODEL_TIME_SCALE",
    "ConditionalDenoiser",
    "Denoiser",
    "build_denoiser",
    "count_parameters",
]

#: the denoiser's time input spans ``[0, MODEL_TIME_SCALE]`` (see the module docstring)
MODEL_TIME_SCALE = 1000.0

#: anything called as ``denoiser(x_t, model_time, condition) -> output`` (all shapes ``(B, C, h, w)``,
#: ``model_time`` of shape ``(B,)``); a :class:`ConditionalDenoiser` or a test oracle
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Every architecture argument of DiffusionModelUNet that a preset or an override may set, with the
# value used when neither does. Written out (not left to MONAI's defaults) so a stored config is
# complete and survives a change of defaults in a later MONAI. Cross-attention and class
# conditioning are not offered: the condition enters by concatenation only.
_ARCHITECTURE_DEFAULTS: dict[str, Any] = {
    "channels": (32, 64, 64, 64),
    "attention_levels": (False, False, True, True),
    "num_res_blocks": 2,
    "num_head_channels": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "resblock_updown": False,
    "upcast_attention": False,
    "include_fc": True,
    "use_combined_linear": False,
    "use_flash_attention": False,
}
# arguments fixed by the wrapper itself
_FIXED_KEYS = ("spatial_dims", "in_channels", "out_channels")

#: Named architectures. Parameter counts below are for ``latent_channels=4`` (SD-VAE latents; for
#: MedVAE's 3 channels they differ by a few hundred to a few thousand), measured with MONAI 1.6.1.
#: All presets but ``tiny`` have 4 levels: latent height and width must be multiples of 8, and on a
#: 64x64 MedVAE latent the attention levels sit at 16x16 and 8x8, as in the paper (Sec. 4.2).
DENOISER_PRESETS: dict[str, dict[str, Any]] = {
    # 281,620 parameters: for tests and smoke runs (4x32x32 batch of 4 in ~25 ms on one CPU thread);
    # 3 levels (sizes multiple of 4).
    "tiny": {
        "channels": (16, 32, 32),
        "attention_levels": (False, False, True),
        "num_res_blocks": 1,
        "num_head_channels": 16,
        "norm_num_groups": 8,
    },
    # 1,318,516 parameters (1,354,832 for TAEF2's 32 latent channels): a shipped model within a size
    # budget (2.7 MB in float16); wide enough at the first level for a 32-channel latent.
    "compact": {
        "channels": (48, 64, 64),
        "attention_levels": (False, False, True),
        "num_res_blocks": 1,
        "num_head_channels": 16,
        "norm_num_groups": 16,
    },
    # 9,287,044 parameters: quick experiments on a laptop GPU or CPU.
    "small": {
        "channels": (64, 128, 128, 128),
        "attention_levels": (False, False, True, True),
        "num_res_blocks": 2,
        "num_head_channels": 32,
        "norm_num_groups": 32,
    },
    # 44,142,084 parameters: a mid-size model for screening several VAEs on one GPU.
    "base": {
        "channels": (96, 192, 320, 320),
        "attention_levels": (False, False, True, True),
        "num_res_blocks": 2,
        "num_head_channels": 64,
        "norm_num_groups": 32,
    },
    # 106,386,948 parameters: the paper's LDM UNet size (~100M; residual blocks, attention at the two
    # lowest resolutions, sinusoidal time embedding).
    "paper": {
        "channels": (128, 256, 512, 512),
        "attention_levels": (False, False, True, True),
        "num_res_blocks": 2,
        "num_head_channels": 64,
        "norm_num_groups": 32,
    },
}


def _as_json(value: Any) -> Any:
    """Tuples (and nested tuples) to lists, so the config equals its own JSON round trip."""
    if isinstance(value, (tuple, list)):
        return [_as_json(v) for v in value]
    return value


def _as_network(value: Any) -> Any:
    """Lists back to tuples, the form MONAI's constructor documents."""
    if isinstance(value, (tuple, list)):
        return tuple(_as_network(v) for v in value)
    return value


def _check_architecture_keys(keys: Any, what: str) -> None:
    unknown = sorted(set(keys) - set(_ARCHITECTURE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown denoiser {what} {', '.join(map(repr, unknown))}; valid keys are "
            f"{', '.join(_ARCHITECTURE_DEFAULTS)}"
        )


class ConditionalDenoiser(nn.Module):
    """A 2D ``DiffusionModelUNet`` conditioned on a latent of the same shape by channel concatenation.

    Args:
        latent_channels: channels ``C`` of the latents (3 for MedVAE 4_3, 4 for SD-VAE, 32 for TAEF2...).
        architecture: DiffusionModelUNet arguments (keys of a :data:`DENOISER_PRESETS` entry and
            the other architecture keys); missing keys take the documented defaults.
        preset: name recorded in :attr:`config` (``"custom"`` when the architecture is not a preset).
        condition_skip: add the condition to the UNet's output (``output = condition + unet(...)``),
            so an x0-predicting network starts from the LR latent and learns only the residual detail.
            Meaningful for x0 prediction only (the training setup checks it). The UNet's output layer is
            zero-initialised, so an untrained skip network returns the LR latent itself: the LR image
            re-encoded, about bicubic's quality, instead of noise. Without it a CPU-length run spends
            its first thousand iterations learning to copy the condition.

    Shapes: ``x_t`` and ``condition`` are ``(B, C, h, w)`` with ``h`` and ``w`` multiples of
    :attr:`size_multiple`; ``t`` is the model time, ``(B,)`` (or a scalar, broadcast over the
    batch), float in ``[0, 1000]``. Output: ``(B, C, h, w)`` in the input's dtype.
    """

    def __init__(self, latent_channels: int, architecture: Mapping[str, Any], preset: str = "custom",
                 condition_skip: bool = False) -> None:
        super().__init__()
        if isinstance(latent_channels, bool) or not isinstance(latent_channels, int) or latent_channels < 1:
            raise ValueError(f"latent_channels must be a positive integer, got {latent_channels!r}")
        _check_architecture_keys(architecture, "argument")
        args = {**_ARCHITECTURE_DEFAULTS, **{k: _as_network(v) for k, v in architecture.items()}}
        self.latent_channels = latent_channels
        self.preset = str(preset)
        self.condition_skip = bool(condition_skip)
        self._architecture = args
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=2 * latent_channels, out_channels=latent_channels, **args
        )

    @property
    def size_multiple(self) -> int:
        """Latent height and width must be multiples of this (one halving per level below the first)."""
        return 2 ** (len(self._architecture["channels"]) - 1)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description: ``{"preset", "latent_channels", "condition_skip", "network": all UNet arguments}``."""
        network = {
            "spatial_dims": 2,
            "in_channels": 2 * self.latent_channels,
            "out_channels": self.latent_channels,
            **{k: _as_json(v) for k, v in self._architecture.items()},
        }
        return {"preset": self.preset, "latent_channels": self.latent_channels, "condition_skip": self.condition_skip,
                "network": network}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ConditionalDenoiser:
        """Rebuild the architecture stored by :attr:`config` (weights are loaded separately)."""
        missing = {"latent_channels", "network"} - set(config)
        if missing:
            raise ValueError(
                f"denoiser config lacks {', '.join(sorted(missing))}; expected keys preset, latent_channels, network"
            )
        latent_channels = config["latent_channels"]
        network = dict(config["network"])
        expected = {"spatial_dims": 2, "in_channels": 2 * latent_channels, "out_channels": latent_channels}
        for key, value in expected.items():
            if key in network and network.pop(key) != value:
                raise ValueError(
                    f"denoiser config is inconsistent: network {key} must be {value} for {latent_channels} "
                    "latent channels (noisy latent + condition in, latent out, 2D)"
                )
        # models saved before the skip existed have no key: they had none
        return cls(latent_channels, network, preset=config.get("preset", "custom"),
                   condition_skip=bool(config.get("condition_skip", False)))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float, condition: torch.Tensor) -> torch.Tensor:
        """Network output for the noisy latent ``x_t`` at model time ``t`` given the LR ``condition``.

        Args:
            x_t: ``(B, C, h, w)`` noisy latent.
            t: ``(B,)`` or scalar model time in ``[0, 1000]`` (float; integers are accepted as is).
            condition: ``(B, C, h, w)`` normalised latent of the low-resolution image.

        Returns:
            ``(B, C, h, w)``: what the objective trains it to predict.
        """
        if x_t.ndim != 4 or condition.shape != x_t.shape:
            raise ValueError(
                f"x_t and condition must both be (B, C, h, w) with the same shape, got {tuple(x_t.shape)} "
                f"and {tuple(condition.shape)}"
            )
        batch, channels, height, width = x_t.shape
        if channels != self.latent_channels:
            raise ValueError(f"expected {self.latent_channels} latent channels, got {channels}")
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            raise ValueError(
                f"latent size {height}x{width} is not supported by this denoiser: height and width must be "
                f"multiples of {multiple} ({len(self._architecture['channels'])} UNet levels); pad or resize "
                "the latent"
            )
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        out = self.unet(torch.cat([x_t, condition], dim=1), t.to(torch.float32))
        return out + condition if self.condition_skip else out


def build_denoiser(preset: str | Mapping[str, Any], latent_channels: int, *, condition_skip: bool = False,
                   **overrides: Any) -> ConditionalDenoiser:
    """A :class:`ConditionalDenoiser` from a preset name (or an architecture dict) and overrides.

    Example: ``build_denoiser("small", 3, num_res_blocks=1)``; ``condition_skip``: see the class.

    Raises:
        ValueError: unknown preset (the message lists them) or unknown override keys (lists the valid ones).
    """
    if isinstance(preset, str):
        if preset not in DENOISER_PRESETS:
            raise ValueError(f"unknown denoiser preset {preset!r}; choose one of {', '.join(DENOISER_PRESETS)}")
        name, architecture = preset, dict(DENOISER_PRESETS[preset])
    elif isinstance(preset, Mapping):
        name, architecture = "custom", dict(preset)
    else:
        raise ValueError(f"preset must be a name ({', '.join(DENOISER_PRESETS)}) or a dict of UNet arguments")
    _check_architecture_keys(overrides, "override")
    if overrides and name != "custom":
        # the config must not claim a preset that it no longer is
        name = f"{name}+overrides"
    architecture.update(overrides)
    return ConditionalDenoiser(latent_channels, architecture, preset=name, condition_skip=condition_skip)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (works on the meta device: nothing is allocated)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
