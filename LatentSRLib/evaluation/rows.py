"""Per-image rows of an evaluation: their columns, ``per_image.csv`` on disk, pairing and grouping.

A row is one (image, method). Columns: ``dataset, id, subject, method, kind, noise_floor`` (text),
then numbers: ``psnr, ssim, ms_ssim``, the LPIPS column named for its network (``lpips_alex`` for
the published AlexNet LPIPS, ``stlpips_alex`` for the offline stand-in; absent when LPIPS was not
computed), ``psnr_LL3 .. psnr_HH1`` (Haar subbands), ``hallucinated_fraction, lost_fraction,
noise_floor_tau``, ``latent_cosine, latent_psnr`` (full latent grid) and ``latent_cosine_1x1,
latent_psnr_1x1``, ``mean_intensity, hr_mean_intensity``, ``seconds_per_sample``. NaN marks a
number that does not apply or is undefined:

* hallucination: only methods with an autoencoder noise floor have numbers: an SR model against
  its own autoencoder's ceiling, an AE ceiling against itself (the share of its own error beyond
  its floor, i.e. what an SR output equal to the AE reconstruction would show); interpolation has
  no autoencoder, hence NaN;
* latent fidelity: SR models only; MS-SSIM: NaN below 176x176 pixels.

Rows are paired by image id (rule 2 (docs/science.md)): :func:`check_paired` refuses rows in which the
methods of a dataset were not scored on the same images. Rows of several evaluations (other
datasets) may be concatenated. Per subject, one method alone is averaged over its finite slices
(:func:`values_by_unit`); two methods that are compared are averaged over the SAME slices, those
finite for both (:func:`paired_values_by_unit`), and the slices left out are counted.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

import numpy as np

from LatentSRLib.errors import InputError
from LatentSRLib.metrics.frequency import SUBBANDS
from LatentSRLib.metrics.statistics import pair_by_id

__all__ = [
    "AGGREGATES",
    "NUMERIC_COLUMNS",
    "SUBBAND_COLUMNS",
    "TEXT_COLUMNS",
    "check_paired",
    "lpips_column",
    "ordered",
    "paired_values_by_unit",
    "read_rows",
    "row_columns",
    "values_by_unit",
    "write_rows",
]

#: the unit statistics are computed on: one image (slice), or one subject (its slices averaged)
AGGREGATES = ("image", "subject")
TEXT_COLUMNS = ("dataset", "id", "subject", "method", "kind", "noise_floor")
SUBBAND_COLUMNS = tuple(f"psnr_{band}" for band in SUBBANDS)
#: numeric columns in file order; the LPIPS column (named for its network) follows ``ms_ssim``
NUMERIC_COLUMNS = (
    "psnr", "ssim", "ms_ssim", *SUBBAND_COLUMNS,
    "hallucinated_fraction", "lost_fraction", "noise_floor_tau",
    "latent_cosine", "latent_psnr", "latent_cosine_1x1", "latent_psnr_1x1",
    "mean_intensity", "hr_mean_intensity", "seconds_per_sample",
)


# ------------------------------------------------------------------------------------- rows on disk
def lpips_column(rows_or_columns: Iterable) -> str | None:
    """The LPIPS column of these rows (its name says which network computed it), or ``None``."""
    items = list(rows_or_columns)
    columns = list(items[0]) if items and isinstance(items[0], dict) else [str(c) for c in items]
    return next((c for c in columns if "lpips" in c), None)


def row_columns(rows: Sequence[dict]) -> list[str]:
    """Every column of these rows in file order (text columns, then numbers with the LPIPS column if any)."""
    lpips = lpips_column(rows)
    numeric = list(NUMERIC_COLUMNS)
    if lpips is not None:
        numeric.insert(3, lpips)
    return [*TEXT_COLUMNS, *numeric]


def write_rows(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write rows as CSV; floats as Python's shortest round-trip repr, so reading them back is exact."""
    path = Path(path)
    columns = row_columns(rows)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: (repr(float(row[c])) if c not in TEXT_COLUMNS else row[c]) for c in columns})
    return path


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Read a ``per_image.csv``: text columns as strings, every other column as float (NaN, inf kept)."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in TEXT_COLUMNS + ("psnr",) if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"missing column(s) {', '.join(missing)}")
            rows = [{k: (v if k in TEXT_COLUMNS else float(v) if v != "" else math.nan) for k, v in r.items()}
                    for r in reader]
    except (OSError, ValueError) as exc:
        raise InputError(f"not a per-image result file: {exc}", path) from None
    if not rows:
        raise InputError("no rows in this per-image result file", path)
    return rows


# ------------------------------------------------------------------------------------- pairing, grouping
def ordered(values: Iterable[str]) -> list[str]:
    """The distinct values in order of first appearance."""
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(value, None)
    return list(seen)


