"""``latentsr calibrate MODEL --dataset DATASET_DIR``: calibrate a model's per-pixel intervals."""

from __future__ import annotations

import argparse

from LatentSRLib.cli.options import fraction, non_negative_int, positive_int, progress_bar


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="calibrate a model's per-pixel uncertainty into intervals that hold the truth (writes calibration.json)",
        description="Super-resolve the slices of one split of DATASET_DIR (written by latentsr prepare, the model's "
        "task and grid) and find the smallest lam such that, with probability at least 1 - delta, the intervals SR "
        "+- lam * (sqrt(std^2 + consistency^2) + floor) leave at most a fraction alpha of a new image's foreground "
        "pixels outside (risk-controlling prediction sets, Hoeffding-Bentkus bound; Angelopoulos et al., ICML "
        "2022). Writes MODEL/calibration.json; latentsr sr then writes the interval half-width map and, with "
        "--tolerance, a trust map. Use subjects the model never trained on (the val split).",
    )
    parser.add_argument("model", metavar="MODEL_FOLDER", help="a trained model folder (calibration.json is written into it)")
    parser.add_argument("--dataset", required=True, metavar="DATASET_DIR",
                        help="a dataset of the model's task and grid, written by latentsr prepare")
    parser.add_argument("--split", choices=("train", "val", "test"), default="val",
                        help="the split to calibrate on (default val)")
    parser.add_argument("--alpha", type=fraction, default=0.1,
                        help="the expected fraction of foreground pixels outside, at most (default 0.1)")
    parser.add_argument("--delta", type=fraction, default=0.1,
                        help="the statement holds with probability at least 1 - delta (default 0.1)")
    parser.add_argument("--samples", type=positive_int, default=2, metavar="K",
                        help="samples per slice; run latentsr sr with the same K (default 2)")
    parser.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="at most N evenly spaced slices of the split")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sampling noise (default 0)")
    parser.add_argument("--data-consistency", action=argparse.BooleanOptionalAction, default=True,
                        help="calibrate the SR after the data-consistency projection, as latentsr sr outputs it by "
                        "default (--no-data-consistency: for latentsr sr --no-data-consistency)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cuda:N, mps, cpu")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from LatentSRLib.errors import InputError
    from LatentSRLib.io.atomic import check_writable
    from LatentSRLib.model.config import read_model_config

    # the folders first, before torch is imported: a typo is answered at once
    read_model_config(args.model)
    dataset = Path(args.dataset)
    if not dataset.exists():
        raise InputError("no such dataset folder", dataset)
    if not (dataset / "dataset.json").is_file():
        raise InputError("not a LatentSR dataset (no dataset.json); make one with `latentsr prepare`", dataset)
    for name, value in (("--alpha", args.alpha), ("--delta", args.delta)):
        if not 0 < value < 1:
            raise InputError(f"{name} must lie strictly between 0 and 1, got {value}")
    check_writable(Path(args.model) / "calibration.json")

    from LatentSRLib.evaluation.calibration import calibrate_model

    with progress_bar("calibrating") as advance:
        calibration = calibrate_model(args.model, dataset, split=args.split, alpha=args.alpha, delta=args.delta,
                                      samples=args.samples, steps=args.steps, device=args.device, limit=args.limit,
                                      seed=args.seed, data_consistency=args.data_consistency, progress=advance)
    print(f"lam {calibration.lam:.4g} on {calibration.images} {calibration.split} slices (K = {calibration.samples}, "
          f"{calibration.steps} steps): coverage {calibration.coverage:.3f} (nominal {calibration.nominal:.2f}), "
          f"mean half-width {calibration.mean_half_width:.4f} of the intensity window")
    print(f"wrote {Path(args.model) / 'calibration.json'}")
    return 0
