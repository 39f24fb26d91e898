"""Benchmark `latentsr sr`'s defaults against the paper's path on a real low-resolution scan.

    .venv/bin/python Testing/benchmarks/bench_real_scan.py [--model Training/models/brain-sr4]
        [--scan ../shared/data/brain/BraTS-GLI-00001-000-t2f.nii.gz] [--slices 8 | --slices 0 (all)]
        [--paper-steps 100] [--skip-paper] [--device auto] [--tile PIXELS] [--overlap FRACTION]
        [--anatomy-window on|off] [--channels-last on|off|compare]

The true volume's central ``--slices`` axial slices are measured as a scanner would store them
(``latentsr degrade --coarse-grid``: 4x coarser in-plane) and super-resolved back twice in this
process, on the same model and scan:

* defaults: the engine as ``latentsr sr`` runs it (the model's default steps, data consistency,
  background tiles skipped, batched tiles);
* the paper's path: one tile at a time, DDIM with ``--paper-steps`` (100) steps, every tile sampled,
  no data consistency (the paper's inference script walks one slice at a time; here the engine with
  a batch of one, so that both runs share the tiling and grids and only the speed-ups differ).

Timed as a user runs it (no reference); then the SR and the bicubic up-sampling of the same scan
(the grid's bicubic, clipped to the engine's window) are scored against the truth on the
slices with anatomy. It prints, for each, the wall time, seconds per slice, PSNR and SSIM (and bicubic's),
the ratio of the times, the PSNR difference, the peak resident memory of the defaults run (read as soon
as the engine returns, before any scoring, and measured first, so the figure is the defaults' own), and
where the defaults' time went: the autoencoder's encode and decode, the denoiser, and the rest (tiling,
blending, up-sampling, data consistency). ``--channels-last compare`` runs the defaults twice, in the
networks' default layout and then channels-last (NHWC), and prints the ratio of the times and the PSNR
difference (the peak memory of the second run includes the first's). Figures, not assertions: the tests
never time.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from LatentSRLib.inference.engine import SRSettings, super_resolve_volume  # noqa: E402
from LatentSRLib.inference.real_scans import slab_of  # noqa: E402
from LatentSRLib.io import read_image  # noqa: E402
from LatentSRLib.metrics.quality import ssim  # noqa: E402
from LatentSRLib.model.devices import resolve_device  # noqa: E402
from LatentSRLib.model.folder import load_sr_model  # noqa: E402
from LatentSRLib.transforms.grids import upsample  # noqa: E402
from LatentSRLib.transforms.simulation import simulate_coarse_scan  # noqa: E402
from LatentSRLib.transforms.slicing import SliceLayout  # noqa: E402


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class StageTimer:
    """Seconds spent in the autoencoder's encode and decode and the denoiser's forward, accumulated
    while installed (wraps the three bound methods of one loaded model; a benchmark's instrument only)."""

    STAGES = (("encode", "autoencoder", "encode"), ("decode", "autoencoder", "decode"),
              ("denoiser", "denoiser", "forward"))

    def __init__(self, model, device) -> None:
        self.model, self.device = model, device
        self.seconds = {name: 0.0 for name, _, _ in self.STAGES}

    def _timed(self, name, function):
        def wrapper(*args, **kwargs):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.seconds[name] += time.perf_counter() - started
        return wrapper

    def __enter__(self) -> "StageTimer":
        self._saved = []
        for name, owner, method in self.STAGES:
            target = getattr(self.model, owner)
            self._saved.append((target, method, vars(target).get(method)))
            setattr(target, method, self._timed(name, getattr(target, method)))
        return self

    def __exit__(self, *exc) -> None:
        for target, method, own in self._saved:
            if own is None:
                delattr(target, method)  # back to the class's method
            else:
                setattr(target, method, own)


def _run(model, lr, hr, settings: SRSettings, device, timer: StageTimer | None = None) -> tuple[float, dict]:
    """Super-resolve ``lr`` as `latentsr sr` does (no reference: the review's extra autoencoder pass is
    not part of a user's run) and score the SR and bicubic against ``hr`` afterwards, in the engine's window.
    The returned metrics hold ``peak_gib``, the process's peak resident memory when the engine returned."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    if timer is None:
        result = super_resolve_volume(model, lr, settings=settings, device=device)
    else:
        with timer:
            result = super_resolve_volume(model, lr, settings=settings, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = _peak_gib()
    window = result.metrics["window"]
    layout = SliceLayout.for_image(hr, "axial")

    def windowed(array: np.ndarray) -> np.ndarray:
        x = layout.extract(np.asarray(array, dtype=np.float32))
        return np.clip((x - window["lower"]) / (window["upper"] - window["lower"]), 0, 1)

    truth = windowed(hr.array)
    keep = truth.reshape(len(truth), -1).max(axis=1) > 0.05  # slices with anatomy, as the engine's review
    coarse_layout = SliceLayout.for_image(result.lr, "axial")
    coarse = torch.from_numpy(np.ascontiguousarray(coarse_layout.extract(np.asarray(result.lr.array, dtype=np.float32))))
    bicubic = upsample(coarse[:, None], model.task.scale, size=layout.slice_shape)[:, 0].numpy()
    scores = {}
    bicubic = np.clip((bicubic - window["lower"]) / (window["upper"] - window["lower"]), 0, 1)
    for name, image in (("sr", windowed(result.sr.array)), ("lr", bicubic)):
        mse = float(np.mean((image[keep].astype(np.float64) - truth[keep]) ** 2))
        scores[f"psnr_{name}"] = 10 * np.log10(1.0 / mse)
        scores[f"ssim_{name}"] = float(np.mean(ssim(image[keep], truth[keep])))
    return seconds, {**result.metrics, "reference": scores, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "Training" / "models" / "brain-sr4"))
    parser.add_argument("--scan", default=str(ROOT.parent / "shared" / "data" / "brain" / "BraTS-GLI-00001-000-t2f.nii.gz"))
    parser.add_argument("--slices", type=int, default=8, help="central axial slices (0: all)")
    parser.add_argument("--paper-steps", type=int, default=100)
    parser.add_argument("--skip-paper", action="store_true", help="only the defaults (e.g. a whole volume)")
    parser.add_argument("--samples", type=int, nargs="+", default=[1],
                        help="K samples per slice for the defaults run; several values are timed in turn (e.g. 1 4)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tile", type=int, default=None, help="the defaults run's tile (default: the engine's)")
    parser.add_argument("--overlap", type=float, default=None, help="the defaults run's tile overlap (default: the engine's)")
    parser.add_argument("--anatomy-window", choices=("on", "off"), default=None,
                        help="the defaults run's anatomy window (default: the model's)")
    parser.add_argument("--channels-last", choices=("on", "off", "compare"), default=None,
                        help="the networks' layout in the defaults run (default: the engine's choice for the device); "
                             "compare: time both, default layout first")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model = load_sr_model(args.model, device=device)
    truth = read_image(args.scan)
    n = truth.array.shape[truth.array_axis_for_plane("axial")]
    count = n if args.slices <= 0 else min(args.slices, n)
    start = (n - count) // 2
    hr = slab_of(truth, "axial", range(start, start + count))
    lr = simulate_coarse_scan(hr, model.task.scale, plane="axial")
    default_steps = model.config.get("sampling", {}).get("steps")
    print(f"{Path(args.model).name} on {Path(args.scan).name}: {count} axial slices, {lr.shape[1]}x{lr.shape[2]} -> "
          f"{hr.shape[1]}x{hr.shape[2]}; device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    layouts = {None: [None], "on": [True], "off": [False], "compare": [False, True]}[args.channels_last]
    timed, refs, by_layout = {}, {}, {}
    for samples, channels_last in [(k, layout) for k in args.samples for layout in layouts]:
        timer = StageTimer(model, device)
        settings = SRSettings(data_consistency=True, samples=samples, tile=args.tile, overlap=args.overlap,
                              anatomy_window=None if args.anatomy_window is None else args.anatomy_window == "on",
                              channels_last=channels_last)
        seconds, metrics = _run(model, lr, hr, settings, device, timer)
        timed[samples] = seconds
        ref = refs[samples] = metrics["reference"]
        by_layout[channels_last] = (seconds, ref["psnr_sr"])
        layout = "" if channels_last is None else (", channels-last" if channels_last else ", default layout")
        print(f"defaults, K = {samples}{layout} ({default_steps} steps, data consistency, {metrics['tiling']}, background skipped: "
              f"{metrics['background_tiles_skipped']} tiles, batch {metrics['batch_size']}): {seconds:8.1f} s, "
              f"{seconds / count:6.2f} s/slice, PSNR {ref['psnr_sr']:.2f} dB, SSIM {ref['ssim_sr']:.3f}; "
              f"peak memory so far {metrics['peak_gib']:.2f} GiB")
        rest = seconds - sum(timer.seconds.values())
        print("  where the time went: " + ", ".join(f"{name} {t:.1f} s ({t / seconds:.0%})" for name, t in
                                                     [*timer.seconds.items(), ("rest", rest)]))
    if args.channels_last == "compare":
        (plain, plain_psnr), (nhwc, nhwc_psnr) = by_layout[False], by_layout[True]
        print(f"channels-last is {plain / nhwc:.2f}x the default layout's speed, PSNR {nhwc_psnr - plain_psnr:+.3f} dB "
              f"(K = {args.samples[-1]})")
    if len(timed) > 1:
        first = next(iter(timed))
        print("time against K = {}: ".format(first) + ", ".join(f"K = {k}: {t / timed[first]:.2f}x" for k, t in timed.items()))
    print(f"bicubic up-sampling of the same scan: PSNR {ref['psnr_lr']:.2f} dB, SSIM {ref['ssim_lr']:.3f}")
    if args.skip_paper:
        return
    paper_settings = SRSettings(steps=args.paper_steps, batch_size=1, data_consistency=False, skip_background=False)
    paper_seconds, paper_metrics = _run(model, lr, hr, paper_settings, device)
    paper = paper_metrics["reference"]
    print(f"paper's path ({args.paper_steps} steps, one tile at a time, every tile, no data consistency): "
          f"{paper_seconds:8.1f} s, {paper_seconds / count:6.2f} s/slice, PSNR {paper['psnr_sr']:.2f} dB, "
          f"SSIM {paper['ssim_sr']:.3f}")
    seconds, ref = timed[args.samples[0]], refs[args.samples[0]]
    print(f"defaults are {paper_seconds / seconds:.1f}x faster, PSNR {ref['psnr_sr'] - paper['psnr_sr']:+.2f} dB "
          f"against the paper's path")


if __name__ == "__main__":
    main()
