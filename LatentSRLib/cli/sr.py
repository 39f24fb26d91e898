"""``latentsr sr INPUT -o OUTDIR --model MODEL``: super-resolve a scan and write it with its review maps."""

from __future__ import annotations

import argparse

from LatentSRLib.cli.options import non_negative_float, non_negative_int, positive_int, progress_bar

_FORMATS = ("nifti", "nrrd", "metaimage", "dicom")  # LatentSRLib.inference.files.OUTPUT_EXTENSIONS (kept light)
_CALIBRATION_FILE = "calibration.json"  # LatentSRLib.metrics.calibration.CALIBRATION_FILE (kept light)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sr",
        help="super-resolve a volume or image with a trained model (onto a finer grid), with review maps",
        description="Super-resolve INPUT, a low-resolution scan, slice by slice with a trained LatentSR model (a "
        "folder written by the training bundle). An sr model writes on a grid s times finer in-plane over the same "
        "field of view (--same-grid: INPUT's grid); refine and kspace models keep INPUT's grid. Outputs, in INPUT's "
        "units: sr, uncertainty (std across --samples), consistency (|A(SR) - LR|) and, with --reference (on the SR "
        "grid) or --simulate-scale, difference (SR - HR) and hallucination (+1 hallucinated / -1 lost); with a model "
        "calibrated by latentsr calibrate, interval (the half-width of SR +- interval, which holds the truth at the "
        "calibrated risk) and, with --tolerance, trust (1 where the half-width is at most it); "
        "metrics.json holds settings, grids, timing, scores and the calibration (its coverage with a reference).",
    )
    parser.add_argument("input", metavar="INPUT", help="image file or DICOM series folder")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    parser.add_argument("--model", required=True, metavar="MODEL_FOLDER", help="a trained model folder")
    parser.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default="axial",
                        help="plane to super-resolve in (default axial)")
    parser.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--sampler", choices=("ddim", "ddpm", "euler", "heun"), default=None,
                        help="sampler (default: the model's; ddim/ddpm for DDPM models, euler/heun for flow)")
    parser.add_argument("--samples", type=positive_int, default=1, metavar="K",
                        help="samples per slice; the output is their mean, the uncertainty their std (default 1)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cuda:N, mps, cpu")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sampling noise (default 0)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="slices per batch (default: automatic)")
    parser.add_argument("--tile", type=positive_int, default=None, metavar="PIXELS",
                        help="side of the sliding window's tiles (default: the model's training tile); larger tiles "
                        "are faster on a CPU at a small fidelity cost (e.g. 256 for a 240 x 240 slice)")
    parser.add_argument("--overlap", type=float, default=None, metavar="FRACTION",
                        help="overlap of neighbouring tiles, a fraction of the tile in [0, 1) (default: the model's); "
                        "a smaller one can cover a slice with fewer tiles")
    parser.add_argument("--anatomy-window", action=argparse.BooleanOptionalAction, default=None,
                        help="sample each slice as one window around its anatomy (plus a margin) instead of tiles, "
                        "keeping the up-sampled input outside it: faster, cleaner background (default: the model's)")
    parser.add_argument("--sample-background", action="store_true",
                        help="also sample tiles with no pixel above the model's background level (by default they "
                        "keep the up-sampled input: the model never trained on such tiles, and they cost nothing)")
    parser.add_argument("--data-consistency", action=argparse.BooleanOptionalAction, default=True,
                        help="project each SR slice so that degrading it reproduces the measured input (default: on, "
                        "the fidelity end: the SR keeps what was measured and adds detail only where it was not; "
                        "--no-data-consistency: the detail end, the model's samples as they are)")
    parser.add_argument("--reference", default=None, metavar="HR_VOLUME",
                        help="the true high-resolution scan on the same grid: adds difference, hallucination, PSNR/SSIM")
    parser.add_argument("--mask", default=None, metavar="SEGMENTATION",
                        help="label volume on the same grid: PSNR/SSIM inside each label and in the background")
    parser.add_argument("--simulate-scale", type=positive_int, default=None, metavar="S",
                        help="evaluation mode: degrade INPUT as the model's task does (its factor must be S) and "
                        "super-resolve that, with INPUT as the reference")
    parser.add_argument("--same-grid", action="store_true",
                        help="write the SR on INPUT's grid (an input already interpolated onto the fine grid); "
                        "by default an sr model writes on a grid s times finer in-plane, same field of view")
    parser.add_argument("--progress", choices=("bar", "lines"), default="bar",
                        help="bar: a progress bar on stderr; lines: 'PROGRESS <fraction> <message>' lines on "
                        "stdout, for a caller running this command in the background (the Slicer module)")
    parser.add_argument("--tolerance", type=non_negative_float, default=None, metavar="T",
                        help="with a calibrated model: write trust, 1 where the calibrated interval's half-width is at "
                        "most T (INPUT's intensity units), else 0")
    parser.add_argument("--format", choices=_FORMATS, default="nifti",
                        help="output format (default nifti; dicom writes derived series of the input's study)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from LatentSRLib.errors import InputError
    from LatentSRLib.inference.preflight import check_sr_request

    # the files and the output folder first, before torch is imported: a typo is answered at once
    check_sr_request(args.input, args.output, args.model, reference=args.reference, mask=args.mask)
    if args.tolerance is not None and not (Path(args.model) / _CALIBRATION_FILE).is_file():
        raise InputError("--tolerance needs a calibrated model (no calibration.json): run `latentsr calibrate` on it "
                         "first", args.model)

    from LatentSRLib.inference import SRSettings
    from LatentSRLib.inference.background import progress_line
    from LatentSRLib.inference.files import super_resolve_file

    try:
        settings = SRSettings(steps=args.steps, sampler=args.sampler, samples=args.samples, seed=args.seed,
                              batch_size=args.batch_size, data_consistency=args.data_consistency,
                              skip_background=not args.sample_background, tile=args.tile,
                              overlap=args.overlap, anatomy_window=args.anatomy_window)
    except ValueError as exc:
        raise InputError(str(exc)) from None

    def run_file(progress):
        return super_resolve_file(args.input, args.output, args.model, plane=args.axis, settings=settings,
                                  reference=args.reference, mask=args.mask, simulate_scale=args.simulate_scale,
                                  same_grid=args.same_grid,
                                  device=args.device, output_format=args.format, progress=progress,
                                  tolerance=args.tolerance)

    if args.progress == "lines":
        metrics = run_file(lambda fraction, message: print(progress_line(fraction, message), flush=True))
    else:
        with progress_bar("super-resolving") as advance:
            metrics = run_file(advance)
    for warning in metrics.get("warnings", []):
        print(f"latentsr sr: warning: {warning}", file=sys.stderr)
    review = metrics.get("reference")
    line = f"{metrics['slices']} slices in {metrics['seconds']:.1f} s on {metrics['device']}"
    if review:
        line += f"; PSNR SR {review['psnr_sr']} dB vs LR {review['psnr_lr']} dB (AE ceiling {review['psnr_ae_ceiling']} dB)"
    print(line)
    calibration = metrics.get("calibration")
    if isinstance(calibration, dict) and calibration.get("coverage") is not None:
        print(f"calibrated intervals: coverage {calibration['coverage']:.3f} (nominal {calibration['nominal']:.2f}), "
              f"mean half-width {calibration['mean_half_width']:.4g}")
    print(f"wrote {args.output}")
    return 0
