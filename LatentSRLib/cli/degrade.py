"""``latentsr degrade INPUT -o OUTPUT``: simulate a low-resolution version on the input's grid (thick
slices: on their own coarse grid)."""

from __future__ import annotations

import argparse
from pathlib import Path

from LatentSRLib.cli.options import non_negative_float, non_negative_int, positive_int
from LatentSRLib.io import check_writable, output_format, read_image, refuse_overwriting_inputs, write_image
from LatentSRLib.transforms.tasks import DEGRADATION_MODES


def register(subparsers) -> None:
    modes = "; ".join(f"{name}: {text}" for name, text in DEGRADATION_MODES.items())
    parser = subparsers.add_parser(
        "degrade",
        help="simulate a low-resolution acquisition (written on the input's grid and geometry)",
        description="Simulate a low-resolution version of an image or volume and write it on the "
        "input's grid, geometry, intensity units and dtype; --mode thick writes the thick slices of a "
        "volume on their own coarse grid (spacing x SCALE along the thick axis), as a clinical "
        f"thick-slice series is stored. Modes: {modes}.",
    )
    parser.add_argument("input", metavar="INPUT", help="image file or DICOM series folder")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                        help="output file (format from its extension) or folder (DICOM series)")
    parser.add_argument("--scale", type=positive_int, default=4, help="integer resolution factor (default 4)")
    parser.add_argument("--mode", choices=sorted(DEGRADATION_MODES), default="sr", help="degradation (default sr)")
    parser.add_argument("--noise", type=non_negative_float, default=0.0, metavar="SIGMA",
                        help="noise standard deviation as a fraction of the intensity range (default 0)")
    parser.add_argument("--noise-kind", choices=("gaussian", "rician"), default="gaussian",
                        help="noise distribution (rician for magnitude MRI)")
    parser.add_argument("--taper", choices=("none", "hamming", "tukey"), default="none",
                        help="k-space mode: window over the kept frequencies (reduces ringing)")
    parser.add_argument("--seed", type=non_negative_int, default=None, help="seed of the noise")
    parser.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default="axial",
                        help="plane whose slices are degraded in-plane (volumes only; default axial); "
                        "thick mode: the plane of the thick slices, degraded along its normal")
    parser.add_argument("--profile", choices=("gaussian", "box"), default="gaussian",
                        help="thick mode: slice profile, a Gaussian of FWHM SCALE slices or the mean of "
                        "SCALE slices (default gaussian)")
    parser.add_argument("--coarse-grid", action="store_true",
                        help="sr mode: write the measurement on its own grid, SCALE times coarser in-plane (same field "
                        "of view), as a scanner stores a low-resolution scan: the input of a real `latentsr sr` run")
    parser.add_argument("--format", default=None,
                        help="output format when the name does not tell (e.g. dicom for a series folder)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    fmt = args.format
    if fmt is None and output.suffix == "" and not output.is_file():
        fmt = "dicom"  # an extension-less output is a folder: write a DICOM series there
    output_format(output, fmt)  # fail on a bad output name before the work, not after
    if not Path(args.input).exists():
        from LatentSRLib.errors import InputError

        raise InputError("no such file or folder", args.input)
    refuse_overwriting_inputs(output, [args.input])
    check_writable(output)
    if args.coarse_grid and (args.mode != "sr" or args.noise > 0):
        from LatentSRLib.errors import InputError

        raise InputError("--coarse-grid is the noise-free in-plane measurement: use it with --mode sr and no --noise")
    from LatentSRLib.transforms.simulation import simulate_coarse_scan, simulate_low_resolution  # torch, MONAI: only for work

    image = read_image(args.input)
    if args.coarse_grid:
        low = simulate_coarse_scan(image, args.scale, plane=args.axis)
        written = write_image(low, output, format=fmt, inputs=[args.input],
                              series_description=f"LatentSR simulated low resolution (x{args.scale}, coarse grid)")
        print(f"wrote {written} ({' x '.join(str(n) for n in low.array.shape[::-1])} voxels of "
              f"{' x '.join(f'{v:g}' for v in low.spacing)} mm)")
        return 0
    if args.mode == "thick":
        from LatentSRLib.transforms.thick import simulate_thick_slices

        low = simulate_thick_slices(image, args.scale, plane=args.axis, profile=args.profile, noise=args.noise,
                                    seed=args.seed, noise_kind=args.noise_kind)
        written = write_image(low, output, format=fmt, inputs=[args.input],
                              series_description=f"LatentSR simulated thick slices ({args.scale}x, {args.profile})")
        print(f"wrote {written}")
        return 0
    options = {}
    if args.mode == "kspace" and args.taper != "none":
        options["taper"] = args.taper
    if args.noise > 0:
        options["noise_kind"] = args.noise_kind
    low = simulate_low_resolution(image, mode=args.mode, scale=args.scale, noise=args.noise,
                                  seed=args.seed, plane=args.axis, **options)
    written = write_image(low, output, format=fmt, inputs=[args.input],
                          series_description=f"LatentSR simulated low resolution ({args.mode} x{args.scale})")
    print(f"wrote {written}")
    return 0
