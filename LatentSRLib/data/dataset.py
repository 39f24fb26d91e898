"""Prepared SR datasets: high-resolution slices, their simulated low-resolution inputs and a manifest.

``latentsr prepare`` writes, and the training bundle, the latent cache and the evaluators read, one
folder format::

    DATASET_DIR/
      dataset.json   what produced it: task, slice selection, split rule, sources, counts
      manifest.csv   one row per slice: row, id, subject, source, plane, slice_index, split, foreground
      hr.npy         (N, H, W) float32 in [0, 1]: the true high-resolution slices on the model grid
      lr.npy         (N, H, W) float32 in [0, 1]: their degraded versions on the SAME grid (rule 5)

Row ``r`` of the arrays is row ``r`` of the manifest; both arrays open memory-mapped, so a dataset
larger than memory trains fine. Slices come from :mod:`LatentSRLib.data.slice_source` (its background
rule drops empty slices). Splits are by subject (rule 8): every slice of a subject lands in one split.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from LatentSRLib import __version__
from LatentSRLib.errors import InputError
from LatentSRLib.io.atomic import atomic_directory, check_output_folder
from LatentSRLib.data.slice_source import SliceSelection, evenly_spaced, expand_inputs, model_slices
from LatentSRLib.transforms.tasks import Task

__all__ = [
    "DATASET_FORMAT",
    "SPLITS",
    "PreparedDataset",
    "SplitRule",
    "assign_splits",
    "check_thick_selection",
    "compile_subject_pattern",
    "degrade_slices",
    "prepare_dataset",
    "subject_from_pattern",
]

DATASET_FORMAT = "latentsr.dataset"
_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST_FIELDS = ("row", "id", "subject", "source", "plane", "slice_index", "split", "foreground")


@dataclass(frozen=True)
class SplitRule:
    """How subjects are assigned to train/val/test.

    Subjects matching a pattern in ``val_subjects`` / ``test_subjects`` (shell-style, e.g.
    ``"BraTS-*-00001-*"``) go there; the others are split by ``val_fraction`` / ``test_fraction``
    using a hash of the subject ID and ``seed``, so a subject's split does not change when other
    subjects are added. With fractions, at least one subject stays in train.
    """

    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    val_subjects: tuple[str, ...] = ()
    test_subjects: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave subjects for training")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _subject_rank(subject: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(subjects: Sequence[str], rule: SplitRule = SplitRule()) -> dict[str, str]:
    """Subject -> ``"train" | "val" | "test"`` (see :class:`SplitRule`)."""
    unique = sorted(set(subjects))
    out: dict[str, str] = {}
    for subject in unique:
        if any(fnmatch.fnmatchcase(subject, p) for p in rule.test_subjects):
            out[subject] = "test"
        elif any(fnmatch.fnmatchcase(subject, p) for p in rule.val_subjects):
            out[subject] = "val"
    free = sorted((s for s in unique if s not in out), key=lambda s: _subject_rank(s, rule.seed))
    n_test = int(round(len(free) * rule.test_fraction))
    n_val = int(round(len(free) * rule.val_fraction))
    while n_test + n_val >= len(free) and (n_test or n_val):  # keep one training subject
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    for i, subject in enumerate(free):
        out[subject] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def compile_subject_pattern(text: str | None) -> re.Pattern | None:
    """The ``--subject-pattern`` regular expression, compiled (None when not given).

    Raises:
        InputError: ``text`` is not a regular expression.
    """
    if not text:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise InputError(f"--subject-pattern {text!r} is not a regular expression ({exc})") from None


def subject_from_pattern(subject: str, source: Path, pattern: re.Pattern | None) -> str:
    """The subject named by ``pattern``'s first group (or whole match) in the file name, when given."""
    if pattern is None:
        return subject
    match = pattern.search(source.name) or pattern.search(subject)
    if not match:
        raise InputError(f"the subject pattern {pattern.pattern!r} does not match this file name", source)
    return match.group(1) if match.groups() else match.group(0)


def _noise_seed(task_seed: int, slice_id: str) -> int:
    # per-slice seed from the ID: the same slice gets the same noise whatever the input order
    return (task_seed * 1_000_003 + zlib.crc32(slice_id.encode())) % 2**31


