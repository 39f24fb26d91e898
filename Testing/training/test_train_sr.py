"""The bundle's ``training`` entry: a tiny latent-diffusion SR model trained in-process on real slices,
resumed bit-for-bit, exported as a model folder, and run under DDP with two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from LatentSRLib.autoencoders.monai_kl import save_monai_autoencoder
from LatentSRLib.data.slice_source import SliceSelection
from LatentSRLib.model.folder import load_sr_model
from LatentSRLib.model.sampling import SamplingSettings
from LatentSRLib.transforms.tasks import parse_task
from LatentSRLib.training.autoencoder import autoencoder_config, build_autoencoder
from LatentSRLib.data.dataset import PreparedDataset, SplitRule, prepare_dataset
from LatentSRLib.training.logs import read_log

CONFIGS = REPO_ROOT / "Training" / "configs"
BATCH = 4
TINY = {"preset": "tiny", "batch_size": BATCH, "learning_rate": 2e-3, "val_images": 4, "val_steps": 4,
        "num_workers": 0, "log_interval": 1, "ema_decay": 0.9, "cache_batch_size": 8}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, brats_flair, brats_t1):
    root = tmp_path_factory.mktemp("sr")
    dataset = prepare_dataset([brats_t1, brats_flair], root / "dataset", parse_task("sr4"),
                              selection=SliceSelection(size=(64, 64), every=6),
                              split_rule=SplitRule(val_fraction=0, test_fraction=0, val_subjects=("*t2f",)),
                              progress=False)
    torch.manual_seed(0)
    config = autoencoder_config(downsampling=4, latent_channels=2, width=8)
    save_monai_autoencoder(build_autoencoder(config), root / "vae", config)
    steps_per_epoch = len(dataset.indices("train")) // BATCH
    return {"dataset": dataset.folder, "vae": f"monai:{root / 'vae'}", "epoch": steps_per_epoch, "root": root}


def run_training(workspace, output_dir, run_id="training", **overrides):
    from monai.bundle import run

    run(run_id, meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "train.yaml"),
        logging_file=str(CONFIGS / "logging.conf"), dataset_dir=str(workspace["dataset"]), vae=workspace["vae"],
        output_dir=str(output_dir), **{**TINY, **overrides})


@pytest.mark.slow
@pytest.mark.shared_data
def test_loss_falls_and_model_folder_works(workspace, tmp_path):
    epoch = workspace["epoch"]
    run_dir = tmp_path / "run"
    run_training(workspace, run_dir, max_iterations=4 * epoch, val_interval=2 * epoch, checkpoint_interval=epoch)
    losses = [r["loss"] for r in read_log(run_dir / "train_log.csv")]
    assert len(losses) == 4 * epoch
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # it learns
    val = read_log(run_dir / "val_log.csv")
    assert [r["iteration"] for r in val] == [2 * epoch, 4 * epoch]
    # the LR baseline is scored against the true HR as well, and it is the same at every validation
    assert val[0]["val_lr_psnr"] == pytest.approx(val[1]["val_lr_psnr"]) and val[0]["val_lr_psnr"] > 20

    model = load_sr_model(run_dir / "model")
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["task"]["name"] == "sr4" and config["denoiser"]["preset"] == "tiny"
    assert config["objective"]["prediction"] == "x0" and config["objective"]["schedule"]["kind"] == "cosine"
    assert config["autoencoder"]["spec"].startswith("monai:/") and config["grid"]["size"] == [64, 64]
    assert "ema" in config["training"]["weights"]
    lr = torch.from_numpy(np.array(PreparedDataset(workspace["dataset"]).lr[:2]))[:, None]
    sr = model.super_resolve(lr, settings=SamplingSettings(steps=3)).mean
    assert sr.shape == lr.shape and 0 <= float(sr.min()) and float(sr.max()) <= 1
    # the latent cache was built once, beside the dataset
    assert len(list((workspace["dataset"] / "latents").iterdir())) == 1


@pytest.mark.shared_data
def test_pixel_loss_trains_through_the_frozen_decoder(workspace, tmp_path):
    """``--pixel_loss_weight``: the loss adds L1 between the decoded x0 estimate and the true HR slice,
    recomputed here by hand from the same noise draw; the gradient reaches the denoiser and never the
    frozen autoencoder; the bundle logs the term and records the weight in the model."""
    from types import SimpleNamespace

    from LatentSRLib.training.sr import SRTrainStep, latent_dataset, make_denoiser, sr_setup

    setup = sr_setup(workspace["dataset"], workspace["vae"], batch_size=8)
    items = [latent_dataset(setup, "train", hr_images=True)[i] for i in range(BATCH)]
    batch = {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in ("hr_latent", "lr_latent", "hr", "lr")}
    assert batch["hr"].shape[1:] == (1, 64, 64)
    torch.manual_seed(1)
    network = make_denoiser("tiny", setup)
    objective = {"kind": "ddpm", "prediction": "x0", "loss": "l1", "min_snr_gamma": None,
                 "schedule": {"kind": "cosine", "num_train_timesteps": 1000}}
    before = [p.detach().clone() for p in setup.autoencoder.parameters()]
    weights = [p.detach().clone() for p in network.parameters()]
    engine = SimpleNamespace(state=SimpleNamespace(device=torch.device("cpu")), network=network, amp=False,
                             scaler=None, optimizer=torch.optim.SGD(network.parameters(), lr=0.0))
    step = SRTrainStep(objective, autoencoder=setup.autoencoder, pixel_weight=2.0)
    torch.manual_seed(7)
    out = step(engine, batch)
    # the same draw by hand: the objective's latent loss and x0 estimate, decoded, against HR
    torch.manual_seed(7)
    with torch.no_grad():
        latent, x0_hat = step.objective.training_loss(network, batch["hr_latent"], batch["lr_latent"], return_x0=True)
        pixel = (setup.autoencoder.decode(x0_hat.float()) - batch["hr"]).abs().mean()
    assert out["pixel_loss"] == pytest.approx(float(pixel), rel=1e-5)
    assert out["loss"] == pytest.approx(float(latent) + 2.0 * float(pixel), rel=1e-5)
    whole_pixel = float(pixel)  # the whole latent decoded, this draw (seed 7): reused for latent_weight below
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in network.parameters())
    assert all(p.grad is None for p in setup.autoencoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, setup.autoencoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(weights, network.parameters()))  # lr 0: nothing moved
    # pixel_crop: one random 4 x 4 latent square scored against the HR pixels it covers (4x factor here),
    # decoded with 4 latent pixels of context on each side: the same pixels as cut from a 12 x 12 decode
    cropped = SRTrainStep(objective, autoencoder=setup.autoencoder, pixel_weight=2.0, pixel_crop=4)
    torch.manual_seed(9)
    out = cropped(engine, batch)
    torch.manual_seed(9)
    with torch.no_grad():
        latent, x0_hat = step.objective.training_loss(network, batch["hr_latent"], batch["lr_latent"], return_x0=True)
        top, left = int(torch.randint(0, 16 - 4 + 1, ())), int(torch.randint(0, 16 - 4 + 1, ()))
        top0, left0 = max(top - 4, 0), max(left - 4, 0)
        window = setup.autoencoder.decode(x0_hat[..., top0:min(top + 8, 16), left0:min(left + 8, 16)].float())
        decoded = window[..., 4 * (top - top0):4 * (top - top0) + 16, 4 * (left - left0):4 * (left - left0) + 16]
        pixel = (decoded - batch["hr"][..., 4 * top:4 * top + 16, 4 * left:4 * left + 16]).abs().mean()
        alone = setup.autoencoder.decode(x0_hat[..., top:top + 4, left:left + 4].float())  # the crop without context
    assert decoded.shape[-2:] == (16, 16) and out["pixel_loss"] == pytest.approx(float(pixel), rel=1e-5)
    assert not torch.allclose(alone, decoded, atol=1e-4)  # the context changes what the crop decodes to
    # latent_weight scales the objective's latent loss; 0 leaves the pixel loss alone (and needs one)
    weighted = SRTrainStep(objective, autoencoder=setup.autoencoder, pixel_weight=2.0, latent_weight=0.0)
    torch.manual_seed(7)  # the first check's draw; lr 0 left the network as it was
    out = weighted(engine, batch)
    assert out["loss"] == pytest.approx(2.0 * whole_pixel, rel=1e-5)
    with pytest.raises(ValueError, match="0 only with a pixel loss"):
        SRTrainStep(objective, latent_weight=0.0)
    with pytest.raises(ValueError, match="x0 or v"):
        SRTrainStep({**objective, "prediction": "epsilon"}, autoencoder=setup.autoencoder, pixel_weight=1.0)
    # lr_residual decoding: the pixel loss scores LR + decode(x0 estimate) - decode(LR latent), the image
    # sampling will make from that latent (recomputed by hand from the same draw)
    residual = SRTrainStep(objective, autoencoder=setup.autoencoder, pixel_weight=2.0, decoding="lr_residual")
    torch.manual_seed(7)
    out = residual(engine, batch)
    torch.manual_seed(7)
    with torch.no_grad():
        latent, x0_hat = step.objective.training_loss(network, batch["hr_latent"], batch["lr_latent"], return_x0=True)
        image = batch["lr"] + setup.autoencoder.decode(x0_hat.float()) - setup.autoencoder.decode(batch["lr_latent"])
        pixel = (image - batch["hr"]).abs().mean()
    assert out["pixel_loss"] == pytest.approx(float(pixel), rel=1e-5) and abs(float(pixel) - whole_pixel) > 1e-4
    assert all(p.grad is None for p in setup.autoencoder.parameters())
    # through the bundle: the term is logged, the weight and the decoding recorded, and the exported
    # model samples with the decoding it was trained with
    run_dir = tmp_path / "pixel"
    run_training(workspace, run_dir, max_iterations=2, val_interval=2, checkpoint_interval=2, pixel_loss_weight=1.0,
                 decoding="lr_residual")
    assert all("pixel_loss" in row for row in read_log(run_dir / "train_log.csv"))
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["training"]["pixel_loss_weight"] == 1.0 and config["decoding"] == "lr_residual"


@pytest.mark.slow
@pytest.mark.shared_data
def test_resume_after_a_stop_gives_the_same_model(workspace, tmp_path):
    epoch = workspace["epoch"]
    common = {"val_interval": 100 * epoch, "checkpoint_interval": epoch}
    run_training(workspace, tmp_path / "straight", max_iterations=2 * epoch, **common)
    run_training(workspace, tmp_path / "stopped", max_iterations=epoch, **common)
    stopped = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert stopped["trainer"]["iteration"] == epoch
    run_training(workspace, tmp_path / "stopped", max_iterations=2 * epoch, **common)  # resumes
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert b["trainer"]["iteration"] == 2 * epoch
    for key in ("network", "ema"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=0, atol=0, msg=f"{key}.{name} differs")
    losses_a = [r["loss"] for r in read_log(tmp_path / "straight" / "train_log.csv")]
    losses_b = [r["loss"] for r in read_log(tmp_path / "stopped" / "train_log.csv")]
    assert losses_a == losses_b


@pytest.mark.slow
@pytest.mark.shared_data
def test_a_time_budget_stops_validates_and_exports(workspace, tmp_path):
    # a lent GPU gives a command minutes, not iterations: the run stops at its budget as if it had reached
    # max_iterations, after validating the weights it stopped with, and exports the model
    run_dir = tmp_path / "run"
    run_training(workspace, run_dir, max_iterations=500, val_interval=100, checkpoint_interval=100,
                 time_limit_minutes=1e-5)
    losses = read_log(run_dir / "train_log.csv")
    val = read_log(run_dir / "val_log.csv")
    assert 1 <= len(losses) < 100
    assert [r["iteration"] for r in val] == [losses[-1]["iteration"]]  # the stopping weights were scored
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["training"]["iterations"] == len(losses)

    # a stopped run's model folder can be written again from its checkpoints without training (`run export`)
    import shutil

    shutil.rmtree(run_dir / "model")
    run_training(workspace, run_dir, run_id="export", max_iterations=500, val_interval=100, checkpoint_interval=100)
    exported = json.loads((run_dir / "model" / "config.json").read_text())
    assert exported["training"]["iterations"] == len(losses)  # from last.pt
    assert exported["training"]["weights"] == config["training"]["weights"]  # the same best checkpoint
    assert len(read_log(run_dir / "train_log.csv")) == len(losses)  # nothing was trained


@pytest.mark.shared_data
def test_ddp_with_two_cpu_processes(workspace, tmp_path):
    epoch = workspace["epoch"]
    run_dir = tmp_path / "ddp"
    iterations = max(2, epoch // 2)  # each process sees half of every epoch
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training",
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--config_file", f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'multi_gpu_train.yaml'}']",
        "--logging_file", str(CONFIGS / "logging.conf"),
        "--dataset_dir", str(workspace["dataset"]), "--vae", workspace["vae"], "--output_dir", str(run_dir),
        "--max_iterations", str(2 * iterations), "--val_interval", str(iterations),
        "--checkpoint_interval", str(iterations),
        "--time_limit_minutes", "60",  # the ranks share rank 0's clock every iteration (a budget not reached here)
        *[item for key, value in TINY.items() for item in (f"--{key}", str(value))],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'Testing'}"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    train = read_log(run_dir / "train_log.csv")  # written by rank 0 only: one row per iteration
    assert [r["iteration"] for r in train] == list(range(1, 2 * iterations + 1))
    assert [r["iteration"] for r in read_log(run_dir / "val_log.csv")] == [iterations, 2 * iterations]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state["network"])  # saved unwrapped
    assert load_sr_model(run_dir / "model").denoiser is not None


def test_warmup_ramps_the_learning_rate_from_the_trainers_iteration():
    """``--warmup_iterations N``: the step sets lr = base * min(1, iteration / N) before each update,
    from the engine's own iteration count (a resumed run continues the ramp)."""
    from types import SimpleNamespace

    from LatentSRLib.diffusion import build_denoiser
    from LatentSRLib.training.sr import SRTrainStep

    torch.manual_seed(0)
    network = build_denoiser("tiny", 4, condition_skip=True)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    engine = SimpleNamespace(state=SimpleNamespace(device=torch.device("cpu"), iteration=0), network=network,
                             amp=False, scaler=None, optimizer=optimizer)
    objective = {"kind": "ddpm", "prediction": "x0", "loss": "l1", "min_snr_gamma": None,
                 "schedule": {"kind": "cosine", "num_train_timesteps": 1000}}
    step = SRTrainStep(objective, warmup_iterations=10, ema=None)
    batch = {"hr_latent": torch.randn(2, 4, 16, 16), "lr_latent": torch.randn(2, 4, 16, 16)}
    seen = []
    for iteration in (1, 5, 10, 30):
        engine.state.iteration = iteration
        step(engine, batch)
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3])
    with pytest.raises(ValueError, match="warmup_iterations"):
        SRTrainStep(objective, warmup_iterations=-1)
