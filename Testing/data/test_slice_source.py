"""Inputs to model-grid slices: IDs, subjects, the background rule, folders of images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from LatentSRLib.errors import InputError
from LatentSRLib.data.slice_source import SliceSelection, expand_inputs, gather_slices, model_slices


def test_brain_volume_drops_background_slices(brats_flair):
    slices = list(model_slices(brats_flair, SliceSelection(plane="axial")))
    assert 60 < len(slices) < 155  # the empty slices above and below the brain are gone
    first = slices[0]
    assert first.image.shape == (256, 256) and first.image.dtype == np.float32
    assert 0.0 <= first.image.min() and first.image.max() <= 1.0
    assert first.subject == "BraTS-GLI-00001-000-t2f"
    assert first.id == f"BraTS-GLI-00001-000-t2f/axial-{first.index:04d}"
    assert all(s.foreground >= 0.05 for s in slices)
    assert len({s.id for s in slices}) == len(slices)


def test_subset_and_stride(brats_flair):
    every = list(model_slices(brats_flair, SliceSelection(every=10)))
    assert all(s.index % 10 == 0 for s in every)
    few = list(model_slices(brats_flair, SliceSelection(max_slices_per_source=5)))
    assert len(few) == 5 and few[0].index < few[-1].index


def test_folder_of_images_and_duplicate_ids(tmp_path, cxr_pngs):
    folder = tmp_path / "cxr"
    folder.mkdir()
    for path in cxr_pngs[:3]:
        shutil.copy(path, folder / path.name)
    slices = gather_slices([folder])
    assert [s.id for s in slices] == [p.stem for p in cxr_pngs[:3]]
    assert all(s.plane == "image" and s.image.shape == (256, 256) for s in slices)
    with pytest.raises(InputError, match="also comes from"):
        gather_slices([folder, cxr_pngs[0]])


def test_dicom_series_folder_is_one_source(knee_dicom_dir):
    assert expand_inputs([knee_dicom_dir]) == [knee_dicom_dir]
    slices = list(model_slices(knee_dicom_dir, SliceSelection(plane="sagittal", max_slices_per_source=3)))
    assert len(slices) == 3 and slices[0].plane == "sagittal"


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing")
    with pytest.raises(InputError, match="no images"):
        expand_inputs([tmp_path])