def degrade_slices(task: Task, hr: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """The training inputs of ``hr`` (``(N, H, W)`` in [0, 1]): ``task``'s forward operator on each slice,
    back on the HR grid (rule 5), noise seeded by each slice's ID so that the same slice always gets the
    same noise; ``(N, H, W)`` float32 in [0, 1]. The one place that makes a dataset's ``lr``."""
    import torch

    from LatentSRLib.transforms.degradations import task_degradation  # torch/MONAI only when degrading

    batch = torch.from_numpy(np.ascontiguousarray(hr[:, None]))
    if task.noise > 0:
        low = [np.asarray(task_degradation(task, seed=_noise_seed(task.seed, i))(batch[r : r + 1])) for r, i in enumerate(ids)]
        out = np.concatenate(low)[:, 0]
    else:
        out = np.asarray(task_degradation(task)(batch))[:, 0]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def check_thick_selection(task: Task, planes: Sequence[str], selection: SliceSelection) -> None:
    """Refuse slices a thick-slice task cannot degrade faithfully.

    :class:`~LatentSRLib.transforms.degradations.ThickSlices` degrades along the ROWS of a slice. A
    thick task simulates thick axial slices, so its slices must contain the axial normal along their
    rows: coronal and sagittal slices (upright rows run superior -> inferior), never axial ones.
    And the rows must be the volume's own slices (``fit="tile"``): a resize onto the model grid
    would change the slice thickness the profile models. No-op for other tasks.
    """
    if task.mode != "thick":
        return
    if "axial" in planes:
        raise InputError(f"task {task.name} degrades the rows of coronal and sagittal slices (superior -> inferior, "
                         "the thick axial slices' normal); an axial slice does not contain that axis: use --axis "
                         "coronal and/or --axis sagittal")
    if selection.fit != "tile":
        raise InputError(f"task {task.name} needs --fit tile (not {selection.fit}): the slices must keep their own "
                         f"pixels along the rows, since a resize onto the model grid would change the slice "
                         f"thickness of {task.scale} pixels the profile models")


def _median_pixel_mm(rows: list[dict]) -> float | None:
    sizes = [r["pixel_mm"] for r in rows if np.isfinite(r.get("pixel_mm", np.nan))]
    return round(float(np.median(sizes)), 4) if sizes else None


def prepare_dataset(
    inputs: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    task: Task,
    *,
    selection: SliceSelection = SliceSelection(),
    planes: Sequence[str] | None = None,
    split_rule: SplitRule = SplitRule(),
    subject_pattern: str | None = None,
    progress: bool = True,
) -> PreparedDataset:
    """Slice ``inputs``, simulate the low-resolution input of every slice and write a dataset folder.

    Args:
        inputs: volumes, DICOM series folders, image files or folders of images, ``.npy`` stacks.
        outdir: the dataset folder; written atomically (a failed run leaves no half dataset). An
            existing folder is replaced only if it is a LatentSR dataset.
        task: the degradation (see :class:`~LatentSRLib.transforms.tasks.Task`).
        selection: the slice rules (grid, window, background rule); its ``plane`` is used when
            ``planes`` is not given. A thick task needs ``fit="tile"`` (:func:`check_thick_selection`).
        planes: slice each volume along every one of these planes (2D images have one "plane"); a
            thick task takes coronal and sagittal planes only, and volumes only.
        split_rule: subject-level split.
        subject_pattern: regular expression whose first group (or whole match) in the file name is
            the subject, for datasets that store a subject's contrasts in separate files (BraTS:
            ``"(BraTS-GLI-\\d+-\\d+)"``).

    Returns:
        The written dataset, opened.
    """
    from tqdm.auto import tqdm

    planes = tuple(planes or (selection.plane,))
    check_thick_selection(task, planes, selection)  # before any work
    outdir = Path(outdir)
    sources = expand_inputs(inputs)
    check_output_folder(outdir, sources, is_ours=lambda folder: (folder / "dataset.json").is_file(),
                        what="LatentSR dataset")
    pattern = compile_subject_pattern(subject_pattern)
    started = time.perf_counter()
    rows: list[dict] = []
    source_summaries: list[dict] = []
    seen: dict[str, str] = {}
    with atomic_directory(outdir) as tmp:
        chunks: list[tuple[Path, Path]] = []
        # leave=False and closed on any exit: the summary printed after the run replaces the bar, and a
        # refusal is the only line left on the screen
        bar = tqdm(sources, desc="prepare", unit="source", disable=not progress, leave=False)
        try:
            for number, source in enumerate(bar):
                per_plane: dict[str, int] = {}
                for plane in planes:
                    items = list(model_slices(source, replace(selection, plane=plane)))
                    if items and items[0].plane == "image" and plane != planes[0]:
                        break  # a 2D image has one "plane": do not repeat it
                    if not items:
                        continue
                    if items[0].plane == "image" and task.mode == "thick":
                        raise InputError(f"task {task.name} needs volumes: a 2D image has no thick (through-plane) axis",
                                         source)
                    subject = subject_from_pattern(items[0].subject, source, pattern)
                    hr = np.stack([s.image for s in items]).astype(np.float32)
                    ids = []
                    for s in items:  # IDs name the file (unique); the subject may group several files
                        if s.id in seen:
                            raise InputError(f"slice ID {s.id!r} also comes from {seen[s.id]}; rename one of them", source)
                        seen[s.id] = s.source
                        ids.append(s.id)
                    try:
                        lr = degrade_slices(task, hr, ids)
                    except (ValueError, RuntimeError) as exc:  # MONAI's Compose wraps errors in RuntimeError
                        cause = exc if isinstance(exc, ValueError) else exc.__cause__
                        if not isinstance(cause, ValueError):
                            raise
                        raise InputError(f"cannot apply task {task.name} ({cause})", source) from None
                    hr_path, lr_path = tmp / f".hr-{number}-{plane}.npy", tmp / f".lr-{number}-{plane}.npy"
                    np.save(hr_path, hr)
                    np.save(lr_path, lr)
                    chunks.append((hr_path, lr_path))
                    per_plane[items[0].plane] = len(items)
                    for s, slice_id in zip(items, ids):
                        rows.append({"id": slice_id, "subject": subject, "source": str(source.resolve()), "plane": s.plane,
                                     "slice_index": s.index, "foreground": round(s.foreground, 4),
                                     "pixel_mm": s.pixel_mm})
                source_summaries.append({"path": str(source.resolve()), "slices": per_plane})
        finally:
            bar.close()
        if not rows:
            raise InputError("no slices were kept (all background?); check the inputs or lower --min-foreground",
                             Path(str(inputs[0])))
        splits = assign_splits([r["subject"] for r in rows], split_rule)
        for row_number, row in enumerate(rows):
            row["row"] = row_number
            row["split"] = splits[row["subject"]]
        height, width = selection.size
        for name, column in (("hr", 0), ("lr", 1)):
            out = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.float32,
                                            shape=(len(rows), height, width))
            start = 0
            for chunk in chunks:
                part = np.load(chunk[column])
                out[start : start + len(part)] = part
                start += len(part)
                chunk[column].unlink()
            out.flush()
            del out
        with open(tmp / "manifest.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows({k: row[k] for k in MANIFEST_FIELDS} for row in rows)
        split_counts = Counter(r["split"] for r in rows)
        subject_counts = {split: sorted({r["subject"] for r in rows if r["split"] == split}) for split in SPLITS}
        info = {
            "format": DATASET_FORMAT,
            "version": _VERSION,
            "latentsr_version": __version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "task": task.to_dict(),
            "selection": selection.to_dict(),
            "planes": list(planes),
            "lr_grid": "high-resolution grid (the degraded image is resampled back; rule 5)",
            "split_rule": split_rule.to_dict(),
            "subject_pattern": subject_pattern,
            "shape": [len(rows), height, width],
            # the physical size of a model pixel (median over the slices): what a trained model records
            "pixel_size_mm": _median_pixel_mm(rows),
            "counts": {split: int(split_counts.get(split, 0)) for split in SPLITS},
            "subjects": subject_counts,
            "sources": source_summaries,
            "seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    return PreparedDataset(outdir)


class PreparedDataset:
    """A dataset folder written by :func:`prepare_dataset`, opened read-only (arrays memory-mapped).

    Attributes:
        folder: the dataset folder.
        info: the parsed ``dataset.json``.
        rows: the manifest rows (dicts, ``row`` and ``slice_index`` as int, ``foreground`` as float).
        hr, lr: ``(N, H, W)`` float32 memory maps.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        info_path = self.folder / "dataset.json"
        if not info_path.is_file():
            raise InputError("not a LatentSR dataset (no dataset.json); make one with `latentsr prepare`", self.folder)
        try:
            self.info = json.loads(info_path.read_text())
            if self.info.get("format") != DATASET_FORMAT:
                raise ValueError(f"format is {self.info.get('format')!r}, not {DATASET_FORMAT!r}")
            with open(self.folder / "manifest.csv", newline="") as handle:
                self.rows = [
                    {**r, "row": int(r["row"]), "slice_index": int(r["slice_index"]), "foreground": float(r["foreground"])}
                    for r in csv.DictReader(handle)
                ]
            self.hr = np.load(self.folder / "hr.npy", mmap_mode="r")
            self.lr = np.load(self.folder / "lr.npy", mmap_mode="r")
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"damaged dataset: {exc}", self.folder) from None
        if not (len(self.rows) == len(self.hr) == len(self.lr)) or self.hr.shape != self.lr.shape:
            raise InputError(f"damaged dataset: manifest has {len(self.rows)} rows, hr {self.hr.shape}, lr {self.lr.shape}",
                             self.folder)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def task(self) -> Task:
        return Task.from_dict(self.info["task"])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.hr.shape[1]), int(self.hr.shape[2])

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows]

    def indices(self, split: str | None = None) -> list[int]:
        """Rows of ``split`` (all rows for None)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return [r["row"] for r in self.rows if split is None or r["split"] == split]

    def items(self, split: str | None = None, limit: int | None = None) -> list[dict]:
        """``[{"row", "id", "subject"}]`` of a split, for MONAI datasets (``limit``: evenly spaced subset)."""
        rows = self.indices(split)
        if limit is not None and len(rows) > limit:
            rows = [rows[i] for i in evenly_spaced(len(rows), limit)]
        return [{"row": r, "id": self.rows[r]["id"], "subject": self.rows[r]["subject"]} for r in rows]

    def describe(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.info["counts"].items())
        return f"{self.folder}: {len(self)} slices {self.size[0]}x{self.size[1]}, task {self.info['task']['name']} ({counts})"
