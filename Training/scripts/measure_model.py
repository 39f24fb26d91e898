"""Measure a shipped SR model where a user meets it and save the per-slice results its card is made from.

    python Training/scripts/measure_model.py Training/models/brain-sr4 \
        --scan t1n=../shared/data/brain/BraTS-GLI-00001-000-t1n.nii.gz ... [--every 8 --first 10 --last 145] \
        [--steps-curve 1,2,4,8,16,32,50 --curve-scan t2f]

Writes ``MODEL/results/real_scans.json`` (every scan, data consistency on and off, the model's default
steps) and, with ``--steps-curve``, ``MODEL/results/steps.json`` (one scan, both operating points, each
step count): per-slice PSNR, SSIM and LPIPS of the SR and of bicubic up-sampling of the same real
low-resolution scan (:mod:`LatentSRLib.inference.real_scans`). ``write_card.py`` turns them into the
model card's tables. Hours of CPU for a whole test split; minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from LatentSRLib.inference.real_scans import evaluate_real_scans
from LatentSRLib.io.atomic import atomic_path


def _save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--scan", action="append", required=True, metavar="NAME=FILE", help="a true high-resolution scan")
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--last", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps-curve", default=None, metavar="N,N,...")
    parser.add_argument("--curve-scan", default=None, help="the scan of the steps curve (default: the first)")
    parser.add_argument("--skip-main", action="store_true", help="only the steps curve")
    args = parser.parse_args(argv)
    scans = dict(item.split("=", 1) for item in args.scan)
    common = {"every": args.every, "first": args.first, "last": args.last, "samples": args.samples, "device": args.device,
              "progress": lambda message: print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)}
    if not args.skip_main:
        _save(evaluate_real_scans(args.model, scans, steps=args.steps, **common), args.model / "results" / "real_scans.json")
    if args.steps_curve:
        name = args.curve_scan or next(iter(scans))
        curve = {"format": "latentsr.steps_curve", "version": 1, "scan": name, "runs": {}}
        for steps in [int(v) for v in args.steps_curve.split(",")]:
            curve["runs"][str(steps)] = evaluate_real_scans(args.model, {name: scans[name]}, steps=steps, **common)
        _save(curve, args.model / "results" / "steps.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
