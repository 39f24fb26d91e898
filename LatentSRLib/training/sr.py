"""Training a latent-diffusion SR model: the pieces the bundle's ``training`` entry wires into MONAI engines.

* :func:`sr_setup`: load the autoencoder, fix its latent statistics (estimated on the training
  split when it has none), and build or open the latent cache;
* :class:`LoadLatentsd`: cached HR/LR latents of a row as ``(C, h, w)`` tensors;
* :class:`SRTrainStep`: one optimisation step of the objective (mixed precision on GPU, gradient
  clipping, EMA update);
* :class:`SREvalStep`: validation by sampling from the LR latent and decoding, scored against the
  TRUE high-resolution slice (rule 1), never against a VAE reconstruction;
* :class:`ExportSRModel`: at the end, the best (EMA) weights become a model folder (:mod:`LatentSRLib.model.folder`).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from torch import nn

from LatentSRLib.autoencoders import load_autoencoder
from LatentSRLib.autoencoders.base import Autoencoder
from LatentSRLib.autoencoders.latent_stats import LatentStats
from LatentSRLib.diffusion import ConditionalDenoiser, build_denoiser, objective_from_dict
from LatentSRLib.errors import InputError
from LatentSRLib.model.folder import SRModel, save_sr_model
from LatentSRLib.model.sampling import SamplingSettings, check_decoding, lr_offset, sample_sr
from LatentSRLib.transforms.consistency import data_consistent
from LatentSRLib.transforms.tasks import Task
from LatentSRLib.data.batches import LoadSlicesd
from LatentSRLib.training.runs import ExportOnCompletion
from LatentSRLib.training.checkpoints import BEST
from LatentSRLib.data.dataset import PreparedDataset
from LatentSRLib.autoencoders import weights_fingerprint
from LatentSRLib.data.latent_cache import LatentCache, build_latent_cache, open_latent_cache

__all__ = ["ExportSRModel", "LoadLatentsd", "SREvalStep", "SRSetup", "SRTrainStep", "latent_dataset", "sr_setup"]


@dataclass
class SRSetup:
    """What a training run works on: the dataset, the autoencoder (with statistics) and its cache."""

    dataset: PreparedDataset
    autoencoder: Autoencoder
    cache: LatentCache

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.latent_channels


def sr_setup(dataset_dir: str | os.PathLike, vae: str, *, device: str | torch.device = "cpu",
             stats_images: int = 500, batch_size: int = 16, rank: int = 0) -> SRSetup:
    """Load ``vae`` and make sure its latent cache for ``dataset_dir`` exists.

    Latent statistics: those stored beside the autoencoder when it has them, otherwise estimated
    on up to ``stats_images`` training slices (then kept with the cache and the trained model).
    In a multi-process run, rank 0 builds the cache and the others wait for it.
    """
    if not vae:
        raise InputError("no autoencoder: pass --vae SPEC (e.g. monai:runs/brain-ae/model, medvae:medvae_4_3_2d)")
    dataset = PreparedDataset(dataset_dir)
    autoencoder = load_autoencoder(vae, device=device, dtype=torch.float32)
    autoencoder.deterministic = True
    if autoencoder.latent_stats is None:
        rows = dataset.indices("train")
        autoencoder.latent_stats = LatentStats.estimate(
            autoencoder, (np.array(dataset.hr[r]) for r in rows), max_images=stats_images, batch_size=batch_size,
            preprocessing={"dataset": str(dataset.folder.resolve()), "split": "train", **dataset.info["selection"]})
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank == 0:
        cache = build_latent_cache(dataset, autoencoder, batch_size=batch_size)
    if distributed:
        torch.distributed.barrier()
    if rank != 0:
        cache = open_latent_cache(dataset, autoencoder)
    return SRSetup(dataset, autoencoder, cache)


class LoadLatentsd(MapTransform):
    """Add ``"hr_latent"`` / ``"lr_latent"``: ``(C, h, w)`` float32 rows of the latent cache.

    The arrays are memory-mapped lazily in each process (like :class:`~.batches.LoadSlicesd`), so
    ``DataLoader`` workers started with ``spawn`` do not receive a pickled copy of the cache.
    """

    def __init__(self, cache: LatentCache, keys: KeysCollection = ("hr_latent", "lr_latent")) -> None:
        super().__init__(keys)
        self.folder = cache.folder
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        row = int(out["row"])
        for key in self.keys:
            name = "hr" if key == "hr_latent" else "lr"
            if name not in self._arrays:
                self._arrays[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r")
            out[key] = torch.from_numpy(np.array(self._arrays[name][row], dtype=np.float32))
        return out


def latent_dataset(setup: SRSetup, split: str, *, limit: int | None = None, with_images: bool = False,
                   hr_images: bool = False):
    """MONAI ``Dataset`` of a split: cached latents, plus the true HR and the LR slices when
    ``with_images`` (validation scores decoded samples against the true HR), or both latents and the
    true HR and LR slices when ``hr_images`` (training with a pixel loss; the LR for ``lr_residual``
    decoding)."""
    from monai.data import Dataset
    from monai.transforms import Compose

    items = setup.dataset.items(split, limit=limit)
    if not items:
        raise InputError(f"the {split!r} split is empty", setup.dataset.folder)
    chain: list = [LoadLatentsd(setup.cache, ("lr_latent",) if with_images else ("hr_latent", "lr_latent"))]
    if with_images:
        chain.append(LoadSlicesd(setup.dataset, ("hr", "lr")))
    elif hr_images:
        chain.append(LoadSlicesd(setup.dataset, ("hr", "lr")))
    return Dataset(items, transform=Compose(chain))


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


def make_denoiser(preset: str, setup: SRSetup, *, condition_skip: bool = False,
                  objective: Mapping[str, Any] | None = None, **overrides: Any) -> ConditionalDenoiser:
    """The denoiser for ``setup``'s latents; a ``condition_skip`` needs an x0-predicting ``objective``."""
    if condition_skip and objective is not None and not (
            objective.get("kind", "ddpm") == "ddpm" and objective.get("prediction", "epsilon") == "x0"):
        raise ValueError("condition_skip adds the LR latent to the network output, which is meaningful only "
                         f"when the network predicts the clean latent (ddpm, prediction x0), not {dict(objective)}")
    return build_denoiser(preset, setup.latent_channels, condition_skip=condition_skip, **overrides)


