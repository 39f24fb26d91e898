"""The bundle's ``train_autoencoder`` entry, run in-process on real slices with a tiny network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from LatentSRLib.autoencoders import load_autoencoder
from LatentSRLib.errors import InputError
from LatentSRLib.data.slice_source import SliceSelection
from LatentSRLib.transforms.tasks import parse_task
from LatentSRLib.data.dataset import SplitRule, prepare_dataset
from LatentSRLib.training.logs import read_log

CONFIGS = REPO_ROOT / "Training" / "configs"
TINY = {
    "width": 8, "latent_channels": 1, "downsampling": 4, "patch_size": 32, "batch_size": 4, "epoch_length": 10,
    "val_interval": 10, "val_images": 4, "checkpoint_interval": 10, "num_workers": 0, "learning_rate": 1e-3,
}


def run_bundle(dataset_dir, output_dir, run_id="train_autoencoder", **overrides):
    from monai.bundle import run

    run(run_id, meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "train_autoencoder.yaml"), logging_file=str(CONFIGS / "logging.conf"),
        dataset_dir=str(dataset_dir), output_dir=str(output_dir), **{**TINY, **overrides})


@pytest.fixture(scope="module")
def brain_dataset(tmp_path_factory, brats_flair, brats_t1):
    folder = tmp_path_factory.mktemp("ae") / "dataset"
    prepare_dataset([brats_t1, brats_flair], folder, parse_task("sr4"), selection=SliceSelection(size=(64, 64), every=6),
                    split_rule=SplitRule(val_fraction=0, test_fraction=0, val_subjects=("*t2f",)), progress=False)
    return folder


@pytest.mark.slow
@pytest.mark.shared_data
def test_trains_exports_and_resumes(brain_dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_bundle(brain_dataset, run_dir, max_iterations=20)
    train = read_log(run_dir / "train_log.csv")
    val = read_log(run_dir / "val_log.csv")
    assert [r["iteration"] for r in train] == [10, 20]
    assert [r["iteration"] for r in val] == [10, 20]
    assert train[-1]["l1"] < train[0]["l1"]  # it learns
    assert {"last.pt", "best.pt"} <= {p.name for p in (run_dir / "checkpoints").iterdir()}
    # the exported model is a monai: autoencoder with its latent statistics, best validation weights
    model = run_dir / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["network_args"]["latent_channels"] == 1
    assert config["metadata"]["best_val_psnr"] == pytest.approx(max(r["val_psnr"] for r in val), abs=1e-4)
    autoencoder = load_autoencoder(f"monai:{model}")
    assert autoencoder.normalised and autoencoder.downsampling_factor == 4
    from LatentSRLib.data.dataset import PreparedDataset

    slices = torch.from_numpy(np.array(PreparedDataset(brain_dataset).hr[:4]))[:, None]
    assert autoencoder.encode(slices).shape == (4, 1, 16, 16)
    assert autoencoder.reconstruct(slices).shape == slices.shape

    # resume: a second run with a larger budget continues from iteration 20, not from 0
    before = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert before["trainer"]["iteration"] == 20
    run_bundle(brain_dataset, run_dir, max_iterations=30)
    train = read_log(run_dir / "train_log.csv")
    assert [r["iteration"] for r in train] == [10, 20, 30]
    assert train[-1]["seconds"] >= train[1]["seconds"]  # the wall clock continues too
    after = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert after["trainer"]["iteration"] == 30
    assert after["optimizer"]["state"][0]["step"] == 30  # Adam's state was restored, not restarted

    # a stopped run's model folder can be written from its checkpoints without training
    import shutil

    shutil.rmtree(model)
    run_bundle(brain_dataset, run_dir, run_id="export_autoencoder", max_iterations=30)
    exported = json.loads((model / "config.json").read_text())["metadata"]
    assert exported["iterations"] == 30 and exported["weights"].startswith("best validation checkpoint")
    assert (model / "latent_stats.json").is_file()

    # fine-tuning: init_from starts a new run from a trained model's architecture and weights
    tuned_dir = tmp_path / "tuned"
    run_bundle(brain_dataset, tuned_dir, max_iterations=10, init_from=f"monai:{model}", width=16)
    tuned = json.loads((tuned_dir / "model" / "config.json").read_text())
    assert tuned["network_args"] == config["network_args"]  # the trained model's, not width 16
    assert tuned["metadata"]["training"]["init_from"] == f"monai:{model}"
    assert read_log(tuned_dir / "train_log.csv")[0]["l1"] < train[0]["l1"]  # it starts where the first run got to


@pytest.mark.shared_data
def test_refuses_a_missing_or_unsplit_dataset(brain_dataset, tmp_path, brats_flair):
    with pytest.raises(Exception) as info:
        run_bundle(tmp_path / "nowhere", tmp_path / "run", max_iterations=10)
    assert isinstance(info.value.__cause__, InputError) and "nowhere" in str(info.value.__cause__)
    single = tmp_path / "single"
    prepare_dataset([brats_flair], single, parse_task("sr4"), selection=SliceSelection(size=(64, 64), every=20),
                    split_rule=SplitRule(val_fraction=0, test_fraction=0), progress=False)
    with pytest.raises(Exception) as info:
        run_bundle(single, tmp_path / "run2", max_iterations=10)
    assert "no 'val' slices" in str(info.value.__cause__)
