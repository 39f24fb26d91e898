"""Sampling: from noise to a clean latent, conditioned on the low-resolution latent. One entry point, :func:`sample`.

DDPM objectives (:class:`.DDPMObjective`):

* ``"ddim"`` (default): Song et al. 2021; ``eta = 0`` deterministic, ``0 < eta <= 1`` stochastic
  (``eta = 1`` is the DDPM posterior);
* ``"ddpm"``: ancestral sampling (Ho et al. 2020) on the strided timesteps, with the effective
  ``beta = 1 - ab_t / ab_prev`` of each stride and the posterior ("small") variance.

Both visit :func:`ddim_timesteps` (``"trailing"`` spacing, Lin et al. 2024): ``S`` steps stride across
the whole ``T``-step schedule, start at the noisiest timestep ``T-1`` and make the last update to
the clean end (``alpha_bar = 1``), i.e. return the predicted clean latent of the last step
(rule 3 (docs/science.md): never walk only the first ``S`` steps of a longer schedule).

Why not MONAI's ``DDIMScheduler`` (checked in MONAI 1.6.1): its ``set_timesteps`` spaces the
timesteps as ``linspace(T-1, 0, S)`` (T=1000, S=4: 999, 666, 333, 0) but ``step`` moves each
sample to ``t - T // S`` (999 -> 749, 666 -> 416, ...), so for ``1 < S < T`` the noise level a sample
is left at is not the one the network is evaluated at next, and the final update starts from
timestep 0 evaluated on a sample noised to timestep 83. Its ``clip_sample`` also defaults to True
(clamping predicted latents to [-1, 1], wrong for normalised latents), and its ``DDPMScheduler``
likewise mis-steps when timesteps are skipped. The update below is written out instead; it is the
DDIM update (Song et al. eq. 12 and 16) on a consistent timestep sequence.

Rectified flow (:class:`.RectifiedFlowObjective`): ``"euler"`` (default) and ``"heun"`` integrate
``dx/ds = v`` on :func:`flow_times` from ``s = 1`` (pure noise) to exactly ``s = 0``. Heun's final
step to ``s = 0`` is an Euler step (as in Karras et al. 2022, Alg. 1): a corrector there would
evaluate the network at ``s = 0``, a time the logit-normal training never draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from LatentSRLib.diffusion.denoiser import Denoiser
from LatentSRLib.diffusion.objectives import DDPMObjective, Objective, RectifiedFlowObjective
from LatentSRLib.diffusion.rng import randn
from LatentSRLib.diffusion.schedules import CLEAN

__all__ = [
    "DDPM_SAMPLERS",
    "FLOW_SAMPLERS",
    "SamplingTrace",
    "ddim_timesteps",
    "flow_times",
    "sample",
]

#: samplers of DDPM objectives (the first is the default)
DDPM_SAMPLERS: tuple[str, ...] = ("ddim", "ddpm")
#: samplers of rectified-flow objectives (the first is the default)
FLOW_SAMPLERS: tuple[str, ...] = ("euler", "heun")


@dataclass
class SamplingTrace:
    """What a sampling run visited, for checks and reports.

    Attributes:
        sampler: the sampler used.
        times: start of each update: DDPM timesteps (int, ``T-1`` first) or flow times ``s`` (1.0 first).
        next_times: end of each update: DDPM timesteps with ``-1`` the clean end, or flow times
            with ``0.0`` the data.
        next_alpha_bars: DDPM only: ``alpha_bar`` at each ``next_times`` entry (the last is 1.0).
        model_times: the model time of every network evaluation, in order (Heun evaluates twice
            per step but the last).
    """

    sampler: str
    times: list[float] = field(default_factory=list)
    next_times: list[float] = field(default_factory=list)
    next_alpha_bars: list[float] = field(default_factory=list)
    model_times: list[float] = field(default_factory=list)

    @property
    def num_evaluations(self) -> int:
        return len(self.model_times)


def _check_steps(steps: int, most: int | None) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or (most is not None and steps > most):
        bound = f"1..{most}" if most is not None else ">= 1"
        raise ValueError(f"steps must be an integer in {bound}, got {steps!r}")


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The ``steps`` timesteps a DDPM sampler visits, noisiest first ("trailing" spacing).

    ``t_i = round(T * (S - i) / S) - 1`` for ``i = 0 .. S-1`` (exact rational arithmetic, ties to
    even as numpy does): always starts at ``T - 1``, strictly decreasing, strides evenly across the
    whole schedule. T=1000: S=4 -> [999, 749, 499, 249]; S=1 -> [999]; S=T -> [999, ..., 0]. After
    the last one, samplers step to the clean end (``alpha_bar = 1``).

    Raises:
        ValueError: ``steps`` < 1 or > ``num_train_timesteps``.
    """
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}")
    _check_steps(steps, num_train_timesteps)
    return [round(Fraction(num_train_timesteps * (steps - i), steps)) - 1 for i in range(steps)]


def flow_times(steps: int) -> list[float]:
    """``steps + 1`` evenly spaced flow times from 1.0 (noise) to 0.0 (data), both ends exact."""
    _check_steps(steps, None)
    return [(steps - i) / steps for i in range(steps + 1)]


def _resolve_sampler(objective: Objective, sampler: str | None) -> str:
    if isinstance(objective, DDPMObjective):
        choices = DDPM_SAMPLERS
    elif isinstance(objective, RectifiedFlowObjective):
        choices = FLOW_SAMPLERS
    else:
        raise ValueError(
            f"objective must be a DDPMObjective or a RectifiedFlowObjective, got {type(objective).__name__}"
        )
    if sampler is None:
        return choices[0]
    if sampler not in choices:
        raise ValueError(
            f"unknown sampler {sampler!r} for a {objective.kind} objective; choose one of {', '.join(choices)}"
        )
    return sampler


