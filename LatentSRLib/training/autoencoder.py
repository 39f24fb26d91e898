"""Training a domain autoencoder: a MONAI ``AutoencoderKL`` on prepared high-resolution slices, or
the domain adaptation of a pretrained tiny autoencoder (TAEF2 and the TAESD family, :mod:`.tiny_autoencoder`).

For users without a suitable pretrained medical VAE. The ``train_autoencoder`` entry of the bundle
(``Training/configs/train_autoencoder.yaml``) wires these pieces into MONAI engines:

* :func:`autoencoder_config` / :func:`build_autoencoder`: the network (4x or 8x, 1-4 latent channels),
  optionally started from a trained ``monai:<folder>`` autoencoder (:func:`pretrained_config`,
  fine-tuning to a new domain) or from pretrained ``tiny:`` weights (fine-tuned whole or decoder-only);
* :class:`AutoencoderLoss`: L1 + KL (+ optional perceptual) on ``[0, 1]`` images (no KL for a tiny
  autoencoder, which has no posterior);
* :class:`AutoencoderTrainStep`: the trainer's ``iteration_update`` (optional patch adversarial term,
  mixed precision on GPU, gradient clipping);
* :class:`AutoencoderEvalStep`: the evaluator's ``iteration_update`` (posterior-mean reconstruction);
* :class:`ExportAutoencoder`: at the end, the best weights become a ``monai:<folder>`` (or
  ``tiny:<folder>``) model with latent statistics estimated on training slices.

Batches are dicts with ``"hr"``: ``(B, 1, H, W)`` float32 in ``[0, 1]`` (:mod:`.batches`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from LatentSRLib.autoencoders.latent_stats import STATS_FILE_NAME, LatentStats
from LatentSRLib.autoencoders.monai_kl import load_monai_kl, save_monai_autoencoder
from LatentSRLib.autoencoders.spec import load_autoencoder
from LatentSRLib.data.batches import batch_to_device
from LatentSRLib.training.tiny_autoencoder import (
    TINY_KIND,
    TinyAutoencoderNetwork,
    build_tiny_network,
    export_tiny,
    is_tiny,
    tiny_config,
)
from LatentSRLib.training.logs import read_log
from LatentSRLib.training.runs import ExportOnCompletion
from LatentSRLib.training.checkpoints import BEST, LAST
from LatentSRLib.data.dataset import PreparedDataset

__all__ = [
    "AutoencoderEvalStep",
    "AutoencoderLoss",
    "AutoencoderTrainStep",
    "ExportAutoencoder",
    "autoencoder_config",
    "build_autoencoder",
    "pretrained_config",
]


def autoencoder_config(
    downsampling: int = 4,
    latent_channels: int = 4,
    width: int = 32,
    num_res_blocks: int = 1,
    attention: bool = False,
) -> dict[str, Any]:
    """Constructor arguments of a 2D MONAI ``AutoencoderKL`` for grayscale images.

    Args:
        downsampling: spatial factor, 4 or 8 (one encoder level per factor of 2).
        latent_channels: 1 to 4.
        width: channels of the first level; deeper levels double it, capped at 4x.
        num_res_blocks: residual blocks per level.
        attention: self-attention in the bottleneck (costly at 256x256 on a CPU).
    """
    if downsampling not in (4, 8):
        raise ValueError(f"downsampling must be 4 or 8, got {downsampling}")
    if not 1 <= latent_channels <= 4:
        raise ValueError(f"latent_channels must be 1 to 4, got {latent_channels}")
    if width < 8 or width % 8:
        raise ValueError(f"width must be a multiple of 8, got {width}")
    levels = int(math.log2(downsampling)) + 1
    return {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 1,
        "latent_channels": int(latent_channels),
        "channels": [int(width * min(2**i, 4)) for i in range(levels)],
        "num_res_blocks": [int(num_res_blocks)] * levels,
        "norm_num_groups": min(32, width // 2),
        "attention_levels": [False] * levels,
        "with_encoder_nonlocal_attn": bool(attention),
        "with_decoder_nonlocal_attn": bool(attention),
    }


def _trained(folder: str | os.PathLike):
    """The trained autoencoder in ``folder`` (``monai:<folder>`` or a path)."""
    path = str(folder).removeprefix("monai:")
    return load_monai_kl(f"monai:{path}", path)


def pretrained_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The constructor arguments of the trained autoencoder in ``folder`` (``monai:<folder>`` or a
    path), to fine-tune it: its architecture replaces the one the size arguments would give.
    For ``tiny:<weights>`` (TAEF2, the TAESD family): :func:`~.tiny_autoencoder.tiny_config`."""
    if is_tiny(folder):
        return tiny_config(str(folder))
    return dict(_trained(folder).info["network_args"])


