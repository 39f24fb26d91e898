"""Latent diffusion for super-resolution: the conditional denoiser, its objectives and samplers.

* :mod:`.denoiser`: :class:`ConditionalDenoiser`, a MONAI ``DiffusionModelUNet`` that sees the noisy
  latent concatenated with the low-resolution latent; named size presets; JSON config round trip;
* :mod:`.schedules`: :class:`NoiseSchedule` (cosine, linear), ``t = 0`` cleanest, ``-1`` the data;
* :mod:`.objectives`: :class:`DDPMObjective` (epsilon / x0 / v, L1 / L2, min-SNR-gamma) and
  :class:`RectifiedFlowObjective`, one ``training_loss`` interface, :func:`objective_from_dict`;
* :mod:`.samplers`: :func:`sample` (DDIM, ancestral DDPM, Euler, Heun), every run striding the
  whole schedule and ending exactly on the clean end (rule 3 (docs/science.md));
* :mod:`.rng`: seeded draws that work across devices.

Every configuration is a plain dict that round-trips through JSON (``to_dict`` / ``from_dict``,
``ConditionalDenoiser.config`` / ``from_config``), so a trained model folder keeps them in one file.
"""

from LatentSRLib.diffusion.denoiser import (
    DENOISER_PRESETS,
    MODEL_TIME_SCALE,
    ConditionalDenoiser,
    Denoiser,
    build_denoiser,
    count_parameters,
)
from LatentSRLib.diffusion.objectives import (
    LOSS_TYPES,
    OBJECTIVE_KINDS,
    PREDICTION_TYPES,
    TIME_SAMPLINGS,
    DDPMObjective,
    Objective,
    RectifiedFlowObjective,
    objective_from_dict,
)
from LatentSRLib.diffusion.samplers import DDPM_SAMPLERS, FLOW_SAMPLERS, SamplingTrace, ddim_timesteps, flow_times, sample
from LatentSRLib.diffusion.schedules import CLEAN, SCHEDULE_KINDS, NoiseSchedule

__all__ = [
    "CLEAN",
    "DDPM_SAMPLERS",
    "DENOISER_PRESETS",
    "FLOW_SAMPLERS",
    "LOSS_TYPES",
    "MODEL_TIME_SCALE",
    "OBJECTIVE_KINDS",
    "PREDICTION_TYPES",
    "SCHEDULE_KINDS",
    "TIME_SAMPLINGS",
    "ConditionalDenoiser",
    "DDPMObjective",
    "Denoiser",
    "NoiseSchedule",
    "Objective",
    "RectifiedFlowObjective",
    "SamplingTrace",
    "build_denoiser",
    "count_parameters",
    "ddim_timesteps",
    "flow_times",
    "objective_from_dict",
    "sample",
]
