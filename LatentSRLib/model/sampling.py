"""THE sampling path: low-resolution images in, super-resolved samples out. Every caller (the volume
engine, the evaluation's ``model:`` method, training validation, :meth:`SRModel.super_resolve`)
goes through :func:`sample_sr`, and every sampling default lives here.

One batch, exactly::

    LR (B, 1, H, W) in [0, 1] on the HR grid (rule 5)
      -> autoencoder.encode (posterior mean, normalised latents; rule 6, rule 4)   [or a given condition]
      -> for k in 0..K-1: start noise of each item from (seed, item id, k) alone
                          -> diffusion.sample (strides the whole schedule, ends clean; rule 3)
                          -> autoencoder.decode
                             [decoding "lr_residual": + LR - autoencoder.decode(LR latent)]
      -> mean and population std over the K decoded samples

Decoding (the model's ``config["decoding"]``, :data:`DECODINGS`): ``"latent"`` (the default) takes
the decoded sample as the image, so the image can be no better than the autoencoder's own
reconstruction (its ceiling). ``"lr_residual"`` adds the decoded sample's difference from the decoded
LR latent to the LR image itself: the LR band reaches the output exactly, the autoencoder's
reconstruction error largely cancels in the difference, and the sampled latent contributes only the
detail it changes (a condition-skip network that predicts no residual returns the LR image). A model
is trained with the decoding it is sampled with (the pixel loss composes the same way).

Seeds: item ``i``'s sample ``k`` starts from noise drawn by a generator seeded with
:func:`item_seed` (``seed``, the item's id, ``k``), and the ancestral (``ddpm``) sampler's later
draws come from a second per-item generator; so a result never depends on the batch size, on the
batch's other items, or on the global random state. Ids are the stable image ids of a dataset
(strings, hashed with CRC-32) or integer keys (a volume's slice index, a tile's position key).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from LatentSRLib.diffusion import DDPM_SAMPLERS, FLOW_SAMPLERS, DDPMObjective, sample
from LatentSRLib.errors import InputError

__all__ = ["DECODINGS", "DEFAULT_STEPS", "SampleSet", "SamplingSettings", "check_decoding", "decoding_of", "item_seed", "lr_offset",
           "sample_sr", "start_noise", "step_generators"]

#: sampling steps when neither the caller nor the model folder says otherwise
DEFAULT_STEPS = 50
#: how a sampled latent becomes the image (the module docstring); models saved before the key: "latent"
DECODINGS = ("latent", "lr_residual")
_MODULUS = 2**63 - 1


def check_decoding(decoding: str | None, where=None) -> str:
    """``decoding`` (None: ``"latent"``) if it is one of :data:`DECODINGS`.

    Raises:
        InputError: an unknown decoding (naming ``where``, the model folder).
    """
    decoding = decoding or "latent"
    if decoding not in DECODINGS:
        raise InputError(f"unknown decoding {decoding!r}; this LatentSR knows {', '.join(DECODINGS)}", where)
    return decoding


def decoding_of(config: Mapping[str, Any], where=None) -> str:
    """The model's decoding (``config["decoding"]``, default ``"latent"``), checked (:func:`check_decoding`)."""
    return check_decoding(config.get("decoding"), where)