def ema_decay_at(decay: float, updates: int) -> float:
    """The EMA decay used for update number ``updates`` (0-based): ``min(decay, (1 + n) / (10 + n))``.

    The warm-up keeps a short run's average from being mostly the random initial weights: with a
    fixed 0.999, 400 updates still leave 67% of the weight on initialisation.
    """
    return min(float(decay), (1.0 + updates) / (10.0 + updates))


def make_ema(network: nn.Module, decay: float) -> nn.Module | None:
    """An exponential moving average of ``network``'s weights with a warm-up (:func:`ema_decay_at`);
    ``None`` when ``decay`` is 0. The update count lives in the averaged model's state, so a resumed
    run continues the same schedule."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def warmed_up_ema(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        weight = 1.0 - ema_decay_at(decay, int(updates))
        torch._foreach_lerp_(averaged, current, weight)

    return AveragedModel(_unwrap(network), multi_avg_fn=warmed_up_ema, use_buffers=True)


class SRTrainStep:
    """``iteration_update`` of a MONAI ``SupervisedTrainer`` training a :class:`ConditionalDenoiser`.

    The objective draws its timesteps and noise from torch's global generator, which the
    checkpoints save, so a resumed run continues the same random sequence.

    With ``pixel_weight > 0`` the loss also holds ``pixel_weight * L1(decode(x0_hat), HR)``: the
    network's estimate of the clean latent, decoded by the frozen ``autoencoder``, against the true
    HR slice (``batch["hr"]``, ``(B, 1, H, W)`` in [0, 1]). A latent-only loss lets the decoder turn
    small latent errors into sharp texture in the wrong place; this term trains for fidelity where the
    radiologist looks, in the image (the reference-models issue's probe: latent-only SR lost PSNR to
    bicubic). It needs an ``x0`` or ``v`` prediction: an epsilon network's x0 estimate at the noisy end
    of the schedule is amplified ~1e4-fold (see :meth:`DDPMObjective.predict_x0_and_eps`).
    ``pixel_crop`` (latent pixels) scores one random square of that size of the batch instead of the
    whole latent, the same for every item, decoded with as much context again on each side
    (:meth:`_pixel_window`): decoding costs more than the denoiser on a CPU.
    ``warmup_iterations``: the learning rate rises linearly to its set value over that many iterations.
    Adam moves every weight by about the learning rate from the first step, so the zero-initialised
    output layer of a ``condition_skip`` network leaves the identity at once: on chest tiles in TAEF2's
    space the decoded x0 estimate's L1 was 0.035 after 10 iterations at 2e-4, against 0.008-0.013 for
    the LR latent itself. ``latent_weight`` scales the objective's own latent loss (0: the pixel loss alone). In a rich
    latent space the two disagree: on chest radiograph tiles in TAEF2's 32-channel space the LR latent
    itself has latent L1 0.64 to the HR latent and decodes at 36.0 dB, while a denoiser trained with
    the latent loss reached latent L1 0.54 and decoded at 31.0 dB (it learns the HR latents' per-channel
    texture statistics, which decode as texture in the wrong places).
    ``decoding``: how the model's latents become images (:data:`~LatentSRLib.model.sampling.DECODINGS`);
    with ``"lr_residual"`` the pixel loss scores the image sampling will make, LR + decode(x0 estimate) -
    decode(LR latent), so the network learns the detail the LR image lacks, not the autoencoder's error.
    Returns ``{"loss": float}`` (and ``"pixel_loss"`` with the pixel term).
    """

    def __init__(self, objective: Mapping[str, Any], *, ema: nn.Module | None = None,
                 grad_clip: float | None = 1.0, autoencoder: Autoencoder | None = None,
                 pixel_weight: float = 0.0, pixel_crop: int | None = None, latent_weight: float = 1.0,
                 warmup_iterations: int = 0, decoding: str = "latent") -> None:
        self.objective = objective_from_dict(objective)
        self.decoding = check_decoding(decoding)
        self.warmup_iterations = int(warmup_iterations)
        if self.warmup_iterations < 0:
            raise ValueError(f"warmup_iterations must be >= 0, got {warmup_iterations}")
        self.latent_weight = float(latent_weight)
        if self.latent_weight < 0 or (self.latent_weight == 0 and not pixel_weight > 0):
            raise ValueError(f"the latent loss weight must be >= 0, and 0 only with a pixel loss (got {latent_weight}, "
                             f"pixel weight {pixel_weight})")
        self.ema = ema
        self.grad_clip = grad_clip
        self.pixel_weight = float(pixel_weight)
        self.pixel_crop = int(pixel_crop) if pixel_crop else None
        self.autoencoder = autoencoder
        if self.pixel_weight > 0:
            if autoencoder is None:
                raise ValueError("a pixel loss needs the autoencoder that decodes the latents")
            if getattr(self.objective, "prediction", "x0") == "epsilon":
                raise ValueError("a pixel loss needs an x0 or v prediction objective, not epsilon")
            autoencoder.requires_grad_(False)  # frozen: the gradient flows through it, not into it
            autoencoder.eval()

    def __call__(self, engine, batch: Mapping[str, Any]) -> dict[str, Any]:
        device = engine.state.device
        x0 = batch["hr_latent"].to(device, non_blocking=True)
        condition = batch["lr_latent"].to(device, non_blocking=True)
        network = engine.network
        network.train()
        if self.warmup_iterations:
            # linear warm-up from the trainer's own iteration count, so a resumed run continues it
            ramp = min(1.0, engine.state.iteration / self.warmup_iterations)
            for group in engine.optimizer.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * ramp
        engine.optimizer.zero_grad(set_to_none=True)
        pixel = None
        with torch.autocast(device.type, enabled=bool(engine.amp)):
            if self.pixel_weight > 0:
                loss, x0_hat = self.objective.training_loss(network, x0, condition, return_x0=True)
                hr = batch["hr"].to(device, non_blocking=True).float()
                self.autoencoder.to(device)
                if self.decoding == "lr_residual":  # |decode(x0) + offset - hr| = |decode(x0) - (hr - offset)|
                    with torch.no_grad():
                        hr = hr - lr_offset(self.autoencoder, batch["lr"].to(device, non_blocking=True), condition)
                decoded, hr = self._pixel_window(x0_hat, hr)
                pixel = (decoded - hr).abs().mean()
                loss = self.latent_weight * loss + self.pixel_weight * pixel
            else:
                loss = self.objective.training_loss(network, x0, condition)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.scaler.unscale_(engine.optimizer)
        else:
            loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(network.parameters(), self.grad_clip)
        if engine.amp and engine.scaler is not None:
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            engine.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(_unwrap(network))
        out = {"loss": float(loss.detach())}
        if pixel is not None:
            out["pixel_loss"] = float(pixel.detach())
        return out


    def _pixel_window(self, latents: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoded x0 estimate and the HR pixels the pixel loss compares: all, or one random
        ``pixel_crop`` square, decoded with ``pixel_crop`` latent pixels of context on each side (as far as
        the latent goes) and cut out after decoding. A decoder's receptive field reaches far beyond a
        small crop: decoded alone, the crop has edge artefacts the whole latent does not (TAEF2 on chest
        tiles: L1 0.034 for 8 x 8 latent crops of the LR latent itself against 0.0089 for the whole tile),
        and the network learnt to correct those instead of the image."""
        h, w = latents.shape[-2:]
        crop = self.pixel_crop
        if crop is None or (crop >= h and crop >= w):
            return self.autoencoder.decode(latents.float()).float(), hr
        factor = hr.shape[-1] // w
        top = int(torch.randint(0, max(h - crop, 0) + 1, ()))
        left = int(torch.randint(0, max(w - crop, 0) + 1, ()))
        top0, left0 = max(top - crop, 0), max(left - crop, 0)
        bottom, right = min(top + 2 * crop, h), min(left + 2 * crop, w)
        decoded = self.autoencoder.decode(latents[..., top0:bottom, left0:right].float()).float()
        rows = slice((top - top0) * factor, (top - top0 + crop) * factor)
        cols = slice((left - left0) * factor, (left - left0 + crop) * factor)
        return (decoded[..., rows, cols],
                hr[..., top * factor:(top + crop) * factor, left * factor:(left + crop) * factor])