def check_paired(rows: Sequence[dict]) -> None:
    """Refuse rows that do not pair (rule 2 (docs/science.md)): within each dataset every method must have
    exactly the same image ids, each once.

    Raises:
        ValueError: naming the method, the dataset and the first ids that do not pair.
    """
    if not rows:
        raise ValueError("no rows")
    for dataset in ordered(r["dataset"] for r in rows):
        in_dataset = [r for r in rows if r["dataset"] == dataset]
        methods = ordered(r["method"] for r in in_dataset)
        first: dict[str, float] | None = None
        for method in methods:
            ids = [r["id"] for r in in_dataset if r["method"] == method]
            if len(set(ids)) != len(ids):
                twice = sorted({i for i in ids if ids.count(i) > 1})
                raise ValueError(f"dataset {dataset!r}, method {method!r}: image id(s) given twice: {twice[:5]}")
            keyed = dict.fromkeys(ids, 0.0)
            if first is None:
                first, first_method = keyed, method
                continue
            try:
                pair_by_id(first, keyed)
            except ValueError as exc:
                raise ValueError(f"dataset {dataset!r}: methods {first_method!r} and {method!r} were not scored on "
                                 f"the same images, refusing to compare them: {exc}") from None


def values_by_unit(rows: Sequence[dict], column: str, aggregate: str) -> dict[Hashable, float]:
    """One method's ``column`` per statistical unit: ``{image id: value}`` (``aggregate="image"``),
    or ``{subject: mean of the finite values of its images}`` (NaN if none; ``aggregate="subject"``)."""
    if aggregate == "image":
        return {r["id"]: float(r.get(column, math.nan)) for r in rows}
    groups: dict[Hashable, list[float]] = {}
    for r in rows:
        groups.setdefault(r["subject"], []).append(float(r.get(column, math.nan)))
    out = {}
    for subject, values in groups.items():
        finite = [v for v in values if math.isfinite(v)]
        out[subject] = float(np.mean(finite)) if finite else math.nan
    return out


def paired_values_by_unit(
    rows_a: Sequence[dict],
    rows_b: Sequence[dict],
    column: str,
    aggregate: str,
    *,
    column_b: str | None = None,
) -> tuple[dict[Hashable, float], dict[Hashable, float], int]:
    """Two methods' ``column`` per statistical unit, on the same images for both (rule 2 (docs/science.md)).

    ``aggregate="image"``: ``{image id: value}`` of each side as it is (the paired statistics then
    leave out, and count, the non-finite pairs). ``aggregate="subject"``: each subject's mean over
    the slices whose value is finite on BOTH sides, the same slices for ``a`` and ``b``; a subject
    without such a slice is NaN on both sides (left out and counted as a unit by the statistics).

    Args:
        rows_a, rows_b: the rows of method A and method B (the same image ids, see :func:`check_paired`).
        column: the column compared; ``column_b`` (default ``column``) is B's column, e.g. to pair a
            method's ``mean_intensity`` with the same rows' ``hr_mean_intensity``.
        aggregate: ``"image"`` or ``"subject"``.

    Returns:
        ``(a, b, n_slices_dropped)``: the two ``{unit: value}`` dicts (same keys) and the number of
        images (slices) whose value is not finite on at least one side, i.e. left out.

    Raises:
        ValueError: different image ids, or an image id with two different subjects.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    column_b = column if column_b is None else column_b
    by_id_a = {r["id"]: r for r in rows_a}
    by_id_b = {r["id"]: r for r in rows_b}
    pair_by_id(dict.fromkeys(by_id_a, 0.0), dict.fromkeys(by_id_b, 0.0))  # refuses different ids
    dropped = 0
    if aggregate == "image":
        a = {i: float(r.get(column, math.nan)) for i, r in by_id_a.items()}
        b = {i: float(by_id_b[i].get(column_b, math.nan)) for i in by_id_a}
        dropped = sum(1 for i in a if not (math.isfinite(a[i]) and math.isfinite(b[i])))
        return a, b, dropped
    groups: dict[Hashable, tuple[list[float], list[float]]] = {}
    for image_id, row_a in by_id_a.items():
        row_b = by_id_b[image_id]
        if row_a["subject"] != row_b["subject"]:
            raise ValueError(f"image {image_id!r} belongs to subject {row_a['subject']!r} in one method's rows and "
                             f"to {row_b['subject']!r} in the other's")
        xs, ys = groups.setdefault(row_a["subject"], ([], []))
        x, y = float(row_a.get(column, math.nan)), float(row_b.get(column_b, math.nan))
        if math.isfinite(x) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
        else:
            dropped += 1
    a = {s: float(np.mean(xs)) if xs else math.nan for s, (xs, _) in groups.items()}
    b = {s: float(np.mean(ys)) if ys else math.nan for s, (_, ys) in groups.items()}
    return a, b, dropped
