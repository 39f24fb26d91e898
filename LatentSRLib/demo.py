"""The whole idea in one run, offline: a real brain MRI volume, its simulated low-resolution version,
the reference model's super-resolution, the review maps, a metrics table and a montage.

The default scan is the MNI ICBM152 2009a symmetric T1 template (1 mm) that ships inside the
``nilearn`` package (the McConnell Brain Imaging Centre's permissive licence); it is a population
average, smoother than a patient scan, and none of the reference models saw it in training. Any
other volume can be given instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io import MedicalImage, index_axis_of_array_axis, read_image, refuse_overwriting_inputs, write_image
from .io.atomic import atomic_directory

__all__ = ["DemoResult", "default_demo_model", "default_demo_scan", "is_demo_folder", "run_demo"]

DEMO_SCAN_NAME = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
DEMO_MODEL_NAME = "brain-sr4"


def default_demo_model() -> Path:
    """The reference brain model: ``$LATENTSR_MODELS/brain-sr4``, else ``Training/models/brain-sr4``
    of the source tree this package runs from."""
    root = Path(os.environ.get("LATENTSR_MODELS") or Path(__file__).resolve().parent.parent / "Training" / "models")
    return root / DEMO_MODEL_NAME


def default_demo_scan() -> Path:
    """The MNI ICBM152 2009a T1 template inside the installed ``nilearn`` package."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.origin:
        raise InputError("the demo's default scan ships with the nilearn package, which is not installed: "
                         "pip install nilearn, or pass --input VOLUME")
    path = Path(spec.origin).parent / "datasets" / "data" / DEMO_SCAN_NAME
    if not path.is_file():
        raise InputError(f"this nilearn has no {DEMO_SCAN_NAME}; pass --input VOLUME", path.parent)
    return path


def is_demo_folder(folder: Path) -> bool:
    """A folder this demo wrote (it may be replaced by a new run)."""
    return (folder / "montage.png").is_file() and (folder / "metrics.md").is_file()


@dataclass
class DemoResult:
    folder: Path
    metrics: dict[str, Any]
    table: list[dict[str, Any]]
    montage: Path


def _central_slab(image: MedicalImage, plane: str, count: int) -> MedicalImage:
    """``count`` slices around the middle of ``image`` along ``plane`` (all when fewer), geometry kept."""
    axis = image.array_axis_for_plane(plane)
    n = image.array.shape[axis]
    if count >= n:
        return image
    start = (n - count) // 2
    index = [slice(None)] * 3
    index[axis] = slice(start, start + count)
    offset = [0, 0, 0]
    offset[index_axis_of_array_axis(axis, 3)] = start
    origin = tuple((image.index_to_world() @ np.array([*offset, 1.0]))[:3])
    return MedicalImage(np.ascontiguousarray(image.array[tuple(index)]), image.spacing, origin, image.direction,
                        metadata=dict(image.metadata))


def at_model_resolution(image: MedicalImage, plane: str, grid_size: int) -> MedicalImage:
    """``image`` resampled in-plane so that its field of view spans ``grid_size`` pixels, the
    resolution a model trained on that grid works at (slice spacing kept; never made finer).

    Anti-aliased: a Gaussian of half the new pixel size (SimpleITK) before linear resampling. The
    field of view is kept edge to edge. Returns float32.
    """
    import SimpleITK as sitk

    slice_axis = index_axis_of_array_axis(image.array_axis_for_plane(plane), 3)
    size = np.array(image.array.shape[::-1], dtype=float)  # index order (i, j, k)
    spacing = np.array(image.spacing, dtype=float)
    in_plane = [a for a in range(3) if a != slice_axis]
    target = max(size[a] * spacing[a] for a in in_plane) / grid_size
    new_spacing = spacing.copy()
    for a in in_plane:
        new_spacing[a] = max(spacing[a], target)
    if np.allclose(new_spacing, spacing):
        return image
    new_size = [int(round(size[a] * spacing[a] / new_spacing[a])) for a in range(3)]
    sigma = [0.5 * new_spacing[a] if a in in_plane and new_spacing[a] > spacing[a] else 0.0 for a in range(3)]
    itk = sitk.Cast(image.to_sitk(), sitk.sitkFloat32)
    itk = sitk.DiscreteGaussian(itk, variance=[v * v for v in sigma], useImageSpacing=True)
    # keep the field of view: the first voxel centre moves by half the change of the voxel size
    origin = np.array(image.origin) + image.direction @ ((new_spacing - spacing) / 2)
    resampled = sitk.Resample(itk, new_size, sitk.Transform(), sitk.sitkLinear, tuple(origin), tuple(new_spacing),
                              tuple(image.direction.ravel()), 0.0, sitk.sitkFloat32)
    return MedicalImage.from_sitk(resampled, metadata=dict(image.metadata))


