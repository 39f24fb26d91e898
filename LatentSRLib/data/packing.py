"""A prepared dataset as one compact file, to carry it to a training machine (a lent GPU takes at most
a few tens of MiB with a command) and back into a dataset folder there.

The pack is a compressed ``.npz``: ``hr`` and ``lr`` quantised to uint8 (``round(255 x)`` of the
[0, 1] slices, a quarter of float32 before compression; the quantisation error, at most 1/510, sits
about 59 dB below the signal and far below any model's error), and ``dataset.json`` and
``manifest.csv`` as text. With ``derive_lr`` the pack holds ``hr`` alone (about half the size) and
unpacking makes ``lr`` again with the dataset's own task (:func:`~LatentSRLib.data.dataset.degrade_slices`,
the operator that made it: rule 11) from the unpacked ``hr``. :func:`unpack_dataset` writes the usual folder
(:mod:`LatentSRLib.data.dataset`), arrays back in float32, so every reader of prepared datasets
takes it unchanged; ``dataset.json`` records that it was unpacked, from which pack.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from LatentSRLib.errors import InputError
from LatentSRLib.io.atomic import atomic_directory, atomic_path, check_output_folder
from LatentSRLib.data.dataset import DATASET_FORMAT, PreparedDataset, degrade_slices
from LatentSRLib.transforms.tasks import Task

__all__ = ["PACK_FORMAT", "pack_dataset", "unpack_dataset"]

PACK_FORMAT = "latentsr.dataset_pack"


def _quantised(array: np.ndarray) -> np.ndarray:
    return np.round(np.clip(np.asarray(array, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def pack_dataset(folder: str | os.PathLike, path: str | os.PathLike, *, derive_lr: bool = False) -> Path:
    """Write the prepared dataset in ``folder`` as one compressed pack at ``path`` (``.npz``; atomic);
    with ``derive_lr`` without the ``lr`` slices, which unpacking makes again from ``hr``.

    Raises:
        InputError: ``folder`` is not a prepared dataset.
    """
    dataset = PreparedDataset(folder)  # validates the folder
    folder, path = Path(folder), Path(path)
    if path.suffix != ".npz":
        raise InputError("a dataset pack is a .npz file", path)
    header = {"format": PACK_FORMAT, "version": 1, "quantisation": "uint8 = round(255 x) of the [0, 1] slices"}
    arrays = {"hr": _quantised(dataset.hr)}
    if derive_lr:
        header["lr"] = "derived on unpacking: the dataset's task applied to the unpacked hr"
    else:
        arrays["lr"] = _quantised(dataset.lr)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays,
                                dataset_json=np.array((folder / "dataset.json").read_text()),
                                manifest_csv=np.array((folder / "manifest.csv").read_text()),
                                pack_json=np.array(json.dumps(header)))
    return path


def unpack_dataset(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Write the dataset packed at ``path`` to ``folder`` (a new folder, or an earlier dataset folder,
    replaced as a whole), its arrays as float32 in [0, 1].

    Raises:
        InputError: ``path`` is not a dataset pack, or ``folder`` holds other files.
    """
    path, folder = Path(path), Path(folder)
    try:
        with np.load(path, allow_pickle=False) as pack:
            header = json.loads(str(pack["pack_json"]))
            if header.get("format") != PACK_FORMAT:
                raise ValueError("not a dataset pack")
            hr = pack["hr"]
            lr = pack["lr"] if "lr" in pack.files else None
            document = json.loads(str(pack["dataset_json"]))
            manifest = str(pack["manifest_csv"])
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"not a LatentSR dataset pack ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                         path) from None
    if (document.get("format") != DATASET_FORMAT or hr.dtype != np.uint8
            or (lr.shape != hr.shape if lr is not None else "lr" not in header)):
        raise InputError("damaged dataset pack (its arrays or dataset.json do not fit)", path)
    check_output_folder(folder, [path], is_ours=lambda f: (f / "dataset.json").is_file(), what="LatentSR dataset")
    document["unpacked_from"] = {"pack": path.name, "quantisation": header["quantisation"]}
    hr = hr.astype(np.float32) / 255.0
    if lr is None:
        document["unpacked_from"]["lr"] = header["lr"]
        ids = [row["id"] for row in csv.DictReader(io.StringIO(manifest))]
        lr = degrade_slices(Task.from_dict(document["task"]), hr, ids)
    else:
        lr = lr.astype(np.float32) / 255.0
    with atomic_directory(folder) as staging:
        np.save(staging / "hr.npy", hr)
        np.save(staging / "lr.npy", lr)
        (staging / "manifest.csv").write_text(manifest)
        (staging / "dataset.json").write_text(json.dumps(document, indent=2) + "\n")
        PreparedDataset(staging)  # the folder reads back as a dataset
    return folder
