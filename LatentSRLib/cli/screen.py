"""``latentsr screen INPUT... --vae SPEC [--vae SPEC ...] -o OUTDIR``: the AE ceiling of each VAE."""

from __future__ import annotations

import argparse

from LatentSRLib.cli.options import fraction, non_negative_int, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "screen",
        help="screen autoencoders by their encode-decode fidelity on your images (no training)",
        description="Encode and decode every slice or image with each autoencoder and score it against the "
        "true image (PSNR, SSIM, MS-SSIM, LPIPS, Haar subband PSNR). Writes per_image.csv, summary.json, "
        "summary.md, subband_fingerprint.png and examples.png. Specs: diffusers:<hub id or folder>, "
        "tiny:<hub id, folder or ENC.pth,DEC.pth>, monai:<folder>, medvae:<name>.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="volumes, images, DICOM series folders or folders of images")
    parser.add_argument("--vae", action="append", required=True, metavar="SPEC", help="autoencoder spec (repeat)")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="run folder")
    parser.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default="axial",
                        help="plane of the slices of volumes (default axial)")
    parser.add_argument("--size", type=positive_int, default=256, help="model grid size in pixels (default 256)")
    parser.add_argument("--fit", choices=("pad", "stretch", "tile"), default="pad",
                        help="pad keeps the physical aspect ratio; stretch resizes as the paper did; tile scores "
                        "SIZE x SIZE tiles of the images at their own pixel size (radiographs)")
    parser.add_argument("--tile-stride", type=positive_int, default=None, metavar="PIXELS",
                        help="with --fit tile: pixels between tiles (default SIZE: no overlap)")
    parser.add_argument("--max-slices", type=positive_int, default=None, metavar="N",
                        help="at most N evenly spaced slices per volume (default all)")
    parser.add_argument("--min-foreground", type=fraction, default=0.05,
                        help="drop slices with less than this fraction of non-background pixels (default 0.05)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="slices per pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cuda, cpu, ...")
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the bootstrap")
    parser.add_argument("--subject-pattern", default=None, metavar="REGEX",
                        help="regex whose first group in the file name is the subject, when one subject has several "
                        "files (e.g. 'BraTS-GLI-\\d+-\\d+' for a case's four contrasts); default: one subject per file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from LatentSRLib.errors import InputError

    for source in args.inputs:  # before the heavy imports: a typo is answered at once
        if not Path(source).exists():
            raise InputError("no such file or folder", source)

    from LatentSRLib.data.slice_source import SliceSelection
    from LatentSRLib.evaluation.screening import screen_autoencoders

    try:
        selection = SliceSelection(plane=args.axis, size=(args.size, args.size), fit=args.fit,
                                   max_slices_per_source=args.max_slices, min_foreground=args.min_foreground,
                                   tile_stride=args.tile_stride or (args.size if args.fit == "tile" else None))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    result = screen_autoencoders(args.inputs, args.vae, args.output, selection=selection,
                                 batch_size=args.batch_size, device=args.device, lpips=not args.no_lpips,
                                 seed=args.seed, subject_pattern=args.subject_pattern)
    print((result.outdir / "summary.md").read_text())
    print(f"wrote {result.outdir}")
    return 0
