"""Training checkpoints: atomic, "last" and "best", and resuming after a kill.

MONAI's ``CheckpointSaver`` writes through ignite's ``DiskSaver`` with ``atomic=False`` (MONAI 1.6.1),
so a run killed mid-write can leave a truncated file as the only checkpoint. :class:`AtomicCheckpoint`
writes beside the target and renames it into place instead. A checkpoint is a ``torch.save`` of
``{name: obj.state_dict()}``, the same layout ignite and MONAI's ``CheckpointLoader`` read, so
resuming uses MONAI's loader unchanged (:func:`resume_handlers`).

Files in the checkpoint folder:

* ``last.pt``: every ``save_interval`` iterations, at the end, and when training stops on an error;
* ``best.pt``: whenever the validation key metric improves (attach to the evaluator).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.handlers import CheckpointLoader
from monai.utils import min_version, optional_import

from LatentSRLib.io.atomic import atomic_path

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["AtomicCheckpoint", "RandomState", "best_metric", "checkpoint_objects", "latest_checkpoint", "resume_handlers", "save_checkpoint",
           "LAST", "BEST"]

LAST = "last.pt"
BEST = "best.pt"


class RandomState:
    """The Python, numpy and torch random generators as one checkpointable object, so a resumed run
    draws the same crops, noise and timesteps as an uninterrupted one."""

    # plain tensors and numbers only: MONAI's CheckpointLoader reads with torch.load(weights_only=True)
    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))


def checkpoint_objects(**objects: Any) -> dict[str, Any]:
    """The objects to checkpoint, without the ``None`` ones (e.g. no discriminator, no EMA),
    plus the random generators."""
    out = {name: obj for name, obj in objects.items() if obj is not None}
    out.setdefault("rng", RandomState())
    return out


def _state_dict(obj: Any) -> Any:
    # DDP-wrapped networks are saved unwrapped, so single- and multi-GPU checkpoints interchange
    module = getattr(obj, "module", None) if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else None
    return (module or obj).state_dict()


def save_checkpoint(objects: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``{name: obj.state_dict()}`` to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({name: _state_dict(obj) for name, obj in objects.items()}, tmp)
    return path


class AtomicCheckpoint:
    """Save ``objects`` atomically to ``folder``.

    Args:
        folder: where ``last.pt`` / ``best.pt`` go (created).
        objects: name -> object with ``state_dict()`` (network, optimizer, trainer, ...).
        save_interval: iterations between ``last.pt`` saves (0: only at the end / on error).
        key_metric: when attached to an evaluator, save ``best.pt`` when this metric improves
            (greater is better unless ``lower_is_better``).
        rank: only rank 0 writes (the others return at once).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        objects: Mapping[str, Any],
        *,
        save_interval: int = 0,
        key_metric: str | None = None,
        lower_is_better: bool = False,
        rank: int = 0,
    ) -> None:
        self.folder = Path(folder)
        self.objects = dict(objects)
        self.save_interval = int(save_interval)
        self.key_metric = key_metric
        self.lower_is_better = lower_is_better
        self.rank = int(rank)
        self.best: float | None = None

    def attach(self, engine) -> None:
        if self.key_metric is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._maybe_best)
            return
        if self.save_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval), self.save_last)
        engine.add_event_handler(Events.COMPLETED, self.save_last)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_error)

    def save_last(self, engine=None) -> Path | None:
        if self.rank != 0:
            return None
        return save_checkpoint(self.objects, self.folder / LAST)

    def _on_error(self, engine, error: Exception) -> None:
        # keep the progress made so far, then let the error propagate as before
        if not isinstance(error, KeyboardInterrupt):
            self.save_last(engine)
        raise error

    def _maybe_best(self, engine) -> None:
        value = engine.state.metrics.get(self.key_metric)
        if value is None or self.rank != 0:
            return
        value = float(value)
        if self.best is None:  # a resumed run must beat the best of the runs before it
            self.best = best_metric(self.folder)
        better = self.best is None or (value < self.best if self.lower_is_better else value > self.best)
        if better and np.isfinite(value):
            self.best = value
            save_checkpoint({**self.objects, "best_metric": _Scalar(self.key_metric, value)}, self.folder / BEST)


class _Scalar:
    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value}


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """``folder/last.pt`` when it exists."""
    path = Path(folder) / LAST
    return path if path.is_file() else None


def best_metric(folder: str | os.PathLike) -> float | None:
    """The key-metric value stored in ``folder/best.pt`` (None when there is none)."""
    path = Path(folder) / BEST
    if not path.is_file():
        return None
    data = torch.load(path, map_location="cpu", weights_only=True)
    return float(data["best_metric"]["value"]) if "best_metric" in data else None


def resume_handlers(folder: str | os.PathLike, objects: Mapping[str, Any], *, resume: bool = True,
                    map_location: str | torch.device = "cpu") -> list:
    """``[CheckpointLoader]`` that restores ``objects`` from ``folder/last.pt`` when training
    starts, or ``[]`` when there is nothing to resume (or ``resume`` is False)."""
    path = latest_checkpoint(folder)
    if path is None or not resume:
        return []
    return [CheckpointLoader(load_path=str(path), load_dict=dict(objects), map_location=map_location, strict=True)]
