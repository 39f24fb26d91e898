"""Carry a prepared dataset to a training machine as one compact file, and back into a dataset folder.

    python Training/scripts/pack_dataset.py pack runs/brain-sr4-native shared/packs/brain-sr4-native.npz
    python Training/scripts/pack_dataset.py unpack shared/packs/brain-sr4-native.npz runs/brain-sr4-native

uint8 slices, compressed (:mod:`LatentSRLib.data.packing`): the brain training tiles of ``brain-sr4``
(1838 pairs of 128 x 128) come to a few tens of MiB, within what a lent GPU machine takes with a command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from LatentSRLib.data.packing import pack_dataset, unpack_dataset
from LatentSRLib.errors import LatentSRError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("source", type=Path, help="pack: a dataset folder; unpack: a .npz pack")
    parser.add_argument("target", type=Path, help="pack: the .npz pack to write; unpack: the dataset folder to write")
    args = parser.parse_args(argv)
    try:
        written = (pack_dataset if args.action == "pack" else unpack_dataset)(args.source, args.target)
    except LatentSRError as exc:
        print(f"pack_dataset: {exc}", file=sys.stderr)
        return 2
    size = written.stat().st_size if written.is_file() else sum(p.stat().st_size for p in written.rglob("*") if p.is_file())
    print(f"wrote {written} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
