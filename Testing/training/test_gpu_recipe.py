"""The one command a lent GPU machine runs (``Training/scripts/gpu_train.sh run``), run here on the CPU with
a tiny budget: from a lean dataset pack and the shipped adapted TAEF2 to a model archive with its logs."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile

import pytest

from conftest import REPO_ROOT
from LatentSRLib.data.dataset import SplitRule, prepare_dataset
from LatentSRLib.data.packing import pack_dataset
from LatentSRLib.data.slice_source import SliceSelection
from LatentSRLib.training.logs import read_log
from LatentSRLib.transforms.tasks import parse_task

SCRIPT = REPO_ROOT / "Training" / "scripts" / "gpu_train.sh"


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_gpu_command_trains_within_its_budget_and_returns_one_archive(tmp_path, brats_flair, brats_t1):
    dataset = prepare_dataset([brats_t1, brats_flair], tmp_path / "dataset", parse_task("sr4"),
                              selection=SliceSelection(size=(64, 64), every=12),
                              split_rule=SplitRule(val_fraction=0, test_fraction=0, val_subjects=("*t2f",)),
                              progress=False)
    pack = pack_dataset(dataset.folder, tmp_path / "tiles.npz", derive_lr=True)
    env = {**os.environ, "PACK": str(pack), "WORK": str(tmp_path / "work"), "GPU_MINUTES": "0.02",
           "PRESET": "tiny", "BATCH": "4", "WORKERS": "0", "LOG_INTERVAL": "1", "EXTRA_ARGS": "--cache_batch_size 8"}
    done = subprocess.run(["bash", str(SCRIPT), "run", str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "trained and exported in" in done.stdout
    with tarfile.open(tmp_path / "out" / "brain-sr4-taef2.tar.gz") as archive:
        archive.extractall(tmp_path / "back", filter="data")
    config = json.loads((tmp_path / "back" / "model" / "config.json").read_text())
    assert config["autoencoder"]["name"] == "taef2-brain" and config["denoiser"]["condition_skip"] is True
    assert config["objective"]["terminal_fraction"] == 0.5 and config["training"]["pixel_loss_weight"] == 1.0
    assert config["training"]["time_limit_minutes"] == 0.02
    trained = read_log(tmp_path / "back" / "train_log.csv")
    # stopped by the budget long before max_iterations, its last weights validated
    assert 1 <= len(trained) < 1000
    assert read_log(tmp_path / "back" / "val_log.csv")[-1]["iteration"] == trained[-1]["iteration"]
