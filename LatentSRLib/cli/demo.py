"""``latentsr demo [-o DIR]``: the whole idea on a real brain MRI, offline, in a few minutes on a CPU."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="super-resolve a real brain MRI with the reference model and write maps, metrics and a montage",
        description="Take a real brain MRI volume (by default the MNI ICBM152 2009a T1 template that ships "
        "with nilearn), simulate its 4x low-resolution acquisition, super-resolve it with the reference "
        "model and write the SR volume, uncertainty, consistency, difference and hallucination maps, a "
        "metrics table against bicubic and the autoencoder ceiling, and a PNG montage. Needs no network.",
    )
    parser.add_argument("-o", "--output", default="latentsr-demo", metavar="DIR",
                        help="output folder (default ./latentsr-demo; a previous demo folder is replaced)")
    parser.add_argument("--model", metavar="MODEL_FOLDER", help="SR model (default: Training/models/brain-sr4)")
    parser.add_argument("--input", metavar="VOLUME", help="another volume instead of the MNI template")
    parser.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default="axial")
    parser.add_argument("--slices", type=int, default=12, help="slices around the middle (0: all; default 12)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument("--samples", type=int, default=2, help="samples per slice (2+ give the uncertainty map)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cpu, ...")
    parser.add_argument("--native", action="store_true",
                        help="keep the scan's own resolution (default: put it at the model's grid resolution first)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..demo import run_demo
    from ..errors import InputError

    if args.slices < 0 or args.samples < 1:
        raise InputError("--slices must be >= 0 and --samples >= 1")
    with tqdm(total=100, desc="demo", unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]") as bar:
        def advance(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(message)
            bar.refresh()

        result = run_demo(args.output, model=args.model, scan=args.input, plane=args.axis, slices=args.slices,
                          steps=args.steps, samples=args.samples, device=args.device, native=args.native,
                          progress=advance)
    print((result.folder / "metrics.md").read_text())
    print(f"montage: {result.montage}")
    print(f"volumes, maps and metrics.json: {result.folder}")
    return 0
