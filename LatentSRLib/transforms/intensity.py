"""Intensity windowing: map source intensities to ``[0, 1]`` and back, remembering how.

Every model in LatentSR works on images in ``[0, 1]``; scans arrive in arbitrary units (int16 MRI,
Hounsfield units, uint8 radiographs). A window is fixed per volume (the paper normalises "to [0, 1]
per volume"), applied before slicing, and undone on the super-resolved volume so the output file is
in the units and dtype of the input. The window is a small value object that can be stored in JSON
beside the results, so an evaluation or a re-export can reproduce the mapping exactly.

Array transforms take numpy arrays or torch tensors of any shape and return the same type.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.transforms.utils_pytorch_numpy_unification import clip as _clip
from monai.transforms.utils_pytorch_numpy_unification import percentile as _percentile
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type, get_equivalent_dtype

from LatentSRLib.errors import InputError

__all__ = ["IntensityWindow", "PercentileWindow", "PercentileWindowd", "InvertWindowd"]


def _numpy_dtype_name(array: NdarrayOrTensor) -> str:
    """Name of the numpy equivalent of ``array``'s dtype (``"int16"``, ``"float32"``...)."""
    return np.dtype(get_equivalent_dtype(array.dtype, np.ndarray)).name


@dataclass(frozen=True)
class IntensityWindow:
    """A linear map from ``[lower, upper]`` in source units onto ``[0, 1]``, and its inverse.

    Attributes:
        lower: source intensity mapped to 0.
        upper: source intensity mapped to 1 (strictly greater than ``lower``).
        source_dtype: numpy dtype name of the source array (``"int16"``, ``"float32"``...);
            :meth:`invert` casts back to it.
        clip: whether :meth:`apply` clips its result to ``[0, 1]``. Values outside the window are
            then lost, so only values inside the window round-trip exactly.

    Inversion is exact up to float rounding for values inside the window; for integer source
    dtypes the inverse is rounded (and clipped to the dtype's range), so in-window integers come
    back as the very same integers.
    """

    lower: float
    upper: float
    source_dtype: str = "float32"
    clip: bool = True

    def __post_init__(self) -> None:
        # frozen dataclass: normalise the fields through object.__setattr__
        object.__setattr__(self, "lower", float(self.lower))
        object.__setattr__(self, "upper", float(self.upper))
        object.__setattr__(self, "source_dtype", np.dtype(self.source_dtype).name)
        object.__setattr__(self, "clip", bool(self.clip))
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError(f"window bounds must be finite, got lower={self.lower}, upper={self.upper}")
        if not self.upper > self.lower:
            raise ValueError(f"window upper ({self.upper}) must be greater than lower ({self.lower})")

    @property
    def width(self) -> float:
        return self.upper - self.lower

    def apply(self, x: NdarrayOrTensor) -> NdarrayOrTensor:
        """Window ``x`` (any shape, numpy or torch): float32 of the same type, in ``[0, 1]`` when clipped."""
        # float64 arithmetic, then float32: keeps int16/uint16 values exactly recoverable
        x64, *_ = convert_data_type(x, dtype=torch.float64 if isinstance(x, torch.Tensor) else np.float64)
        y = (x64 - self.lower) / self.width
        if self.clip:
            y = _clip(y, 0.0, 1.0)
        out, *_ = convert_to_dst_type(y, dst=x, dtype=np.float32 if isinstance(x, np.ndarray) else torch.float32)
        return out

    def invert(self, y: NdarrayOrTensor) -> NdarrayOrTensor:
        """Map windowed values ``y`` back to source units, cast to :attr:`source_dtype` (same array type)."""
        y64, *_ = convert_data_type(y, dtype=torch.float64 if isinstance(y, torch.Tensor) else np.float64)
        x = y64 * self.width + self.lower
        target = np.dtype(self.source_dtype)
        if np.issubdtype(target, np.integer):
            # round to the nearest integer and keep inside the dtype so the cast cannot wrap around
            info = np.iinfo(target)
            x = _clip(x.round(), float(info.min), float(info.max))
        elif target == np.bool_:
            x = x >= 0.5
        dst_dtype = target if isinstance(y, np.ndarray) else get_equivalent_dtype(target, torch.Tensor)
        out, *_ = convert_to_dst_type(x, dst=y, dtype=dst_dtype)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form (floats, str, bool)."""
        return {"lower": self.lower, "upper": self.upper, "source_dtype": self.source_dtype, "clip": self.clip}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntensityWindow:
        """Rebuild a window from :meth:`to_dict` output (e.g. read back from JSON)."""
        missing = {"lower", "upper"} - set(data)
        if missing:
            raise ValueError(f"an intensity window needs {sorted(missing)}; got keys {sorted(data)}")
        return cls(
            lower=data["lower"],
            upper=data["upper"],
            source_dtype=data.get("source_dtype", "float32"),
            clip=data.get("clip", True),
        )

    @classmethod
    def coerce(cls, window: IntensityWindow | Mapping[str, Any]) -> IntensityWindow:
        """Accept a window or its dict form (what a JSON file or a collated batch carries)."""
        if isinstance(window, IntensityWindow):
            return window
        if isinstance(window, Mapping):
            return cls.from_dict({k: _scalar(v) for k, v in window.items()})
        raise TypeError(f"expected an IntensityWindow or its dict form, got {type(window).__name__}")


def _scalar(value: Any) -> Any:
    """Unwrap 1-element tensors/arrays/lists (a DataLoader collates scalars into batches of one)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return value[0]
    return value


