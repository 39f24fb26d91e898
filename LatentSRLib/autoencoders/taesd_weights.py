"""Raw TAESD-family weights (``taesd_encoder.pth`` + ``taesd_decoder.pth``) into diffusers' ``AutoencoderTiny``.

The TAESD repository publishes its encoders and decoders as state dicts of a plain
``nn.Sequential`` (keys ``"3.conv.0.weight"``...). diffusers' ``AutoencoderTiny`` is the same
architecture under other names (``"encoder.layers.3.conv.0.weight"``), with two differences handled
here:

* its decoder's input clamp is in ``forward`` rather than a layer, so raw decoder layer ``i``
  is diffusers layer ``i - 1``; rather than hard-coding shifts, the parametrised layers of both
  sequences are aligned in order and checked kind by kind and shape by shape;
* TAEF2 (FLUX.2's tiny autoencoder) adds to its deepest blocks a "pool" branch
  (1x1 conv -> GroupNorm(4) -> ReLU -> 1x1 conv, added to the block's input), which
  ``AutoencoderTinyBlock`` cannot express: such blocks become :class:`PooledTinyBlock`.

The configuration (input/latent channels, block counts and widths per level, downsampling) is read
from the state dicts' keys and shapes; only what weights cannot show is TAESD convention (stride-2
downsampling convs, nearest 2x upsampling, ReLU, 4 GroupNorm groups). Loading is strict: every
tensor must land on a parameter of the same shape and every parameter must get one, so a wrong
mapping fails loudly instead of producing noise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock
from torch import nn

__all__ = ["PooledTinyBlock", "TinyLayout", "infer_layout", "build_tiny_autoencoder", "raw_state_dicts", "read_state_dict"]

_RAW_KEY = re.compile(r"^(\d+)\.(.+)$")
# GroupNorm group count of TAEF2's pool branch: GroupNorm's affine weights are per channel, so the
# grouping cannot be read from the state dict; this is the TAESD family's (only) choice.
_POOL_GROUPS = 4


class PooledTinyBlock(AutoencoderTinyBlock):
    """An ``AutoencoderTinyBlock`` with TAEF2's pool branch: ``x + pool(x)`` enters the residual convs.

    ``pool`` = 1x1 conv (channels -> hidden, no bias), GroupNorm(4, hidden), ReLU, 1x1 conv back.
    Input and output ``(B, channels, h, w)``.
    """

    def __init__(self, channels: int, hidden: int, act_fn: str = "relu") -> None:
        super().__init__(channels, channels, act_fn)
        self.pool = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.GroupNorm(_POOL_GROUPS, hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + self.pool(x))


@dataclass
class _RawLayer:
    index: int
    tensors: dict[str, torch.Tensor]

    @property
    def is_block(self) -> bool:
        return "conv.0.weight" in self.tensors

    @property
    def pool_hidden(self) -> int | None:
        weight = self.tensors.get("pool.0.weight")
        return None if weight is None else int(weight.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.tensors["conv.0.weight" if self.is_block else "weight"].shape[1])

    @property
    def out_channels(self) -> int:
        return int(self.tensors["conv.4.weight" if self.is_block else "weight"].shape[0])


def _raw_layers(state_dict: Mapping[str, torch.Tensor], part: str) -> list[_RawLayer]:
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _RAW_KEY.match(key)
        if match is None:
            raise ValueError(f"the {part} is not a TAESD-style nn.Sequential state dict (key {key!r})")
        layers.setdefault(int(match.group(1)), {})[match.group(2)] = value
    result = [_RawLayer(i, layers[i]) for i in sorted(layers)]
    for layer in result:
        if not layer.is_block and "weight" not in layer.tensors:
            raise ValueError(f"the {part}'s layer {layer.index} is neither a conv nor a block: {sorted(layer.tensors)}")
        weight = layer.tensors["conv.0.weight" if layer.is_block else "weight"]
        if weight.ndim != 4:
            raise ValueError(f"the {part}'s layer {layer.index} has a {weight.ndim}-D weight; expected 2D convs")
    if len(result) < 2 or result[0].is_block or result[-1].is_block:
        raise ValueError(f"the {part} must start and end with a conv layer")
    return result


@dataclass
class TinyLayout:
    """What the raw state dicts say about the network (AutoencoderTiny's config, plus pool blocks)."""

    in_channels: int
    out_channels: int
    latent_channels: int
    encoder_block_out_channels: list[int]
    decoder_block_out_channels: list[int]
    num_encoder_blocks: list[int]
    num_decoder_blocks: list[int]
    encoder_pools: dict[int, int] = field(default_factory=dict)  # raw layer index -> pool hidden width
    decoder_pools: dict[int, int] = field(default_factory=dict)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.num_encoder_blocks) - 1)

    def diffusers_config(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "encoder_block_out_channels": tuple(self.encoder_block_out_channels),
            "decoder_block_out_channels": tuple(self.decoder_block_out_channels),
            "num_encoder_blocks": tuple(self.num_encoder_blocks),
            "num_decoder_blocks": tuple(self.num_decoder_blocks),
            "act_fn": "relu",
            "upsample_fn": "nearest",
            "upsampling_scaling_factor": 2,
        }


