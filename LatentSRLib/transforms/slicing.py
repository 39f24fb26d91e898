"""From a volume to 2D model inputs and back: anatomical slicing and the model grid.

Two exact-inverse steps and one resampling step:

1. :class:`SliceLayout` takes the slices of one anatomical plane (axial, coronal, sagittal),
   resolved from the direction matrix, and turns each upright in the radiological display
   convention (axial: anterior at the top, patient's right on the image's left; coronal: superior
   at the top, right on the left; sagittal: superior at the top, anterior on the left). Only
   transposes and flips are involved, so :meth:`SliceLayout.assemble` restores the volume
   bit for bit.
2. :class:`ModelGrid` resamples those slices to the model's grid (256x256 by default) and back.
   ``fit="pad"`` keeps the physical aspect ratio (anisotropic pixels, non-square slices) by
   resizing to square model pixels and padding; ``fit="stretch"`` resizes straight to the grid as the
   paper did; ``fit="tile"`` keeps the slice's own pixels (a radiograph is far larger than the grid):
   the slice is only padded to a whole number of latent pixels, and the model sees it through
   grid-sized tiles (:func:`tile_windows` for training data, MONAI's sliding window at inference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from LatentSRLib.io.image import PLANES, MedicalImage

__all__ = ["SliceLayout", "ModelGrid", "resize_slices", "tile_windows", "TILE_MULTIPLE"]

#: In tile mode slices are padded to a multiple of this (the largest latent down-sampling x 2).
TILE_MULTIPLE = 16

# For each plane: (world axis, wanted sign) of image rows (top to bottom) and columns (left to
# right) in LPS, i.e. the radiological display convention.
_UPRIGHT: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "axial": ((1, +1), (0, +1)),  # rows anterior -> posterior, columns right -> left
    "coronal": ((2, -1), (0, +1)),  # rows superior -> inferior, columns right -> left
    "sagittal": ((2, -1), (1, +1)),  # rows superior -> inferior, columns anterior -> posterior
}


@dataclass(frozen=True)
class SliceLayout:
    """How the slices of one plane sit in a volume's array.

    Attributes:
        plane: ``"axial"``, ``"coronal"``, ``"sagittal"``, or ``"image"`` for a 2D image.
        axes: array axes of the volume holding (slice, row, column).
        flips: whether rows and columns are reversed to make the slices upright.
        volume_shape: shape of the volume array.
        pixel_spacing: physical size in mm of a slice pixel along (row, column).
        slice_spacing: distance in mm between consecutive slices (0 for a 2D image).
    """

    plane: str
    axes: tuple[int, int, int]
    flips: tuple[bool, bool]
    volume_shape: tuple[int, ...]
    pixel_spacing: tuple[float, float]
    slice_spacing: float

    @classmethod
    def for_image(cls, image: MedicalImage, plane: str = "axial") -> SliceLayout:
        """The layout of ``plane`` in ``image``; a 2D image is a single slice, as stored."""
        if image.ndim == 2:
            return cls("image", (0, 1, 2), (False, False), (1, *image.shape),
                       (image.spacing[1], image.spacing[0]), 0.0)
        if plane not in PLANES:
            raise ValueError(f"unknown plane {plane!r}; choose from {', '.join(PLANES)}")
        world_of_index = image.index_axes_to_world_axes()  # per index axis (i, j, k)
        n = image.ndim

        def array_axis_and_flip(world_axis: int, wanted_sign: int) -> tuple[int, bool]:
            for index_axis, (world, sign) in enumerate(world_of_index):
                if world == world_axis:
                    return n - 1 - index_axis, sign != wanted_sign
            raise AssertionError("every world axis has an index axis")  # pragma: no cover

        slice_axis = image.array_axis_for_plane(plane)
        (row_world, row_sign), (col_world, col_sign) = _UPRIGHT[plane]
        row_axis, flip_rows = array_axis_and_flip(row_world, row_sign)
        col_axis, flip_cols = array_axis_and_flip(col_world, col_sign)
        spacing_of_array_axis = list(reversed(image.spacing))
        return cls(
            plane,
            (slice_axis, row_axis, col_axis),
            (flip_rows, flip_cols),
            image.shape,
            (spacing_of_array_axis[row_axis], spacing_of_array_axis[col_axis]),
            spacing_of_array_axis[slice_axis],
        )

    @property
    def num_slices(self) -> int:
        return self.volume_shape[self.axes[0]] if len(self.volume_shape) == 3 else 1

    @property
    def slice_shape(self) -> tuple[int, int]:
        shape = self.volume_shape
        return (shape[self.axes[1]], shape[self.axes[2]])

    def extract(self, volume: np.ndarray) -> np.ndarray:
        """Upright slices ``(N, H, W)`` of ``volume`` (a view where possible; 2D -> ``(1, H, W)``)."""
        volume = np.asarray(volume)
        if volume.shape != self.volume_shape[-volume.ndim:] or volume.ndim not in (2, 3):
            raise ValueError(f"array of shape {volume.shape} does not match the layout's {self.volume_shape}")
        if volume.ndim == 2:
            return volume[None]
        slices = np.transpose(volume, self.axes)
        if self.flips[0]:
            slices = slices[:, ::-1, :]
        if self.flips[1]:
            slices = slices[:, :, ::-1]
        return slices

    def assemble(self, slices: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`extract`: put ``(N, H, W)`` slices back into a volume array (a copy)."""
        slices = np.asarray(slices)
        expected = (self.num_slices, *self.slice_shape)
        if slices.shape != expected:
            raise ValueError(f"expected slices of shape {expected}, got {slices.shape}")
        if self.plane == "image":
            return np.array(slices[0])
        if self.flips[0]:
            slices = slices[:, ::-1, :]
        if self.flips[1]:
            slices = slices[:, :, ::-1]
        return np.ascontiguousarray(np.transpose(slices, np.argsort(self.axes)))


