"""MONAI transforms of LatentSR: intensity windowing, slicing and the model grid, simulated degradations.

One line per module; each module lists its public names in ``__all__``. The names of
:mod:`.degradations`, :mod:`.intensity` and :mod:`.slicing` are importable from this package; they
load on first use, so that importing a light module (e.g. :mod:`.tasks`, for the command line's
option parsing) does not pull in MONAI and torch.
"""

import importlib

_RE_EXPORTED = ("degradations", "intensity", "slicing")


def __getattr__(name: str):
    for module_name in _RE_EXPORTED:
        module = importlib.import_module(f"{__name__}.{module_name}")
        if name in module.__all__:
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
