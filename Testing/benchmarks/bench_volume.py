"""Benchmark the volume SR engine against a naive one-slice-at-a-time loop (the paper's code path).

    .venv/bin/python Testing/benchmarks/bench_volume.py [--model MODEL_FOLDER | --preset small]
        [--slices 32] [--size 256] [--steps 16] [--device auto] [--batch-size N]

Without ``--model`` an untrained model of the chosen preset is built in a temporary folder (speed
does not depend on the weights) with a MONAI autoencoder like MedVAE's 4x/3-channel one. Both paths
run in this process on the same volume, model, steps and device, and the script prints slices/s of
each, their ratio, and peak memory. On a GPU it also times a 155-slice volume at 16 and 100 steps.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from LatentSRLib.autoencoders import load_autoencoder  # noqa: E402
from LatentSRLib.autoencoders.latent_stats import LatentStats  # noqa: E402
from LatentSRLib.autoencoders.monai_kl import save_monai_autoencoder  # noqa: E402
from LatentSRLib.diffusion import DDPMObjective, build_denoiser, count_parameters  # noqa: E402
from LatentSRLib.inference import SRSettings, super_resolve_volume  # noqa: E402
from LatentSRLib.model.devices import resolve_device  # noqa: E402
from LatentSRLib.model.sampling import SamplingSettings, sample_sr  # noqa: E402
from LatentSRLib.io import MedicalImage  # noqa: E402
from LatentSRLib.model.folder import SRModel, load_sr_model, save_sr_model  # noqa: E402
from LatentSRLib.transforms.tasks import parse_task  # noqa: E402
from LatentSRLib.training.autoencoder import autoencoder_config, build_autoencoder  # noqa: E402
from LatentSRLib.autoencoders import weights_fingerprint  # noqa: E402


def untrained_model(folder: Path, preset: str, size: int) -> Path:
    config = autoencoder_config(downsampling=4, latent_channels=3, width=64, num_res_blocks=2)
    save_monai_autoencoder(build_autoencoder(config), folder / "vae", config)
    autoencoder = load_autoencoder(f"monai:{folder / 'vae'}", latent_stats=None)
    stats = LatentStats(shift=(0.0,) * 3, scale=(1.0,) * 3)
    save_sr_model(folder / "model", build_denoiser(preset, 3), objective=DDPMObjective().to_dict(),
                  autoencoder={"spec": f"monai:{folder / 'vae'}", "name": "vae",
                               "weights_sha256": weights_fingerprint(autoencoder), "latent_channels": 3,
                               "downsampling_factor": 4},
                  latent_stats=stats, task=parse_task("sr4").to_dict(),
                  grid={"size": [size, size], "fit": "pad"}, sampling={"sampler": "ddim", "steps": 16})
    return folder / "model"


@torch.inference_mode()
def naive_loop(model: SRModel, slices: np.ndarray, steps: int, device: torch.device) -> None:
    """One slice at a time, float32, no batching: what the paper's inference script does."""
    for index in range(len(slices)):
        lr = torch.from_numpy(slices[index])[None, None].to(device)
        sample_sr(model, lr, [index], SamplingSettings(steps=steps))


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU, peak allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process, peak resident)"


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a trained model folder (default: an untrained --preset)")
    parser.add_argument("--preset", default="small", help="denoiser preset when no --model (default small)")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=256, help="model grid for an untrained model")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else untrained_model(Path(tmp), args.preset, args.size)
        model = load_sr_model(folder, device=device)
        size = model.config["grid"]["size"]
        rng = np.random.default_rng(0)
        volume = MedicalImage(rng.random((args.slices, *size), dtype=np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
        slices = volume.array
        print(f"device {device}; denoiser {model.config['denoiser']['preset']} "
              f"({count_parameters(model.denoiser) / 1e6:.1f}M parameters); grid {size[0]}x{size[1]}; "
              f"{args.slices} slices; {args.steps} steps; torch {torch.__version__}, {torch.get_num_threads()} threads")

        naive_loop(model, slices[:1], 1, device)  # warm-up (kernels, allocator)
        synchronise(device)
        started = time.perf_counter()
        naive_loop(model, slices, args.steps, device)
        synchronise(device)
        naive = time.perf_counter() - started

        settings = SRSettings(steps=args.steps, batch_size=args.batch_size)
        started = time.perf_counter()
        result = super_resolve_volume(model, volume, settings=settings, same_grid=True, device=device)
        synchronise(device)
        engine = time.perf_counter() - started
        print(f"naive loop : {args.slices / naive:8.2f} slices/s  ({naive:.2f} s)")
        print(f"engine     : {args.slices / engine:8.2f} slices/s  ({engine:.2f} s, batch {result.metrics['batch_size']}, "
              "including windowing, resampling and the consistency map)")
        print(f"ratio      : {naive / engine:8.2f}x")
        print(f"peak memory: {peak_memory(device)}")

        if device.type == "cuda":
            full = MedicalImage(rng.random((155, *size), dtype=np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
            for steps in (16, 100):
                synchronise(device)
                started = time.perf_counter()
                super_resolve_volume(model, full, settings=SRSettings(steps=steps, batch_size=args.batch_size),
                                     same_grid=True, device=device)
                synchronise(device)
                print(f"155-slice volume, {steps:3d} steps: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
