"""Errors that the user can act on.

Everything the library raises for bad input is a :class:`LatentSRError` whose message names the
file (when there is one) and the problem in one line. The CLI prints that line and exits non-zero
instead of showing a traceback; programming errors keep their tracebacks.
"""

from __future__ import annotations

import os

__all__ = ["LatentSRError", "InputError", "OutputError"]


class LatentSRError(Exception):
    """Base class of all user-facing LatentSR errors."""

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputError(LatentSRError):
    """An input file, folder or array cannot be used (missing, unreadable, empty, NaN, ...)."""


class OutputError(LatentSRError):
    """An output cannot be written (would overwrite an input, folder not writable, ...)."""
