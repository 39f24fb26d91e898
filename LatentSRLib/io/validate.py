"""Checks that turn unusable pixel data into one clear :class:`InputError` naming the file."""

from __future__ import annotations

import numpy as np

from LatentSRLib.errors import InputError
from LatentSRLib.io.image import MedicalImage

__all__ = ["check_pixels", "require_volume"]


def check_pixels(image: MedicalImage, *, allow_constant: bool = False) -> MedicalImage:
    """Refuse empty, non-finite or (unless allowed) constant images; return ``image`` unchanged."""
    array = image.array
    where = image.path
    if array.size == 0 or 0 in array.shape:
        raise InputError(f"the image is empty (shape {array.shape})", where)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise InputError(f"pixel type {array.dtype} is not numeric", where)
    if np.iscomplexobj(array):
        raise InputError("complex-valued pixels are not supported; give a magnitude image", where)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            bad = array.size - int(np.count_nonzero(finite))
            kinds = []
            if np.isnan(array).any():
                kinds.append("NaN")
            if np.isinf(array).any():
                kinds.append("Inf")
            raise InputError(f"{bad} pixel(s) are {'/'.join(kinds)}; fix or mask them first", where)
    if not allow_constant and array.min() == array.max():
        raise InputError(f"the image is constant (every pixel is {array.flat[0]}); nothing to work on", where)
    return image


def require_volume(image: MedicalImage) -> MedicalImage:
    """Refuse anything that is not a 3D volume (2D images are refused with a hint)."""
    if image.ndim != 3:
        raise InputError(f"a 3D volume is expected, got a {image.ndim}D image of shape {image.shape}", image.path)
    return image
