"""Run ``latentsr sr`` in a background process and follow its progress without blocking.

A GUI (the Slicer module) must stay responsive while a volume is super-resolved and must be able
to stop the work at once. Running the engine in a separate Python process (Slicer's PythonSlicer,
or any interpreter with LatentSR installed) gives both: the process prints
``PROGRESS <fraction> <message>`` lines (``latentsr sr --progress lines``), a reader thread
collects them, the GUI polls from its timer, and Cancel terminates the process. The command writes
its outputs only at the end, so a cancelled run leaves nothing half-written.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PROGRESS_PREFIX", "BackgroundSR", "ProgressEvent", "progress_line"]

#: first word of a machine-readable progress line (``latentsr sr --progress lines``)
PROGRESS_PREFIX = "PROGRESS"


def progress_line(fraction: float, message: str) -> str:
    """The line ``latentsr sr --progress lines`` prints and :class:`BackgroundSR` parses."""
    return f"{PROGRESS_PREFIX} {fraction:.4f} {message}"


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report: ``fraction`` in [0, 1] and a short message (e.g. ``"40/155 slices"``)."""

    fraction: float
    message: str


class BackgroundSR:
    """A ``latentsr sr`` run in a child process.

    Args:
        arguments: the command's arguments after ``sr`` (``[INPUT, "-o", OUTDIR, "--model", ...]``);
            ``--progress lines`` is added.
        python: the interpreter to run (Slicer: its PythonSlicer executable).
        env: extra environment variables.
    """

    def __init__(self, arguments: Sequence[str], *, python: str = sys.executable,
                 env: dict[str, str] | None = None) -> None:
        self.command = [python, "-m", "LatentSRLib.cli", "sr", *arguments, "--progress", "lines"]
        self._env = {**os.environ, **(env or {})}
        self._events: queue.Queue[ProgressEvent] = queue.Queue()
        self._log: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self.cancelled = False

    def start(self) -> BackgroundSR:
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         env=self._env, bufsize=1)
        for stream, parse in ((self._process.stdout, True), (self._process.stderr, False)):
            reader = threading.Thread(target=self._read, args=(stream, parse), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, stream, parse: bool) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if parse and line.startswith(PROGRESS_PREFIX + " "):
                _, fraction, *message = line.split(" ", 2)
                self._events.put(ProgressEvent(float(fraction), message[0] if message else ""))
            elif line.strip():
                self._log.append(line)

    def poll(self) -> list[ProgressEvent]:
        """Progress reported since the last call (never blocks)."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    @property
    def log(self) -> list[str]:
        """Everything else the command printed (its summary, warnings, the one-line error)."""
        return list(self._log)

    @property
    def error(self) -> str | None:
        """The command's error line when it failed (``latentsr sr: error: <file>: <problem>``)."""
        if self.returncode in (None, 0) or self.cancelled:
            return None
        errors = [line for line in self._log if ": error: " in line]
        return errors[-1] if errors else (self._log[-1] if self._log else f"exit status {self.returncode}")

    def cancel(self, timeout: float = 10.0) -> None:
        """Stop the run now (terminate, then kill if it does not exit within ``timeout`` seconds)."""
        if not self.running:
            return
        self.cancelled = True
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the run ends (for scripts and tests); returns the exit status."""
        assert self._process is not None, "start() first"
        code = self._process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code
