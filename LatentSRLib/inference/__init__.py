"""The volume SR engine: super-resolve scans slice by slice, with review maps and metrics."""

import importlib

# names -> the module that defines them, imported on first use (``import LatentSRLib.<pkg>.<light module>``
# must not pull in torch: the command line answers a typo before loading it)
_EXPORTS = {
    "Cancelled": "engine",
    "SRSettings": "engine",
    "VolumeResult": "engine",
    "super_resolve_volume": "engine",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
