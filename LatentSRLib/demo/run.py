"""The whole idea in one run, offline: real scans, their simulated low-resolution versions, the
reference models' super-resolution, the review maps, a metrics table and a montage per case.

Three cases, each with a scan that ships in a registry package (none seen by a model in training):

* ``brain``: the MNI ICBM152 2009a symmetric T1 template (1 mm) inside ``nilearn`` (the McConnell
  Brain Imaging Centre's permissive licence), measured at 4 mm in-plane and super-resolved back to
  1 mm by ``brain-sr4``, which works at the scan's own pixel pitch; a population average, smoother
  than a patient scan.
* ``thick``: the same template measured as 5 mm thick axial slices and refined back to 1 mm along
  the slice axis by ``brain-thick5`` (in coronal and sagittal slices; the montage shows a coronal one).
* ``chest``: the computed radiograph ``RG1_UNCI.dcm`` of ``pydicom-data`` (MIT), resampled to the
  1024-pixel size of NIH ChestX-ray14 on which ``cxr-sr4`` was trained, super-resolved tile by tile.

All project the SR onto the measured input (data consistency), the fidelity end a reader reviews.

Any other volume or image can be given instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from LatentSRLib.errors import InputError
from LatentSRLib.io import MedicalImage, index_axis_of_array_axis, read_image, write_image
from LatentSRLib.io.atomic import atomic_directory, check_output_folder
from LatentSRLib.metrics.plotting import new_figure, save_png

__all__ = ["DEMO_CASES", "DemoCase", "DemoResult", "default_demo_model", "default_demo_scan", "is_demo_folder",
           "run_demo", "run_demos"]

DEMO_SCAN_NAME = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
RADIOGRAPH_NAME = "RG1_UNCI.dcm"


@dataclass(frozen=True)
class DemoCase:
    """One demonstration: which reference model, on which registry scan, at which size.

    Attributes:
        name: the case's subfolder of the demo folder.
        model: folder name of the reference model in ``Training/models``.
        image_size: for a 2D image, the pixels its long side is resampled to first (the size of the
            model's training images); volumes go to the model's grid instead (:func:`at_model_resolution`).
        data_consistency: whether the case projects the SR onto the measured input by default (its
            model card says why).
        scan: which registry scan (:func:`default_demo_scan`): ``"brain"`` or ``"chest"``.
        slices: a volume's slices around the middle used by default (a thick-slice case needs enough
            of them to make several thick slices).
    """

    name: str
    model: str
    image_size: int | None = None
    data_consistency: bool = False
    scan: str = "brain"
    slices: int = 12


DEMO_CASES: dict[str, DemoCase] = {
    "brain": DemoCase("brain", "brain-sr4", data_consistency=True),
    # 80 slices of 1 mm are 16 thick slices of 5 mm: enough slice axis to refine (its card's run)
    "thick": DemoCase("brain-thick", "brain-thick5", data_consistency=True, slices=80),
    # NIH ChestX-ray14 images are 1024 x 1024. cxr-sr4's SR alone beats bicubic on most held-out
    # radiographs but not on this whole (15-bit, smoother) one, so the demo keeps the projection (its card)
    "chest": DemoCase("chest-xray", "cxr-sr4", image_size=1024, data_consistency=True, scan="chest"),
}


def default_demo_model(case: str = "brain") -> Path:
    """The reference model of ``case``: ``$LATENTSR_MODELS/<model>``, else ``Training/models/<model>``
    of the source tree this package runs from."""
    root = Path(os.environ.get("LATENTSR_MODELS") or Path(__file__).resolve().parents[2] / "Training" / "models")
    return root / DEMO_CASES[case].model


def _brain_scan() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.origin:
        raise InputError("the demo's brain scan ships with the nilearn package, which is not installed: "
                         "pip install nilearn, or pass --input VOLUME")
    path = Path(spec.origin).parent / "datasets" / "data" / DEMO_SCAN_NAME
    if not path.is_file():
        raise InputError(f"this nilearn has no {DEMO_SCAN_NAME}; pass --input VOLUME", path.parent)
    return path


def _chest_scan() -> Path:
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(RADIOGRAPH_NAME, download=False)
    except (OSError, ValueError):  # pragma: no cover - a broken pydicom-data install
        path = None
    if not path:
        raise InputError(f"the demo's radiograph {RADIOGRAPH_NAME} ships with the pydicom-data package, which is "
                         "not installed: pip install pydicom-data, or pass --input IMAGE")
    return Path(path)


def default_demo_scan(case: str = "brain") -> Path:
    """The registry scan of ``case``: the MNI ICBM152 2009a T1 template inside ``nilearn`` (the brain
    cases) or the radiograph ``RG1_UNCI.dcm`` inside ``pydicom-data`` (chest)."""
    return _chest_scan() if DEMO_CASES[case].scan == "chest" else _brain_scan()


def is_demo_folder(folder: Path) -> bool:
    """A folder this demo wrote (it may be replaced by a new run): one case's, or the folder of all cases."""
    if (folder / "montage.png").is_file() and (folder / "metrics.md").is_file():
        return True
    cases = [folder / c.name for c in DEMO_CASES.values() if (folder / c.name).exists()]
    return (folder / "metrics.md").is_file() and bool(cases) and all(is_demo_folder(c) for c in cases)


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
    resolution a model trained on that grid works at (slice spacing kept; never made finer). A 2D
    image is resampled in both axes (``plane`` is then ignored).

    Anti-aliased: a Gaussian of half the new pixel size (SimpleITK) before linear resampling. The
    field of view is kept edge to edge. Returns float32.
    """
    import SimpleITK as sitk

    ndim = image.ndim
    slice_axis = index_axis_of_array_axis(image.array_axis_for_plane(plane), 3) if ndim == 3 else None
    size = np.array(image.array.shape[::-1], dtype=float)  # index order (i, j, k)
    spacing = np.array(image.spacing, dtype=float)
    in_plane = [a for a in range(ndim) if a != slice_axis]
    target = max(size[a] * spacing[a] for a in in_plane) / grid_size
    new_spacing = spacing.copy()
    for a in in_plane:
        new_spacing[a] = max(spacing[a], target)
    if np.allclose(new_spacing, spacing):
        return image
    new_size = [int(round(size[a] * spacing[a] / new_spacing[a])) for a in range(ndim)]
    sigma = [0.5 * new_spacing[a] if a in in_plane and new_spacing[a] > spacing[a] else 0.0 for a in range(ndim)]
    itk = sitk.Cast(image.to_sitk(), sitk.sitkFloat32)
    itk = sitk.DiscreteGaussian(itk, variance=[v * v for v in sigma], useImageSpacing=True)
    # keep the field of view: the first voxel centre moves by half the change of the voxel size
    origin = np.array(image.origin) + image.direction @ ((new_spacing - spacing) / 2)
    resampled = sitk.Resample(itk, new_size, sitk.Transform(), sitk.sitkLinear, tuple(origin), tuple(new_spacing),
                              tuple(image.direction.ravel()), 0.0, sitk.sitkFloat32)
    return MedicalImage.from_sitk(resampled, metadata=dict(image.metadata))


def metrics_table(review: dict[str, Any], model_name: str, decoding: str = "latent") -> list[dict[str, Any]]:
    """Rows ``{method, psnr, ssim, note}`` against the true high-resolution volume; ``decoding``: the model's
    (with ``lr_residual`` the autoencoder's round trip is no bound on the SR, and the note says so)."""
    ceiling_note = ("the autoencoder's own round trip; not a bound for this model (it decodes the change to the LR image)"
                    if decoding == "lr_residual" else "what the model's latent space allows; not an SR method")
    return [
        {"method": "bicubic (the low-resolution input, up-sampled)", "psnr": review["psnr_lr"], "ssim": review["ssim_lr"],
         "note": "baseline"},
        {"method": f"LatentSR ({model_name})", "psnr": review["psnr_sr"], "ssim": review["ssim_sr"],
         "note": f"hallucinated {100 * review['hallucinated_fraction']:.2f}% / lost {100 * review['lost_fraction']:.2f}% of pixels"},
        {"method": "autoencoder ceiling (encode-decode of the TRUE image)", "psnr": review["psnr_ae_ceiling"], "ssim": None,
         "note": ceiling_note},
    ]


def _table_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | PSNR (dB) | SSIM | note |", "| --- | --- | --- | --- |"]
    for row in rows:
        psnr = "" if row["psnr"] is None else f"{row['psnr']:.2f}"
        ssim = "" if row["ssim"] is None else f"{row['ssim']:.4f}"
        lines.append(f"| {row['method']} | {psnr} | {ssim} | {row['note']} |")
    return "\n".join(lines) + "\n"


def _montage(path: Path, slices: dict[str, np.ndarray], scale: int, title: str,
             coarse_shape: tuple[int, int] | None = None) -> None:
    """LR | bicubic | SR | HR on top, |SR - HR|, uncertainty, hallucination below; one slice.
    ``coarse_shape``: the measured slice's pixels when not both axes are ``scale`` times coarser (thick slices)."""
    from matplotlib.colors import ListedColormap

    hr = slices["hr"]
    h, w = hr.shape
    if "lr_pixels" in slices:  # the measured pixels, shown enlarged without smoothing
        lr_pixels = slices["lr_pixels"]
        # a partial coarse pixel counts (the grid's rule)
        coarse_rows, coarse_cols = coarse_shape or (-(-h // scale), -(-w // scale))
    else:  # an input on the fine grid: area-averaged back to the low-resolution grid
        small = slices["lr"][: h - h % scale, : w - w % scale].reshape(h // scale, scale, w // scale, scale).mean((1, 3))
        lr_pixels = np.kron(small, np.ones((scale, scale)))
        coarse_rows, coarse_cols = small.shape
    error = np.abs(slices["sr"] - hr)
    top = [(lr_pixels, f"LR input ({coarse_rows}x{coarse_cols} pixels)"), (slices["lr"], "bicubic"),
           (slices["sr"], "LatentSR"), (hr, "true high resolution")]
    figure = new_figure(13, 7)
    axes = figure.subplots(2, 4)
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
    save_png(figure, path, dpi=90)


def _central_box(shape: tuple[int, int], size: int) -> tuple[slice, slice]:
    """The central ``size`` x ``size`` region of an image of ``shape`` (all of it along a shorter side)."""
    return tuple(slice(max(0, (n - size) // 2), max(0, (n - size) // 2) + min(n, size)) for n in shape)


def _central_crop(image: MedicalImage, size: int) -> MedicalImage:
    """The central ``size`` x ``size`` pixels of a 2D image, geometry kept."""
    rows, cols = _central_box(image.array.shape, size)
    origin = tuple((image.index_to_world() @ np.array([cols.start, rows.start, 1.0]))[:2])
    return MedicalImage(np.ascontiguousarray(image.array[rows, cols]), image.spacing, origin, image.direction,
                        metadata=dict(image.metadata))


def run_demo(outdir: str | os.PathLike, *, model: str | os.PathLike | None = None, scan: str | os.PathLike | None = None,
             case: str = "brain", plane: str = "axial", slices: int | None = None, crop: int = 0, steps: int | None = None,
             samples: int = 2, data_consistency: bool | None = None, device: str = "auto", native: bool = False,
             progress: Callable[[float, str], None] | None = None) -> DemoResult:
    """Simulate a low-resolution acquisition of ``scan``, super-resolve it and write everything to ``outdir``.

    Writes ``hr``, ``lr``, ``sr``, ``uncertainty``, ``consistency``, ``difference`` and
    ``hallucination`` images (NIfTI, on the scan's grid and in its units), ``metrics.json``,
    ``metrics.md`` (SR against bicubic and the autoencoder ceiling) and ``montage.png``.

    A volume: ``slices`` slices of ``plane`` around the middle are used (all with 0; None: the case's
    :attr:`DemoCase.slices`), which keeps the demo to a few minutes on two CPU cores. A model that works at the slices' own pixel pitch (grid
    ``fit`` "tile") takes the slab as it is; for an older fixed-grid model, unless ``native``, the slab
    is first put at the model's own resolution (:func:`at_model_resolution`): a model trained on a
    128 x 128 grid cannot add detail finer than that grid, and a high-resolution reference finer than
    it would score every method on detail none could produce. A 2D image (a radiograph): unless ``native``,
    its long side is resampled to the case's ``image_size``; ``crop`` > 0 keeps the central
    ``crop`` x ``crop`` pixels. ``case`` picks the default model and scan (:data:`DEMO_CASES`).
    ``data_consistency`` projects the SR onto the measured input (:func:`~LatentSRLib.inference.engine.data_consistent`;
    None: the case's default).
    """
    from LatentSRLib.inference import SRSettings, super_resolve_volume
    from LatentSRLib.model.folder import load_sr_model
    from LatentSRLib.model.sampling import decoding_of
    import torch

    from LatentSRLib.transforms.grids import upsample
    from LatentSRLib.transforms.slicing import SliceLayout

    if case not in DEMO_CASES:
        raise InputError(f"unknown demo case {case!r}; choose from {', '.join(DEMO_CASES)}")
    outdir = Path(outdir)
    model_folder = Path(model) if model else default_demo_model(case)
    if not (model_folder / "config.json").is_file():
        raise InputError("no reference model here (it lives in Training/models of the source tree; "
                         "set LATENTSR_MODELS or pass --model FOLDER)", model_folder)
    scan_path = Path(scan) if scan else default_demo_scan(case)
    check_output_folder(outdir, [scan_path, model_folder], is_ours=is_demo_folder, what="demo folder")
    sr_model = load_sr_model(model_folder)
    image = read_image(scan_path)
    if data_consistency is None:
        data_consistency = DEMO_CASES[case].data_consistency
    if slices is None:
        slices = DEMO_CASES[case].slices
    grid = sr_model.config.get("grid", {})
    if image.ndim == 3:
        slab = _central_slab(image, plane, slices) if slices else image
        if not native and grid.get("fit") != "tile":
            slab = at_model_resolution(slab, plane, max(grid.get("size", (256, 256))))
    else:
        slab = image
        image_size = DEMO_CASES[case].image_size or (None if grid.get("fit") == "tile" else max(grid.get("size", (256, 256))))
        if not native and image_size:
            slab = at_model_resolution(slab, plane, image_size)
        if crop:
            slab = _central_crop(slab, crop)
    result = super_resolve_volume(sr_model, slab, plane=plane, settings=SRSettings(steps=steps, samples=samples,
                                                                          data_consistency=data_consistency),
                                  simulate=True, device=device, progress=progress)
    review = result.metrics["reference"]
    table = metrics_table(review, model_folder.name + (" + data consistency" if data_consistency else ""),
                          decoding_of(sr_model.config, model_folder))
    with atomic_directory(outdir) as staging:
        written = {}
        for name, volume in {"hr": slab, "lr": result.lr, **result.outputs()}.items():
            written[name] = str(outdir / write_image(volume, staging / f"{name}.nii.gz").name)
        # a thick-slice model refines the slice axis, which runs down a coronal slice (an axial one shows none of it)
        thick = sr_model.task.mode == "thick"
        layout = SliceLayout.for_image(slab, "coronal" if thick and plane != "coronal" else plane)
        window = result.metrics["window"]
        width = float(window["upper"] - window["lower"]) or 1.0
        # a radiograph is shown in its central 256 x 256 pixels, where a montage panel shows pixels
        zoom = _central_box(layout.slice_shape, 256) if image.ndim == 2 else (slice(None), slice(None))

        def upright(volume: MedicalImage, windowed: bool) -> np.ndarray:
            stack = layout.extract(np.asarray(volume.array, dtype=np.float32))
            middle = stack[len(stack) // 2][zoom]
            return np.clip((middle - window["lower"]) / width, 0, 1) if windowed else middle

        montage_slices = {name: upright(volume, True) for name, volume in (("hr", slab), ("sr", result.sr))}
        coarse_shape = None
        if thick:  # the thick slices on the fine grid: the grid's bicubic along the slice axis, and repeated
            axis = slab.array_axis_for_plane(plane)
            coarse = np.moveaxis(np.asarray(result.lr.array, dtype=np.float32), axis, -2)
            size = (slab.shape[axis], coarse.shape[-1])
            fine = upsample(torch.from_numpy(np.ascontiguousarray(coarse))[:, None], sr_model.task.scale, dims=(-2,),
                            size=size)[:, 0].numpy()
            repeated = np.repeat(coarse, sr_model.task.scale, axis=-2)[..., : size[0], :]
            montage_slices["lr"] = upright(slab.with_array(np.moveaxis(fine, -2, axis)), True)
            montage_slices["lr_pixels"] = upright(slab.with_array(np.moveaxis(repeated, -2, axis)), True)
            coarse_shape = SliceLayout.for_image(result.lr, layout.plane).slice_shape
        elif result.lr.shape == slab.shape:  # a model that keeps the grid: its input is already on it
            montage_slices["lr"] = upright(result.lr, True)
        else:  # the measured scan on its coarse grid, and its bicubic up-sampling (the baseline)
            coarse_layout = SliceLayout.for_image(result.lr, plane)
            coarse = coarse_layout.extract(np.asarray(result.lr.array, dtype=np.float32))[len(layout.extract(slab.array)) // 2]
            coarse = (coarse - window["lower"]) / width
            factor = sr_model.task.scale
            fine = upsample(torch.from_numpy(np.ascontiguousarray(coarse))[None, None], factor,
                            size=layout.slice_shape)[0, 0].numpy()
            montage_slices["lr"] = np.clip(fine, 0, 1)[zoom]
            montage_slices["lr_pixels"] = np.kron(np.clip(coarse, 0, 1), np.ones((factor, factor)))[
                : layout.slice_shape[0], : layout.slice_shape[1]][zoom]
        montage_slices["uncertainty"] = upright(result.uncertainty, False) / width
        montage_slices["hallucination"] = upright(result.hallucination, False)
        rows, cols = layout.pixel_spacing
        shown = "" if image.ndim == 3 else f" (central {montage_slices['hr'].shape[0]} x {montage_slices['hr'].shape[1]} pixels shown)"
        pixel = f"{rows:.2f} x {cols:.2f} mm" if image.ndim == 3 else f"{layout.slice_shape[0]} x {layout.slice_shape[1]} pixels"
        title = (f"{scan_path.name} at {pixel}{shown}: {sr_model.task.name} simulated; "
                 f"PSNR bicubic {review['psnr_lr']:.2f} dB, LatentSR {review['psnr_sr']:.2f} dB")
        _montage(staging / "montage.png", montage_slices, sr_model.task.scale, title, coarse_shape)
        metrics = {**result.metrics, "input": str(scan_path), "model": str(model_folder), "table": table,
                   "demo": {"case": case, "slices": slices, "crop": crop, "data_consistency": data_consistency, "plane": plane, "native": native,
                            "spacing": list(slab.spacing), "shape": list(slab.array.shape)},
                   "outputs": written}
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        what = (f"{result.metrics['slices']} {plane} slices of {scan_path.name}" if image.ndim == 3
                else f"{scan_path.name}, {slab.array.shape[0]} x {slab.array.shape[1]} pixels")
        (staging / "metrics.md").write_text(
            f"Against the true high-resolution image ({what}, intensity window [0, 1]):\n\n" + _table_markdown(table))
    return DemoResult(outdir, metrics, table, outdir / "montage.png")


def run_demos(outdir: str | os.PathLike, cases: Sequence[str] = tuple(DEMO_CASES), *,
              progress_for: Callable[[str], Callable[[float, str], None] | None] | None = None,
              **options: Any) -> list[DemoResult]:
    """Every case of ``cases``, each in ``outdir/<case folder>`` (:func:`run_demo`, ``options`` passed
    on; ``progress_for(case)`` gives each its progress callback), and ``outdir/metrics.md`` with all
    their tables."""
    from LatentSRLib.io.atomic import atomic_path

    for case in cases:
        if case not in DEMO_CASES:
            raise InputError(f"unknown demo case {case!r}; choose from {', '.join(DEMO_CASES)}")
    outdir = Path(outdir)
    check_output_folder(outdir, [Path(options[k]) for k in ("scan", "model") if options.get(k)],
                        is_ours=is_demo_folder, what="demo folder")
    import shutil

    if (outdir / "montage.png").is_file():  # one case's demo folder (an older layout): replaced as a whole
        shutil.rmtree(outdir)
    created = not outdir.exists()
    outdir.mkdir(parents=True, exist_ok=True)
    try:  # each case replaces its own folder atomically; the other cases' folders are kept
        results = [run_demo(outdir / DEMO_CASES[case].name, case=case,
                            progress=progress_for(case) if progress_for else None, **options) for case in cases]
    except BaseException:
        if created and not any(outdir.iterdir()):  # a failed first run leaves no empty folder behind
            shutil.rmtree(outdir, ignore_errors=True)
        raise
    summary = "".join(f"## {r.folder.name}: {Path(r.metrics['input']).name}\n\n{_table_markdown(r.table)}\n"
                      f"Montage: {r.montage}\n\n" for r in results)
    with atomic_path(outdir / "metrics.md") as tmp:
        tmp.write_text(summary)
    return results
