"""Evaluation of super-resolution results against the true high-resolution images.

One idea per module:

* ``metrics``: per-image PSNR, SSIM, MS-SSIM (torchmetrics);
* ``frequency``: 3-level Haar subband PSNR and the radial power spectrum;
* ``perceptual``: LPIPS, labelled with the network that computed it (offline stand-in if needed);
* ``statistics``: pairing by image id, paired bootstrap CIs, Wilcoxon, d_z and pooled Cohen's d,
  Holm correction, summaries and patient-level aggregation.

Each module lists its public names in ``__all__``.
"""

from .frequency import *  # noqa: F401,F403
from .metrics import *  # noqa: F401,F403
from .perceptual import *  # noqa: F401,F403
from .statistics import *  # noqa: F401,F403