class PercentileWindow(Transform):
    """Window an image between two of its intensity percentiles onto ``[0, 1]``.

    Input: numpy array or torch tensor of any shape and real dtype (typically a whole ``(K, J, I)``
    volume, so every slice shares one window). Output: ``(windowed, window)`` where ``windowed`` is a
    float32 array of the same type and shape, in ``[0, 1]`` when ``clip``, and ``window`` the
    :class:`IntensityWindow` that undoes it. Deterministic.

    Args:
        lower_percentile: percentile (0-100) mapped to 0.
        upper_percentile: percentile (0-100) mapped to 1; ``0`` and ``100`` give min/max scaling.
        nonzero: compute the percentiles over non-zero voxels only (skull-stripped MRI, where the
            zero background would otherwise pull the lower percentile to 0).
        clip: clip the windowed image to ``[0, 1]``.

    Raises:
        InputError: empty, non-finite or constant image, no non-zero voxels with ``nonzero``, or
            percentiles that coincide (a near-constant image).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        lower_percentile: float = 0.5,
        upper_percentile: float = 99.5,
        nonzero: bool = False,
        clip: bool = True,
    ) -> None:
        if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
            raise ValueError(
                "percentiles must satisfy 0 <= lower < upper <= 100, "
                f"got lower={lower_percentile}, upper={upper_percentile}"
            )
        self.lower_percentile = float(lower_percentile)
        self.upper_percentile = float(upper_percentile)
        self.nonzero = bool(nonzero)
        self.clip = bool(clip)

    def compute(self, array: NdarrayOrTensor) -> IntensityWindow:
        """The window of ``array`` (not applied)."""
        values, *_ = convert_data_type(array, output_type=np.ndarray)
        if values.size == 0:
            raise InputError(f"empty image (shape {tuple(values.shape)}), cannot window")
        if np.iscomplexobj(values):
            raise InputError("complex-valued image, cannot window; give a magnitude image")
        if values.dtype == np.bool_:
            values = values.astype(np.uint8)
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            raise InputError("image contains NaN or Inf values, cannot window")
        if values.min() == values.max():
            raise InputError(f"constant image, cannot window (every value is {values.flat[0]})")
        if self.nonzero:
            values = values[values != 0]
            if values.size == 0:  # pragma: no cover - a non-constant image always has a non-zero value
                raise InputError("no non-zero voxels, cannot window with nonzero=True")
        lower, upper = (float(v) for v in _percentile(values, [self.lower_percentile, self.upper_percentile]))
        if not upper > lower:
            raise InputError(
                f"the {self.lower_percentile}th and {self.upper_percentile}th percentiles are both {lower}: "
                "the image is nearly constant; widen the percentiles"
                + ("" if self.nonzero else " or use nonzero=True")
            )
        return IntensityWindow(lower=lower, upper=upper, source_dtype=_numpy_dtype_name(array), clip=self.clip)

    def __call__(self, array: NdarrayOrTensor) -> tuple[NdarrayOrTensor, IntensityWindow]:
        window = self.compute(array)
        return window.apply(array), window


class PercentileWindowd(MapTransform):
    """Dictionary form of :class:`PercentileWindow`.

    Windows ``data[key]`` in place for each key and stores its window in
    ``data[f"{key}_{window_key_postfix}"]`` (an :class:`IntensityWindow`, or its dict form with
    ``store_dict=True``, which a PyTorch ``DataLoader`` can collate).
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower_percentile: float = 0.5,
        upper_percentile: float = 99.5,
        nonzero: bool = False,
        clip: bool = True,
        window_key_postfix: str = "window",
        store_dict: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windower = PercentileWindow(lower_percentile, upper_percentile, nonzero=nonzero, clip=clip)
        self.window_key_postfix = window_key_postfix
        self.store_dict = store_dict

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], window = self.windower(d[key])
            d[f"{key}_{self.window_key_postfix}"] = window.to_dict() if self.store_dict else window
        return d


class InvertWindowd(MapTransform):
    """Undo a window on ``data[key]`` for each key: back to source units and dtype.

    Args:
        keys: items to invert (e.g. ``"image"``, or a model output ``"pred"``).
        window_key: where the window is: one key for all items (e.g. ``"image_window"``, to invert a
            prediction with its input's window), one key per item, or ``None`` for
            ``f"{key}_{window_key_postfix}"`` (what :class:`PercentileWindowd` writes). The stored
            value may be an :class:`IntensityWindow` or its dict form.
    """

    def __init__(
        self,
        keys: KeysCollection,
        window_key: str | Sequence[str] | None = None,
        window_key_postfix: str = "window",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if window_key is None:
            self.window_keys = [f"{k}_{window_key_postfix}" for k in self.keys]
        elif isinstance(window_key, str):
            self.window_keys = [window_key] * len(self.keys)
        else:
            self.window_keys = list(window_key)
            if len(self.window_keys) != len(self.keys):
                raise ValueError(f"{len(self.keys)} keys but {len(self.window_keys)} window keys")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, window_key in self.key_iterator(d, self.window_keys):
            if window_key not in d:
                raise KeyError(f"no intensity window under {window_key!r} to invert {key!r}")
            d[key] = IntensityWindow.coerce(d[window_key]).invert(d[key])
        return d