def infer_layout(encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor]) -> TinyLayout:
    """Read the architecture from raw encoder and decoder state dicts.

    Encoder: ``conv_in, blocks*, (stride-2 conv, blocks*)*, conv_out``; each stride conv opens a
    level. Decoder: ``conv_in, (blocks*, [upsample,] conv)*``; each conv closes a level, the last
    one mapping to image channels.

    Raises:
        ValueError: the state dicts do not have that shape, or encoder and decoder disagree.
    """
    enc = _raw_layers(encoder, "encoder")
    dec = _raw_layers(decoder, "decoder")

    enc_counts, enc_widths = [0], [enc[0].out_channels]
    for layer in enc[1:-1]:
        if layer.is_block:
            enc_counts[-1] += 1
        else:
            enc_counts.append(0)
            enc_widths.append(layer.out_channels)
    dec_counts, dec_widths, count = [], [], 0
    for layer in dec[1:]:
        if layer.is_block:
            count += 1
        else:
            dec_counts.append(count)
            dec_widths.append(layer.in_channels)
            count = 0
    if count:
        raise ValueError("the decoder ends with blocks after its last conv")

    layout = TinyLayout(
        in_channels=enc[0].in_channels,
        out_channels=dec[-1].out_channels,
        latent_channels=enc[-1].out_channels,
        encoder_block_out_channels=enc_widths,
        decoder_block_out_channels=dec_widths,
        num_encoder_blocks=enc_counts,
        num_decoder_blocks=dec_counts,
        encoder_pools={l.index: l.pool_hidden for l in enc if l.is_block and l.pool_hidden},
        decoder_pools={l.index: l.pool_hidden for l in dec if l.is_block and l.pool_hidden},
    )
    if dec[0].in_channels != layout.latent_channels:
        raise ValueError(
            f"the decoder takes {dec[0].in_channels} latent channels but the encoder gives {layout.latent_channels}"
        )
    if len(dec_counts) != len(enc_counts):
        raise ValueError(
            f"the encoder downsamples {len(enc_counts) - 1} times but the decoder upsamples {len(dec_counts) - 1} times"
        )
    return layout


def _align(raw: list[_RawLayer], layers: nn.Sequential, pools: Mapping[int, int], part: str, prefix: str,
           act_fn: str = "relu", install: bool = True) -> dict[str, str]:
    """Map raw keys onto ``prefix.<index>.<rest>``: ``{diffusers key: raw key}``.

    With ``install``, the layers that carry a pool branch become :class:`PooledTinyBlock` first
    (building); without, ``layers`` already hold them (saving a built model back to raw keys).
    """
    slots = [i for i, module in enumerate(layers) if any(True for _ in module.parameters())]
    if len(slots) != len(raw):
        raise ValueError(f"the {part} has {len(raw)} layers with weights; AutoencoderTiny's has {len(slots)}")
    keys: dict[str, str] = {}
    for slot, layer in zip(slots, raw):
        module = layers[slot]
        if layer.is_block != isinstance(module, AutoencoderTinyBlock):
            raise ValueError(f"the {part}'s layer {layer.index} does not line up with AutoencoderTiny's layer {slot}")
        if install and layer.index in pools:
            layers[slot] = PooledTinyBlock(layer.out_channels, pools[layer.index], act_fn)
        for rest in layer.tensors:
            keys[f"{prefix}.{slot}.{rest}"] = f"{layer.index}.{rest}"
    return keys


def _check_fit(mapped: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f"{key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}")


def build_tiny_autoencoder(encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor]):
    """An ``AutoencoderTiny`` (float32, CPU) holding the raw ``encoder`` and ``decoder`` weights.

    Returns ``(model, layout)``. Raises ``ValueError`` with the first disagreement when the weights
    do not fit (missing, unexpected or differently shaped tensors).
    """
    layout = infer_layout(encoder, decoder)
    model = AutoencoderTiny(**layout.diffusers_config())
    keys = _align(_raw_layers(encoder, "encoder"), model.encoder.layers, layout.encoder_pools, "encoder",
                  "encoder.layers")
    mapped = {ours: encoder[raw] for ours, raw in keys.items()}
    keys = _align(_raw_layers(decoder, "decoder"), model.decoder.layers, layout.decoder_pools, "decoder",
                  "decoder.layers")
    mapped.update({ours: decoder[raw] for ours, raw in keys.items()})
    _check_fit(mapped, model.state_dict())
    model.load_state_dict(mapped, strict=True)
    return model.float(), layout


def raw_state_dicts(model: nn.Module, encoder_template: Mapping[str, torch.Tensor],
                    decoder_template: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The inverse of :func:`build_tiny_autoencoder`: ``model``'s weights (e.g. after fine-tuning) as
    raw TAESD ``nn.Sequential`` state dicts with exactly the keys of the raw weights it was built
    from (``encoder_template`` / ``decoder_template``), so the files drop in wherever the originals
    were used. CPU tensors, detached copies.

    Raises:
        ValueError: ``model`` does not have the templates' architecture.
    """
    state = model.state_dict()
    out = []
    for part, template in (("encoder", encoder_template), ("decoder", decoder_template)):
        keys = _align(_raw_layers(template, part), getattr(model, part).layers, {}, part, f"{part}.layers",
                      install=False)
        _check_fit({ours: template[raw] for ours, raw in keys.items()},
                   {k: v for k, v in state.items() if k.startswith(f"{part}.")})
        out.append({raw: state[ours].detach().to("cpu").clone().contiguous() for ours, raw in keys.items()})
    return out[0], out[1]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.pth``/``.pt`` (torch, tensors only) or ``.safetensors``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError("not a state dict of tensors")
    return dict(data)
