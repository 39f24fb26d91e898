"""The simulated low-resolution tasks, named and described in one light module.

Kept free of heavy imports (torch, MONAI) so that the command line can list them in its help
instantly; :mod:`LatentSRLib.transforms.degradations` implements them (:func:`~LatentSRLib.transforms.degradations.task_degradation`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["DEGRADATION_MODES", "Task", "parse_task"]

#: degradation mode -> one-line description (the paper's use in brackets)
DEGRADATION_MODES: dict[str, str] = {
    "sr": "antialiased bicubic down-sampling by `scale`, bicubic up-sampling back (paper: BraTS, chest X-ray, 4x)",
    "refine": "Gaussian blur (sigma, default 1 px), down-sampling by `scale` and back up (paper: knee MRNet, 2x)",
    "kspace": "keep the central 1/scale of k-space per in-plane axis (optional hamming/tukey taper), magnitude image",
    "thick": "slice profile (Gaussian of FWHM `scale`, or box) along one axis and every `scale`-th slice: "
    "through-plane SR of thick slices (e.g. 1x1x5 mm from 1 mm)",
}


_TASK_PATTERN = re.compile(r"^(?P<mode>[a-z]+)(?P<scale>\d+)$")


@dataclass(frozen=True)
class Task:
    """A simulated low-resolution task: which degradation, by what factor, with what noise.

    Its :attr:`name` is the mode followed by the factor (``"sr4"``, ``"refine2"``, ``"kspace4"``, ``"thick5"``),
    as on the command line; :meth:`to_dict` is what datasets, latent caches and model folders record
    so that a cache or a model is never reused for a different task.
    """

    mode: str = "sr"
    scale: int = 4
    noise: float = 0.0
    noise_kind: str = "gaussian"
    seed: int = 0
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in DEGRADATION_MODES:
            raise ValueError(f"unknown degradation mode {self.mode!r}; valid modes: {', '.join(DEGRADATION_MODES)}")
        if int(self.scale) != self.scale or self.scale < 1:
            raise ValueError(f"the scale must be a positive integer, got {self.scale!r}")
        if not self.noise >= 0:
            raise ValueError(f"the noise level must be >= 0, got {self.noise!r}")

    @property
    def name(self) -> str:
        return f"{self.mode}{int(self.scale)}"

    def to_dict(self) -> dict:
        return {"name": self.name, "mode": self.mode, "scale": int(self.scale), "noise": float(self.noise),
                "noise_kind": self.noise_kind, "seed": int(self.seed), "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: dict) -> Task:
        return cls(mode=data["mode"], scale=int(data["scale"]), noise=float(data.get("noise", 0.0)),
                   noise_kind=data.get("noise_kind", "gaussian"), seed=int(data.get("seed", 0)),
                   options=dict(data.get("options") or {}))


def parse_task(text: str, **kwargs) -> Task:
    """``"sr4"`` -> ``Task("sr", 4)``; ``kwargs`` set the other fields (noise, seed, options)."""
    match = _TASK_PATTERN.match(str(text).strip().lower())
    if not match or match["mode"] not in DEGRADATION_MODES:
        valid = ", ".join(f"{mode}N" for mode in DEGRADATION_MODES)
        raise ValueError(f"unknown task {text!r}; a task is a mode and an integer factor: {valid} (e.g. sr4, refine2)")
    return Task(mode=match["mode"], scale=int(match["scale"]), **kwargs)
