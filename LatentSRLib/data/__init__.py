"""Data for training and evaluation: slices of scans on the model grid with stable ids and subjects
(:mod:`.slice_source`), prepared HR/LR datasets split by subject (:mod:`.dataset`), MONAI datasets
of their slices (:mod:`.batches`) and the latent cache (:mod:`.latent_cache`)."""

from LatentSRLib.data.dataset import DATASET_FORMAT, SPLITS, PreparedDataset, SplitRule, assign_splits, prepare_dataset

__all__ = ["DATASET_FORMAT", "SPLITS", "PreparedDataset", "SplitRule", "assign_splits", "prepare_dataset"]
