"""Batches for MONAI engines, read from a prepared dataset (:mod:`.dataset`).

A data item starts as ``{"row", "id", "subject"}`` (from :meth:`PreparedDataset.items`);
:class:`LoadSlicesd` adds the arrays of that row as channel-first ``(1, H, W)`` float32 tensors,
so the usual MONAI dictionary transforms (crops, flips) compose after it.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import Dataset
from monai.transforms import Compose, MapTransform, RandFlipd, RandSpatialCropd

from LatentSRLib.data.dataset import PreparedDataset

__all__ = ["LoadSlicesd", "slice_dataset", "batch_to_device"]

#: dataset array -> item key
ARRAY_KEYS = ("hr", "lr")


class LoadSlicesd(MapTransform):
    """Read row ``data["row"]`` of the dataset's ``hr`` / ``lr`` arrays into ``(1, H, W)`` tensors.

    Args:
        dataset: a :class:`PreparedDataset` or its folder (opened lazily in each worker process,
            because memory maps do not pickle well across ``DataLoader`` workers).
        keys: which arrays to load, among ``"hr"`` and ``"lr"``.
    """

    def __init__(self, dataset: PreparedDataset | str | os.PathLike, keys: KeysCollection = ARRAY_KEYS) -> None:
        super().__init__(keys)
        unknown = [k for k in self.keys if k not in ARRAY_KEYS]
        if unknown:
            raise ValueError(f"unknown array(s) {unknown}; valid: {', '.join(ARRAY_KEYS)}")
        self._folder = dataset.folder if isinstance(dataset, PreparedDataset) else dataset
        self._dataset = dataset if isinstance(dataset, PreparedDataset) else None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_dataset"] = None
        return state

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self._dataset is None:
            self._dataset = PreparedDataset(self._folder)
        out = dict(data)
        row = int(out["row"])
        for key in self.keys:
            out[key] = torch.from_numpy(np.array(getattr(self._dataset, str(key))[row], dtype=np.float32)[None])
        return out


def slice_dataset(
    dataset: PreparedDataset | str | os.PathLike,
    split: str | None = "train",
    *,
    keys: Sequence[str] = ARRAY_KEYS,
    limit: int | None = None,
    patch_size: int | None = None,
    flips: bool = False,
) -> Dataset:
    """A MONAI ``Dataset`` of the rows of ``split``.

    Args:
        keys: arrays to load (``"hr"``, ``"lr"``).
        limit: evenly spaced subset of at most this many rows (e.g. a fixed validation subset).
        patch_size: random square crop of this size, the same window for every key (autoencoder
            training on patches is much cheaper and the network is fully convolutional).
        flips: random left-right and up-down flips (augmentation; off for SR pairs by default,
            since anatomy has a handedness a radiologist expects).
    """
    if not isinstance(dataset, PreparedDataset):
        dataset = PreparedDataset(dataset)
    items = dataset.items(split, limit=limit)
    if not items:
        raise ValueError(f"{dataset.folder}: the {split!r} split is empty")
    chain: list = [LoadSlicesd(dataset, keys)]
    if patch_size:
        chain.append(RandSpatialCropd(list(keys), roi_size=(patch_size, patch_size), random_size=False))
    if flips:
        chain += [RandFlipd(list(keys), prob=0.5, spatial_axis=0), RandFlipd(list(keys), prob=0.5, spatial_axis=1)]
    return Dataset(items, transform=Compose(chain))


def batch_to_device(batch: Mapping[str, Any], device: torch.device | str, keys: Sequence[str] = ARRAY_KEYS) -> dict:
    """Move the image tensors of ``batch`` to ``device`` (IDs and rows stay as they are)."""
    return {k: (torch.as_tensor(v).to(device, non_blocking=True) if k in keys else v) for k, v in batch.items()}
