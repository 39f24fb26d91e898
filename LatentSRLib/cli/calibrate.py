"""``latentsr calibrate MODEL --dataset DATASET_DIR``: calibrate a model's per-pixel intervals;
``... --assess SPLIT -o REPORT_DIR``: assess the stored calibration on held-out slices."""

from __future__ import annotations

import argparse

from LatentSRLib.cli.options import fraction, non_negative_float, non_negative_int, positive_int, progress_bar


#: ``LatentSRLib.evaluation.calibration_assessment.ASSESSMENT_FILE``, named here so that the output
#: folder is checked before torch is imported (a test keeps the two equal)
ASSESSMENT_FILE = "calibration_assessment.json"
#: the defaults when calibrating (with --assess, None means "as recorded in calibration.json")
CALIBRATE_DEFAULTS = {"split": "val", "alpha": 0.1, "method": "crc", "samples": 1, "seed": 0, "data_consistency": True,
                      "structure_weight": 0.25}
#: ``LatentSRLib.metrics.calibration.METHODS``' keys, named here for the same reason (a test keeps them equal)
METHOD_NAMES = ("crc", "rcps")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="calibrate a model's per-pixel uncertainty into intervals that hold the truth (writes calibration.json), "
        "or assess a stored calibration on held-out slices (--assess)",
        description="Super-resolve the slices of one split of DATASET_DIR (written by latentsr prepare, the model's "
        "task and grid) and find the smallest lam such that the intervals SR +- lam * (sqrt(std^2 + consistency^2 + "
        "(w * structure)^2) + floor) leave, in expectation, at most a fraction alpha of a new image's foreground pixels "
        "outside (structure: the SR's local edge strength, w its weight). --method crc (default): conformal risk control "
        "(Angelopoulos et al., ICLR 2024), tight: the coverage lands near 1 - alpha. --method rcps: risk-controlling "
        "prediction sets with the Hoeffding-Bentkus bound (Angelopoulos et al., ICML 2022), the same statement with "
        "probability at least 1 - delta over calibration sets, at the price of wider intervals. Writes "
        "MODEL/calibration.json; latentsr sr then writes the interval half-width map and, with "
        "--tolerance, a trust map. Use subjects the model never trained on (the val split). With --assess SPLIT "
        "-o REPORT_DIR, the stored calibration is assessed instead on SPLIT (not the calibration split): coverage "
        "against nominal, width by region, the AUROC of the width (beside the raw std and the consistency map) at "
        "flagging the pixels the autoencoder noise-floor rule marks as hallucinated or lost, and a reliability "
        "diagram; writes calibration_assessment.json, calibration_assessment.md and reliability.png.",
    )
    parser.add_argument("model", metavar="MODEL_FOLDER", help="a trained model folder (calibration.json is written into it)")
    parser.add_argument("--dataset", required=True, metavar="DATASET_DIR",
                        help="a dataset of the model's task and grid, written by latentsr prepare")
    parser.add_argument("--split", choices=("train", "val", "test"), default=None,
                        help="the split to calibrate on (default val); with --assess, the split lam is refitted on "
                        "for the reliability diagram (default: the calibration's)")
    parser.add_argument("--alpha", type=fraction, default=None,
                        help="the expected fraction of foreground pixels outside, at most (default 0.1)")
    parser.add_argument("--method", choices=METHOD_NAMES, default=None,
                        help="crc: conformal risk control, expected coverage >= 1 - alpha (default); rcps: "
                        "risk-controlling prediction sets, the same with confidence 1 - delta")
    parser.add_argument("--delta", type=fraction, default=None,
                        help="with --method rcps: the statement holds with probability at least 1 - delta (default 0.1)")
    parser.add_argument("--samples", type=positive_int, default=None, metavar="K",
                        help="samples per slice; run latentsr sr with the same K (default 1, as latentsr sr; with --assess: the "
                        "calibration's)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="sampling steps (default: the model's; with --assess: the calibration's)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="at most N evenly spaced slices of the split (with --assess: of the assessed split)")
    parser.add_argument("--seed", type=non_negative_int, default=None,
                        help="seed of the sampling noise (default 0; with --assess: the calibration's)")
    parser.add_argument("--data-consistency", action=argparse.BooleanOptionalAction, default=None,
                        help="calibrate the SR after the data-consistency projection, as latentsr sr outputs it by "
                        "default (--no-data-consistency: for latentsr sr --no-data-consistency; with --assess: "
                        "default the calibration's)")
    parser.add_argument("--structure-weight", type=non_negative_float, default=None, metavar="W",
                        help="weight of the SR's edge strength in the interval width (default 0.25; 0: none)")
    parser.add_argument("--assess", choices=("train", "val", "test"), default=None, metavar="SPLIT",
                        help="assess the stored calibration on this split (train, val or test; test is the one to "
                        "use) instead of calibrating; needs -o")
    parser.add_argument("-o", "--output", default=None, metavar="REPORT_DIR",
                        help="with --assess: the report folder (new, empty or a previous assessment)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cuda:N, mps, cpu")
    parser.set_defaults(run=run)


