"""Training workflows wired into MONAI engines by the bundle in ``Training/configs``: the autoencoder
and SR trainers' steps and exporters, checkpoints, logs and run folders. Datasets, batches and the
latent cache they train on are in :mod:`LatentSRLib.data`."""

from LatentSRLib.training import autoencoder, checkpoints, logs, runs, tiny_autoencoder

__all__ = ["autoencoder", "checkpoints", "logs", "runs", "tiny_autoencoder"]
