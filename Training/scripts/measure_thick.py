"""Measure a thick-slice model where a user meets it and save the per-slice results its card is made from.

    python Training/scripts/measure_thick.py Training/models/brain-thick5 \
        --scan t1n=../shared/data/brain/BraTS-GLI-00001-000-t1n.nii.gz ... [--plane axial]

Each true 1 mm volume is measured as a thick-slice series (``latentsr degrade --mode thick``: the model's
slice profile and factor along the normal of ``--plane``, stored on its coarse grid), and that series is
what the engine of ``latentsr sr`` refines back to the fine grid, with data consistency (the default)
and without. The baseline is cubic B-spline interpolation of the same series along the thick axis
(:func:`~LatentSRLib.transforms.thick.bspline_through_plane`), what a viewer or a resampling tool shows.
Every fine slice of ``--plane`` with anatomy (any pixel above 0.05 of the engine's intensity window) is
scored against the truth in that window: PSNR and SSIM of the SR and of the B-spline. Writes
``MODEL/results/thick_scans.json``; ``write_card.py`` turns it into the card's tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from LatentSRLib.errors import InputError, LatentSRError
from LatentSRLib.io.atomic import atomic_path

RESULTS_FORMAT = "latentsr.thick_scans"


def measure(model_folder: Path, scans: dict[str, str], plane: str = "axial", device: str = "auto",
            runs: tuple[str, ...] = ("dc", "no_dc")) -> dict:
    from LatentSRLib.inference.engine import SRSettings, super_resolve_volume
    from LatentSRLib.io import read_image
    from LatentSRLib.metrics.quality import ssim
    from LatentSRLib.model.devices import resolve_device
    from LatentSRLib.model.folder import load_sr_model
    from LatentSRLib.transforms.thick import bspline_through_plane, simulate_thick_slices

    device = resolve_device(device)
    model = load_sr_model(model_folder, device=device)
    task = model.task
    if task.mode != "thick":
        raise InputError(f"a {task.mode!r} model, not a thick-slice one", model_folder)
    scale, profile = int(task.scale), task.options.get("profile", "gaussian")
    results = {"format": RESULTS_FORMAT, "model": model_folder.name,
               "settings": {"scale": scale, "profile": profile, "plane": plane,
                            "steps": model.config.get("sampling", {}).get("steps"), "samples": 1},
               "scans": {}}
    for name, path in scans.items():
        truth_image = read_image(path)
        thick = simulate_thick_slices(truth_image, scale, plane=plane, profile=profile)
        axis = truth_image.array_axis_for_plane(plane)
        bspline = bspline_through_plane(thick.array, axis, scale, truth_image.array.shape[axis])
        entry = {"path": str(path), "lr_spacing": list(thick.spacing), "runs": {}}
        for run, consistency in (("dc", True), ("no_dc", False)):
            if run not in runs:
                continue
            print(f"{time.strftime('%H:%M:%S')} {name}: data consistency {'on' if consistency else 'off'}", flush=True)
            started = time.perf_counter()
            result = super_resolve_volume(model, thick, reference=truth_image, settings=SRSettings(
                data_consistency=consistency), device=device)
            seconds = time.perf_counter() - started
            window = result.metrics["window"]

            def windowed(array: np.ndarray) -> np.ndarray:
                scaled = (np.asarray(array, dtype=np.float64) - window["lower"]) / (window["upper"] - window["lower"])
                return np.moveaxis(np.clip(scaled, 0, 1), axis, 0)

            truth, sr, baseline = windowed(truth_image.array), windowed(result.sr.array), windowed(bspline)
            keep = [i for i in range(len(truth)) if truth[i].max() > 0.05]
            rows = []
            ssim_sr = ssim(sr[keep].astype(np.float32), truth[keep].astype(np.float32))
            ssim_bspline = ssim(baseline[keep].astype(np.float32), truth[keep].astype(np.float32))
            for j, i in enumerate(keep):
                psnr = [10 * np.log10(1.0 / np.mean((image[i] - truth[i]) ** 2)) for image in (sr, baseline)]
                rows.append({"slice": i, "psnr_sr": float(psnr[0]), "psnr_bspline": float(psnr[1]),
                             "ssim_sr": float(ssim_sr[j]), "ssim_bspline": float(ssim_bspline[j])})
            entry["runs"][run] = {"seconds": round(seconds, 1), "per_slice": rows}
        results["scans"][name] = entry
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--scan", action="append", required=True, metavar="NAME=FILE", help="a true 1 mm volume")
    parser.add_argument("--plane", default="axial", choices=("axial", "coronal", "sagittal"),
                        help="the plane of the thick slices (default axial)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", default="dc,no_dc", help="the operating points: dc (the default, data consistency), "
                        "no_dc (the detail end), comma-separated (default both)")
    args = parser.parse_args(argv)
    runs = tuple(run.strip() for run in args.runs.split(","))
    if not runs or not set(runs) <= {"dc", "no_dc"}:
        print(f"measure_thick: --runs takes dc and/or no_dc, not {args.runs!r}", file=sys.stderr)
        return 2
    scans = dict(item.split("=", 1) for item in args.scan)
    try:
        results = measure(args.model, scans, args.plane, args.device, runs)
    except LatentSRError as exc:
        print(f"measure_thick: {exc}", file=sys.stderr)
        return 2
    path = args.model / "results" / "thick_scans.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
