"""Batches for MONAI engines, read from a prepared dataset (:mod:`.dataset`).

A data item starts as ``{"row", "id", "subject"}`` (from :meth:`PreparedDataset.items`);
:class:`LoadSlicesd` adds the arrays of that row as channel-first ``(1, H, W)`` float32 tensors,
so the usual MONAI dictionary transforms (crops, flips) compose after it. :func:`augmentations`
are the random MONAI dictionary transforms an autoencoder's training slices may get (flips, small
rotations, gamma contrast, bias field), each with its own probability.
"""

from __future__ import annotations

import os
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import Dataset
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandFlipd,
    RandRotated,
    RandSpatialCropd,
    ScaleIntensityRanged,
)

from LatentSRLib.data.dataset import PreparedDataset

__all__ = ["AUGMENTATION_DEFAULTS", "LoadSlicesd", "augmentations", "slice_dataset", "batch_to_device"]

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


#: the settings :func:`augmentations` takes, with their defaults (probabilities per item; 0 leaves a transform out)
AUGMENTATION_DEFAULTS: dict[str, Any] = {
    "flip_prob": 0.5,             # left-right and up-down flips, each with this probability
    "rotate_prob": 0.0,           # in-plane rotation by up to +-rotate_degrees (reflection padding)
    "rotate_degrees": 10.0,
    "gamma_prob": 0.0,            # gamma contrast adjustment, gamma uniform in gamma_range (MONAI RandAdjustContrast)
    "gamma_range": (0.7, 1.5),
    "bias_field_prob": 0.0,       # smooth multiplicative bias field, degree-3 Legendre coefficients in [0, bias_field_coeff]
    "bias_field_coeff": 0.2,
}


def augmentations(keys: Sequence[str], settings: Mapping[str, Any] | None = None) -> tuple[list, list]:
    """The random MONAI dictionary transforms for ``keys``: ``(before_crop, after_crop)``.

    Rotation acts on the whole slice (before any crop, so a patch has no padded corners where the
    slice had content); flips, gamma and the bias field on the crop. Intensity changes are clipped
    back to ``[0, 1]``. Each transform has its own probability in ``settings`` (see
    :data:`AUGMENTATION_DEFAULTS`; unknown names are refused); one with probability 0 is left out of
    the chain, so the defaults give exactly the flips the chain had before intensity augmentation
    existed. Meant for images trained on alone (an autoencoder's HR slices): a random gamma or
    bias field applied to an HR/LR pair would not be the pair's degradation.
    """
    options = dict(AUGMENTATION_DEFAULTS)
    unknown = sorted(set(settings or {}) - set(options))
    if unknown:
        raise ValueError(f"unknown augmentation setting(s) {unknown}; valid: {', '.join(options)}")
    options.update(settings or {})
    for name in ("flip_prob", "rotate_prob", "gamma_prob", "bias_field_prob"):
        if not 0.0 <= float(options[name]) <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {options[name]}")
    keys = list(keys)
    before: list = []
    after: list = []
    if options["rotate_prob"] > 0:
        angle = math.radians(float(options["rotate_degrees"]))
        before.append(RandRotated(keys, range_x=angle, prob=float(options["rotate_prob"]), keep_size=True,
                                  mode="bilinear", padding_mode="reflection"))
    if options["flip_prob"] > 0:
        after += [RandFlipd(keys, prob=float(options["flip_prob"]), spatial_axis=axis) for axis in (0, 1)]
    intensity = []
    if options["gamma_prob"] > 0:
        low, high = (float(g) for g in options["gamma_range"])
        if not 0 < low <= high:
            raise ValueError(f"gamma_range must be [low, high] with 0 < low <= high, got {options['gamma_range']}")
        intensity.append(RandAdjustContrastd(keys, prob=float(options["gamma_prob"]), gamma=(low, high)))
    if options["bias_field_prob"] > 0:
        intensity.append(RandBiasFieldd(keys, prob=float(options["bias_field_prob"]),
                                        coeff_range=(0.0, float(options["bias_field_coeff"]))))
    if intensity:
        after += [*intensity, ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True)]
    return before, after


def slice_dataset(
    dataset: PreparedDataset | str | os.PathLike,
    split: str | None = "train",
    *,
    keys: Sequence[str] = ARRAY_KEYS,
    limit: int | None = None,
    patch_size: int | None = None,
    flips: bool = False,
    augmentation: Mapping[str, Any] | None = None,
    random_crop: bool = True,
) -> Dataset:
    """A MONAI ``Dataset`` of the rows of ``split``.

    Args:
        keys: arrays to load (``"hr"``, ``"lr"``).
        limit: evenly spaced subset of at most this many rows (e.g. a fixed validation subset).
        patch_size: random square crop of this size, the same window for every key (autoencoder
            training on patches is much cheaper and the network is fully convolutional).
        flips: random left-right and up-down flips (augmentation; off for SR pairs by default,
            since anatomy has a handedness a radiologist expects).
        augmentation: settings of :func:`augmentations` (flips, rotation, gamma, bias field), in
            place of ``flips``; ``None``: none of them.
        random_crop: ``patch_size`` crops at a random place (default), else the centre crop: with
            no ``flips`` and no ``augmentation``, every item is then the same for every pass.
    """
    if not isinstance(dataset, PreparedDataset):
        dataset = PreparedDataset(dataset)
    items = dataset.items(split, limit=limit)
    if not items:
        raise ValueError(f"{dataset.folder}: the {split!r} split is empty")
    if flips and augmentation is not None:
        raise ValueError("give flips through augmentation (flip_prob), not both")
    before, after = augmentations(keys, augmentation) if augmentation is not None else ([], [])
    chain: list = [LoadSlicesd(dataset, keys), *before]
    if patch_size and random_crop:
        chain.append(RandSpatialCropd(list(keys), roi_size=(patch_size, patch_size), random_size=False))
    elif patch_size:
        chain.append(CenterSpatialCropd(list(keys), roi_size=(patch_size, patch_size)))
    chain += after
    if flips:
        chain += [RandFlipd(list(keys), prob=0.5, spatial_axis=0), RandFlipd(list(keys), prob=0.5, spatial_axis=1)]
    return Dataset(items, transform=Compose(chain))


def batch_to_device(batch: Mapping[str, Any], device: torch.device | str, keys: Sequence[str] = ARRAY_KEYS) -> dict:
    """Move the image tensors of ``batch`` to ``device`` (IDs and rows stay as they are)."""
    return {k: (torch.as_tensor(v).to(device, non_blocking=True) if k in keys else v) for k, v in batch.items()}
