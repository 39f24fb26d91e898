"""The latent cache: HR and LR latents of a prepared dataset, computed once per autoencoder.

Training a latent diffusion model encodes the same slices every epoch; with a frozen autoencoder
and deterministic encoding (rule 6) the latents never change, so they are computed once and
stored beside the dataset::

    DATASET_DIR/latents/<autoencoder name>-<key>/
      cache.json   what produced it: autoencoder (spec, weights fingerprint, latent statistics),
                   dataset (manifest fingerprint, task), encoding; and progress
      hr.npy       (N, C, h, w) float32: normalised latents of the true HR slices
      lr.npy       (N, C, h, w) float32: normalised latents of the LR slices (encoded on the HR grid)
      done.npy     (N,) bool: rows already encoded (a killed run resumes where it stopped)

Rows follow the dataset's manifest (``cache.index(id)`` finds an ID). :func:`open_latent_cache`
refuses a cache made with another autoencoder, other latent statistics, another task or another
dataset, naming what differs, instead of silently training on the wrong latents.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from LatentSRLib.autoencoders.base import Autoencoder, weights_fingerprint
from LatentSRLib.errors import InputError
from LatentSRLib.io.atomic import atomic_path
from LatentSRLib.data.dataset import PreparedDataset

__all__ = ["LatentCache", "build_latent_cache", "cache_identity", "open_latent_cache"]

CACHE_FORMAT = "latentsr.latent_cache"
_VERSION = 1


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_identity(dataset: PreparedDataset, autoencoder: Autoencoder) -> dict[str, Any]:
    """Everything that must match for cached latents to be reused."""
    if not autoencoder.deterministic:
        raise ValueError("the latent cache stores posterior means: set autoencoder.deterministic = True")
    stats = autoencoder.latent_stats
    return {
        "autoencoder": {
            "spec": autoencoder.spec,
            "name": autoencoder.name,
            "weights_sha256": weights_fingerprint(autoencoder),
            "latent_channels": autoencoder.latent_channels,
            "downsampling_factor": autoencoder.downsampling_factor,
            "latent_stats": None if stats is None else {"shift": list(stats.shift), "scale": list(stats.scale)},
        },
        "dataset": {
            "manifest_sha256": _file_digest(dataset.folder / "manifest.csv"),
            "shape": list(dataset.hr.shape),
            "task": dataset.info["task"],
        },
        "encoding": "posterior mean (deterministic); LR encoded on the HR grid",
    }


def _differences(expected: Mapping[str, Any], found: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in expected:
        a, b = expected[key], found.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "autoencoder"


def default_cache_folder(dataset: PreparedDataset, identity: Mapping[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return dataset.folder / "latents" / f"{_slug(identity['autoencoder']['name'])}-{key}"


class LatentCache:
    """An opened cache folder: ``hr`` / ``lr`` ``(N, C, h, w)`` memory maps and the manifest's IDs."""

    def __init__(self, folder: Path, info: dict[str, Any], dataset: PreparedDataset, mode: str = "r") -> None:
        self.folder = folder
        self.info = info
        self.dataset = dataset
        self.hr = np.load(folder / "hr.npy", mmap_mode=mode)
        self.lr = np.load(folder / "lr.npy", mmap_mode=mode)
        self.done = np.load(folder / "done.npy")
        self._index = {slice_id: row for row, slice_id in enumerate(dataset.ids)}

    def __len__(self) -> int:
        return len(self.hr)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.hr.shape[1:])  # type: ignore[return-value]

    def index(self, slice_id: str) -> int:
        try:
            return self._index[slice_id]
        except KeyError:
            raise KeyError(f"{slice_id!r} is not in the dataset {self.dataset.folder}") from None


def _read_info(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / "cache.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable latent cache ({exc})", folder) from None
    if info.get("format") != CACHE_FORMAT:
        raise InputError("not a LatentSR latent cache", folder)
    return info


