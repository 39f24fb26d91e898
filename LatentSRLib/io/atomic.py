"""Atomic output: write beside the target under a temporary name, then rename over it.

A reader never sees a half-written file, an interrupted run leaves the previous output intact, and
no output may land on one of the inputs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from LatentSRLib.errors import OutputError

__all__ = ["atomic_directory", "atomic_path", "check_output_folder", "check_writable", "refuse_overwriting_inputs"]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def refuse_overwriting_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Raise :class:`OutputError` when ``output`` is, or is a folder holding, one of ``inputs``."""
    out = Path(output)
    for source in inputs:
        if source is None:
            continue
        src = Path(source)
        if _same_file(out, src):
            raise OutputError("refusing to overwrite an input; choose another output path", out)
        if out.exists() and out.is_dir():
            with contextlib.suppress(ValueError, OSError):
                src.resolve().relative_to(out.resolve())
                raise OutputError(f"refusing to replace a folder that holds the input {src}", out)


def check_output_folder(outdir: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *,
                        is_ours: Callable[[Path], bool], what: str) -> Path:
    """The one check of an output folder a command replaces as a whole (with :func:`atomic_directory`).

    Call it before any heavy work, so a wrong folder is refused at once. Refused: a folder that is,
    holds or lies inside one of ``inputs``; a file in the way; a non-empty folder that ``is_ours``
    does not recognise as a previous output of the same command (its files would be lost).

    Args:
        outdir: the output folder.
        inputs: files and folders the command reads.
        is_ours: whether an existing folder is a previous output of this command.
        what: what the command writes, for the message (e.g. "`latentsr sr` output").

    Raises:
        OutputError: naming the folder and the problem.
    """
    out = Path(outdir)
    sources = [Path(s) for s in inputs if s is not None]
    refuse_overwriting_inputs(out, sources)
    for source in sources:
        with contextlib.suppress(ValueError, OSError):
            if source.is_dir():
                out.resolve().relative_to(source.resolve())
                raise OutputError(f"the output folder must not be inside the input folder {source}", out)
    if out.exists() and not out.is_dir():
        raise OutputError("a file is in the way of this output folder", out)
    if out.is_dir() and any(out.iterdir()) and not is_ours(out):
        raise OutputError(f"this folder holds other files and is not a previous {what}; choose a new or empty "
                          f"folder (a previous {what} is replaced as a whole)", out)
    check_writable(out)
    return out


def check_results_folder(outdir: str | os.PathLike, owner: str | os.PathLike,
                         inputs: Iterable[str | os.PathLike | None] = (), *, is_ours: Callable[[Path], bool],
                         what: str, under: str = "results") -> Path:
    """:func:`check_output_folder` for a report about ``owner`` (a model folder the command reads), which
    may lie inside it under ``owner/under`` (``MODEL/results/...``, where its card is generated from) and
    nowhere else in it: the owner's own files are never replaced. ``inputs``: the other inputs."""
    out, owner = Path(outdir), Path(owner)
    refuse_overwriting_inputs(out, [owner])
    with contextlib.suppress(ValueError, OSError):
        inside = out.resolve().relative_to(owner.resolve())
        if len(inside.parts) < 2 or inside.parts[0] != under:
            raise OutputError(f"inside {owner} a {what} belongs under {owner / under}", out)
    return check_output_folder(out, inputs, is_ours=is_ours, what=what)


def check_writable(target: str | os.PathLike) -> None:
    """Refuse an output whose folder cannot be written (read-only, a file in the way, no permission).

    The staging area is created beside ``target``, so the nearest existing folder above it is probed
    with a temporary file that is removed at once (``os.access`` would not do: it says yes to root on a
    read-only file system). Nothing is created on the way: a refused run leaves no new folder.
    """
    target = Path(target).absolute()
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{ancestor} is a file, not a folder", target)
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write in {ancestor} ({exc.strerror or exc})", target) from None


def _ensure_parent(target: Path) -> Path:
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder ({exc.strerror})", parent) from None
    return parent


def _staging_folder(target: Path, parent: Path) -> Path:
    """A hidden temporary folder beside ``target`` (same file system, so renames are atomic)."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write in this folder ({exc.strerror})", parent) from None


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) for the few renames that swap an output in; raise it right after.

    Only the main thread can handle signals; elsewhere (the Slicer module's worker) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with ``target``'s exact name; on success it is moved onto ``target``.

    The path lies in a hidden temporary folder beside ``target``, so writers that produce
    companion files (``.mhd`` + ``.raw``, ``.nhdr`` + ``.raw.gz``) can refer to them by their final
    names: companions are moved first, ``target`` last. On error nothing is moved and ``target``
    is left as it was.
    """
    target = Path(target)
    parent = _ensure_parent(target)
    if target.is_dir():
        raise OutputError("a folder is in the way of this output file", target)
    staging = None
    try:
        with _interrupts_deferred():  # a Ctrl-C right after the folder is made must still find it to remove
            staging = _staging_folder(target, parent)
        yield staging / target.name
        written = sorted(staging.iterdir(), key=lambda p: p.name == target.name)
        with _interrupts_deferred():
            for item in written:
                os.replace(item, parent / item.name)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``.

    An existing ``target`` folder is moved aside first and deleted only once the new one is in
    place, so a failure at any point leaves either the old or the new output, never a mixture.
    """
    target = Path(target)
    parent = _ensure_parent(target)
    if target.exists() and not target.is_dir():
        raise OutputError("a file is in the way of this output folder", target)
    tmp = None
    try:
        with _interrupts_deferred():  # a Ctrl-C right after the folder is made must still find it to remove
            tmp = _staging_folder(target, parent)
        yield tmp
        old = None
        # Ctrl-C between the two renames would leave neither folder in place, and during the removal of
        # the previous output a half-deleted hidden folder beside the new one
        with _interrupts_deferred():
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
                os.replace(target, old / target.name)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
