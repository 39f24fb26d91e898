"""Evaluation of super-resolution results against the true high-resolution images.

One idea per module:

* ``metrics``: per-image PSNR, SSIM, MS-SSIM (torchmetrics);
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
* ``plotting``: how every figure is made and written (Agg canvas, atomic PNG).

An evaluation run (not imported here): ``evaluate`` (the entry point and its run folder), ``methods``
(what is evaluated), ``scoring`` (one batch into per-image rows), ``rows`` (``per_image.csv``,
pairing), ``row_statistics`` (every number, from the rows), ``tables`` (``tables.md``), ``figures``
(the figures and the data they are drawn from), ``report`` (``report.md``).

Each module lists its public names in ``__all__``.
"""

from .agreement import *  # noqa: F401,F403
from .fid import *  # noqa: F401,F403
from .frequency import *  # noqa: F401,F403
from .hallucination import *  # noqa: F401,F403
from .latent_fidelity import *  # noqa: F401,F403
from .metrics import *  # noqa: F401,F403
from .perceptual import *  # noqa: F401,F403
from .regression import *  # noqa: F401,F403
from .roi import *  # noqa: F401,F403
from .statistics import *  # noqa: F401,F403