class SREvalStep:
    """``iteration_update`` of a MONAI ``SupervisedEvaluator``: sample, decode, compare with the true HR.

    Samples through the one sampling path (:func:`~LatentSRLib.model.sampling.sample_sr`) from the
    cached LR latents, with the EMA weights when given; each validation image's noise is seeded by
    ``seed`` and its id, so successive validations differ only by the weights. Returns ``{"pred": SR
    (B,1,H,W), "label": true HR, "lr": the LR input, "id": [...]}``, images in [0, 1]; with ``task``
    also ``"pred_dc"``, the SR after one data-consistency projection
    (:func:`~LatentSRLib.transforms.consistency.data_consistent`), what ``latentsr sr
    --data-consistency`` would output.
    """

    def __init__(self, objective: Mapping[str, Any], autoencoder: Autoencoder, *, steps: int = 20,
                 sampler: str | None = None, ema: nn.Module | None = None, seed: int = 0,
                 task: Task | None = None, decoding: str = "latent") -> None:
        self.objective = objective_from_dict(objective).to_dict()
        self.decoding = check_decoding(decoding)
        self.autoencoder = autoencoder
        self.task = task
        self.settings = SamplingSettings(steps=int(steps), sampler=sampler, samples=1, seed=int(seed))
        self.ema = ema

    @torch.no_grad()
    def __call__(self, engine, batch: Mapping[str, Any]) -> dict[str, Any]:
        device = engine.state.device
        network = self.ema.module if self.ema is not None else _unwrap(engine.network)
        self.autoencoder.to(device)
        model = SRModel(None, {"objective": self.objective, "task": self.task.to_dict() if self.task else None,
                               "decoding": self.decoding}, network, self.autoencoder)
        lr = batch["lr"].to(device)
        with torch.autocast(device.type, enabled=bool(engine.amp)):
            result = sample_sr(model, lr, list(batch["id"]), self.settings, condition=batch["lr_latent"].to(device))
        pred = result.mean.float().clamp(0, 1)
        out = {"pred": pred, "label": batch["hr"].to(device), "lr": lr, "id": batch.get("id")}
        if self.task is not None:
            out["pred_dc"] = data_consistent(pred, lr, self.task)
        return out


