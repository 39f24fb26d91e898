"""``latentsr info PATH``: geometry, orientation, intensities and DICOM facts of an image."""

from __future__ import annotations

import argparse
import json

from LatentSRLib.io import describe_image, read_image
from LatentSRLib.io.describe import format_description


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe an image or volume (geometry, orientation, intensities)",
        description="Describe an image or volume: shape, spacing, origin, direction and anatomical "
        "orientation, dtype, intensity range, and for DICOM the modality and series description.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image file or DICOM series folder")
    parser.add_argument("--json", action="store_true", help="print JSON (a list when several paths are given)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    infos = [describe_image(read_image(path)) for path in args.paths]
    if args.json:
        print(json.dumps(infos[0] if len(infos) == 1 else infos, indent=2))
    else:
        print("\n\n".join(format_description(i) for i in infos))
    return 0
