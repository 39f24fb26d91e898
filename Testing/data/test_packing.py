"""A prepared dataset carried as one compact pack (uint8, compressed) and unpacked into a dataset folder
that every reader takes: the same slices to within the quantisation step, the same manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from LatentSRLib.data.dataset import PreparedDataset, prepare_dataset
from LatentSRLib.data.packing import pack_dataset, unpack_dataset
from LatentSRLib.data.slice_source import SliceSelection
from LatentSRLib.errors import LatentSRError
from LatentSRLib.transforms.tasks import parse_task


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, brats_flair):
    return prepare_dataset([brats_flair], tmp_path_factory.mktemp("packing") / "ds", parse_task("sr4"),
                           selection=SliceSelection(size=(64, 64), every=10), progress=False).folder


def test_a_dataset_survives_packing_to_within_the_uint8_step(prepared, tmp_path):
    pack = pack_dataset(prepared, tmp_path / "ds.npz")
    raw = sum((prepared / name).stat().st_size for name in ("hr.npy", "lr.npy"))
    assert pack.stat().st_size < raw / 4  # uint8 and compressed: far below the float32 arrays
    out = unpack_dataset(pack, tmp_path / "unpacked")
    original, unpacked = PreparedDataset(prepared), PreparedDataset(out)
    for a, b in ((original.hr, unpacked.hr), (original.lr, unpacked.lr)):
        assert b.dtype == np.float32 and b.shape == a.shape
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 0.5 / 255 + 1e-6
    assert (out / "manifest.csv").read_text() == (prepared / "manifest.csv").read_text()
    document = json.loads((out / "dataset.json").read_text())
    assert document["unpacked_from"]["pack"] == "ds.npz"
    assert {k: v for k, v in document.items() if k != "unpacked_from"} == json.loads((prepared / "dataset.json").read_text())
    unpack_dataset(pack, out)  # an earlier unpacked dataset is replaced


def test_packing_refuses_what_is_not_a_dataset_or_a_pack_in_one_line(prepared, tmp_path, capsys):
    from conftest import load_script

    with pytest.raises(LatentSRError):
        pack_dataset(tmp_path, tmp_path / "x.npz")
    (tmp_path / "fake.npz").write_bytes(b"not a pack")
    script = load_script("pack_dataset")
    assert script.main(["unpack", str(tmp_path / "fake.npz"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fake.npz" in err and not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert script.main(["pack", str(prepared), str(tmp_path / "p.npz")]) == 0
    assert script.main(["unpack", str(tmp_path / "p.npz"), str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_pack_without_the_inputs_derives_them_again_with_the_task(prepared, tmp_path):
    full = pack_dataset(prepared, tmp_path / "full.npz")
    lean = pack_dataset(prepared, tmp_path / "lean.npz", derive_lr=True)
    assert lean.stat().st_size < 0.7 * full.stat().st_size
    out = unpack_dataset(lean, tmp_path / "derived")
    original, unpacked = PreparedDataset(prepared), PreparedDataset(out)
    assert np.abs(np.asarray(original.hr) - np.asarray(unpacked.hr)).max() <= 0.5 / 255 + 1e-6
    # the task's operator is linear and averaging: the quantisation error of hr carries over, not amplified
    assert np.abs(np.asarray(original.lr) - np.asarray(unpacked.lr)).max() <= 1.0 / 255
    assert unpacked.task == original.task
    assert "derived" in json.loads((out / "dataset.json").read_text())["unpacked_from"]["lr"]
