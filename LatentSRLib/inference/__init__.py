"""The volume SR engine: super-resolve scans slice by slice, with review maps and metrics."""

from .devices import autocast_for, resolve_device, run_in_batches
from .engine import Cancelled, SRSettings, VolumeResult, super_resolve_volume

__all__ = ["Cancelled", "SRSettings", "VolumeResult", "autocast_for", "resolve_device", "run_in_batches",
           "super_resolve_volume"]