class ExportSRModel(ExportOnCompletion):
    """When training completes, write the model folder (best validation weights, EMA when kept).

    Args:
        network: the denoiser being trained (its config rebuilds the architecture).
        setup: dataset, autoencoder and cache of the run.
        objective: the objective's dict.
        folder: the model folder to write.
        checkpoint_dir: where ``best.pt`` may be.
        ema: the EMA model, whose weights are exported when present.
        sampling: default sampler and steps recorded for inference.
        training: hyper-parameters to record.
        rank: only rank 0 exports.
        decoding: how the model's latents become images, recorded in its config.
    """

    def __init__(self, network: nn.Module, setup: SRSetup, objective: Mapping[str, Any], folder: str | os.PathLike,
                 checkpoint_dir: str | os.PathLike, *, ema: nn.Module | None = None,
                 sampling: Mapping[str, Any] | None = None, training: Mapping[str, Any] | None = None,
                 rank: int = 0, decoding: str = "latent") -> None:
        self.network = network
        self.decoding = check_decoding(decoding)
        self.setup = setup
        self.objective = objective_from_dict(objective).to_dict()  # every field written out
        self.folder = Path(folder)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.ema = ema
        self.sampling = dict(sampling or {})
        self.training = dict(training or {})
        self.rank = int(rank)

    def _export(self, engine) -> Path:
        denoiser = ConditionalDenoiser.from_config(_unwrap(self.network).config)
        key = "ema" if self.ema is not None else "network"
        best = self.checkpoint_dir / BEST
        weights = "final"
        best_value = None
        if best.is_file():
            state = torch.load(best, map_location="cpu", weights_only=True)
            best_value = state.get("best_metric", {}).get("value")
            if key == "ema":
                ema = make_ema(denoiser, 0.999)
                ema.load_state_dict(state["ema"])
                denoiser.load_state_dict(ema.module.state_dict())
            else:
                denoiser.load_state_dict(state["network"])
            weights = f"best validation checkpoint (val_psnr = {best_value})"
        else:
            source = self.ema.module if self.ema is not None else _unwrap(self.network)
            denoiser.load_state_dict(source.state_dict())
        dataset, autoencoder = self.setup.dataset, self.setup.autoencoder
        info = dataset.info
        save_sr_model(
            self.folder,
            denoiser,
            objective=self.objective,
            autoencoder={"spec": _absolute_spec(autoencoder.spec), "name": autoencoder.name,
                         "weights_sha256": weights_fingerprint(autoencoder),
                         "latent_channels": autoencoder.latent_channels,
                         "downsampling_factor": autoencoder.downsampling_factor},
            latent_stats=autoencoder.latent_stats,
            task=info["task"],
            grid={**info["selection"], "planes": info["planes"], "lr_grid": info["lr_grid"],
                  "pixel_size_mm": info.get("pixel_size_mm")},
            sampling=self.sampling,
            decoding=self.decoding,
            data={"folder": str(dataset.folder.resolve()), "counts": info["counts"], "subjects": info["subjects"]},
            training={**self.training, "weights": f"{key} weights, {weights}", "best_val_psnr": best_value,
                      "iterations": self.trained_iterations(engine, self.checkpoint_dir)},
        )
        return self.folder


def _absolute_spec(spec: str) -> str:
    """``monai:runs/x`` -> ``monai:/abs/runs/x`` when the target is a local path (so the model
    folder works from any working directory); hub ids and model names are kept."""
    scheme, _, target = spec.partition(":")
    parts = [Path(p) for p in target.split(",")]
    if all(p.exists() for p in parts):
        return f"{scheme}:{','.join(str(p.resolve()) for p in parts)}"
    return spec
