"""Latent fidelity: how close the SR latents are to the latents of the TRUE image, at a chosen spatial scale.

The paper (section 2.5, 4.7, Table S8) compares the SR latents (the sampler's output, before decoding)
with the HR latents (the true image encoded by the same frozen VAE), after average pooling both to a
coarser grid (64x64 down to 1x1), and reports cosine similarity and PSNR per scale.

Pooling: :func:`torch.nn.functional.adaptive_avg_pool2d` to ``output_size``; when the latent size is a
multiple of it, this is exactly the paper's ``avg_pool2d`` with kernel = stride = ``h / output_size``.

Cosine similarity, two modes (both computed in float64; a zero vector gives NaN, never a made-up 0):

* ``"channel_maps"`` (default, "computed channel-wise then averaged" in the paper's supplementary
  methods): for each channel ``c`` the pooled ``s_h x s_w`` map of the SR latent and of the HR latent
  are flattened into two vectors, their cosine taken, and the ``C`` cosines averaged. On a 1x1 grid
  each channel is a single number, and the cosine of two scalars is only the sign of their product
  (+1 or -1) and says nothing about similarity; the paper's 1x1 values (e.g. 0.986 +- 0.002, Table
  S8) cannot be averages of signs. So on a 1x1 grid the ``C`` channel means of an image form ONE
  vector and its cosine with the HR vector is reported (``channel_cosine`` is then ``None``).
* ``"channel_vectors"``: at each pooled position the ``C`` channel values form a vector; the cosine
  of the SR and HR vectors is taken at every position and averaged over positions. This is
  ``torch.nn.functional.cosine_similarity(sr, hr, dim=1).mean()`` without the eps clamp, the
  probable original implementation; it uses one definition at every scale, and on a 1x1 grid it is
  identical to ``"channel_maps"``.

Latent PSNR: ``10 log10(peak**2 / MSE)``, MSE over all pooled values (channels and positions) of the
image, and ``peak = max - min`` of that image's HR latent at full latent resolution (all channels).
Latents have no fixed range (unlike images in [0, 1]), so the true image's own latent range is the
scale; taking it before pooling keeps one peak per image at every scale, so PSNRs of different
scales differ only through their MSE. Identical latents give ``+inf`` (not capped, as in
:mod:`.metrics`); a constant HR latent (peak 0) gives NaN.

Inputs: SR and HR latents of the same shape, ``(B, C, h, w)`` (or ``(C, h, w)`` for one image),
numpy or torch, real and finite. Results are per image, float64 numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "COSINE_MODES",
    "LatentFidelity",
    "as_latent_batch",
    "latent_fidelity",
    "latent_fidelity_by_scale",
    "pool_latents",
]

CosineMode = Literal["channel_maps", "channel_vectors"]
COSINE_MODES: tuple[str, ...] = ("channel_maps", "channel_vectors")


@dataclass(frozen=True)
class LatentFidelity:
    """SR-vs-HR latent fidelity of ``B`` images at one pooled grid size.

    Attributes:
        output_size: the pooled grid ``(s_h, s_w)``.
        mode: the cosine definition (see the module docstring).
        cosine: ``(B,)`` cosine similarity in ``[-1, 1]`` (NaN where a vector is zero).
        channel_cosine: ``(B, C)`` per-channel cosines (``"channel_maps"`` on grids larger than
            1x1), else ``None``.
        mse: ``(B,)`` mean squared difference of the pooled latents.
        psnr: ``(B,)`` dB, ``+inf`` for identical latents, NaN for a constant HR latent.
        peak: ``(B,)`` the HR latent's range (max - min) used as the PSNR peak.
    """

    output_size: tuple[int, int]
    mode: str
    cosine: np.ndarray
    channel_cosine: np.ndarray | None
    mse: np.ndarray
    psnr: np.ndarray
    peak: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of lists."""
        return {
            "output_size": list(self.output_size),
            "mode": self.mode,
            "cosine": self.cosine.tolist(),
            "channel_cosine": None if self.channel_cosine is None else self.channel_cosine.tolist(),
            "mse": self.mse.tolist(),
            "psnr": self.psnr.tolist(),
            "peak": self.peak.tolist(),
        }


def as_latent_batch(latents, name: str = "latents") -> torch.Tensor:
    """``(B, C, h, w)`` or ``(C, h, w)`` -> float64 CPU tensor ``(B, C, h, w)``.

    Raises:
        ValueError: another number of dimensions, complex, empty or non-finite values.
    """
    t = torch.as_tensor(np.ascontiguousarray(latents)) if isinstance(latents, np.ndarray) else torch.as_tensor(latents)
    if t.is_complex():
        raise ValueError(f"{name}: complex latents are not supported")
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"{name}: expected latents (B, C, h, w) or (C, h, w), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: empty latents of shape {tuple(t.shape)}")
    t = t.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return t


