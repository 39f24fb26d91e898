"""CSV training logs: one row per logged iteration and one per validation.

MONAI's ``MetricsSaver`` writes final metrics only and ``TensorBoardStatsHandler`` needs TensorBoard
to read; a plain CSV that grows during training (and keeps growing after a resume) is what a
researcher plots a curve from, so it is written here.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Mapping, Sequence
from numbers import Number
from pathlib import Path
from typing import Any

import torch
from monai.utils import min_version, optional_import

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["CSVLogger", "read_log"]


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, Number) and not isinstance(value, bool):
            out[str(key)] = float(value)
    return out


class CSVLogger:
    """Append training losses (``train_log.csv``) or validation metrics (``val_log.csv``) to ``folder``.

    Args:
        folder: run folder.
        kind: ``"train"`` (attach to the trainer: the scalar entries of ``engine.state.output``
            every ``interval`` iterations) or ``"val"`` (attach to the evaluator:
            ``engine.state.metrics`` after each validation, stamped with the trainer's iteration).
        columns: the value columns, fixed so rows line up.
        trainer: for ``"val"``, the trainer whose iteration and epoch stamp the row.
        optimizer: for ``"train"``, logs the learning rate of its first parameter group.
        clock: for ``"val"``, the train logger whose wall clock stamps the row.
        rank: only rank 0 writes.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        kind: str,
        columns: Sequence[str],
        *,
        interval: int = 10,
        trainer=None,
        optimizer: torch.optim.Optimizer | None = None,
        clock: CSVLogger | None = None,
        rank: int = 0,
    ) -> None:
        if kind not in ("train", "val"):
            raise ValueError(f"kind must be 'train' or 'val', got {kind!r}")
        self.path = Path(folder) / f"{kind}_log.csv"
        self.kind = kind
        self.columns = list(columns)
        self.interval = int(interval)
        self.trainer = trainer
        self.optimizer = optimizer
        self.clock = clock
        self.rank = int(rank)
        self._started = time.perf_counter()
        self._seconds_before = 0.0

    @property
    def fields(self) -> list[str]:
        extra = ["lr"] if self.kind == "train" else []
        return ["iteration", "epoch", "seconds", *self.columns, *extra]

    def attach(self, engine) -> None:
        if self.kind == "train":
            engine.add_event_handler(Events.STARTED, self._resume_clock)
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self._write_train)
        else:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._write_val)

    def _resume_clock(self, engine) -> None:
        # a resumed run continues the wall-clock column from where the log left off
        self._started = time.perf_counter()
        if self.path.is_file():
            with open(self.path, newline="") as handle:
                rows = list(csv.DictReader(handle))
            if rows and rows[-1].get("seconds"):
                self._seconds_before = float(rows[-1]["seconds"])

    def _append(self, row: Mapping[str, Any]) -> None:
        if self.rank != 0:
            return
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def seconds(self) -> float:
        return round(self._seconds_before + time.perf_counter() - self._started, 2)

    def _write_train(self, engine) -> None:
        output = engine.state.output
        values = _numbers(output[0] if isinstance(output, list) and output else output or {})
        row: dict[str, Any] = {"iteration": engine.state.iteration, "epoch": engine.state.epoch,
                               "seconds": self.seconds(), **{c: values.get(c, "") for c in self.columns}}
        if self.optimizer is not None:
            row["lr"] = self.optimizer.param_groups[0]["lr"]
        self._append(row)

    def _write_val(self, engine) -> None:
        trainer = self.trainer
        values = _numbers(engine.state.metrics)
        seconds = self.clock.seconds() if self.clock is not None else ""
        self._append({"iteration": trainer.state.iteration if trainer else engine.state.iteration,
                      "epoch": trainer.state.epoch if trainer else engine.state.epoch,
                      "seconds": seconds, **{c: values.get(c, "") for c in self.columns}})


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a log written by :class:`CSVLogger`, numbers as floats (empty cells dropped)."""
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]

