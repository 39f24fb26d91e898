"""Simulate a low-resolution acquisition of a whole image or volume, on its own grid and units.

The one place where a degradation meets a real file: window to [0,1], degrade every slice of the
chosen plane in-plane, put the slices back, and return to the source's units and dtype. Used by
``latentsr degrade``, by evaluation with ``--simulate-scale`` and by the Slicer module.
:func:`simulate_coarse_scan` writes the in-plane measurement on its own coarse grid instead, as a
scanner stores a low-resolution acquisition: the input of a real super-resolution run.
"""

from __future__ import annotations

import numpy as np
import torch

from LatentSRLib.errors import InputError
from LatentSRLib.io import MedicalImage, check_pixels
from LatentSRLib.transforms.degradations import make_degradation
from LatentSRLib.transforms.grids import coarse_image, downsample
from LatentSRLib.transforms.intensity import PercentileWindow
from LatentSRLib.transforms.slicing import SliceLayout

__all__ = ["simulate_coarse_scan", "simulate_low_resolution"]


def simulate_low_resolution(
    image: MedicalImage,
    *,
    mode: str = "sr",
    scale: int = 4,
    noise: float = 0.0,
    seed: int | None = None,
    plane: str = "axial",
    **options,
) -> MedicalImage:
    """Degrade ``image`` as a lower-resolution scan would look, on the same grid.

    Args:
        image: a 2D image or 3D volume (any real dtype).
        mode: a key of :data:`~LatentSRLib.transforms.tasks.DEGRADATION_MODES`.
        scale: integer resolution factor.
        noise: standard deviation of added noise, as a fraction of the intensity range.
        seed: seed of the noise (results are reproducible for a given seed).
        plane: anatomical plane whose slices are degraded in-plane (ignored for 2D images).
        options: extra keyword arguments of the degradation (e.g. ``taper`` for k-space).

    Returns:
        A new image with the same shape, geometry and dtype, in the source's intensity units.
    """
    check_pixels(image)
    # min-max window (no clipping) so that the round trip to [0,1] and back is exact
    windowed, window = PercentileWindow(lower_percentile=0.0, upper_percentile=100.0, clip=False)(image.array)
    layout = SliceLayout.for_image(image, plane)
    slices = torch.as_tensor(np.ascontiguousarray(layout.extract(np.asarray(windowed, dtype=np.float32))))
    try:
        degrade = make_degradation(mode, scale, noise=noise, seed=seed, **options)
        low = degrade(slices[:, None])[:, 0]  # (N, 1, H, W): one channel-first item per slice
    except (ValueError, RuntimeError) as exc:  # MONAI's Compose wraps errors in RuntimeError
        cause = exc if isinstance(exc, ValueError) else exc.__cause__
        if not isinstance(cause, ValueError):
            raise
        raise InputError(f"cannot degrade ({cause})", image.path) from None  # e.g. a scale too large
    low = torch.as_tensor(low).numpy()
    restored = window.invert(layout.assemble(low))
    return image.with_array(
        restored,
        degradation={"mode": mode, "scale": scale, "noise": noise, "seed": seed, "plane": layout.plane, **options},
    )


def simulate_coarse_scan(image: MedicalImage, scale: int = 4, *, plane: str = "axial") -> MedicalImage:
    """The low-resolution scan of ``image`` on its own coarse grid: ``scale`` times coarser in-plane
    (same field of view, outer pixel edges kept; :mod:`~LatentSRLib.transforms.grids`), as a scanner
    stores a low-resolution acquisition.

    The measurement is the grid's one forward operator (``downsample``: edge extension to a multiple
    of ``scale``, antialiased bicubic, no noise) applied to every slice of ``plane`` in source units
    scaled to [0, 1] (min-max, so the round trip is exact), then returned to the source's units and
    dtype (integers rounded). It is exactly what ``latentsr sr --simulate-scale`` measures (rule 11),
    so a model meets the degradation it learned. ``image``: a 2D image or 3D volume of any real dtype.
    Returns a ``(ceil(H / scale), ceil(W / scale))``-per-slice image with the slice axis unchanged.
    """
    check_pixels(image)
    if scale < 1:
        raise InputError(f"the scale must be a positive integer, not {scale}", image.path)
    windowed, window = PercentileWindow(lower_percentile=0.0, upper_percentile=100.0, clip=False)(image.array)
    layout = SliceLayout.for_image(image, plane)
    if min(layout.slice_shape) < scale:
        raise InputError(f"slices of {layout.slice_shape[0]} x {layout.slice_shape[1]} pixels are smaller than the scale "
                         f"{scale}", image.path)
    slices = torch.as_tensor(np.ascontiguousarray(layout.extract(np.asarray(windowed, dtype=np.float32))))
    coarse = downsample(slices[:, None], scale)[:, 0].numpy()
    axes = (0, 1) if layout.plane == "image" else (layout.axes[1], layout.axes[2])
    grid = coarse_image(image, axes, scale)
    coarse_layout = SliceLayout.for_image(grid, layout.plane if layout.plane != "image" else "axial")
    return grid.with_array(window.invert(coarse_layout.assemble(coarse)),
                           degradation={"mode": "sr", "scale": scale, "grid": "coarse", "plane": layout.plane})
