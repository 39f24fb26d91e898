"""Training objectives: how a clean latent is noised, what the denoiser predicts, how it is scored.

Two families share one interface (``kind``, ``model_time``, ``training_loss``, ``to_dict``):

* :class:`DDPMObjective`: discrete-time diffusion over a :class:`NoiseSchedule`,
  ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``, with the network predicting the noise
  (``"epsilon"``), the clean latent (``"x0"``, the paper's choice) or the velocity
  ``v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0`` (``"v"``, Salimans & Ho 2022).
* :class:`RectifiedFlowObjective`: straight paths ``x_s = (1 - s) x0 + s noise``, ``s`` in
  ``[0, 1]`` (``s = 0`` data, ``s = 1`` noise), the network predicting the velocity
  ``noise - x0`` (Liu et al. 2022; logit-normal time sampling of Esser et al. 2024, SD3).

In both, the denoiser is called as ``denoiser(x_t, model_time, condition)`` with the model time
in ``[0, 1000]`` (see :mod:`.denoiser`). All tensors are ``(B, C, h, w)`` (any ``(B, ...)`` works),
``x0`` and ``condition`` normalised latents (roughly zero mean, unit variance per channel).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from LatentSRLib.diffusion.denoiser import MODEL_TIME_SCALE, Denoiser
from LatentSRLib.diffusion.rng import randint, randn, uniform
from LatentSRLib.diffusion.schedules import NoiseSchedule

__all__ = [
    "LOSS_TYPES",
    "OBJECTIVE_KINDS",
    "PREDICTION_TYPES",
    "TIME_SAMPLINGS",
    "DDPMObjective",
    "Objective",
    "RectifiedFlowObjective",
    "objective_from_dict",
]

#: what a DDPM denoiser predicts
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "x0", "v")
#: elementwise losses
LOSS_TYPES: tuple[str, ...] = ("l1", "l2")
#: how rectified-flow training draws its times
TIME_SAMPLINGS: tuple[str, ...] = ("uniform", "logit_normal")


def _choice(value: Any, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def _check_keys(d: Mapping[str, Any], valid: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ValueError(f"unknown {what} keys {', '.join(map(repr, unknown))}; valid keys are {', '.join(valid)}")


def _check_pair(x0: torch.Tensor, condition: torch.Tensor) -> None:
    if x0.ndim < 2 or x0.shape != condition.shape:
        raise ValueError(
            "x0 and condition must have the same (B, C, h, w) shape, got "
            f"{tuple(x0.shape)} and {tuple(condition.shape)}"
        )


def _per_sample_loss(error: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean of ``|error|`` or ``error**2`` over all but the batch axis: ``(B,)``."""
    values = error.abs() if loss == "l1" else error.square()
    return values.flatten(1).mean(dim=1)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` (or scalar) float64 CPU coefficients as ``(B, 1, 1, ...)`` in ``like``'s dtype and device."""
    values = values.to(like.dtype).to(like.device)  # cast first: the device may lack float64
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def _cpu_float64(values: torch.Tensor | float | int) -> torch.Tensor:
    """Times as float64 on the CPU, where the coefficient arithmetic happens."""
    return torch.as_tensor(values).detach().cpu().to(torch.float64)


class DDPMObjective:
    """Discrete-time diffusion objective (DDPM, Ho et al. 2020) with a choice of prediction target.

    Args:
        prediction: ``"x0"`` (default, the paper's), ``"epsilon"`` or ``"v"``.
        schedule: the noise schedule; default cosine with ``T = 1000`` (the paper's).
        loss: ``"l1"`` (default, the paper's) or ``"l2"``, averaged over the latent.
        min_snr_gamma: ``None`` (default: unweighted, the paper's) or ``gamma > 0`` for min-SNR-gamma
            weighting (Hang et al. 2023). The weight is defined on the x0-space error,
            ``w = min(snr, gamma)``; since ``||eps - eps_hat||^2 = snr ||x0 - x0_hat||^2`` and
            ``||v - v_hat||^2 = (snr + 1) ||x0 - x0_hat||^2``, the same weighting of the loss on the
            network's own target is ``min(snr, gamma) / snr`` for epsilon, ``min(snr, gamma)`` for x0
            and ``min(snr, gamma) / (snr + 1)`` for v, with ``snr = ab_t / (1 - ab_t)``. The equivalence
            is exact for ``"l2"``; with ``"l1"`` the same weights are applied as a heuristic.
        terminal_fraction: in [0, 1]; that share of each batch's timesteps is ``T - 1``, the step a
            sampler starts from, and the rest uniform (0, the default: all uniform, the paper's). A model
            sampled in one step (the x0 estimate from pure noise, given the LR latent) uses only that
            timestep, which uniform sampling trains one time in ``T``; 1 trains nothing else (a one-step
            regressor in the latent space).

    Timesteps ``t`` are integers in ``[0, T-1]`` (0 cleanest, see :mod:`.schedules`); the
    denoiser receives ``model_time(t) = t * 1000 / T``.
    """

    kind = "ddpm"

    def __init__(
        self,
        prediction: str = "x0",
        schedule: NoiseSchedule | None = None,
        loss: str = "l1",
        min_snr_gamma: float | None = None,
        terminal_fraction: float = 0.0,
    ) -> None:
        self.prediction = _choice(prediction, PREDICTION_TYPES, "prediction type")
        terminal_fraction = float(terminal_fraction)
        if not 0.0 <= terminal_fraction <= 1.0:
            raise ValueError(f"terminal_fraction must be in [0, 1], got {terminal_fraction}")
        self.terminal_fraction = terminal_fraction
        self.loss = _choice(loss, LOSS_TYPES, "loss")
        if schedule is None:
            schedule = NoiseSchedule()
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        if min_snr_gamma is not None:
            min_snr_gamma = float(min_snr_gamma)
            if not min_snr_gamma > 0:
                raise ValueError(f"min_snr_gamma must be None (no weighting) or > 0, got {min_snr_gamma}")
        self.min_snr_gamma = min_snr_gamma

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.num_train_timesteps

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """Denoiser time input for integer timesteps ``t``: ``t * 1000 / T`` (float32, ``t``'s shape)."""
        t = torch.as_tensor(t)
        scaled = _cpu_float64(t) * (MODEL_TIME_SCALE / self.num_train_timesteps)
        return scaled.to(torch.float32).to(t.device)

    def _scales(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(ab_t)`` and ``sqrt(1 - ab_t)``, computed in float64, shaped to broadcast against ``like``."""
        alpha_bar = self.schedule.alpha_bar(t)
        return _per_sample(alpha_bar.sqrt(), like), _per_sample((1.0 - alpha_bar).sqrt(), like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise`` for timesteps ``t`` (scalar or ``(B,)``)."""
        signal, sigma = self._scales(t, x0)
        return signal * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """What the network should output at ``x_t = add_noise(x0, noise, t)``."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        signal, sigma = self._scales(t, x0)
        return signal * noise - sigma * x0

    def predict_x0_and_eps(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean latent and the noise implied by the network's output at ``x_t``, timesteps ``t`` in ``[0, T-1]``.

        Note that recovering x0 from an epsilon prediction divides by ``sqrt(ab_t)``: at the noisy
        end of the cosine schedule (``ab ~ 2e-9``) float32 rounding of the output is amplified
        ~2e4-fold, a property of epsilon-prediction, not of this code.
        """
        signal, sigma = self._scales(t, x_t)
        if self.prediction == "epsilon":
            eps = model_output
            x0 = (x_t - sigma * eps) / signal
        elif self.prediction == "x0":
            x0 = model_output
            eps = (x_t - signal * x0) / sigma
        else:  # v = signal * eps - sigma * x0, and signal^2 + sigma^2 = 1
            x0 = signal * x_t - sigma * model_output
            eps = signal * model_output + sigma * x_t
        return x0, eps

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights (float64 CPU, ``t``'s shape): ones, or min-SNR-gamma for the prediction type."""
        t = torch.as_tensor(t)
        if self.min_snr_gamma is None:
            return torch.ones(t.shape, dtype=torch.float64)
        gamma = self.min_snr_gamma
        snr = self.schedule.snr(t)
        if self.prediction == "epsilon":
            # min(snr, gamma) / snr, written so it stays finite if snr underflows to 0
            return (gamma / snr).clamp(max=1.0)
        if self.prediction == "x0":
            return snr.clamp(max=gamma)
        return snr.clamp(max=gamma) / (snr + 1.0)

    def training_loss(
        self,
        denoiser: Denoiser,
        x0: torch.Tensor,
        condition: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        return_x0: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Scalar loss for one batch: timesteps uniform in ``[0, T-1]`` (the first ``round(terminal_fraction
        * B)`` items at ``T - 1``), Gaussian noise, the chosen target.

        Args:
            denoiser: called as ``denoiser(x_t, model_time, condition)``.
            x0: ``(B, C, h, w)`` clean (normalised) high-resolution latents.
            condition: ``(B, C, h, w)`` latents of the low-resolution images.
            generator: draws the timesteps, then the noise (reproducible batches).
            return_x0: also return the network's estimate of ``x0`` (differentiable), for a loss on
                the decoded image (the trainer's pixel loss).
        """
        _check_pair(x0, condition)
        t = randint(self.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
        terminal = round(self.terminal_fraction * x0.shape[0])
        if terminal:
            t = t.clone()
            t[:terminal] = self.num_train_timesteps - 1
        noise = randn(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.add_noise(x0, noise, t)
        output = denoiser(x_t, self.model_time(t), condition)
        per_sample = _per_sample_loss(output - self.target(x0, noise, t), self.loss)
        if self.min_snr_gamma is not None:
            per_sample = per_sample * self.loss_weights(t).to(per_sample.dtype).to(per_sample.device)
        if return_x0:
            return per_sample.mean(), self.predict_x0_and_eps(output, x_t, t)[0]
        return per_sample.mean()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "prediction": self.prediction,
            "loss": self.loss,
            "min_snr_gamma": self.min_snr_gamma,
            "terminal_fraction": self.terminal_fraction,
            "schedule": self.schedule.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DDPMObjective:
        _check_keys(d, ("kind", "prediction", "loss", "min_snr_gamma", "terminal_fraction", "schedule"), "DDPM objective")
        if d.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"not a DDPM objective: kind is {d['kind']!r}")
        args = {k: v for k, v in d.items() if k != "kind"}
        if "schedule" in args:
            args["schedule"] = NoiseSchedule.from_dict(args["schedule"])
        return cls(**args)

    def __repr__(self) -> str:
        return (
            f"DDPMObjective(prediction={self.prediction!r}, schedule={self.schedule!r}, loss={self.loss!r}, "
            f"min_snr_gamma={self.min_snr_gamma!r}, terminal_fraction={self.terminal_fraction!r})"
        )


class RectifiedFlowObjective:
    """Rectified flow / flow matching on straight paths between data (``s = 0``) and noise (``s = 1``).

    ``x_s = (1 - s) x0 + s noise``; the network predicts the velocity ``v = noise - x0`` (so
    ``dx_s/ds = v``); the denoiser receives ``model_time(s) = 1000 s``.

    Args:
        time_sampling: ``"uniform"`` (default) draws ``s ~ U[0, 1)``; ``"logit_normal"`` draws
            ``s = sigmoid(logit_mean + logit_std * n)``, ``n ~ N(0, 1)``, which concentrates training
            on intermediate times (Esser et al. 2024).
        loss: ``"l2"`` (default) or ``"l1"``.
        logit_mean, logit_std: parameters of the logit-normal sampling (SD3's defaults 0 and 1).
    """

    kind = "rectified_flow"

    def __init__(
        self,
        time_sampling: str = "uniform",
        loss: str = "l2",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> None:
        self.time_sampling = _choice(time_sampling, TIME_SAMPLINGS, "time sampling")
        self.loss = _choice(loss, LOSS_TYPES, "loss")
        if not float(logit_std) > 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)

    def model_time(self, s: torch.Tensor) -> torch.Tensor:
        """Denoiser time input for flow times ``s`` in ``[0, 1]``: ``1000 s`` (float32)."""
        s = torch.as_tensor(s)
        return (_cpu_float64(s) * MODEL_TIME_SCALE).to(torch.float32).to(s.device)

    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
        """``x_s = (1 - s) x0 + s noise`` for times ``s`` (scalar or ``(B,)``)."""
        s = _per_sample(_cpu_float64(s), x0)
        return (1 - s) * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The velocity ``noise - x0`` (constant along each straight path)."""
        return noise - x0

    def predict_x0(self, velocity: torch.Tensor, x_s: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
        """Clean latent implied by a velocity at ``x_s``: ``x_s - s v``."""
        return x_s - _per_sample(_cpu_float64(s), x_s) * velocity

    def sample_times(
        self, batch: int, *, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training times ``s``, ``(batch,)`` float32 in ``[0, 1)`` (``(0, 1)`` for logit-normal)."""
        if self.time_sampling == "uniform":
            return uniform((batch,), generator=generator, device=device, dtype=torch.float32)
        n = randn((batch,), generator=generator, device=device, dtype=torch.float32)
        return torch.sigmoid(self.logit_mean + self.logit_std * n)

    def training_loss(
        self,
        denoiser: Denoiser,
        x0: torch.Tensor,
        condition: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        return_x0: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Scalar loss for one batch (same arguments as :meth:`DDPMObjective.training_loss`)."""
        _check_pair(x0, condition)
        s = self.sample_times(x0.shape[0], device=x0.device, generator=generator)
        noise = randn(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
        x_s = self.interpolate(x0, noise, s)
        output = denoiser(x_s, self.model_time(s), condition)
        loss = _per_sample_loss(output - self.target(x0, noise), self.loss).mean()
        if return_x0:
            return loss, self.predict_x0(output, x_s, s)
        return loss

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "time_sampling": self.time_sampling,
            "loss": self.loss,
            "logit_mean": self.logit_mean,
            "logit_std": self.logit_std,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RectifiedFlowObjective:
        _check_keys(d, ("kind", "time_sampling", "loss", "logit_mean", "logit_std"), "rectified-flow objective")
        if d.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"not a rectified-flow objective: kind is {d['kind']!r}")
        return cls(**{k: v for k, v in d.items() if k != "kind"})

    def __repr__(self) -> str:
        return (
            f"RectifiedFlowObjective(time_sampling={self.time_sampling!r}, loss={self.loss!r}, "
            f"logit_mean={self.logit_mean!r}, logit_std={self.logit_std!r})"
        )


#: either objective
Objective = DDPMObjective | RectifiedFlowObjective

_OBJECTIVES: dict[str, type[DDPMObjective] | type[RectifiedFlowObjective]] = {
    DDPMObjective.kind: DDPMObjective,
    RectifiedFlowObjective.kind: RectifiedFlowObjective,
}
#: the objective kinds stored in configs
OBJECTIVE_KINDS: tuple[str, ...] = tuple(_OBJECTIVES)


def objective_from_dict(d: Mapping[str, Any]) -> Objective:
    """Rebuild an objective from its :meth:`to_dict` form, dispatching on ``d["kind"]``."""
    kind = d.get("kind") if isinstance(d, Mapping) else None
    if kind not in _OBJECTIVES:
        raise ValueError(f"unknown objective kind {kind!r}; choose one of {', '.join(OBJECTIVE_KINDS)}")
    return _OBJECTIVES[kind].from_dict(d)
