"""Scoring one batch: every method's prediction against the TRUE high-resolution slices (rule
1), image by image, into per-image rows (columns: :mod:`.rows`), and the batch's radial power
spectra.

Per method: PSNR, SSIM, MS-SSIM (NaN below its minimum size), LPIPS when a network is given, Haar
subband PSNR, pixel-level hallucination beyond the method's own autoencoder noise floor (methods
with one), latent fidelity (methods that return SR latents), the mean intensity of prediction and
true image, and the method's time per sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from LatentSRLib.metrics.frequency import haar_subband_psnr, radial_power_spectrum
from LatentSRLib.metrics.hallucination import hallucination_maps
from LatentSRLib.metrics.latent_fidelity import latent_fidelity
from LatentSRLib.evaluation.methods import Method, MethodBatch, MethodOutput
from LatentSRLib.metrics.quality import ms_ssim, psnr, ssim

__all__ = ["score_batch"]

LATENT_COLUMNS = ("latent_cosine", "latent_psnr", "latent_cosine_1x1", "latent_psnr_1x1")


def score_batch(
    batch: MethodBatch,
    items: Sequence[Mapping],
    methods: Sequence[Method],
    outputs: Mapping[str, MethodOutput],
    *,
    dataset: str,
    perceptual=None,
    ms_ssim_undefined: bool = False,
    k: float = 2.0,
) -> tuple[list[dict], np.ndarray, dict[str, np.ndarray]]:
    """Score every method's output on one batch.

    Args:
        batch: the batch the methods ran on (``batch.hr`` is the true image).
        items: the batch's dataset items (``id``, ``subject``), in batch order.
        methods: the methods, in row order.
        outputs: ``{method name: its output on batch}`` (noise-floor methods included).
        dataset: the dataset name written into every row.
        perceptual: an available :class:`.perceptual.LPIPSMetric`, or ``None`` (no LPIPS column).
        ms_ssim_undefined: the images are too small for MS-SSIM (its column is NaN).
        k: hallucination noise floor, ``tau = mean + k * SD`` of ``|AE - HR|``.

    Returns:
        The rows (method by method, image by image), the spectrum's radial frequencies, and the summed
        radial power of this batch per curve: ``"HR"`` (the true image) first, then each method.
    """
    hr = batch.hr
    ids = batch.ids
    rows: list[dict] = []
    hr_means = hr.double().mean(dim=(1, 2, 3)).numpy()
    frequencies, power = radial_power_spectrum(hr)
    spectra = {"HR": power.sum(0)}
    for method in methods:
        output = outputs[method.name]
        prediction = output.predictions
        scores = {"psnr": psnr(prediction, hr), "ssim": ssim(prediction, hr),
                  "ms_ssim": np.full(len(ids), np.nan) if ms_ssim_undefined else ms_ssim(prediction, hr)}
        if perceptual is not None:
            scores[perceptual.name] = perceptual(prediction, hr)
        bands = haar_subband_psnr(prediction, hr)
        nan = np.full(len(ids), np.nan)
        hallucinated, lost, tau = nan, nan, nan
        if method.noise_floor is not None:
            results = hallucination_maps(prediction, hr, outputs[method.noise_floor].predictions, k=k)
            hallucinated = np.array([r.hallucinated_fraction for r in results])
            lost = np.array([r.lost_fraction for r in results])
            tau = np.array([r.tau for r in results])
        latent = {name: nan for name in LATENT_COLUMNS}
        if output.sr_latents is not None:
            reference = method.hr_latents(batch)
            full = [latent_fidelity(z, reference, tuple(reference.shape[-2:])) for z in output.sr_latents]
            one = [latent_fidelity(z, reference, 1) for z in output.sr_latents]
            latent = {"latent_cosine": np.mean([r.cosine for r in full], axis=0),
                      "latent_psnr": np.mean([r.psnr for r in full], axis=0),
                      "latent_cosine_1x1": np.mean([r.cosine for r in one], axis=0),
                      "latent_psnr_1x1": np.mean([r.psnr for r in one], axis=0)}
        means = prediction.double().mean(dim=(1, 2, 3)).numpy()
        _, power = radial_power_spectrum(prediction)
        spectra[method.name] = power.sum(0)
        for i, item in enumerate(items):
            row = {"dataset": dataset, "id": item["id"], "subject": item["subject"], "method": method.name,
                   "kind": method.kind, "noise_floor": method.noise_floor or ""}
            row.update({name: float(values[i]) for name, values in scores.items()})
            row.update({f"psnr_{band}": float(values[i]) for band, values in bands.items()})
            row.update(hallucinated_fraction=float(hallucinated[i]), lost_fraction=float(lost[i]),
                       noise_floor_tau=float(tau[i]))
            row.update({name: float(values[i]) for name, values in latent.items()})
            row.update(mean_intensity=float(means[i]), hr_mean_intensity=float(hr_means[i]),
                       seconds_per_sample=float(output.seconds_per_sample))
            rows.append(row)
    return rows, frequencies, spectra
