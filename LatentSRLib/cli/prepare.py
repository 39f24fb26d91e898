"""``latentsr prepare INPUT... -o DATASET_DIR --task sr4``: HR/LR slice pairs for training and evaluation."""

from __future__ import annotations

import argparse

from LatentSRLib.cli.options import fraction, non_negative_float, non_negative_int, positive_int
from LatentSRLib.transforms.tasks import DEGRADATION_MODES


def register(subparsers) -> None:
    modes = "; ".join(f"{mode}N: {text}" for mode, text in DEGRADATION_MODES.items())
    parser = subparsers.add_parser(
        "prepare",
        help="turn volumes and images into a dataset of HR/LR slice pairs with subject-level splits",
        description="Slice volumes (NIfTI, NRRD, MHA, MGZ, DICOM series, .npy stacks) and images (PNG, JPEG, "
        "TIFF, DICOM) onto the model grid, drop background slices, simulate the low-resolution input of each "
        "slice and write DATASET_DIR with dataset.json, manifest.csv, hr.npy and lr.npy. Splits are by subject. "
        f"Tasks: {modes}.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files, DICOM series folders or image folders")
    parser.add_argument("-o", "--output", required=True, metavar="DATASET_DIR", help="dataset folder (written atomically)")
    parser.add_argument("--task", required=True, help="degradation and factor, e.g. sr4, refine2, kspace4, thick5")
    parser.add_argument("--profile", choices=("gaussian", "box"), default=None,
                        help="thick tasks: slice profile, a Gaussian of FWHM N slices (default) or the mean of N slices")
    parser.add_argument("--noise", type=non_negative_float, default=0.0, help="noise std added after degrading, in [0,1] units")
    parser.add_argument("--noise-kind", choices=("gaussian", "rician"), default="gaussian")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the noise (per slice, from its ID)")
    parser.add_argument("--axis", action="append", choices=("axial", "coronal", "sagittal"), default=None,
                        help="plane(s) to slice volumes along; repeat for several (default axial; thick tasks: "
                        "coronal and sagittal, whose rows run along the thick axial slices' normal; axial is refused)")
    parser.add_argument("--size", type=positive_int, default=256, help="model grid size in pixels (default 256)")
    parser.add_argument("--fit", choices=("pad", "stretch", "tile"), default=None,
                        help="pad (default) keeps the physical aspect ratio; stretch resizes as the paper did; tile "
                        "keeps the image's pixels and cuts it into overlapping SIZE x SIZE tiles (radiographs). "
                        "Thick tasks need tile (their default): a resize would change the slice thickness")
    parser.add_argument("--tile-stride", type=positive_int, default=None, metavar="PIXELS",
                        help="with --fit tile: pixels between tiles (default half of SIZE)")
    parser.add_argument("--every", type=positive_int, default=1, metavar="N", help="keep every N-th slice of a volume")
    parser.add_argument("--max-slices", type=positive_int, default=None, metavar="N",
                        help="at most N evenly spaced slices per volume and plane")
    parser.add_argument("--min-foreground", type=fraction, default=0.05,
                        help="drop slices with less than this fraction of non-background pixels (default 0.05)")
    parser.add_argument("--subject-pattern", default=None, metavar="REGEX",
                        help="regex whose first group in the file name is the subject, when one subject has several "
                        r"files (BraTS: 'BraTS-GLI-\d+-\d+'); default: DICOM PatientID, else the file name")
    parser.add_argument("--val-fraction", type=fraction, default=0.1, help="fraction of subjects for validation")
    parser.add_argument("--test-fraction", type=fraction, default=0.1, help="fraction of subjects for testing")
    parser.add_argument("--val", action="append", default=[], metavar="SUBJECT",
                        help="put subjects matching this shell pattern in validation (repeat)")
    parser.add_argument("--test", action="append", default=[], metavar="SUBJECT",
                        help="put subjects matching this shell pattern in test (repeat)")
    parser.add_argument("--split-seed", type=non_negative_int, default=0, help="seed of the subject split")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from LatentSRLib.errors import InputError
    from LatentSRLib.transforms.tasks import parse_task

    for source in args.inputs:  # before the heavy imports: a typo is answered at once
        if not Path(source).exists():
            raise InputError("no such file or folder", source)

    from LatentSRLib.data.dataset import SplitRule, prepare_dataset
    from LatentSRLib.data.slice_source import SliceSelection

    try:
        task = parse_task(args.task, noise=args.noise, noise_kind=args.noise_kind, seed=args.seed)
    except ValueError as exc:
        raise InputError(f"--task {args.task}: {exc}") from None
    try:
        thick = task.mode == "thick"
        if args.profile is not None and not thick:
            raise ValueError(f"--profile applies to thick tasks, not {task.name}")
        if args.profile not in (None, "gaussian"):  # the default profile is recorded as no option
            task = replace(task, options={"profile": args.profile})
        fit = args.fit or ("tile" if thick else "pad")
        planes = args.axis or (["coronal", "sagittal"] if thick else ["axial"])
        rule = SplitRule(val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.split_seed,
                         val_subjects=tuple(args.val), test_subjects=tuple(args.test))
        selection = SliceSelection(size=(args.size, args.size), fit=fit, every=args.every,
                                   max_slices_per_source=args.max_slices, min_foreground=args.min_foreground,
                                   tile_stride=args.tile_stride)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    dataset = prepare_dataset(args.inputs, args.output, task, selection=selection, planes=planes,
                              split_rule=rule, subject_pattern=args.subject_pattern)
    print(dataset.describe())
    for split, subjects in dataset.info["subjects"].items():
        print(f"  {split}: {len(subjects)} subjects" + (f" ({', '.join(subjects[:6])}{' ...' if len(subjects) > 6 else ''})" if subjects else ""))
    return 0