def open_latent_cache(dataset: PreparedDataset | str | os.PathLike, autoencoder: Autoencoder,
                      folder: str | os.PathLike | None = None) -> LatentCache:
    """Open the complete cache of ``dataset`` for ``autoencoder`` (read-only).

    Raises:
        InputError: no cache (build it with :func:`build_latent_cache`), an unfinished one, or one
            made by another autoencoder / statistics / task / dataset (the message says which).
    """
    dataset = dataset if isinstance(dataset, PreparedDataset) else PreparedDataset(dataset)
    identity = cache_identity(dataset, autoencoder)
    folder = Path(folder) if folder is not None else default_cache_folder(dataset, identity)
    if not (folder / "cache.json").is_file():
        raise InputError(f"no latent cache for {autoencoder.spec!r} here; build it first", folder)
    return _open_complete(folder, dataset, identity, "build a new one")


def _matching_info(folder: Path, identity: Mapping[str, Any], remedy: str) -> dict[str, Any]:
    """The cache's ``cache.json``, refused (naming what differs) when it was made by something else."""
    info = _read_info(folder)
    differs = _differences(identity, info.get("identity", {}))
    if differs:
        raise InputError(f"this latent cache was made with a different {', '.join(differs)} "
                         f"(cache: {info['identity']['autoencoder']['spec']!r}, task "
                         f"{info['identity']['dataset']['task']['name']}); {remedy}", folder)
    return info


def _open_complete(folder: Path, dataset: PreparedDataset, identity: Mapping[str, Any], remedy: str) -> LatentCache:
    cache = LatentCache(folder, _matching_info(folder, identity, remedy), dataset)
    if not cache.complete:
        raise InputError(f"the latent cache is unfinished ({int(cache.done.sum())}/{len(cache)} rows); "
                         "run the cache build again to resume it", folder)
    return cache


@torch.no_grad()
def build_latent_cache(
    dataset: PreparedDataset | str | os.PathLike,
    autoencoder: Autoencoder,
    folder: str | os.PathLike | None = None,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> LatentCache:
    """Encode every HR and LR slice of ``dataset`` (resuming an unfinished cache) and return it.

    ``autoencoder`` should carry its latent statistics (normalised latents are what the diffusion
    model is trained on); they are part of the cache's identity. A finished, matching cache is
    returned at once; a cache made by something else is refused, never overwritten.
    """
    from tqdm.auto import tqdm

    dataset = dataset if isinstance(dataset, PreparedDataset) else PreparedDataset(dataset)
    identity = cache_identity(dataset, autoencoder)
    folder = Path(folder) if folder is not None else default_cache_folder(dataset, identity)
    n = len(dataset)
    height, width = dataset.size
    f = autoencoder.downsampling_factor
    if height % f or width % f:
        raise InputError(f"slices of {height}x{width} are not a multiple of the autoencoder's factor {f}", dataset.folder)
    shape = (n, autoencoder.latent_channels, height // f, width // f)
    if (folder / "cache.json").is_file():
        info = _matching_info(folder, identity, "it is in the way: choose another folder or delete it")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("hr", "lr"):
            np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32, shape=shape).flush()
        np.save(folder / "done.npy", np.zeros(n, dtype=bool))
        info = {"format": CACHE_FORMAT, "version": _VERSION, "identity": identity,
                "dataset_folder": str(dataset.folder.resolve()), "latent_shape": list(shape[1:]),
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with atomic_path(folder / "cache.json") as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n")
    cache = LatentCache(folder, info, dataset, mode="r+")
    todo = np.flatnonzero(~cache.done)
    device = autoencoder.device
    started = time.perf_counter()
    bar = tqdm(total=n, initial=n - len(todo), desc=f"latents ({autoencoder.name})", unit="slice", disable=not progress)
    for start in range(0, len(todo), batch_size):
        rows = todo[start : start + batch_size]
        for name in ("hr", "lr"):
            images = torch.from_numpy(np.array(getattr(dataset, name)[rows]))[:, None].to(device)
            getattr(cache, name)[rows] = autoencoder.encode(images).float().cpu().numpy()
        cache.hr.flush()
        cache.lr.flush()
        cache.done[rows] = True
        with atomic_path(folder / "done.npy") as tmp:  # progress is recorded only after the data is on disk
            np.save(tmp, cache.done)
        bar.update(len(rows))
    bar.close()
    if len(todo):
        info["seconds"] = round(float(info.get("seconds", 0.0)) + time.perf_counter() - started, 2)
        with atomic_path(folder / "cache.json") as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n")
    # the identity was checked above: reopen read-only without hashing the weights again
    return _open_complete(folder, dataset, identity, "build a new one")
