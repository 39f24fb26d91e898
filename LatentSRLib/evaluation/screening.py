"""Training-free VAE screening: the "AE ceiling" of each autoencoder on the user's own images.

For every autoencoder, encode then decode every slice (posterior mean) and score the
reconstruction against the TRUE image: PSNR, SSIM, MS-SSIM (where the size allows), LPIPS (with
the network that computed it named), and PSNR in the 10 bands of a 3-level Haar decomposition.
The paper's finding is that this ceiling predicts latent-diffusion SR quality, so it is the thing to
measure before training anything.

Outputs in one run folder (written atomically): ``per_image.csv``, ``summary.json``,
``summary.md``, ``subband_fingerprint.png`` and ``examples.png``.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from LatentSRLib.errors import InputError
from LatentSRLib.io import atomic_directory, check_output_folder
from LatentSRLib.metrics.plotting import new_figure, save_png
from LatentSRLib.model.devices import resolve_device
from LatentSRLib.data.slice_source import ModelSlice, SliceSelection, evenly_spaced, gather_slices

__all__ = ["ScreenResult", "screen_autoencoders"]

METRICS = ("psnr", "ssim", "ms_ssim", "lpips")
SUMMARY_FILE = "summary.json"


@dataclass
class ScreenResult:
    """What a screening run measured (also written to the run folder)."""

    outdir: Path
    rows: list[dict] = field(repr=False)
    summary: dict = field(repr=False)


def _check_outdir(outdir: Path, inputs: Sequence[str | os.PathLike]) -> None:
    check_output_folder(outdir, inputs, is_ours=lambda folder: (folder / SUMMARY_FILE).is_file(),
                        what="screening folder")


def screen_autoencoders(
    inputs: Sequence[str | os.PathLike],
    specs: Sequence[str],
    outdir: str | os.PathLike,
    *,
    selection: SliceSelection = SliceSelection(),
    batch_size: int = 8,
    device: str = "auto",
    lpips: bool = True,
    n_resamples: int = 10_000,
    seed: int = 0,
    subject_pattern: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> ScreenResult:
    """Screen autoencoders by their encode-decode fidelity on ``inputs``.

    Args:
        inputs: image files, volumes, DICOM series folders or folders of images.
        specs: autoencoder spec strings (see :func:`LatentSRLib.autoencoders.load_autoencoder`).
        outdir: run folder (created; a previous screening folder is replaced as a whole).
        selection: how slices are taken and put on the model grid.
        batch_size: slices per encode-decode pass.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"cpu"``...
        lpips: compute LPIPS when a network is available (its label is recorded).
        n_resamples, seed: paired bootstrap of the comparisons between autoencoders.
        subject_pattern: regular expression whose first group (or whole match) in a file name is the
            subject, when one subject has several files (e.g. the four contrasts of a BraTS case);
            by default each file is its own subject.
        progress: ``progress(spec, done, total)`` after each batch (default: a tqdm bar).
        log: where one-line messages go (throughput, LPIPS network).
    """
    from LatentSRLib.autoencoders import load_autoencoder
    from LatentSRLib.metrics import LPIPSMetric, fidelity_metrics, haar_subband_psnr

    if not specs:
        raise InputError("give at least one autoencoder (--vae SPEC)")
    if len(set(specs)) != len(specs):
        raise InputError("the same autoencoder spec is given twice")
    outdir = Path(outdir)
    _check_outdir(outdir, inputs)
    slices = gather_slices(inputs, selection)
    if subject_pattern:  # the subject only; the slice IDs (which pair the rows) stay unique per file
        from dataclasses import replace

        from LatentSRLib.data.dataset import compile_subject_pattern, subject_from_pattern

        pattern = compile_subject_pattern(subject_pattern)
        slices = [replace(s, subject=subject_from_pattern(s.subject, Path(s.source), pattern)) for s in slices]
    if not slices:
        raise InputError("no slice passed the background rule; check the inputs or lower --min-foreground")
    target = torch.from_numpy(np.stack([s.image for s in slices]))[:, None]  # (N, 1, H, W) in [0, 1]
    torch_device = resolve_device(device)
    perceptual = LPIPSMetric(device=torch_device) if lpips else None
    if perceptual is not None and not perceptual.available:
        log(f"LPIPS skipped: {perceptual.reason}")
        perceptual = None

    rows: list[dict] = []
    examples: dict[str, np.ndarray] = {}
    throughput: dict[str, float] = {}
    for spec in specs:
        autoencoder = load_autoencoder(spec, device=torch_device)
        started = time.perf_counter()
        recon = _reconstruct(autoencoder, target, batch_size, torch_device, spec, progress)
        elapsed = time.perf_counter() - started
        throughput[spec] = len(slices) / elapsed if elapsed > 0 else math.inf
        log(f"{spec}: {len(slices)} images in {elapsed:.1f} s ({throughput[spec]:.2f} images/s on {torch_device})")
        scores = fidelity_metrics(recon, target)
        if perceptual is not None:
            scores["lpips"] = perceptual(recon, target)
        bands = haar_subband_psnr(recon, target)
        for i, item in enumerate(slices):
            row = {"id": item.id, "subject": item.subject, "source": item.source, "plane": item.plane,
                   "index": item.index, "vae": spec}
            row.update({m: float(scores[m][i]) if m in scores else math.nan for m in METRICS})
            row.update({f"psnr_{band}": float(values[i]) for band, values in bands.items()})
            rows.append(row)
        examples[spec] = recon[evenly_spaced(len(slices), 3)].numpy()[:, 0]
        del autoencoder

    summary = _summarise(rows, specs, slices, selection, perceptual, throughput, n_resamples, seed)
    with atomic_directory(outdir) as staging:
        _write_csv(rows, staging / "per_image.csv")
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, allow_nan=True))
        (staging / "summary.md").write_text(_markdown(summary))
        _plot_fingerprint(summary, staging / "subband_fingerprint.png")
        hr_examples = target[evenly_spaced(len(slices), 3)].numpy()[:, 0]
        ids = [slices[i].id for i in evenly_spaced(len(slices), 3)]
        _plot_examples(hr_examples, examples, ids, staging / "examples.png")
    return ScreenResult(outdir, rows, summary)


def _reconstruct(autoencoder, target: torch.Tensor, batch_size: int, device: torch.device, spec: str,
                 progress: Callable[[str, int, int], None] | None) -> torch.Tensor:
    """Encode-decode ``target`` in batches on ``device``; returns float32 on the CPU."""
    from tqdm.auto import tqdm

    out = []
    bar = None if progress is not None else tqdm(total=len(target), desc=spec, unit="img", leave=False)
    with torch.inference_mode():
        for start in range(0, len(target), batch_size):
            batch = target[start : start + batch_size].to(device)
            out.append(autoencoder.reconstruct(batch).float().clamp_(0.0, 1.0).cpu())
            done = min(start + batch_size, len(target))
            if progress is not None:
                progress(spec, done, len(target))
            else:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return torch.cat(out)


# ------------------------------------------------------------------------------------- summary
def _summarise(rows, specs, slices: list[ModelSlice], selection, perceptual, throughput, n_resamples, seed) -> dict:
    from LatentSRLib.metrics import SUBBANDS, compare_by_id, summarise

    by_vae = {spec: [r for r in rows if r["vae"] == spec] for spec in specs}
    columns = list(METRICS) + [f"psnr_{b}" for b in SUBBANDS]
    per_vae = {}
    for spec, vae_rows in by_vae.items():
        stats = {}
        for column in columns:
            values = np.array([r[column] for r in vae_rows], dtype=float)
            finite = values[np.isfinite(values)]
            stats[column] = summarise(finite, n_resamples=n_resamples, seed=seed) if finite.size else None
        per_vae[spec] = {"metrics": stats, "images_per_second": throughput[spec]}
    comparisons = []
    for a, b in itertools.combinations(specs, 2):
        for column in ("psnr", "ssim", "psnr_HH1"):
            x = {r["id"]: r[column] for r in by_vae[a]}
            y = {r["id"]: r[column] for r in by_vae[b]}
            result = compare_by_id(x, y, n_resamples=n_resamples, seed=seed, nonfinite="drop")
            comparisons.append({"a": a, "b": b, "metric": column, **result.to_dict()})
    return {
        "n_images": len(slices),
        "n_subjects": len({s.subject for s in slices}),
        "sources": sorted({s.source for s in slices}),
        "selection": selection.to_dict(),
        "reference": "the true image (encode-decode is scored against the input, never another reconstruction)",
        "encoding": "posterior mean (deterministic)",
        "lpips_network": None if perceptual is None else perceptual.label,
        "subbands": list(SUBBANDS),
        "autoencoders": per_vae,
        "comparisons": comparisons,
    }


def _write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _fmt(stats: dict | None, digits: int = 2) -> str:
    if not stats:
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"


def _markdown(summary: dict) -> str:
    lpips = summary["lpips_network"] or "not computed (no LPIPS network available)"
    lines = [
        "# Autoencoder screening (AE ceiling)",
        "",
        f"n = {summary['n_images']} images from {summary['n_subjects']} subject(s); encode-decode with the "
        f"{summary['encoding']}, scored against the true image. LPIPS: {lpips}.",
        "",
        "| autoencoder | PSNR (dB) | SSIM | MS-SSIM | LPIPS | HH1 PSNR (dB) | images/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec, entry in summary["autoencoders"].items():
        m = entry["metrics"]
        lines.append(f"| `{spec}` | {_fmt(m['psnr'])} | {_fmt(m['ssim'], 4)} | {_fmt(m['ms_ssim'], 4)} | "
                     f"{_fmt(m['lpips'], 4)} | {_fmt(m['psnr_HH1'])} | {entry['images_per_second']:.2f} |")
    if summary["comparisons"]:
        lines += ["", "## Paired comparisons (a - b, by image id)", "",
                  "| a | b | metric | n | mean difference | 95% CI (paired bootstrap) | Wilcoxon p | d_z |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for c in summary["comparisons"]:
            lines.append(f"| `{c['a']}` | `{c['b']}` | {c['metric']} | {c['n']} | {c['mean_difference']:+.3f} | "
                         f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {c['p_value']:.3g} | {c['d_z']:.2f} |")
    lines += ["", "## Haar subband PSNR (dB, mean)", "",
              "| autoencoder | " + " | ".join(summary["subbands"]) + " |",
              "| --- |" + " --- |" * len(summary["subbands"])]
    for spec, entry in summary["autoencoders"].items():
        cells = [(f"{entry['metrics'][f'psnr_{b}']['mean']:.2f}" if entry["metrics"][f"psnr_{b}"] else "n/a")
                 for b in summary["subbands"]]
        lines.append(f"| `{spec}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- figures
def _plot_fingerprint(summary: dict, path: Path) -> None:
    bands = summary["subbands"]
    fig = new_figure(8, 4)
    ax = fig.subplots()
    for spec, entry in summary["autoencoders"].items():
        means = [entry["metrics"][f"psnr_{b}"]["mean"] if entry["metrics"][f"psnr_{b}"] else np.nan for b in bands]
        ax.plot(range(len(bands)), means, marker="o", label=spec)
    ax.set_xticks(range(len(bands)), bands)
    ax.set_xlabel("Haar subband (coarse to fine)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"Subband fingerprint of the AE reconstruction (n = {summary['n_images']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path, dpi=120)


def _plot_examples(hr: np.ndarray, recons: dict[str, np.ndarray], ids: list[str], path: Path) -> None:
    columns = 1 + 2 * len(recons)
    fig = new_figure(2.2 * columns, 2.3 * len(hr))
    axes = fig.subplots(len(hr), columns, squeeze=False)
    for row in range(len(hr)):
        axes[row, 0].imshow(hr[row], cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"true\n{ids[row]}", fontsize=7)
        for k, (spec, recon) in enumerate(recons.items()):
            axes[row, 1 + 2 * k].imshow(recon[row], cmap="gray", vmin=0, vmax=1)
            axes[row, 1 + 2 * k].set_title(spec, fontsize=7)
            axes[row, 2 + 2 * k].imshow(np.abs(recon[row] - hr[row]), cmap="magma", vmin=0, vmax=0.2)
            axes[row, 2 + 2 * k].set_title("|error| (0-0.2)", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    save_png(fig, path, dpi=110)