def _recorded_split(model: str) -> str:
    """The split ``MODEL/calibration.json`` was fitted on (read lightly: no torch); refuses an
    uncalibrated model or a damaged file in one line."""
    import json
    from pathlib import Path

    from LatentSRLib.errors import InputError

    path = Path(model) / "calibration.json"
    if not path.is_file():
        raise InputError("the model is not calibrated (no calibration.json): run latentsr calibrate MODEL --dataset "
                         "DATASET_DIR first", model)
    try:
        split = json.loads(path.read_text())["split"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"damaged calibration ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(split, str):
        raise InputError(f"damaged calibration (split {split!r})", path)
    return split


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
    if args.assess is not None:
        return _assess(args, dataset)
    if args.output is not None:
        raise InputError("-o/--output is for --assess SPLIT (calibrating writes MODEL/calibration.json)")
    for name, value in CALIBRATE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.method != "rcps" and args.delta is not None:
        raise InputError("--delta is for --method rcps (risk-controlling prediction sets); conformal risk control "
                         "controls the expected coverage, with no confidence level")
    for name, value in (("--alpha", args.alpha), ("--delta", args.delta)):
        if value is not None and not 0 < value < 1:
            raise InputError(f"{name} must lie strictly between 0 and 1, got {value}")
    check_writable(Path(args.model) / "calibration.json")

    from LatentSRLib.evaluation.calibration import calibrate_model
    from LatentSRLib.metrics.calibration import METHODS

    with progress_bar("calibrating") as advance:
        calibration = calibrate_model(args.model, dataset, split=args.split, alpha=args.alpha, delta=args.delta,
                                      method=METHODS[args.method], samples=args.samples, steps=args.steps, device=args.device, limit=args.limit,
                                      seed=args.seed, data_consistency=args.data_consistency,
                                      structure_weight=args.structure_weight, progress=advance)
    print(f"lam {calibration.lam:.4g} on {calibration.images} {calibration.split} slices (K = {calibration.samples}, "
          f"{calibration.steps} steps): coverage {calibration.coverage:.3f} (nominal {calibration.nominal:.2f}), "
          f"mean half-width {calibration.mean_half_width:.4f} of the intensity window")
    print(f"promise: {calibration.guarantee}")
    print(f"wrote {Path(args.model) / 'calibration.json'}")
    return 0


def _assess(args: argparse.Namespace, dataset) -> int:
    """``--assess SPLIT -o REPORT_DIR``: the stored calibration on held-out slices."""
    from pathlib import Path

    from LatentSRLib.errors import InputError
    from LatentSRLib.io.atomic import check_results_folder

    for name in ("alpha", "delta", "method", "structure_weight"):
        if getattr(args, name) is not None:
            raise InputError(f"--{name} is for calibrating; --assess uses the stored calibration's")
    if args.output is None:
        raise InputError("--assess needs -o/--output REPORT_DIR, the folder the report is written to")
    recorded = _recorded_split(args.model)  # refuses an uncalibrated model
    reference = args.split or recorded
    if args.assess == reference:
        raise InputError(f"--assess {args.assess}: that is the split lam is fitted on; assess the calibration on "
                         "slices it was not fitted on (e.g. --assess test)")
    check_results_folder(args.output, args.model, [dataset], is_ours=lambda folder: (folder / ASSESSMENT_FILE).is_file(),
                         what="calibration assessment")

    from LatentSRLib.evaluation.calibration_assessment import REPORT_FILE, assess_calibration

    with progress_bar("assessing") as advance:
        result = assess_calibration(args.model, dataset, args.output, split=args.assess, calibration_split=reference,
                                    samples=args.samples, steps=args.steps, seed=args.seed,
                                    data_consistency=args.data_consistency, limit=args.limit, device=args.device,
                                    progress=advance)
    print((result.outdir / REPORT_FILE).read_text())
    print(f"wrote {Path(args.output)}")
    return 0
