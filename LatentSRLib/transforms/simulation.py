"""Simulate a low-resolution acquisition of a whole image or volume, on its own grid and units.

The one place where a degradation meets a real file: window to [0,1], degrade every slice of the
chosen plane in-plane, put the slices back, and return to the source's units and dtype. Used by
``latentsr degrade``, by evaluation with ``--simulate-scale`` and by the Slicer module.
"""

from __future__ import annotations

import numpy as np
import torch

from LatentSRLib.errors import InputError
from LatentSRLib.io import MedicalImage, check_pixels
from LatentSRLib.transforms.degradations import make_degradation
from LatentSRLib.transforms.intensity import PercentileWindow
from LatentSRLib.transforms.slicing import SliceLayout

__all__ = ["simulate_low_resolution"]


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
