"""Devices and precision for inference: pick the best available device, autocast where it pays,
and split work into batches that shrink instead of failing when GPU memory runs out."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from LatentSRLib.errors import InputError

__all__ = ["autocast_for", "resolve_device", "run_in_batches", "default_batch_size"]

T = TypeVar("T")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; any other name is checked to exist."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r} ({exc}); use auto, cuda, cuda:N, mps or cpu") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is available here; use --device auto or cpu")
    return resolved


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA GPUs that support it (float16 otherwise); nothing on CPU/MPS, where
    reduced precision is slower or unsupported for these networks."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def prefers_channels_last(device: torch.device) -> bool:
    """Whether the networks run faster with channels-last (NHWC) weights and activations on ``device``.

    Measured on the CPU, where oneDNN's NHWC convolutions ran brain-sr4 on a whole 155-slice volume 1.26x
    faster (81.9 s -> 66.3 s, ``Testing/benchmarks/bench_real_scan.py --channels-last compare``, README)
    with outputs equal to 1e-5; not measured on GPUs, so they keep the default layout.
    """
    return device.type == "cpu"


def default_batch_size(device: torch.device, pixels_per_item: int) -> int:
    """A first guess of slices per batch: from free memory on CUDA, small on CPU (no gain beyond)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # about 2 kB of activations per model-grid pixel for the larger presets, with a safety margin
        return int(max(1, min(64, free // (pixels_per_item * 2048 * 2))))
    return 4


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_in_batches(items: Sequence[int], batch_size: int, work: Callable[[Sequence[int]], T],
                   on_done: Callable[[Sequence[int], T], None]) -> int:
    """Call ``work`` on consecutive chunks of ``items``; on out-of-memory, halve the batch and retry
    the same chunk (down to one item, then give up with a clear error). Returns the final batch size."""
    start = 0
    while start < len(items):
        chunk = items[start : start + batch_size]
        try:
            result = work(chunk)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not _is_out_of_memory(exc):
                raise
            if batch_size == 1:
                raise InputError("out of memory even with one slice per batch; use a smaller model or --device cpu") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size = max(1, batch_size // 2)
            continue
        on_done(chunk, result)
        start += len(chunk)
    return batch_size

