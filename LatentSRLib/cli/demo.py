"""``latentsr demo [-o DIR]``: the whole idea on a real brain MRI (4x in-plane and thick slices) and a
real chest radiograph, offline, in a few minutes on a CPU."""

from __future__ import annotations

import argparse

from LatentSRLib.cli.options import non_negative_int, positive_int, progress_bar


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="super-resolve a real brain MRI (in-plane and thick slices) and chest radiograph with the reference "
        "models; write maps, metrics and montages",
        description="Take real scans that ship with registry packages (the MNI ICBM152 2009a T1 template of "
        "nilearn; the chest radiograph RG1_UNCI.dcm of pydicom-data), simulate their low-resolution "
        "acquisitions (the brain at 4 mm in-plane and as 5 mm thick slices, the radiograph 4x coarser), "
        "super-resolve them with the reference models and write, per case, the SR image, "
        "uncertainty, consistency, difference and hallucination maps, a metrics table against bicubic and the "
        "autoencoder ceiling, and a PNG montage. Needs no network.",
    )
    parser.add_argument("-o", "--output", default="latentsr-demo", metavar="DIR",
                        help="output folder (default ./latentsr-demo; a previous demo folder is replaced)")
    parser.add_argument("--case", action="append", choices=("brain", "thick", "chest"), default=None,
                        help="run only this case (repeat; default all: brain, thick, chest)")
    parser.add_argument("--model", metavar="MODEL_FOLDER", help="another SR model (with one --case)")
    parser.add_argument("--input", metavar="SCAN", help="another volume or image (with one --case)")
    parser.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default="axial")
    parser.add_argument("--slices", type=non_negative_int, default=None,
                        help="volumes: slices around the middle (0: all; default 12, the thick-slice case 80)")
    parser.add_argument("--crop", type=non_negative_int, default=0, metavar="PIXELS",
                        help="images: keep the central PIXELS x PIXELS region (0: all; default)")
    parser.add_argument("--steps", type=positive_int, help="sampling steps (default: the model's)")
    parser.add_argument("--samples", type=positive_int, default=2, help="samples per slice (2+ give the uncertainty map)")
    parser.add_argument("--data-consistency", action=argparse.BooleanOptionalAction, default=None,
                        help="project the SR onto the measured input, so that degrading it reproduces the input "
                        "(default: on, the fidelity end; --no-data-consistency shows the detail end)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cpu, ...")
    parser.add_argument("--native", action="store_true",
                        help="keep the scan's own resolution with a fixed-grid model (models that work at the scan's "
                        "pixel pitch always do)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    from pathlib import Path

    from LatentSRLib.errors import InputError

    cases = list(dict.fromkeys(args.case or ("brain", "thick", "chest")))
    if (args.model or args.input) and len(cases) != 1:
        raise InputError("--model and --input replace one case's model or scan: say which with --case brain, thick or chest")
    for path in (args.input, args.model):  # before the heavy imports: a typo is answered at once
        if path and not Path(path).exists():
            raise InputError("no such file or folder", path)

    from LatentSRLib.demo import run_demos

    options = {"plane": args.axis, "slices": args.slices, "crop": args.crop, "steps": args.steps,
               "samples": args.samples, "data_consistency": args.data_consistency, "device": args.device, "native": args.native}
    if args.model:
        options["model"] = args.model
    if args.input:
        options["scan"] = args.input
    with contextlib.ExitStack() as bars:  # one bar per case, erased if the run fails
        results = run_demos(args.output, cases, progress_for=lambda case: bars.enter_context(progress_bar(f"demo {case}")),
                            **options)
    for result in results:
        print(f"## {result.folder.name}\n")
        print((result.folder / "metrics.md").read_text())
        print(f"montage: {result.montage}\n")
    print(f"images, maps and metrics.json per case, and metrics.md for all: {results[0].folder.parent}")
    return 0
