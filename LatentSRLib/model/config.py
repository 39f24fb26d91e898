"""A model folder's ``config.json``: its format name and the light check the command line runs
before loading any network (no torch here)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from LatentSRLib.errors import InputError

__all__ = ["CONFIG_FILE", "MODEL_FORMAT", "REQUIRED_CONFIG_KEYS", "read_model_config"]

MODEL_FORMAT = "latentsr.sr_model"
CONFIG_FILE = "config.json"

#: what every model's config.json holds (the loader needs each of them)
REQUIRED_CONFIG_KEYS = ("denoiser", "autoencoder", "task", "grid", "objective")


def read_model_config(folder: str | os.PathLike) -> dict[str, Any]:
    """A model folder's ``config.json``, checked: a JSON object of LatentSR's model format with every
    :data:`REQUIRED_CONFIG_KEYS` entry. Light (no networks are built): the CLI calls it before any work.

    Raises:
        InputError: no such folder, not a model folder, or a damaged ``config.json`` (named).
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError("no such model folder", folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise InputError("not a LatentSR model folder (no config.json)", folder)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable model configuration ({exc})", config_path) from None
    if not isinstance(config, dict):
        raise InputError(f"not a model configuration (a JSON {type(config).__name__}, not an object)", config_path)
    if config.get("format") != MODEL_FORMAT:
        kind = config.get("format") or "unknown"
        hint = " (an autoencoder: pass it as --vae monai:FOLDER)" if kind == "latentsr.monai_autoencoder" else ""
        raise InputError(f"not a LatentSR model folder: its config.json is of kind {kind!r}{hint}", folder)
    missing = [key for key in REQUIRED_CONFIG_KEYS if not isinstance(config.get(key), dict)]
    if missing:
        raise InputError(f"damaged model configuration: no {', '.join(repr(k) for k in missing)} section", config_path)
    if not isinstance(config["autoencoder"].get("spec"), str):
        raise InputError("damaged model configuration: the autoencoder has no spec", config_path)
    return config
