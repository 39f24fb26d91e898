"""From input files and folders to model-grid slices with stable IDs.

The one place where the screening, dataset preparation and evaluation commands turn what a user
points at (volumes, DICOM series, image folders, ``.npy`` stacks) into ``(H, W)`` slices in [0, 1]
on the model grid, each with an ID that pairs it across methods (rule 2) and a subject for
patient-level splits (rule 8).

Per source: read, window the whole image once (robust percentiles, so every slice of a volume
shares one window), take the slices of the chosen plane (upright), drop background slices, resample
to the model grid. With ``fit="tile"`` (radiographs, far larger than the grid) a slice keeps its
pixels and is cut into overlapping grid-sized tiles instead, each kept or dropped by the same
background rule and named ``"<slice ID>/tile-<top>-<left>"``.

Background rule: a slice is kept when at least ``min_foreground`` of its pixels (default 5%) are
above ``background_level`` (default 0.05) of the window. Skull-stripped MRI and the air around a
knee give many empty slices that would inflate every fidelity metric.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LatentSRLib.errors import InputError
from LatentSRLib.io import FORMATS, MedicalImage, check_pixels, read_image
from LatentSRLib.io.dicom_read import is_dicom_file

__all__ = ["ModelSlice", "SliceSelection", "evenly_spaced", "expand_inputs", "gather_slices", "model_slices", "subject_of"]

_IMAGE_ENDINGS = tuple(e for fmt, endings in FORMATS.items() if fmt != "dicom" for e in endings)


#: image formats whose files carry no pixel size (a unit spacing is assumed when they are read)
_FORMATS_WITHOUT_SPACING = ("png", "jpeg", "numpy")


@dataclass(frozen=True)
class ModelSlice:
    """One 2D model input.

    Attributes:
        id: stable identifier ``"<subject>/<plane>-<index:04d>"`` (``"<subject>"`` for 2D images).
        subject: the patient/subject the slice belongs to (for splits by subject).
        source: the file or folder it was read from.
        plane: ``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"image"``.
        index: slice index in the upright stack of that plane.
        image: ``(H, W)`` float32 in [0, 1] on the model grid.
        foreground: fraction of the slice's pixels above the background level.
        pixel_mm: the physical size of one model-grid pixel (the larger side of a non-square one).
    """

    id: str
    subject: str
    source: str
    plane: str
    index: int
    image: np.ndarray = field(repr=False)
    foreground: float
    pixel_mm: float = float("nan")


@dataclass(frozen=True)
class SliceSelection:
    """How slices are chosen and prepared (recorded with every result so runs can be compared).

    Args:
        plane: anatomical plane of the slices of a volume.
        size: model grid ``(H, W)``.
        fit: ``"pad"`` (keep physical aspect), ``"stretch"`` (the paper's plain resize) or ``"tile"``
            (native pixels, cut into grid-sized tiles).
        lower_percentile, upper_percentile: intensity window per image or volume.
        min_foreground, background_level: the background rule of this module.
        every: keep every n-th slice of a volume (1 = all).
        max_slices_per_source: evenly spaced subset of the kept slices (None = all).
        tile_stride: pixels between tiles in tile mode (None: half the grid, so tiles overlap by half).
    """

    plane: str = "axial"
    size: tuple[int, int] = (256, 256)
    fit: str = "pad"
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    min_foreground: float = 0.05
    background_level: float = 0.05
    every: int = 1
    max_slices_per_source: int | None = None
    tile_stride: int | None = None

    def __post_init__(self) -> None:
        if self.fit not in ("pad", "stretch", "tile"):
            raise ValueError(f"fit must be 'pad', 'stretch' or 'tile', not {self.fit!r}")
        if self.tile_stride is not None and not 1 <= self.tile_stride <= min(self.size):
            raise ValueError(f"tile stride must be between 1 and the grid size {min(self.size)}, not {self.tile_stride}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def evenly_spaced(n: int, count: int) -> list[int]:
    """At most ``count`` indices of ``range(n)``, evenly spaced from first to last (sorted, unique):
    the one rule for every "subset of N" (slices per source, validation subsets, example figures)."""
    if n <= 0 or count <= 0:
        return []
    return sorted(set(np.linspace(0, n - 1, min(count, n)).round().astype(int).tolist()))


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Sources named by ``inputs``: files as given; a folder holding DICOM files is one series;
    any other folder contributes its image files (recursively, sorted)."""
    sources: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError("no such file or folder", path)
        if path.is_file():
            sources.append(path)
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if any(p.suffix.lower() in FORMATS["dicom"] or is_dicom_file(p) for p in files[:50]):
            sources.append(path)
            continue
        images = [p for p in files if p.name.lower().endswith(_IMAGE_ENDINGS)]
        if not images:
            raise InputError("no images or DICOM files found in this folder", path)
        sources.extend(images)
    return sources


def subject_of(image: MedicalImage, source: Path) -> str:
    """Subject ID: the DICOM PatientID when there is one, else the file name without extensions."""
    patient = str(image.metadata.get("patient_id") or "").strip()
    if patient:
        return patient
    name = source.name
    for ending in sorted(_IMAGE_ENDINGS + FORMATS["dicom"], key=len, reverse=True):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


def model_slices(source: str | os.PathLike, selection: SliceSelection = SliceSelection()) -> Iterator[ModelSlice]:
    """The kept slices of one source, on the model grid (see the module docstring for the rules)."""
    # imported here: torch and MONAI load only when slices are really made
    from LatentSRLib.transforms.intensity import PercentileWindow
    from LatentSRLib.transforms.slicing import ModelGrid, SliceLayout, tile_windows

    source = Path(source)
    image = check_pixels(read_image(source))
    windowed, _ = PercentileWindow(selection.lower_percentile, selection.upper_percentile, clip=True)(image.array)
    layout = SliceLayout.for_image(image, selection.plane)
    slices = layout.extract(np.asarray(windowed, dtype=np.float32))
    foreground = (slices > selection.background_level).mean(axis=(1, 2))
    kept = [i for i in range(0, len(slices), max(1, selection.every)) if foreground[i] >= selection.min_foreground]
    if selection.max_slices_per_source and len(kept) > selection.max_slices_per_source:
        kept = [kept[i] for i in evenly_spaced(len(kept), selection.max_slices_per_source)]
    if not kept:
        return
    grid = ModelGrid(tuple(selection.size), fit=selection.fit)
    subject = subject_of(image, source)
    all_on_grid = grid.to_model(np.ascontiguousarray(slices[kept]), layout.pixel_spacing).clamp_(0.0, 1.0).numpy()
    top, left, height, width = grid.content_box(layout.slice_shape, layout.pixel_spacing)
    pixel_mm = float(max(n * s / m for n, s, m in zip(layout.slice_shape, layout.pixel_spacing, (height, width))))
    if image.metadata.get("format") in _FORMATS_WITHOUT_SPACING:  # unit spacing is assumed there, not measured
        pixel_mm = float("nan")
    for index, on_grid in zip(kept, all_on_grid):
        slice_id = subject if layout.plane == "image" else f"{subject}/{layout.plane}-{index:04d}"
        if not grid.tiled:
            yield ModelSlice(slice_id, subject, str(source), layout.plane, index, on_grid, float(foreground[index]),
                             pixel_mm)
            continue
        height, width = selection.size
        stride = selection.tile_stride or max(1, min(selection.size) // 2)
        for top, left in tile_windows(on_grid.shape, (height, width), (stride, stride)):
            tile = np.ascontiguousarray(on_grid[top : top + height, left : left + width])
            tile_foreground = float((tile > selection.background_level).mean())
            if tile_foreground >= selection.min_foreground:
                yield ModelSlice(f"{slice_id}/tile-{top:04d}-{left:04d}", subject, str(source), layout.plane, index,
                                 tile, tile_foreground, pixel_mm)


def gather_slices(inputs: Sequence[str | os.PathLike], selection: SliceSelection = SliceSelection()) -> list[ModelSlice]:
    """All kept slices of all sources; refuses duplicate IDs (two files of the same subject name)."""
    out: list[ModelSlice] = []
    seen: dict[str, str] = {}
    for source in expand_inputs(inputs):
        for item in model_slices(source, selection):
            if item.id in seen:
                raise InputError(f"slice ID {item.id!r} also comes from {seen[item.id]}; rename one of them", source)
            seen[item.id] = item.source
            out.append(item)
    return out
