"""The trained SR model: its folder format, THE one sampling path, and devices.

* :mod:`.folder`: :class:`SRModel` and the model folder (save, load, package);
* :mod:`.sampling`: :func:`sample_sr`, the one place where LR images become SR samples
  (encode -> sample K times from per-id seeded noise -> decode), and every sampling default;
* :mod:`.devices`: the one device resolver (CUDA, then MPS, then CPU), autocast, batches that
  halve on out-of-memory.
"""

from LatentSRLib.model.devices import autocast_for, default_batch_size, resolve_device, run_in_batches
from LatentSRLib.model.folder import MODEL_FORMAT, SRModel, load_sr_model, package_sr_model, save_sr_model

__all__ = ["MODEL_FORMAT", "SRModel", "autocast_for", "default_batch_size", "load_sr_model", "package_sr_model",
           "resolve_device", "run_in_batches", "save_sr_model"]
