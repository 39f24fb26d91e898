"""Staged outputs survive a Ctrl-C at the worst moment: right after the staging folder is made."""

from __future__ import annotations

import os
import signal

import pytest

from LatentSRLib.io import atomic


@pytest.mark.parametrize("context", ["atomic_directory", "atomic_path"])
def test_ctrl_c_right_after_the_staging_folder_is_made_leaves_nothing_behind(tmp_path, monkeypatch, context):
    made = atomic._staging_folder

    def made_then_interrupted(target, parent):
        folder = made(target, parent)
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C lands before the caller holds the folder
        return folder

    monkeypatch.setattr(atomic, "_staging_folder", made_then_interrupted)
    target = tmp_path / ("out" if context == "atomic_directory" else "out.nii.gz")
    with pytest.raises(KeyboardInterrupt):
        with getattr(atomic, context)(target) as staging:
            staging.mkdir(exist_ok=True) if context == "atomic_directory" else staging.write_text("x")
    assert list(tmp_path.iterdir()) == [], "a hidden staging folder was left behind"
