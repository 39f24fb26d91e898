"""DDPM noise schedules: ``beta_k`` and ``alpha_bar_k = prod_{j<=k} (1 - beta_j)`` for ``k = 0 .. T-1``.

Convention: timestep ``k = 0`` is the cleanest noisy level (``alpha_bar[0]`` just below 1) and
``k = T-1`` the noisiest (``alpha_bar[T-1]`` close to 0). The data itself sits one step beyond
``k = 0``; it is addressed as timestep :data:`CLEAN` (``-1``), where ``alpha_bar = 1``, so a sampler
can make its last update land exactly on the data (rule 3 (docs/science.md)).

The noisy latent at timestep ``k`` is ``x_k = sqrt(alpha_bar_k) x_0 + sqrt(1 - alpha_bar_k) eps``.

Both tensors are computed and stored in float64: ``1 - alpha_bar`` near ``k = 0`` (~4e-5 for the
cosine schedule) and ``alpha_bar`` near ``k = T-1`` (~2e-9) lose most of their digits in float32,
and samplers divide by their square roots. They stay on the CPU (some devices, Apple's MPS among
them, have no float64); callers cast to the data's dtype, then move to its device, where they use them.

Sources of the betas:

* ``"linear"``: MONAI's ``NoiseSchedules["linear_beta"]`` (``linspace(beta_start, beta_end, T)``,
  Ho et al. 2020), taken as is (it is evaluated in float32; the betas carry float32 rounding,
  ~1e-8 relative, then ``alpha_bar`` is accumulated in float64).
* ``"cosine"``: Nichol & Dhariwal 2021, ``alpha_bar(k) = f(k+1) / f(0)`` with
  ``f(u) = cos^2((u/T + s) / (1 + s) * pi/2)``, ``s = 0.008``, betas ``1 - alpha_bar_k /
  alpha_bar_{k-1}`` clipped to at most 0.999. MONAI's ``NoiseSchedules["cosine"]`` (1.6.1) is the same
  formula with the same clipping (checked: evaluated in float64 it is identical to this module's
  values; for T = 1000 only the last beta is clipped) but it evaluates in the default dtype,
  float32, which leaves ~1e-3 relative error in the small betas near ``k = 0``. So the formula is
  evaluated here in float64; the tests compare it with MONAI's entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.schedulers.scheduler import NoiseSchedules

__all__ = ["CLEAN", "SCHEDULE_KINDS", "NoiseSchedule"]

#: the timestep index of the clean data (``alpha_bar = 1``), one step beyond ``k = 0``
CLEAN = -1
#: the schedule kinds, in the order shown to users
SCHEDULE_KINDS: tuple[str, ...] = ("cosine", "linear")
_COSINE_OFFSET = 0.008  # Nichol & Dhariwal's s: keeps beta_0 from vanishing
_MAX_BETA = 0.999  # Nichol & Dhariwal's clipping: avoids a singularity at the noisy end


def _cosine_betas(num_train_timesteps: int) -> torch.Tensor:
    u = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    f = torch.cos((u + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * (math.pi / 2)) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(0.0, _MAX_BETA)


class NoiseSchedule:
    """A DDPM noise schedule of ``num_train_timesteps`` steps.

    Args:
        kind: ``"cosine"`` (default, the paper's) or ``"linear"``.
        num_train_timesteps: ``T``, the number of training timesteps (at least 2).
        beta_start, beta_end: first and last beta of the linear schedule (ignored by ``"cosine"``,
            kept in :meth:`to_dict` so a config round-trips unchanged).

    Attributes:
        betas: ``(T,)`` float64, in ``(0, 0.999]``.
        alphas_cumprod: ``(T,)`` float64, strictly decreasing from just below 1 to just above 0.
    """

    def __init__(
        self,
        kind: str = "cosine",
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
    ) -> None:
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown noise schedule {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
        integer = isinstance(num_train_timesteps, int) and not isinstance(num_train_timesteps, bool)
        if not integer or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        if kind == "linear" and not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"linear schedule needs 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.kind = kind
        self.num_train_timesteps = num_train_timesteps
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        if kind == "linear":
            betas = NoiseSchedules["linear_beta"](num_train_timesteps, beta_start=beta_start, beta_end=beta_end)
            self.betas = betas.to(torch.float64)
        else:
            self.betas = _cosine_betas(num_train_timesteps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def alpha_bar(self, t: int | torch.Tensor) -> torch.Tensor:
        """``alpha_bar`` at integer timesteps ``t`` in ``[-1, T-1]``; ``t = CLEAN = -1`` gives exactly 1.

        Returns a float64 CPU tensor of ``t``'s shape (``t`` may live on any device).
        """
        t = torch.as_tensor(t).detach().cpu()
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError("timesteps must be integers in [-1, num_train_timesteps - 1]")
        if t.numel() and (int(t.min()) < CLEAN or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(
                f"timesteps must lie in [-1, {self.num_train_timesteps - 1}] (-1 is the clean end), got "
                f"{int(t.min())}..{int(t.max())}"
            )
        # prepend the clean end so that index t + 1 serves every t in [-1, T-1]
        table = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        return table[t.long() + 1]

    def snr(self, t: int | torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``alpha_bar / (1 - alpha_bar)`` at timesteps ``t`` in ``[0, T-1]`` (float64, CPU)."""
        alpha_bar = self.alpha_bar(t)
        if bool((torch.as_tensor(t) < 0).any()):
            raise ValueError("the SNR of the clean end is infinite; pass timesteps in [0, num_train_timesteps - 1]")
        return alpha_bar / (1.0 - alpha_bar)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description; :meth:`from_dict` rebuilds an identical schedule."""
        return {
            "kind": self.kind,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NoiseSchedule:
        valid = ("kind", "num_train_timesteps", "beta_start", "beta_end")
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown noise schedule keys {', '.join(map(repr, unknown))}; valid keys are {', '.join(valid)}"
            )
        return cls(**d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoiseSchedule) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"NoiseSchedule({args})"