def metrics_table(review: dict[str, Any], model_name: str) -> list[dict[str, Any]]:
    """Rows ``{method, psnr, ssim, note}`` against the true high-resolution volume."""
    return [
        {"method": "bicubic (the low-resolution input, up-sampled)", "psnr": review["psnr_lr"], "ssim": review["ssim_lr"],
         "note": "baseline"},
        {"method": f"LatentSR ({model_name})", "psnr": review["psnr_sr"], "ssim": review["ssim_sr"],
         "note": f"hallucinated {100 * review['hallucinated_fraction']:.2f}% / lost {100 * review['lost_fraction']:.2f}% of pixels"},
        {"method": "autoencoder ceiling (encode-decode of the TRUE image)", "psnr": review["psnr_ae_ceiling"], "ssim": None,
         "note": "what the model's latent space allows; not an SR method"},
    ]


def _table_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | PSNR (dB) | SSIM | note |", "| --- | --- | --- | --- |"]
    for row in rows:
        psnr = "" if row["psnr"] is None else f"{row['psnr']:.2f}"
        ssim = "" if row["ssim"] is None else f"{row['ssim']:.4f}"
        lines.append(f"| {row['method']} | {psnr} | {ssim} | {row['note']} |")
    return "\n".join(lines) + "\n"


