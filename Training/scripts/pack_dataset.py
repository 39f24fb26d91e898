"""Carry a prepared dataset to a training machine as one compact file, and back into a dataset folder.

    python Training/scripts/pack_dataset.py pack runs/brain-sr4-native shared/packs/brain-sr4-native.npz
    python Training/scripts/pack_dataset.py unpack shared/packs/brain-sr4-native.npz runs/brain-sr4-native
    python Training/scripts/pack_dataset.py pack runs/brain-sr4-native brain-hr.npz --derive-lr   # HR only

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
    parser.add_argument("--derive-lr", action="store_true",
                        help="pack: leave the degraded slices out (about half the size); unpacking makes them again "
                             "with the dataset's task")
    args = parser.parse_args(argv)
    if args.derive_lr and args.action != "pack":
        parser.error("--derive-lr is an option of pack (unpacking derives what a pack leaves out by itself)")
    try:
        if args.action == "pack":
            written = pack_dataset(args.source, args.target, derive_lr=args.derive_lr)
        else:
            written = unpack_dataset(args.source, args.target)
    except LatentSRError as exc:
        print(f"pack_dataset: {exc}", file=sys.stderr)
        return 2
    size = written.stat().st_size if written.is_file() else sum(p.stat().st_size for p in written.rglob("*") if p.is_file())
    print(f"wrote {written} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