def lr_offset(autoencoder, lr: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """What ``"lr_residual"`` decoding adds to a decoded sample: ``LR - decode(LR latent)``, ``(B, 1, H, W)``
    float32 (``lr`` in [0, 1] on the HR grid, ``condition`` its normalised latent)."""
    return lr.float() - autoencoder.decode(condition.float()).float()


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample. ``None`` takes the model's recorded default (its ``config.json`` ``sampling``).

    Args:
        steps: sampling steps (network evaluations per sample; Heun uses about twice as many).
        sampler: ``"ddim"``/``"ddpm"`` (DDPM models) or ``"euler"``/``"heun"`` (rectified flow).
        samples: K samples per item; the prediction is their mean, the uncertainty their std.
        seed: with the item's id and the sample number, decides every random draw.
        eta: DDIM stochasticity in [0, 1] (0: deterministic given the start noise).
    """

    steps: int | None = None
    sampler: str | None = None
    samples: int = 1
    seed: int = 0
    eta: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or int(self.samples) != self.samples or self.samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {self.samples!r}")
        if self.steps is not None and (int(self.steps) != self.steps or self.steps < 1):
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")

    def resolved(self, objective, recorded: Mapping[str, Any] | None = None, where=None) -> SamplingSettings:
        """Steps and sampler filled in: the caller's, else the model's ``recorded`` defaults, else
        :data:`DEFAULT_STEPS` and the objective's first sampler.

        Raises:
            InputError: a sampler that does not fit the objective (naming ``where``, the model folder).
        """
        recorded = recorded or {}
        choices = DDPM_SAMPLERS if isinstance(objective, DDPMObjective) else FLOW_SAMPLERS
        sampler = self.sampler or recorded.get("sampler") or choices[0]
        if sampler not in choices:
            raise InputError(f"sampler {sampler!r} does not fit this model's {objective.kind} objective; "
                             f"choose one of {', '.join(choices)}", where)
        return replace(self, steps=int(self.steps or recorded.get("steps") or DEFAULT_STEPS), sampler=sampler)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _key(item_id: str | int) -> int:
    if isinstance(item_id, (int,)) and not isinstance(item_id, bool):
        return int(item_id)
    return zlib.crc32(str(item_id).encode())


def item_seed(seed: int, item_id: str | int, sample: int) -> int:
    """The seed of item ``item_id``'s sample ``sample``: from these three alone."""
    return (int(seed) * 1_000_003 + _key(item_id) * 7919 + int(sample)) % _MODULUS


def start_noise(ids: Sequence[str | int], shape: tuple[int, ...], seed: int, sample: int) -> torch.Tensor:
    """Start noise ``(B, *shape)`` float32 on the CPU, one seeded generator per item."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(item_seed(seed, i, sample)))
                        for i in ids])


def step_generators(ids: Sequence[str | int], seed: int, sample: int) -> list[torch.Generator]:
    """One CPU generator per item for a stochastic sampler's later draws (a stream apart from the start noise)."""
    return [torch.Generator().manual_seed(item_seed(seed, i, sample) ^ 0x5DEECE66D) for i in ids]


@dataclass
class SampleSet:
    """What :func:`sample_sr` returns for a batch of B items.

    Attributes:
        mean: ``(B, 1, H, W)`` float32, the mean of the K decoded samples (not clipped).
        std: ``(B, 1, H, W)`` float32, their population standard deviation (zeros when K = 1).
        latents: ``(K, B, C, h, w)`` float32 normalised SR latents on the CPU, when asked for.
    """

    mean: torch.Tensor
    std: torch.Tensor
    latents: torch.Tensor | None = None


@torch.no_grad()
def sample_sr(model, lr: torch.Tensor | None, ids: Sequence[str | int], settings: SamplingSettings = SamplingSettings(),
              *, condition: torch.Tensor | None = None, keep_latents: bool = False) -> SampleSet:
    """Super-resolve a batch: encode, sample K times, decode (the module docstring says exactly how).

    Args:
        model: an :class:`~LatentSRLib.model.folder.SRModel` (or anything with its ``denoiser``,
            ``objective``, ``autoencoder`` and ``config``), on the device to compute on.
        lr: ``(B, 1, H, W)`` LR images in [0, 1] on the HR grid, on the model's device; may be None
            when ``condition`` is given and the model's decoding is ``"latent"``.
        ids: one stable id per item (strings or integer keys), which seed its noise.
        settings: steps, sampler, K, seed; ``None`` fields take the model's recorded defaults.
        condition: ``(B, C, h, w)`` normalised LR latents already encoded (e.g. a latent cache),
            used instead of encoding ``lr``.
        keep_latents: also return the K normalised SR latents.
    """
    settings = settings.resolved(model.objective, model.config.get("sampling"), getattr(model, "folder", None))
    autoencoder = model.autoencoder
    if condition is None:
        condition = autoencoder.encode(lr)
    device = condition.device
    if len(ids) != condition.shape[0]:
        raise ValueError(f"{len(ids)} ids for a batch of {condition.shape[0]}")
    offset = None
    if decoding_of(model.config, getattr(model, "folder", None)) == "lr_residual":
        if lr is None:
            raise ValueError("lr_residual decoding needs the LR images, not only their latents")
        offset = lr_offset(autoencoder, lr, condition)  # the same for every sample
    images, latents = [], []
    for k in range(settings.samples):
        noise = start_noise(ids, tuple(condition.shape[1:]), settings.seed, k).to(device, condition.dtype)
        stochastic = settings.sampler == "ddpm" or settings.eta > 0
        z = sample(model.objective, model.denoiser, condition, steps=settings.steps, sampler=settings.sampler,
                   noise=noise, eta=settings.eta,
                   generator=step_generators(ids, settings.seed, k) if stochastic else None)
        if keep_latents:
            latents.append(z.float().cpu())
        image = autoencoder.decode(z.float()).float()
        images.append(image if offset is None else image + offset)
    stack = torch.stack(images)  # (K, B, 1, H, W)
    std = stack.std(0, unbiased=False) if settings.samples > 1 else torch.zeros_like(stack[0])
    return SampleSet(stack.mean(0), std, torch.stack(latents) if keep_latents else None)
