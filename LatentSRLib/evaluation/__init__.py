"""Evaluation workflows: the paper's comparison of SR methods on a prepared dataset, and the
training-free autoencoder screen.

One idea per module: ``evaluate`` (the entry point of the bundle's ``evaluate`` and its run folder),
``methods`` (what is evaluated), ``scoring`` (one batch into per-image rows), ``rows``
(``per_image.csv``, pairing), ``row_statistics`` (every number, from the rows), ``tables``
(``tables.md``), ``figures`` (the figures and the data they are drawn from), ``report``
(``report.md``), ``screening`` (``latentsr screen``: the AE ceiling of autoencoders on your data), ``calibration``
(``latentsr calibrate``: the model's calibrated per-pixel intervals), ``calibration_assessment``
(``latentsr calibrate --assess``: coverage, width by region, hallucination AUROC, reliability diagram).
The metrics and analyses themselves are in :mod:`LatentSRLib.metrics`.
"""
