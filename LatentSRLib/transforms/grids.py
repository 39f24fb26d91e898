"""The coarse and the fine grid of a super-resolution factor: one definition for every path (rule 11).

A fine grid is ``s`` times finer than its coarse grid along the refined array axes, over the same
field of view: the outer pixel edges coincide, so coarse pixel ``k`` covers fine pixels
``k*s .. k*s + s - 1`` and its centre lies at fine index ``k*s + (s - 1) / 2``. Along a refined axis
with unit direction ``d``:

* fine spacing = coarse spacing / ``s``; fine size = coarse size x ``s``;
* fine origin = coarse origin - ``d`` x coarse spacing x (``s`` - 1) / (2 ``s``)
  (half a coarse pixel back, half a fine pixel forward).

A fine grid whose size is not a multiple of ``s`` is first extended at its far end (edge values
repeated) to the next multiple; :func:`coarse_size` says how many coarse pixels result.

The resampling between the two grids is PyTorch's PIL-compatible bicubic (``antialias=True``: Keys,
a = -0.5, widened by the factor when shrinking; ``align_corners=False``, whose sample positions follow
exactly the centres above) in both directions, as the training pairs were always made, so that the
training pairs of a prepared dataset, ``latentsr degrade``, ``--simulate-scale`` and the engine's
up-sampling of a real low-resolution scan are the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from LatentSRLib.io.image import MedicalImage, index_axis_of_array_axis

__all__ = ["coarse_image", "coarse_size", "downsample", "fine_image", "upsample"]


def coarse_size(fine: int, scale: int) -> int:
    """Coarse pixels of a fine axis of ``fine`` pixels (a partial last coarse pixel counts)."""
    return max(1, math.ceil(int(fine) / int(scale)))


def _regrid(image: MedicalImage, array_axes: Sequence[int], factor: float, shape: tuple[int, ...]) -> MedicalImage:
    """``image``'s geometry with spacing x ``factor`` along ``array_axes`` (outer edges kept) and ``shape``."""
    spacing = list(image.spacing)
    origin = np.array(image.origin, dtype=float)
    for axis in array_axes:
        d = index_axis_of_array_axis(axis, image.ndim)
        old = spacing[d]
        spacing[d] = old * factor
        origin = origin + image.direction[:, d] * (spacing[d] - old) / 2.0
    # the source's DICOM headers stay: a series written on the new grid belongs to the source's study
    # (the writer takes patient and study from them, the geometry from the grid)
    return MedicalImage(np.zeros(shape, dtype=np.float32), tuple(spacing), tuple(origin), image.direction.copy(),
                        metadata=dict(image.metadata), path=image.path, dicom_headers=image.dicom_headers)


def fine_image(coarse: MedicalImage, array_axes: Sequence[int], scale: int, array: np.ndarray | None = None) -> MedicalImage:
    """The fine grid of ``coarse`` (``scale`` times finer along ``array_axes``), holding ``array``
    (zeros when None)."""
    shape = tuple(n * scale if a in array_axes else n for a, n in enumerate(coarse.shape))
    grid = _regrid(coarse, array_axes, 1.0 / scale, shape)
    return grid if array is None else grid.with_array(np.asarray(array))


def coarse_image(fine: MedicalImage, array_axes: Sequence[int], scale: int, array: np.ndarray | None = None) -> MedicalImage:
    """The coarse grid whose fine grid (:func:`fine_image`) starts where ``fine`` starts; along a
    refined axis it has :func:`coarse_size` pixels."""
    shape = tuple(coarse_size(n, scale) if a in array_axes else n for a, n in enumerate(fine.shape))
    grid = _regrid(fine, array_axes, float(scale), shape)
    return grid if array is None else grid.with_array(np.asarray(array))


def _pad_to_multiple(x: torch.Tensor, dims: Sequence[int], scale: int) -> torch.Tensor:
    for dim in dims:
        missing = -x.shape[dim] % scale
        if missing:
            edge = x.narrow(dim, x.shape[dim] - 1, 1)
            x = torch.cat([x, edge.expand(*[missing if i == dim % x.ndim else -1 for i in range(x.ndim)])], dim=dim)
    return x


def downsample(x: torch.Tensor, scale: int, dims: Sequence[int] = (-2, -1)) -> torch.Tensor:
    """Fine ``(B, C, H, W)`` images -> their coarse grid along ``dims`` (of -2, -1): edge-extended to a
    multiple of ``scale``, then antialiased bicubic to ``1/scale`` the size. Not clipped."""
    x = _pad_to_multiple(x.float(), dims, scale)
    size = [x.shape[-2], x.shape[-1]]
    for dim in dims:
        size[dim] = x.shape[dim] // scale
    if tuple(size) == tuple(x.shape[-2:]):
        return x.clone()
    return F.interpolate(x, size=tuple(size), mode="bicubic", antialias=True, align_corners=False)


def upsample(x: torch.Tensor, scale: int, dims: Sequence[int] = (-2, -1), size: Sequence[int] | None = None) -> torch.Tensor:
    """Coarse ``(B, C, h, w)`` images -> the fine grid along ``dims``: bicubic by ``scale``, then
    cropped to ``size`` (the fine image's own size, when it was not a multiple of ``scale``). Not clipped."""
    out = [x.shape[-2], x.shape[-1]]
    for dim in dims:
        out[dim] = x.shape[dim] * scale
    y = x.float() if tuple(out) == tuple(x.shape[-2:]) else F.interpolate(
        x.float(), size=tuple(out), mode="bicubic", antialias=True, align_corners=False)
    if size is not None:
        y = y[..., : int(size[0]), : int(size[1])]
    return y