def resize_slices(
    slices: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    mode: Literal["bilinear", "bicubic", "nearest", "area"] = "bilinear",
) -> torch.Tensor:
    """Resize ``(N, H, W)`` or ``(N, C, H, W)`` slices to ``size``; antialiased when shrinking.

    Returns a float32 tensor (shape ``(N, *size)`` or ``(N, C, *size)``).
    """
    x = torch.as_tensor(np.ascontiguousarray(slices) if isinstance(slices, np.ndarray) else slices)
    squeeze = x.ndim == 3
    x = x.float()
    if squeeze:
        x = x[:, None]
    if tuple(x.shape[-2:]) != tuple(size):
        shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        kwargs = {"antialias": shrinking} if mode in ("bilinear", "bicubic") else {}
        if mode != "nearest" and mode != "area":
            kwargs["align_corners"] = False
        x = F.interpolate(x, size=tuple(size), mode=mode, **kwargs)
    return x[:, 0] if squeeze else x


@dataclass(frozen=True)
class ModelGrid:
    """Resampling between slice grids and the model's square grid.

    Args:
        size: model grid ``(H, W)``, 256x256 by default; in tile mode the tile size.
        fit: ``"pad"`` keeps the physical aspect ratio (square model pixels, centred, padded with
            ``pad_value``); ``"stretch"`` resizes each slice to the grid regardless of aspect;
            ``"tile"`` keeps the slice's pixels and pads its bottom and right edges to a multiple of
            :data:`TILE_MULTIPLE` (and at least one tile).
        mode: interpolation (``"bilinear"`` as in the paper's preprocessing, or ``"bicubic"``).
        pad_value: value of the padding (0 = the bottom of a [0,1] intensity window).
    """

    size: tuple[int, int] = (256, 256)
    fit: Literal["pad", "stretch", "tile"] = "pad"
    mode: Literal["bilinear", "bicubic"] = "bilinear"
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        if self.fit not in ("pad", "stretch", "tile"):
            raise ValueError(f"fit must be 'pad', 'stretch' or 'tile', not {self.fit!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be two positive integers, not {self.size}")

    @property
    def tiled(self) -> bool:
        return self.fit == "tile"

    def model_shape(self, slice_shape: tuple[int, int]) -> tuple[int, int]:
        """``(H, W)`` of one slice as the model sees it: the grid, or in tile mode the padded slice."""
        if not self.tiled:
            return tuple(self.size)
        return tuple(max(s, -(-n // TILE_MULTIPLE) * TILE_MULTIPLE) for n, s in zip(slice_shape, self.size))

    def content_box(self, slice_shape: tuple[int, int], pixel_spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the resampled slice inside the model grid."""
        if self.fit == "stretch":
            return (0, 0, *self.size)
        if self.tiled:
            return (0, 0, *slice_shape)
        extent = np.array(slice_shape, float) * np.array(pixel_spacing, float)
        scale = min(self.size[0] / extent[0], self.size[1] / extent[1])  # model pixels per mm
        height = int(min(self.size[0], max(1, round(extent[0] * scale))))
        width = int(min(self.size[1], max(1, round(extent[1] * scale))))
        return ((self.size[0] - height) // 2, (self.size[1] - width) // 2, height, width)

    def to_model(self, slices, pixel_spacing: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """``(N, H, W)`` slices -> ``(N, *model_shape)`` float32 tensor on the model grid."""
        slices = torch.as_tensor(np.ascontiguousarray(slices) if isinstance(slices, np.ndarray) else slices)
        shape = self.model_shape(tuple(slices.shape[-2:]))
        top, left, height, width = self.content_box(tuple(slices.shape[-2:]), pixel_spacing)
        resized = slices.float() if self.tiled else resize_slices(slices, (height, width), self.mode)
        if (height, width) == tuple(shape):
            return resized
        out = torch.full((slices.shape[0], *shape), float(self.pad_value), dtype=resized.dtype)
        out[:, top : top + height, left : left + width] = resized
        return out

    def from_model(self, model_slices, slice_shape: tuple[int, int],
                   pixel_spacing: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """Inverse of :meth:`to_model`: ``(N, *model_shape)`` -> ``(N, *slice_shape)`` float32 tensor."""
        model_slices = torch.as_tensor(model_slices)
        top, left, height, width = self.content_box(tuple(slice_shape), pixel_spacing)
        content = model_slices[..., top : top + height, left : left + width]
        return content.float() if self.tiled else resize_slices(content, tuple(slice_shape), self.mode)


def tile_windows(shape: tuple[int, int], size: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int]]:
    """``(top, left)`` of the ``size`` windows that cover an image of ``shape`` at ``stride`` (the last
    window of each row and column flush with the edge; MONAI's sliding-window positions). An image
    smaller than a window has the one window ``(0, 0)`` (pad it first)."""
    from monai.data.utils import dense_patch_slices

    padded = tuple(max(n, s) for n, s in zip(shape, size))
    return [(int(rows.start), int(cols.start)) for rows, cols in dense_patch_slices(padded, size, stride)]
