"""Where an autoencoder's weights come from: a local path or a Hugging Face hub id, and the errors.

A spec's target is a local file or folder when it exists; something that looks like a path
(absolute, relative with ``./``, ``~``, a file name ending, more than one ``/``) but does not exist
is a missing path, not a hub id; ``owner/name`` is a hub id. Hub downloads honour
``HF_HUB_OFFLINE`` and fall back to the local cache when the hub cannot be reached, so a model used
once keeps working offline. Every failure becomes one :class:`~LatentSRLib.errors.InputError`
line that names the spec.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from LatentSRLib.errors import InputError

__all__ = ["spec_error", "split_subfolder", "resolve_location", "load_with_offline_fallback", "first_line"]

T = TypeVar("T")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_FILE_ENDINGS = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".json", ".yaml")


def spec_error(spec: str, problem: str) -> InputError:
    """An :class:`InputError` whose one line names the autoencoder spec."""
    return InputError(f"autoencoder {spec!r}: {problem}")


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, with its type when the message is empty."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def split_subfolder(target: str) -> tuple[str, str | None]:
    """``"owner/repo#vae"`` -> ``("owner/repo", "vae")``; no ``#`` -> ``(target, None)``."""
    location, sep, subfolder = target.partition("#")
    return location, (subfolder.strip("/") or None) if sep else None


def resolve_location(spec: str, location: str) -> Path | str:
    """A local :class:`Path` when ``location`` exists, else a hub id string.

    Raises:
        InputError: ``location`` is empty, or looks like a local path that does not exist.
    """
    if not location:
        raise spec_error(spec, "nothing after the scheme; give a folder, file or hub id")
    path = Path(location).expanduser()
    if path.exists():
        return path
    # a hub id is exactly "owner/name"; anything else (absolute, "./x", "a/b/c", "x.pth") is a path
    if not _HUB_ID.match(location) or location.lower().endswith(_FILE_ENDINGS):
        raise spec_error(spec, f"no such file or folder: {location}")
    return location


def load_with_offline_fallback(spec: str, load: Callable[[bool], T], *, what: str = "weights") -> T:
    """Run ``load(local_files_only)``: first as asked (hub allowed), then from the local cache only.

    The second try covers an unreachable hub when the files are cached but ``HF_HUB_OFFLINE`` is
    not set. Raises one :class:`InputError` naming ``spec`` when both fail.
    """
    try:
        return load(False)
    except Exception as online_error:  # hub clients raise many types (OSError, httpx, ValueError...)
        try:
            return load(True)
        except Exception:
            raise spec_error(
                spec,
                f"cannot get the {what} from the Hugging Face hub or its local cache "
                f"({first_line(online_error)}); connect once, or set HF_HUB_CACHE to a cache that holds them",
            ) from None
