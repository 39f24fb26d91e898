"""Metrics and analyses of super-resolution results against the true high-resolution images.

One idea per module:

* ``quality``: per-image PSNR, SSIM, MS-SSIM (torchmetrics);
* ``frequency``: 3-level Haar subband PSNR and the radial power spectrum;
* ``perceptual``: LPIPS, labelled with the network that computed it (offline stand-in if needed);
* ``fid``: FID of a set of predictions against the set of true images, labelled likewise;
* ``statistics``: pairing by image id, paired bootstrap CIs, Wilcoxon, d_z and pooled Cohen's d,
  Holm correction, summaries and patient-level aggregation;
* ``hallucination``: hallucinated / lost pixels beyond the method's own VAE noise floor, and maps;
* ``latent_fidelity``: cosine similarity and PSNR of pooled SR latents against the true image's latents;
* ``agreement``: Bland-Altman agreement of a per-image quantity (mean intensity) with the true image;
* ``roi``: PSNR and SSIM inside segmentation regions (tumour) and in the background;
* ``regression``: does the AE ceiling predict SR quality (Pearson r, OLS) across method x dataset points;
* ``calibration``: calibrated per-pixel intervals (risk-controlling prediction sets, Hoeffding-Bentkus);
* ``plotting``: how every figure of the package is made and written (Agg canvas, atomic PNG).

The evaluation run that uses them lives in :mod:`LatentSRLib.evaluation`.
Each module lists its public names in ``__all__``.
"""

from LatentSRLib.metrics.agreement import *  # noqa: F401,F403
from LatentSRLib.metrics.calibration import *  # noqa: F401,F403
from LatentSRLib.metrics.fid import *  # noqa: F401,F403
from LatentSRLib.metrics.frequency import *  # noqa: F401,F403
from LatentSRLib.metrics.hallucination import *  # noqa: F401,F403
from LatentSRLib.metrics.latent_fidelity import *  # noqa: F401,F403
from LatentSRLib.metrics.quality import *  # noqa: F401,F403
from LatentSRLib.metrics.perceptual import *  # noqa: F401,F403
from LatentSRLib.metrics.regression import *  # noqa: F401,F403
from LatentSRLib.metrics.roi import *  # noqa: F401,F403
from LatentSRLib.metrics.statistics import *  # noqa: F401,F403
