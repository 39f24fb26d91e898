"""The simulated low-resolution tasks, named and described in one light module.

Kept free of heavy imports (torch, MONAI) so that the command line can list them in its help
instantly; :mod:`LatentSRLib.transforms.degradations` implements them.
"""

from __future__ import annotations

__all__ = ["DEGRADATION_MODES"]

#: degradation mode -> one-line description (the paper's use in brackets)
DEGRADATION_MODES: dict[str, str] = {
    "sr": "antialiased bicubic down-sampling by `scale`, bicubic up-sampling back (paper: BraTS, chest X-ray, 4x)",
    "refine": "Gaussian blur (sigma, default 1 px), down-sampling by `scale` and back up (paper: knee MRNet, 2x)",
    "kspace": "keep the central 1/scale of k-space per in-plane axis (optional hamming/tukey taper), magnitude image",
}
