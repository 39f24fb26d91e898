"""Ctrl-C (SIGINT) at any moment of ``latentsr sr``: one line, exit status 130, and the output folder
is the previous run's or the new one, never a mixture; nothing half-written is left beside it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_sr_model

LATENTSR = Path(sys.executable).with_name("latentsr")


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    """A model, a scan and a finished ``--simulate-scale`` output folder (it has difference,
    hallucination and lr maps, which a plain run does not write: a mixture would show)."""
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("interrupt")
    model = make_tiny_sr_model(root)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in (6, 48, 48)], indexing="ij")
    volume = (900 * np.exp(-3 * (grids[1] ** 2 + grids[2] ** 2)) + 50 * np.cos(5 * grids[2])).astype(np.float32)
    scan = root / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(scan))
    out = root / "out"
    done = subprocess.run([LATENTSR, "sr", scan, "-o", out, "--model", model, "--simulate-scale", "4"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return scan, model, out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("moment", ["start-up", "first-progress", "half-way", "last-progress"])
def test_sigint_leaves_the_old_folder_or_the_new_one(previous_run, moment):
    scan, model, out = previous_run
    before = _snapshot(out)
    process = subprocess.Popen([LATENTSR, "sr", scan, "-o", out, "--model", model, "--samples", "4",
                                "--progress", "lines"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if moment == "start-up":  # while torch is imported (Python's own start-up, before any of our code, is shorter)
        time.sleep(1.0)
    else:
        for line in process.stdout:
            fraction = float(line.split()[1]) if line.startswith("PROGRESS") else None
            if fraction is None:
                continue
            if moment == "first-progress" or (moment == "half-way" and fraction >= 0.5) or fraction >= 1.0:
                break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=600)
    assert "Traceback" not in stderr, stderr
    siblings = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert siblings == [], f"staging left behind: {siblings}"
    after = _snapshot(out)
    if process.returncode == 130:  # interrupted: the previous output, untouched
        # "latentsr: interrupted" when the signal came before the command line was parsed
        assert [line for line in stderr.splitlines() if line.strip()] in (["latentsr sr: interrupted"],
                                                                          ["latentsr: interrupted"])
        assert after == before
    else:  # the signal came after the swap: the new output, whole
        assert process.returncode == 0, stderr
        assert set(after) == {"sr.nii.gz", "uncertainty.nii.gz", "consistency.nii.gz", "metrics.json"}
        assert json.loads(after["metrics.json"])["settings"]["samples"] == 4
        before.clear()
        before.update(after)  # the next moment starts from this folder
