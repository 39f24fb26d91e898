"""The volume SR engine: super-resolve scans slice by slice, with review maps and metrics."""

from LatentSRLib.inference.engine import Cancelled, SRSettings, VolumeResult, super_resolve_volume

__all__ = ["Cancelled", "SRSettings", "VolumeResult", "super_resolve_volume"]
