"""Training: prepared SR datasets, batches for MONAI engines, checkpoints, logs and the trainers'
iteration steps used by the bundle in ``Training/configs``."""

from . import autoencoder, batches, checkpoints, latent_cache, logs, runs
from .dataset import DATASET_FORMAT, SPLITS, PreparedDataset, SplitRule, assign_splits, prepare_dataset

__all__ = [
    "DATASET_FORMAT",
    "SPLITS",
    "PreparedDataset",
    "SplitRule",
    "assign_splits",
    "autoencoder",
    "batches",
    "checkpoints",
    "latent_cache",
    "logs",
    "prepare_dataset",
    "runs",
]