def _montage(path: Path, slices: dict[str, np.ndarray], scale: int, title: str) -> None:
    """LR | bicubic | SR | HR on top, |SR - HR|, uncertainty, hallucination below; one slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    hr = slices["hr"]
    h, w = hr.shape
    # the measured pixels: area-averaged back to the low-resolution grid, shown enlarged without smoothing
    small = slices["lr"][: h - h % scale, : w - w % scale].reshape(h // scale, scale, w // scale, scale).mean((1, 3))
    lr_pixels = np.kron(small, np.ones((scale, scale)))
    error = np.abs(slices["sr"] - hr)
    top = [(lr_pixels, f"LR input ({h // scale}x{w // scale} pixels)"), (slices["lr"], "bicubic"),
           (slices["sr"], "LatentSR"), (hr, "true high resolution")]
    figure, axes = plt.subplots(2, 4, figsize=(13, 7), constrained_layout=True)
    for axis, (image, label) in zip(axes[0], top):
        axis.imshow(image, cmap="gray", vmin=0, vmax=1)
        axis.set_title(label)
    err = axes[1][0].imshow(error, cmap="magma", vmin=0, vmax=max(float(np.percentile(error, 99.5)), 1e-6))
    axes[1][0].set_title("|SR - HR|")
    figure.colorbar(err, ax=axes[1][0], shrink=0.8)
    unc = axes[1][1].imshow(slices["uncertainty"], cmap="viridis")
    axes[1][1].set_title("uncertainty (std across samples)")
    figure.colorbar(unc, ax=axes[1][1], shrink=0.8)
    axes[1][2].imshow(hr, cmap="gray", vmin=0, vmax=1)
    labels = np.ma.masked_equal(slices["hallucination"], 0)
    axes[1][2].imshow(labels, cmap=ListedColormap([(0.0, 0.6, 1.0), (1.0, 0.35, 0.0)]), vmin=-1, vmax=1,
                      interpolation="nearest")
    axes[1][2].set_title("hallucinated (orange) / lost (blue)")
    axes[1][3].imshow(np.abs(slices["lr"] - hr), cmap="magma", vmin=0, vmax=max(float(np.percentile(error, 99.5)), 1e-6))
    axes[1][3].set_title("|bicubic - HR| (same scale)")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def run_demo(outdir: str | os.PathLike, *, model: str | os.PathLike | None = None, scan: str | os.PathLike | None = None,
             plane: str = "axial", slices: int = 12, steps: int | None = None, samples: int = 2, device: str = "auto",
             native: bool = False, progress: Callable[[float, str], None] | None = None) -> DemoResult:
    """Simulate a low-resolution acquisition of ``scan``, super-resolve it and write everything to ``outdir``.

    Writes ``hr``, ``lr``, ``sr``, ``uncertainty``, ``consistency``, ``difference`` and
    ``hallucination`` volumes (NIfTI, on the slab's grid and in its units), ``metrics.json``,
    ``metrics.md`` (SR against bicubic and the autoencoder ceiling) and ``montage.png``.
    ``slices`` axial slices around the middle are used (all with 0), which keeps the demo to a
    few minutes on two CPU cores. Unless ``native``, the slab is first put at the model's own
    resolution (:func:`at_model_resolution`): a reference model trained on a 128 x 128 grid cannot
    add detail finer than that grid, and a high-resolution reference finer than it would score
    every method on detail none could produce.
    """
    from .errors import OutputError
    from .inference import SRSettings, super_resolve_volume
    from .sr_model import load_sr_model
    from .transforms.slicing import SliceLayout

    outdir = Path(outdir)
    if outdir.exists() and (not outdir.is_dir() or (any(outdir.iterdir()) and not is_demo_folder(outdir))):
        raise OutputError("exists and is not a previous demo folder; choose a new folder", outdir)
    model_folder = Path(model) if model else default_demo_model()
    if not (model_folder / "config.json").is_file():
        raise InputError("no reference model here (it lives in Training/models of the source tree; "
                         "set LATENTSR_MODELS or pass --model FOLDER)", model_folder)
    scan_path = Path(scan) if scan else default_demo_scan()
    refuse_overwriting_inputs(outdir, [scan_path, model_folder])
    sr_model = load_sr_model(model_folder)
    image = read_image(scan_path)
    if image.ndim != 3:
        raise InputError("the demo needs a 3D volume", scan_path)
    slab = _central_slab(image, plane, slices) if slices else image
    if not native:
        slab = at_model_resolution(slab, plane, max(sr_model.config.get("grid", {}).get("size", (256, 256))))
    result = super_resolve_volume(sr_model, slab, plane=plane, settings=SRSettings(steps=steps, samples=samples),
                                  simulate=True, device=device, progress=progress)
    review = result.metrics["reference"]
    table = metrics_table(review, model_folder.name)
    with atomic_directory(outdir) as staging:
        written = {}
        for name, volume in {"hr": slab, "lr": result.lr, **result.outputs()}.items():
            written[name] = str(outdir / write_image(volume, staging / f"{name}.nii.gz").name)
        layout = SliceLayout.for_image(slab, plane)
        window = result.metrics["window"]
        width = float(window["upper"] - window["lower"]) or 1.0

        def upright(volume: MedicalImage, windowed: bool) -> np.ndarray:
            stack = layout.extract(np.asarray(volume.array, dtype=np.float32))
            middle = stack[len(stack) // 2]
            return np.clip((middle - window["lower"]) / width, 0, 1) if windowed else middle

        montage_slices = {name: upright(volume, True) for name, volume in
                          (("hr", slab), ("lr", result.lr), ("sr", result.sr))}
        montage_slices["uncertainty"] = upright(result.uncertainty, False) / width
        montage_slices["hallucination"] = upright(result.hallucination, False)
        rows, cols = layout.pixel_spacing
        title = (f"{scan_path.name} at {rows:.2f} x {cols:.2f} mm: {sr_model.task.name} simulated; "
                 f"PSNR bicubic {review['psnr_lr']:.2f} dB, LatentSR {review['psnr_sr']:.2f} dB")
        _montage(staging / "montage.png", montage_slices, sr_model.task.scale, title)
        metrics = {**result.metrics, "input": str(scan_path), "model": str(model_folder), "table": table,
                   "demo": {"slices": slices, "plane": plane, "native": native, "spacing": list(slab.spacing),
                            "shape": list(slab.array.shape)},
                   "outputs": written}
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (staging / "metrics.md").write_text(
            f"Against the true high-resolution volume ({result.metrics['slices']} {plane} slices of {scan_path.name}, "
            f"intensity window [0, 1]):\n\n" + _table_markdown(table))
    return DemoResult(outdir, metrics, table, outdir / "montage.png")