def build_autoencoder(config: Mapping[str, Any], weights_from: str | os.PathLike | None = None,
                      train_encoder: bool = True) -> nn.Module:
    """A MONAI ``AutoencoderKL`` built from ``config``; with ``weights_from`` (a trained
    ``monai:<folder>`` of the same architecture) it starts from that model's weights.

    A tiny config (:func:`pretrained_config` of ``tiny:...``) gives a
    :class:`~.tiny_autoencoder.TinyAutoencoderNetwork` holding the pretrained weights;
    ``train_encoder=False`` freezes its encoder (decoder-only fine-tuning).
    """
    if config.get("kind") == TINY_KIND:
        return build_tiny_network(config, train_encoder=train_encoder)
    if not train_encoder:
        raise ValueError("train_encoder: false (decoder-only fine-tuning) is for init_from tiny:... autoencoders")
    from monai.networks.nets import AutoencoderKL

    network = AutoencoderKL(**dict(config))
    if weights_from is not None:
        try:
            network.load_state_dict(_trained(weights_from).network.state_dict(), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{weights_from}: its weights do not fit the configured network ({str(exc).splitlines()[0]}); "
                             "leave the size arguments to init_from") from None
    return network


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent elements, averaged over the batch."""
    var = z_sigma.float().pow(2).clamp_min(1e-12)
    kl = 0.5 * (z_mu.float().pow(2) + var - var.log() - 1.0)
    return kl.flatten(1).sum(1).mean()


class AutoencoderLoss(nn.Module):
    """``l1 + kl_weight * KL + perceptual_weight * perceptual`` on ``[0, 1]`` images (no KL term
    when called without a posterior, as for a tiny autoencoder).

    Args:
        kl_weight: weight of the KL term (small: the latent must stay informative; 1e-6 as in
            MONAI's and Stable Diffusion's autoencoder recipes).
        perceptual_weight: weight of a perceptual distance (0 disables it).
        perceptual_network: ``"stlpips"`` (offline: the shift-tolerant LPIPS AlexNet bundled by
            ``stlpips-pytorch``) or a MONAI ``PerceptualLoss`` network type (``"alex"``, ``"vgg"``,
            ``"squeeze"``, ``"radimagenet_resnet50"``...), whose weights download on first use.
    """

    def __init__(self, kl_weight: float = 1e-6, perceptual_weight: float = 0.0,
                 perceptual_network: str = "stlpips") -> None:
        super().__init__()
        self.kl_weight = float(kl_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual_network = perceptual_network
        self.perceptual: nn.Module | None = None
        if self.perceptual_weight > 0:
            self.perceptual = _perceptual_module(perceptual_network)
            logging.getLogger(__name__).info("perceptual term: %s x %s", self.perceptual_weight, self.perceptual_label)

    @property
    def perceptual_label(self) -> str | None:
        """Which network computes the perceptual term (rule 10), ``None`` when it is off."""
        if self.perceptual is None:
            return None
        if self.perceptual_network == "stlpips":
            from LatentSRLib.metrics.perceptual import _LABELS

            return _LABELS["stlpips"][1]
        return f"MONAI PerceptualLoss ({self.perceptual_network})"

    def forward(self, recon: torch.Tensor, target: torch.Tensor, z_mu: torch.Tensor | None = None,
                z_sigma: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        terms = {"l1": (recon.float() - target.float()).abs().mean()}
        total = terms["l1"]
        if z_mu is not None:
            terms["kl"] = kl_divergence(z_mu, z_sigma)
            total = total + self.kl_weight * terms["kl"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(recon.float(), target.float())
            total = total + self.perceptual_weight * terms["perceptual"]
        terms["loss"] = total
        return terms


class _STLPIPSDistance(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from LatentSRLib.metrics.perceptual import _stlpips_network

        self.net = _stlpips_network()
        self.net.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> _STLPIPSDistance:  # the frozen network stays in eval mode
        return self

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # [0, 1] gray -> [-1, 1] RGB, LPIPS's input convention
        a, b = (x.clamp(0, 1).repeat(1, 3, 1, 1) * 2 - 1 for x in (recon, target))
        return self.net(a, b, normalize=False).mean()


def _perceptual_module(network: str) -> nn.Module:
    if network == "stlpips":
        return _STLPIPSDistance()
    from monai.losses import PerceptualLoss

    return PerceptualLoss(spatial_dims=2, network_type=network)


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


class AutoencoderTrainStep:
    """``iteration_update`` of a MONAI ``SupervisedTrainer`` training an ``AutoencoderKL`` (or
    fine-tuning a :class:`~.tiny_autoencoder.TinyAutoencoderNetwork`, whose forward is the
    reconstruction alone: no KL term).

    Uses the trainer's ``network``, ``optimizer``, ``amp`` and ``scaler``. With a discriminator,
    the generator gets ``adversarial_weight`` times a least-squares patch adversarial loss from
    iteration ``adversarial_start`` on, and the discriminator is trained on the same batch.

    Returns ``engine.state.output``: ``{"loss", "l1", ["kl", "perceptual", "generator", "discriminator"],
    "image", "pred"}`` (numbers as floats; images detached).
    """

    def __init__(
        self,
        loss: AutoencoderLoss,
        *,
        discriminator: nn.Module | None = None,
        discriminator_optimizer: torch.optim.Optimizer | None = None,
        adversarial_weight: float = 0.0,
        adversarial_start: int = 0,
        grad_clip: float | None = 1.0,
    ) -> None:
        if adversarial_weight > 0 and (discriminator is None or discriminator_optimizer is None):
            raise ValueError("an adversarial weight needs a discriminator and its optimizer")
        self.loss = loss
        self.discriminator = discriminator if adversarial_weight > 0 else None
        self.discriminator_optimizer = discriminator_optimizer
        self.adversarial_weight = float(adversarial_weight)
        self.adversarial_start = int(adversarial_start)
        self.grad_clip = grad_clip
        self._adversarial = None
        if self.discriminator is not None:
            from monai.losses import PatchAdversarialLoss

            self._adversarial = PatchAdversarialLoss(criterion="least_squares")

    def _step(self, engine, loss: torch.Tensor, parameters, optimizer) -> None:
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.scaler.unscale_(optimizer)
            if self.grad_clip:
                nn.utils.clip_grad_norm_(parameters, self.grad_clip)
            engine.scaler.step(optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(parameters, self.grad_clip)
            optimizer.step()

    def __call__(self, engine, batch: Mapping[str, Any]) -> dict[str, Any]:
        images = batch_to_device(batch, engine.state.device)["hr"]
        network = engine.network
        network.train()
        loss_fn = self.loss.to(images.device)
        engine.optimizer.zero_grad(set_to_none=True)
        adversarial_on = self.discriminator is not None and engine.state.iteration >= self.adversarial_start
        with torch.autocast(images.device.type, enabled=bool(engine.amp)):
            output = network(images)
            recon, z_mu, z_sigma = (output, None, None) if isinstance(output, torch.Tensor) else output
            terms = loss_fn(recon, images, z_mu, z_sigma)
            total = terms["loss"]
            if adversarial_on:
                self.discriminator.to(images.device)
                fake = self.discriminator(recon.float())[-1]
                terms["generator"] = self._adversarial(fake, target_is_real=True, for_discriminator=False)
                total = total + self.adversarial_weight * terms["generator"]
        self._step(engine, total, network.parameters(), engine.optimizer)
        if adversarial_on:
            self.discriminator_optimizer.zero_grad(set_to_none=True)
            with torch.autocast(images.device.type, enabled=bool(engine.amp)):
                fake = self.discriminator(recon.detach().float())[-1]
                real = self.discriminator(images.float())[-1]
                d_loss = 0.5 * (self._adversarial(fake, target_is_real=False, for_discriminator=True)
                                + self._adversarial(real, target_is_real=True, for_discriminator=True))
            d_loss = self.adversarial_weight * d_loss
            self._step(engine, d_loss, self.discriminator.parameters(), self.discriminator_optimizer)
            terms["discriminator"] = d_loss
        out: dict[str, Any] = {k: float(v.detach()) for k, v in terms.items()}
        out["loss"] = float(total.detach())
        out["image"], out["pred"] = images, recon.detach().float().clamp(0, 1)
        return out


class AutoencoderEvalStep:
    """``iteration_update`` of a MONAI ``SupervisedEvaluator``: reconstruct from the posterior mean
    (a tiny autoencoder has none: its forward is deterministic).

    Returns ``{"pred": (B,1,H,W) clamped to [0, 1], "label": the true image}`` for metric handlers.
    """

    def __call__(self, engine, batch: Mapping[str, Any]) -> dict[str, Any]:
        images = batch_to_device(batch, engine.state.device)["hr"]
        network = _unwrap(engine.network)
        network.eval()
        with torch.no_grad(), torch.autocast(images.device.type, enabled=bool(engine.amp)):
            if isinstance(network, TinyAutoencoderNetwork):
                recon = network(images)
            else:
                z_mu, _ = network.encode(images)
                recon = network.decode(z_mu)
        return {"pred": recon.float().clamp(0, 1), "label": images, "id": batch.get("id")}


class ExportAutoencoder(ExportOnCompletion):
    """When training completes, write the model folder that ``monai:<folder>`` loads (``tiny:<folder>``
    for a fine-tuned tiny autoencoder: :func:`~.tiny_autoencoder.export_tiny`).

    The weights are the best validation checkpoint when there is one (``checkpoint_dir/best.pt``),
    else the final ones (called without an engine, as the bundle's ``export_autoencoder`` entry does
    for a stopped run: the last checkpoint). Latent statistics are estimated on up to ``stats_images`` training slices
    and saved beside the model.

    Args:
        network: the network being trained.
        config: its constructor arguments (:func:`autoencoder_config`).
        folder: the model folder to write.
        dataset_dir: the prepared dataset trained on (recorded; its training slices give the stats).
        checkpoint_dir: where ``best.pt`` may be.
        training: the training settings, recorded.
        val_log: the run's ``val_log.csv``: a validation before the first iteration (fine-tuning)
            is recorded as ``start_val_psnr``, the starting weights' score.
        rank: only rank 0 exports.
    """

    def __init__(self, network: nn.Module, config: Mapping[str, Any], folder: str | os.PathLike,
                 dataset_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike, *,
                 stats_images: int = 500, training: Mapping[str, Any] | None = None,
                 val_log: str | os.PathLike | None = None, rank: int = 0) -> None:
        self.network = network
        self.config = dict(config)
        self.folder = Path(folder)
        self.dataset_dir = Path(dataset_dir)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.stats_images = int(stats_images)
        self.training = dict(training or {})
        self.val_log = None if val_log is None else Path(val_log)
        self.rank = int(rank)

    def _export(self, engine) -> Path:
        net = build_autoencoder(self.config)
        best, last = self.checkpoint_dir / BEST, self.checkpoint_dir / LAST
        source = "final weights"
        best_value = best_iteration = None
        iterations = self.trained_iterations(engine, self.checkpoint_dir)
        if best.is_file():
            state = torch.load(best, map_location="cpu", weights_only=True)
            net.load_state_dict(state["network"])
            best_value = state.get("best_metric", {}).get("value")
            best_iteration = state.get("trainer", {}).get("iteration")
            source = f"best validation checkpoint ({state.get('best_metric', {}).get('name')} = {best_value})"
        elif engine is None and last.is_file():
            net.load_state_dict(torch.load(last, map_location="cpu", weights_only=True)["network"])
            source = "last checkpoint"
        else:
            net.load_state_dict(_unwrap(self.network).state_dict())
        dataset = PreparedDataset(self.dataset_dir)
        metadata = {
            "trained_by": "LatentSR train_autoencoder bundle",
            "weights": source,
            "best_val_psnr": best_value,
            "best_iteration": None if best_iteration is None else int(best_iteration),
            "start_val_psnr": self._start_val_psnr(),
            "iterations": iterations,
            "dataset": {"folder": str(self.dataset_dir.resolve()), "counts": dataset.info["counts"],
                        "subjects": dataset.info["subjects"], "selection": dataset.info["selection"]},
            "training": self.training,
        }
        if isinstance(net, TinyAutoencoderNetwork):
            autoencoder = load_autoencoder(export_tiny(net, self.config, self.folder, metadata), latent_stats=None)
        else:
            save_monai_autoencoder(net, self.folder, self.config, metadata=metadata)
            autoencoder = load_monai_kl(f"monai:{self.folder}", str(self.folder))
        rows = dataset.indices("train")
        images = (np.array(dataset.hr[r]) for r in rows)
        stats = LatentStats.estimate(autoencoder, images, max_images=self.stats_images,
                                     preprocessing={"dataset": str(self.dataset_dir.resolve()), "split": "train",
                                                    **dataset.info["selection"]})
        stats.save(self.folder / STATS_FILE_NAME)
        return self.folder

    def _start_val_psnr(self) -> float | None:
        if self.val_log is None or not self.val_log.is_file():
            return None
        start = [row for row in read_log(self.val_log) if row.get("iteration") == 0 and "val_psnr" in row]
        return start[-1]["val_psnr"] if start else None
