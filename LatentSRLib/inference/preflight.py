"""The checks ``latentsr sr`` runs before any heavy import or computation (no torch here): the
input files exist, the model folder's configuration is sound, the output folder may be replaced
and can be written. A mistake is answered in one line within a second, not after the SR."""

from __future__ import annotations

import json
import os
from pathlib import Path

from LatentSRLib.errors import InputError
from LatentSRLib.io.atomic import check_output_folder
from LatentSRLib.model.config import read_model_config

__all__ = ["METRICS_FILE", "check_sr_request", "is_sr_folder"]

METRICS_FILE = "metrics.json"


def is_sr_folder(folder: Path) -> bool:
    """Whether ``folder`` is a previous output of ``latentsr sr`` (its ``metrics.json`` says so)."""
    try:
        return "settings" in json.loads((Path(folder) / METRICS_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_sr_request(input: str | os.PathLike, outdir: str | os.PathLike, model: str | os.PathLike | None, *,
                     reference: str | os.PathLike | None = None, mask: str | os.PathLike | None = None) -> Path:
    """Refuse, in one line naming the file, a request that cannot succeed; return the output folder.

    Args:
        input, reference, mask: the scans (must exist).
        outdir: the output folder (new, empty, or a previous ``latentsr sr`` output; writable).
        model: a model folder (its ``config.json`` is checked), or ``None`` for a model already loaded.

    Raises:
        InputError, OutputError: naming the file or folder and the problem.
    """
    for path in (input, reference, mask):
        if path is not None and not Path(path).exists():
            raise InputError("no such file or folder", path)
    sources = [Path(p) for p in (input, reference, mask, model) if p is not None]
    out = check_output_folder(outdir, sources, is_ours=is_sr_folder, what="`latentsr sr` output folder")
    if model is not None:
        read_model_config(model)
    return out
