"""Seeded random draws that work whatever device the generator and the data live on.

``torch.randn(..., generator=g, device=d)`` fails when ``g`` lives on another device than ``d``
(a CPU generator for CUDA latents is the usual case). These helpers draw on the generator's device
and move the result, so a CPU generator gives the same numbers for CPU and GPU runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["randint", "randn", "uniform"]


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return torch.device(generator.device) if generator is not None else torch.device(device)


def randn(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Standard normal draws of ``shape`` on ``device``.

    ``generator`` may be a sequence of one generator per batch row (``len == shape[0]``): each row
    is then drawn from its own generator, so a row's draws do not depend on the other rows.
    """
    device = torch.device(device)
    if generator is not None and not isinstance(generator, torch.Generator):
        generators = list(generator)
        if len(generators) != shape[0]:
            raise ValueError(f"{len(generators)} generators for {shape[0]} rows")
        return torch.stack([randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generators])
    draw = torch.randn(shape, generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return draw.to(device)


def uniform(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Uniform draws in ``[0, 1)`` of ``shape`` on ``device``."""
    device = torch.device(device)
    draw = torch.rand(shape, generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return draw.to(device)


def randint(
    high: int,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None,
    device: torch.device | str,
) -> torch.Tensor:
    """Integers uniform in ``[0, high)`` (int64) of ``shape`` on ``device``."""
    device = torch.device(device)
    draw = torch.randint(0, high, shape, generator=generator, device=_draw_device(generator, device))
    return draw.to(device)
