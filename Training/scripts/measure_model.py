"""Measure a shipped SR model where a user meets it and save the per-slice results its card is made from.

    python Training/scripts/measure_model.py Training/models/brain-sr4 \
        --scan t1n=../shared/data/brain/BraTS-GLI-00001-000-t1n.nii.gz ... [--every 8 --first 10 --last 145] \
        [--steps-curve 1,2,4,8,16,32,50 --curve-scan t2f] [--tiling-curve 128:0.25,128:0.125,256:0.25]

Another domain's scans, e.g. the knee series with the refinement model (its own grid, sagittal):

    python Training/scripts/measure_model.py Training/models/brain-refine2 --scan knee=../shared/data/knee/DESS-01 \
        --plane sagittal --every 4 --results-name knee

Writes ``MODEL/results/real_scans.json`` (``--results-name``; every scan, data consistency on and off, the model's default
steps) and, with ``--steps-curve``, ``MODEL/results/steps.json`` (one scan, both operating points, each
step count), and with ``--tiling-curve`` ``MODEL/results/tiling.json`` (every scan, both operating points,
each sliding-window tile:overlap, the tile empty for the model's own, or ``anatomy`` for the anatomy
window): per-slice PSNR, SSIM and LPIPS of the SR and of bicubic up-sampling of the same real
low-resolution scan (:mod:`LatentSRLib.inference.real_scans`). ``write_card.py`` turns them into the
model card's tables. Hours of CPU for a whole test split; minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from LatentSRLib.errors import LatentSRError
from LatentSRLib.inference.real_scans import evaluate_real_scans
from LatentSRLib.io.atomic import atomic_path


def _save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}", flush=True)


def _resampled(path: str, pixels: int, plane: str):
    """The image at ``path`` resampled as the demo does (anti-aliased) where it is larger than ``pixels``:
    a 2D one so that its longer side spans them, a volume in ``plane`` so that its field of view does
    (a fixed-grid model's own resolution; the slice spacing is kept)."""
    from LatentSRLib.demo.run import at_model_resolution
    from LatentSRLib.io import read_image

    def in_plane(image) -> list[int]:  # (rows, columns) of a slice in ``plane``, or of the 2D image
        if image.ndim == 2:
            return list(image.shape)
        return [n for a, n in enumerate(image.array.shape) if a != image.array_axis_for_plane(plane)]

    image = read_image(path)
    if max(in_plane(image)) <= pixels:
        return path
    resampled = at_model_resolution(image, plane, pixels)
    rows, columns = in_plane(resampled)
    resampled.path = f"{path} (resampled to {columns} x {rows} px in-plane)"
    return resampled


def main(argv: list[str] | None = None) -> int:
    try:
        return _measure(argv)
    except LatentSRError as exc:  # a missing model or a bad scan: one line, as the CLI says it
        print(f"measure_model: {exc}", file=sys.stderr)
        return 2


def _measure(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--scan", action="append", required=True, metavar="NAME=FILE", help="a true high-resolution scan")
    parser.add_argument("--plane", default="axial", choices=("axial", "coronal", "sagittal"),
                        help="the plane the model works in (a scan's acquisition plane: the knee series is sagittal)")
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--last", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps-curve", default=None, metavar="N,N,...")
    parser.add_argument("--curve-scan", default=None, help="the scan of the steps curve (default: the first)")
    parser.add_argument("--tiling-curve", default=None, metavar="TILE:OVERLAP,...",
                        help="variants to compare on every scan: TILE:OVERLAP of the sliding window (TILE empty: the model's "
                             "tile) or anatomy (one window around each slice's anatomy)")
    parser.add_argument("--skip-main", action="store_true", help="only the curves")
    parser.add_argument("--resample", type=int, default=None, metavar="PIXELS",
                        help="images larger than this are first resampled so their longer side (a volume: its "
                             "in-plane field of view) spans it (a radiograph model trained at 1024 px, a fixed-grid "
                             "model at its grid: the demo's rule)")
    parser.add_argument("--results-name", default="real_scans", metavar="NAME",
                        help="the main results go to MODEL/results/NAME.json (default real_scans, the card's held-out "
                             "scans; e.g. knee for another domain's scans, a card block of its own)")
    args = parser.parse_args(argv)
    scans = dict(item.split("=", 1) for item in args.scan)
    if args.resample:
        scans = {name: _resampled(path, args.resample, args.plane) for name, path in scans.items()}
    common = {"plane": args.plane, "every": args.every, "first": args.first, "last": args.last, "samples": args.samples, "device": args.device,
              "progress": lambda message: print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)}
    if not args.skip_main:
        _save(evaluate_real_scans(args.model, scans, steps=args.steps, **common), args.model / "results" / f"{args.results_name}.json")
    if args.steps_curve:
        name = args.curve_scan or next(iter(scans))
        curve = {"format": "latentsr.steps_curve", "version": 1, "scan": name, "runs": {}}
        for steps in [int(v) for v in args.steps_curve.split(",")]:
            curve["runs"][str(steps)] = evaluate_real_scans(args.model, {name: scans[name]}, steps=steps, **common)
        _save(curve, args.model / "results" / "steps.json")
    if args.tiling_curve:
        curve = {"format": "latentsr.tiling_curve", "version": 1, "runs": {}}
        for variant in args.tiling_curve.split(","):
            if variant == "anatomy":
                options = {"anatomy_window": True}
            else:
                tile, overlap = variant.split(":")
                options = {"tile": int(tile) if tile else None, "overlap": float(overlap), "anatomy_window": False}
            curve["runs"][variant] = evaluate_real_scans(args.model, scans, steps=args.steps, **options, **common)
        _save(curve, args.model / "results" / "tiling.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