@torch.no_grad()
def sample(
    objective: Objective,
    denoiser: Denoiser,
    condition: torch.Tensor,
    *,
    steps: int,
    sampler: str | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    return_trajectory: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SamplingTrace]:
    """Generate clean latents for a batch of low-resolution latents.

    Args:
        objective: the objective the denoiser was trained with (decides the samplers).
        denoiser: called as ``denoiser(x_t, model_time, condition)``; put a network in eval mode first.
        condition: ``(B, C, h, w)`` normalised latents of the low-resolution images; the result
            has the same shape, dtype and device.
        steps: number of updates (network evaluations, but Heun's ``2 * steps - 1``); at most ``T`` for DDPM.
        sampler: ``"ddim"`` (default) or ``"ddpm"`` for DDPM objectives, ``"euler"`` (default) or
            ``"heun"`` for rectified flow.
        generator: for the start noise (when ``noise`` is not given) and stochastic updates; a
            sequence of one generator per batch row draws each row from its own.
        eta: DDIM stochasticity in ``[0, 1]``; 0 (default) is deterministic. Only ``"ddim"`` takes it.
        noise: ``(B, C, h, w)`` start noise; default ``randn`` from ``generator``.
        return_trajectory: also return a :class:`SamplingTrace`.

    Returns:
        The clean latents ``(B, C, h, w)``, and the trace when ``return_trajectory`` is True.
    """
    sampler = _resolve_sampler(objective, sampler)
    eta = float(eta)
    if eta != 0.0 and sampler != "ddim":
        raise ValueError(f"eta applies only to the ddim sampler, not {sampler!r}; leave it at 0")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (0 deterministic DDIM, 1 the DDPM posterior), got {eta}")
    if noise is None:
        noise = randn(tuple(condition.shape), generator=generator, device=condition.device, dtype=condition.dtype)
    elif noise.shape != condition.shape:
        raise ValueError(f"noise must have the condition's shape {tuple(condition.shape)}, got {tuple(noise.shape)}")
    x = noise.to(device=condition.device, dtype=condition.dtype)
    trace = SamplingTrace(sampler)
    if isinstance(objective, DDPMObjective):
        x = _sample_ddpm(objective, denoiser, condition, x, steps, sampler, eta, generator, trace)
    else:
        x = _sample_flow(objective, denoiser, condition, x, steps, sampler, trace)
    return (x, trace) if return_trajectory else x


def _evaluate(
    denoiser: Denoiser, x: torch.Tensor, model_time: float, condition: torch.Tensor, trace: SamplingTrace
) -> torch.Tensor:
    trace.model_times.append(model_time)
    t = torch.full((x.shape[0],), model_time, dtype=torch.float32, device=x.device)
    return denoiser(x, t, condition)


def _sample_ddpm(
    objective: DDPMObjective,
    denoiser: Denoiser,
    condition: torch.Tensor,
    x: torch.Tensor,
    steps: int,
    sampler: str,
    eta: float,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    trace: SamplingTrace,
) -> torch.Tensor:
    schedule = objective.schedule
    timesteps = ddim_timesteps(schedule.num_train_timesteps, steps)
    for t, t_next in zip(timesteps, timesteps[1:] + [CLEAN]):
        ab = float(schedule.alpha_bar(t))
        ab_next = float(schedule.alpha_bar(t_next))  # exactly 1.0 at the clean end
        model_time = float(objective.model_time(torch.tensor(t)))
        output = _evaluate(denoiser, x, model_time, condition, trace)
        x0, eps = objective.predict_x0_and_eps(output, x, t)
        if sampler == "ddim":
            # sigma_t of DDIM eq. 16; sigma^2 <= 1 - ab_next for eta <= 1, the max() absorbs rounding
            sigma = eta * math.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))
            direction = math.sqrt(max(1 - ab_next - sigma**2, 0.0))
            x = math.sqrt(ab_next) * x0 + direction * eps
        else:
            # posterior q(x_next | x_t, x0) of the strided chain: beta = 1 - ab / ab_next
            beta = 1 - ab / ab_next
            x = (math.sqrt(ab_next) * beta / (1 - ab)) * x0 + (math.sqrt(1 - beta) * (1 - ab_next) / (1 - ab)) * x
            sigma = math.sqrt((1 - ab_next) / (1 - ab) * beta)
        # no noise on the final update (sigma = 0 there) and none for deterministic DDIM, so the
        # generator's state advances identically for "ddpm" and "ddim" with eta = 1
        if t_next != CLEAN and (sampler == "ddpm" or eta > 0):
            x = x + sigma * randn(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
        trace.times.append(t)
        trace.next_times.append(t_next)
        trace.next_alpha_bars.append(ab_next)
    return x


def _sample_flow(
    objective: RectifiedFlowObjective,
    denoiser: Denoiser,
    condition: torch.Tensor,
    x: torch.Tensor,
    steps: int,
    sampler: str,
    trace: SamplingTrace,
) -> torch.Tensor:
    times = flow_times(steps)
    model_times = objective.model_time(torch.tensor(times, dtype=torch.float64)).tolist()
    for i, (s, s_next) in enumerate(zip(times[:-1], times[1:])):
        velocity = _evaluate(denoiser, x, model_times[i], condition, trace)
        x_euler = x + (s_next - s) * velocity
        if sampler == "heun" and s_next > 0.0:
            velocity_next = _evaluate(denoiser, x_euler, model_times[i + 1], condition, trace)
            x = x + (s_next - s) * 0.5 * (velocity + velocity_next)
        else:
            x = x_euler
        trace.times.append(s)
        trace.next_times.append(s_next)
    return x
