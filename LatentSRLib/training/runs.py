"""The start of a bundle run: check the dataset and prepare the run folder, with clear errors."""

from __future__ import annotations

import os
import time
from pathlib import Path

from LatentSRLib.errors import InputError, OutputError
from LatentSRLib.data.dataset import PreparedDataset

__all__ = ["ExportOnCompletion", "TimeBudget", "ValidateAtStart", "attach_handlers", "flag", "start_run",
           "trainer_state_handlers"]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def flag(value) -> bool:
    """A yes/no bundle setting as a bool. The bundle's command line (Python Fire) hands ``--x false``
    over as the string ``"false"``, which Python would take for True; ``True``/``False``, 1/0 and
    the strings true/false, yes/no, on/off, 1/0 (any case) are understood, anything else refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise InputError(f"expected true or false, got {value!r}")


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


class ValidateAtStart:
    """Validate once before the first iteration of a new run (not of a resumed one): the starting
    weights' score, e.g. the pretrained autoencoder's, logged at iteration 0 and the first
    candidate for ``best.pt`` (so fine-tuning that never beats it exports the starting weights).

    Attach after the resume handlers, which restore the iteration that tells a resumed run apart.
    """

    def __init__(self, evaluator) -> None:
        self.evaluator = evaluator

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        if engine.state.iteration == 0:
            self.evaluator.run(max(int(engine.state.epoch), 1))


class TimeBudget:
    """End training after ``minutes`` of wall time (counted from the trainer's start, so not the latent
    cache), as if ``max_iterations`` had been reached: the weights since the last validation are
    validated first, so that they can become ``best.pt``, then the trainer stops and the completion
    handlers export the model. A lent GPU machine runs a command for a fixed time, whatever the
    iteration rate turns out to be there. ignite's ``TimeLimit`` stops without that last validation,
    which would throw away up to ``val_interval`` iterations of the run.
    """

    def __init__(self, minutes: float, evaluator=None, *, val_interval: int | None = None) -> None:
        if not minutes > 0:
            raise InputError(f"the time budget must be > 0 minutes, got {minutes}")
        self.seconds = 60.0 * float(minutes)
        self.evaluator = evaluator
        self.val_interval = val_interval
        self._start: float | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started(self, engine) -> None:
        self._start = time.monotonic()

    def __call__(self, engine) -> None:
        expired = self._start is not None and time.monotonic() - self._start >= self.seconds
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # every rank stops at the same iteration: rank 0's clock
            import torch

            flag = torch.tensor([float(expired)], device=engine.state.device if dist.get_backend() == "nccl" else "cpu")
            dist.broadcast(flag, src=0)
            expired = bool(flag.item())
        if not expired:
            return
        validated = bool(self.val_interval) and engine.state.iteration % self.val_interval == 0
        if self.evaluator is not None and not validated:
            self.evaluator.run(max(int(engine.state.epoch), 1))
        engine.terminate()


def trainer_state_handlers(evaluator, checkpoint_dir: str | os.PathLike, objects, *, val_interval: int,
                           checkpoint_interval: int, resume: bool = True, device="cpu", rank: int = 0,
                           validate_at_start: bool = False, time_limit_minutes: float | None = None) -> list:
    """The handlers a bundle attaches with :func:`attach_handlers`: validation every
    ``val_interval`` iterations (and before the first one with ``validate_at_start``), a progress
    bar (rank 0), ``checkpoints/last.pt`` every ``checkpoint_interval`` iterations, and the resume
    from ``last.pt`` when there is one; with ``time_limit_minutes``, a :class:`TimeBudget`.

    Validation runs on every rank: MONAI's metric handlers gather results across processes, so
    each rank scores its shard of the validation set and all of them get the same numbers."""
    from ignite.handlers import ProgressBar
    from monai.handlers import ValidationHandler

    from LatentSRLib.training.checkpoints import AtomicCheckpoint, resume_handlers

    handlers: list = [ValidationHandler(validator=evaluator, interval=val_interval, epoch_level=False)]
    if rank == 0:
        handlers.append(ProgressBar(persist=True))
    handlers.append(AtomicCheckpoint(checkpoint_dir, objects, save_interval=checkpoint_interval, rank=rank))
    handlers += resume_handlers(checkpoint_dir, objects, resume=resume, map_location=device)
    handlers += [ValidateAtStart(evaluator)] if validate_at_start else []
    if time_limit_minutes:
        handlers.append(TimeBudget(float(time_limit_minutes), evaluator, val_interval=val_interval))
    return handlers


class ExportOnCompletion:
    """Base of the handlers that write a model folder when training completes (rank 0 only).

    Subclasses set ``rank`` and implement ``_export(engine) -> Path``; calling the handler without
    an engine exports from the checkpoints of a stopped run.
    """

    rank: int = 0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine=None) -> Path | None:
        if self.rank != 0:
            return None
        import torch

        # building networks draws from torch's generator: keep the training's random sequence (and
        # the state the final checkpoint saves) as if the export had not happened
        with torch.random.fork_rng(devices=[]):
            return self._export(engine)

    def _export(self, engine) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def trained_iterations(engine, checkpoint_dir: str | os.PathLike) -> int | None:
        """How far the run got: the trainer's iteration, or, exporting a stopped run (no engine), the one
        its ``last.pt`` holds (None without one)."""
        if engine is not None:
            return int(engine.state.iteration)
        from LatentSRLib.training.checkpoints import LAST

        last = Path(checkpoint_dir) / LAST
        if not last.is_file():
            return None
        import torch

        return int(torch.load(last, map_location="cpu", weights_only=True)["trainer"]["iteration"])
