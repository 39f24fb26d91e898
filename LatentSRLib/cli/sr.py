"""``latentsr sr INPUT -o OUTDIR --model MODEL``: super-resolve a scan and write it with its review maps."""

from __future__ import annotations

import argparse

_EXTENSIONS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "metaimage": ".mha", "dicom": ""}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sr",
        help="super-resolve a volume or image with a trained model, with uncertainty and consistency maps",
        description="Super-resolve INPUT slice by slice with a trained LatentSR model (a folder written by the "
        "training bundle) and write, on the input's grid and in its units: sr, uncertainty (std across "
        "--samples), consistency (|degrade(SR) - LR|) and, with --reference or --simulate-scale, difference "
        "(SR - HR) and hallucination (+1 hallucinated / -1 lost); metrics.json holds settings, timing and scores.",
    )
    parser.add_argument("input", metavar="INPUT", help="image file or DICOM series folder")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    parser.add_argument("--model", required=True, metavar="MODEL_FOLDER", help="a trained model folder")
    parser.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default="axial",
                        help="plane to super-resolve in (default axial)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--sampler", choices=("ddim", "ddpm", "euler", "heun"), default=None,
                        help="sampler (default: the model's; ddim/ddpm for DDPM models, euler/heun for flow)")
    parser.add_argument("--samples", type=int, default=1, metavar="K",
                        help="samples per slice; the output is their mean, the uncertainty their std (default 1)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cuda:N, mps, cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default 0)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per batch (default: automatic)")
    parser.add_argument("--data-consistency", action="store_true",
                        help="project each SR slice so that degrading it reproduces the input")
    parser.add_argument("--reference", default=None, metavar="HR_VOLUME",
                        help="the true high-resolution scan on the same grid: adds difference, hallucination, PSNR/SSIM")
    parser.add_argument("--mask", default=None, metavar="SEGMENTATION",
                        help="label volume on the same grid: PSNR/SSIM inside each label and in the background")
    parser.add_argument("--simulate-scale", type=int, default=None, metavar="S",
                        help="evaluation mode: degrade INPUT as the model's task does (its factor must be S) and "
                        "super-resolve that, with INPUT as the reference")
    parser.add_argument("--progress", choices=("bar", "lines"), default="bar",
                        help="bar: a progress bar on stderr; lines: 'PROGRESS <fraction> <message>' lines on "
                        "stdout, for a caller running this command in the background (the Slicer module)")
    parser.add_argument("--format", choices=tuple(_EXTENSIONS), default="nifti",
                        help="output format (default nifti; dicom writes derived series of the input's study)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tqdm.auto import tqdm

    from LatentSRLib.errors import InputError, OutputError
    from LatentSRLib.inference import SRSettings, super_resolve_volume
    from LatentSRLib.inference.background import progress_line
    from LatentSRLib.io import read_image, refuse_overwriting_inputs, write_image
    from LatentSRLib.io.atomic import atomic_path
    from LatentSRLib.model.folder import load_sr_model

    outdir = Path(args.output)
    inputs = [p for p in (args.input, args.reference, args.mask) if p]
    refuse_overwriting_inputs(outdir, inputs)
    if outdir.exists() and (not outdir.is_dir() or (any(outdir.iterdir()) and not (outdir / "metrics.json").exists())):
        raise OutputError("exists and is not a previous `latentsr sr` output folder; choose a new folder", outdir)
    if args.simulate_scale is not None and args.reference:
        raise InputError("--simulate-scale uses INPUT as the reference; do not also give --reference")
    try:
        settings = SRSettings(steps=args.steps, sampler=args.sampler, samples=args.samples, seed=args.seed,
                              batch_size=args.batch_size, data_consistency=args.data_consistency)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    model = load_sr_model(args.model)
    if args.simulate_scale is not None and args.simulate_scale != model.task.scale:
        raise InputError(f"the model was trained for {model.task.name} (factor {model.task.scale}), "
                         f"not --simulate-scale {args.simulate_scale}", args.model)
    image = read_image(args.input)
    reference = read_image(args.reference) if args.reference else None
    mask = read_image(args.mask) if args.mask else None

    def run_engine(progress):
        return super_resolve_volume(model, image, plane=args.axis, settings=settings, reference=reference,
                                    mask=mask, simulate=args.simulate_scale is not None, device=args.device,
                                    progress=progress)

    if args.progress == "lines":
        def report(fraction: float, message: str) -> None:
            print(progress_line(fraction, message), flush=True)

        result = run_engine(report)
    else:
        with tqdm(total=100, desc="super-resolving", unit="%",
                  bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]") as bar:
            def advance(fraction: float, message: str) -> None:
                bar.n = round(100 * fraction, 1)
                bar.set_postfix_str(message)
                bar.refresh()

            result = run_engine(advance)
    outdir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, output in result.outputs().items():
        path = outdir / f"{name}{_EXTENSIONS[args.format]}"
        written[name] = str(write_image(output, path, format=args.format, inputs=inputs,
                                        series_description=f"LatentSR {name}"))
    if result.metrics.get("simulated"):
        path = outdir / f"lr{_EXTENSIONS[args.format]}"
        written["lr"] = str(write_image(result.lr, path, format=args.format, inputs=inputs,
                                        series_description="LatentSR simulated low resolution"))
    metrics = {**result.metrics, "input": str(Path(args.input).resolve()), "outputs": written}
    with atomic_path(outdir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    review = result.metrics.get("reference")
    line = f"{result.metrics['slices']} slices in {result.metrics['seconds']:.1f} s on {result.metrics['device']}"
    if review:
        line += f"; PSNR SR {review['psnr_sr']} dB vs LR {review['psnr_lr']} dB (AE ceiling {review['psnr_ae_ceiling']} dB)"
    print(line)
    print(f"wrote {outdir}")
    return 0
