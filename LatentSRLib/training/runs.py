"""The start of a bundle run: check the dataset and prepare the run folder, with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, OutputError
from .dataset import PreparedDataset

__all__ = ["attach_handlers", "start_run"]


def start_run(dataset_dir: str | os.PathLike | None, output_dir: str | os.PathLike, splits=("train", "val")) -> Path:
    """Refuse a missing or damaged dataset (or one without the needed splits) before any network is
    built, and create ``output_dir`` (which must not be inside the dataset)."""
    if not dataset_dir:
        raise InputError("no dataset: pass --dataset_dir DATASET_DIR (a folder written by `latentsr prepare`)")
    dataset = PreparedDataset(dataset_dir)
    for split in splits:
        if not dataset.indices(split):
            raise InputError(f"the dataset has no {split!r} slices; prepare it with subjects for {split} "
                             "(--val/--test patterns or fractions)", dataset.folder)
    out = Path(output_dir)
    try:
        out.resolve().relative_to(dataset.folder.resolve())
        raise OutputError("the run folder must not be inside the dataset folder", out)
    except ValueError:
        pass
    out.mkdir(parents=True, exist_ok=True)
    return out


def attach_handlers(engine, handlers) -> None:
    """Attach handlers that need the engine itself (checkpoints holding the trainer's state,
    validation stamped with its iteration). A bundle cannot pass them to the engine's constructor:
    the engine would then depend on itself."""
    for handler in handlers:
        handler.attach(engine)
