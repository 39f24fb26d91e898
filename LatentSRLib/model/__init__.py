"""The trained SR model: its folder format, THE one sampling path, and devices.

* :mod:`.folder`: :class:`SRModel` and the model folder (save, load, package);
* :mod:`.sampling`: :func:`sample_sr`, the one place where LR images become SR samples
  (encode -> sample K times from per-id seeded noise -> decode), and every sampling default;
* :mod:`.devices`: the one device resolver (CUDA, then MPS, then CPU), autocast, batches that
  halve on out-of-memory.
"""

import importlib

# names -> the module that defines them, imported on first use (``import LatentSRLib.<pkg>.<light module>``
# must not pull in torch: the command line answers a typo before loading it)
_EXPORTS = {
    "MODEL_FORMAT": "config",
    "SRModel": "folder",
    "autocast_for": "devices",
    "default_batch_size": "devices",
    "load_sr_model": "folder",
    "package_sr_model": "folder",
    "read_model_config": "config",
    "resolve_device": "devices",
    "run_in_batches": "devices",
    "save_sr_model": "folder",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