def _grid(output_size: int | Sequence[int], height: int, width: int) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, (int, np.integer)) else tuple(output_size)
    if len(size) != 2 or any(int(s) != s for s in size):
        raise ValueError(f"output_size must be an int or a pair of ints, got {output_size!r}")
    s_h, s_w = int(size[0]), int(size[1])
    if not (1 <= s_h <= height and 1 <= s_w <= width):
        raise ValueError(f"output_size {(s_h, s_w)} must lie between 1x1 and the latent size {height}x{width}")
    return s_h, s_w


def pool_latents(latents, output_size: int | Sequence[int] = 1) -> torch.Tensor:
    """Average-pool ``(B, C, h, w)`` latents to ``(B, C, s_h, s_w)`` (float64)."""
    t = as_latent_batch(latents)
    return F.adaptive_avg_pool2d(t, _grid(output_size, *t.shape[-2:]))


def _cosine(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Cosine along ``dim``; NaN where either vector is zero (0/0 is not a similarity)."""
    norms = torch.linalg.vector_norm(a, dim=dim) * torch.linalg.vector_norm(b, dim=dim)
    dots = (a * b).sum(dim=dim)
    return torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(torch.float64).tiny), torch.nan)


def latent_fidelity(
    sr_latents,
    hr_latents,
    output_size: int | Sequence[int] = 1,
    mode: CosineMode = "channel_maps",
) -> LatentFidelity:
    """Cosine similarity, MSE and PSNR of pooled SR latents against pooled HR latents, per image.

    Args:
        sr_latents: the sampler's output latents, ``(B, C, h, w)``.
        hr_latents: the TRUE images encoded by the same autoencoder (posterior mean), same shape.
        output_size: the pooled grid, an int (square) or ``(s_h, s_w)``; 1 (the default) is the
            paper's global-mean scale, ``h`` leaves the latents as they are.
        mode: ``"channel_maps"`` or ``"channel_vectors"`` (module docstring; identical at 1x1).

    Returns:
        :class:`LatentFidelity` with ``(B,)`` arrays.

    Raises:
        ValueError: shapes differ, a bad shape or output size, or an unknown mode.
    """
    if mode not in COSINE_MODES:
        raise ValueError(f"mode must be one of {COSINE_MODES}, got {mode!r}")
    sr = as_latent_batch(sr_latents, "sr_latents")
    hr = as_latent_batch(hr_latents, "hr_latents")
    if sr.shape != hr.shape:
        raise ValueError(
            f"sr_latents {tuple(sr.shape)} and hr_latents {tuple(hr.shape)} differ in shape "
            "(both must come from the same autoencoder, on the same images)"
        )
    grid = _grid(output_size, *sr.shape[-2:])
    sr_pooled = F.adaptive_avg_pool2d(sr, grid)
    hr_pooled = F.adaptive_avg_pool2d(hr, grid)

    channel_cosine = None
    if mode == "channel_vectors" or grid == (1, 1):
        cosine = _cosine(sr_pooled, hr_pooled, dim=1).mean(dim=(1, 2))  # over channels, then positions
    else:
        per_channel = _cosine(sr_pooled.flatten(2), hr_pooled.flatten(2), dim=2)  # (B, C)
        cosine = per_channel.mean(dim=1)
        channel_cosine = per_channel.numpy()

    mse = (sr_pooled - hr_pooled).square().mean(dim=(1, 2, 3))
    peak = hr.amax(dim=(1, 2, 3)) - hr.amin(dim=(1, 2, 3))  # full-resolution HR range: same peak at every scale
    with np.errstate(divide="ignore", invalid="ignore"):
        psnr_db = np.where(peak.numpy() > 0, 10.0 * np.log10(peak.numpy() ** 2 / mse.numpy()), np.nan)
    return LatentFidelity(
        output_size=grid,
        mode=mode,
        cosine=cosine.numpy(),
        channel_cosine=channel_cosine,
        mse=mse.numpy(),
        psnr=psnr_db,
        peak=peak.numpy(),
    )


def latent_fidelity_by_scale(
    sr_latents,
    hr_latents,
    sizes: Sequence[int] | None = None,
    mode: CosineMode = "channel_maps",
) -> dict[int, LatentFidelity]:
    """:func:`latent_fidelity` at several square grid sizes, ``{size: result}``.

    ``sizes`` defaults to the paper's halving sequence ``h, h/2, ..., 1`` (64, 32, ..., 1 for 64x64
    latents; the integer part at each step for other sizes), taken from the latent height.
    """
    sr = as_latent_batch(sr_latents, "sr_latents")
    if sizes is None:
        sizes, size = [], int(sr.shape[-2])
        while size >= 1:
            sizes.append(size)
            size //= 2
    return {int(s): latent_fidelity(sr, hr_latents, int(s), mode) for s in sizes}
