"""Dataset preparation (`latentsr prepare`): slices, simulated LR, manifest, subject-level splits."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from LatentSRLib.errors import InputError, OutputError
from LatentSRLib.io import MedicalImage
from LatentSRLib.data.slice_source import SliceSelection
from LatentSRLib.transforms.tasks import Task, parse_task
from LatentSRLib.data.batches import slice_dataset
from LatentSRLib.data.dataset import PreparedDataset, SplitRule, assign_splits, prepare_dataset
from LatentSRLib.transforms.degradations import BicubicDownUp

SMALL = SliceSelection(size=(64, 64), every=10)


def test_parse_task_names_and_errors():
    assert parse_task("sr4") == Task("sr", 4)
    assert parse_task("refine2").to_dict()["name"] == "refine2"
    assert Task.from_dict(parse_task("kspace4", noise=0.01, seed=3).to_dict()) == Task("kspace", 4, noise=0.01, seed=3)
    with pytest.raises(ValueError, match="srN, refineN, kspaceN"):
        parse_task("bicubic4")
    with pytest.raises(ValueError, match="srN"):
        parse_task("sr")


def test_splits_are_by_subject_stable_and_keep_training_subjects():
    subjects = [f"patient-{i:02d}" for i in range(20)]
    splits = assign_splits(subjects, SplitRule(val_fraction=0.1, test_fraction=0.2, seed=1))
    counts = {s: sum(v == s for v in splits.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 2, "test": 4}
    # adding subjects does not move existing ones from test to train or back, for a fixed rule
    more = assign_splits(subjects + ["patient-99"], SplitRule(val_fraction=0.1, test_fraction=0.2, seed=1))
    moved = [s for s in subjects if splits[s] != more[s]]
    assert len(moved) <= 2
    # explicit patterns win; two subjects with fractions still leave one for training
    rule = SplitRule(test_subjects=("BraTS*",), val_fraction=0.5, test_fraction=0.4)
    assert assign_splits(["BraTS-1", "a", "b"], rule) == {"BraTS-1": "test", "a": "train", "b": "val"} or \
        assign_splits(["BraTS-1", "a", "b"], rule) == {"BraTS-1": "test", "a": "val", "b": "train"}
    with pytest.raises(ValueError):
        SplitRule(val_fraction=0.6, test_fraction=0.5)


@pytest.mark.shared_data
def test_prepare_real_volumes_and_images(tmp_path, brats_flair, brats_t1, cxr_pngs):
    out = tmp_path / "ds"
    dataset = prepare_dataset(
        [brats_flair, brats_t1, *cxr_pngs[:2]], out, parse_task("sr4"), selection=SMALL,
        planes=["axial", "coronal"], subject_pattern=r"(BraTS-GLI-\d+-\d+|nih-cxr14-\w+)",
        split_rule=SplitRule(val_fraction=0.0, test_fraction=0.0, test_subjects=("BraTS*",)), progress=False,
    )
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "hr.npy", "lr.npy", "manifest.csv"]
    reopened = PreparedDataset(out)
    assert len(reopened) == len(dataset) == reopened.info["shape"][0]
    assert reopened.hr.shape == reopened.lr.shape == (len(dataset), 64, 64)
    assert isinstance(reopened.hr, np.memmap)
    # both BraTS contrasts are one subject (the pattern), and that subject is entirely in test
    brats_rows = [r for r in reopened.rows if r["subject"] == "BraTS-GLI-00001-000"]
    assert {r["split"] for r in brats_rows} == {"test"}
    assert {r["id"].split("/")[0] for r in brats_rows} == {"BraTS-GLI-00001-000-t2f", "BraTS-GLI-00001-000-t1n"}
    assert {r["plane"] for r in brats_rows} == {"axial", "coronal"}
    assert {r["plane"] for r in reopened.rows if r["subject"].startswith("nih")} == {"image"}
    assert len({r["id"] for r in reopened.rows}) == len(reopened)  # IDs unique
    # the stored LR is exactly the task's degradation of the stored HR, on the HR grid
    row = brats_rows[3]["row"]
    expected = BicubicDownUp(scale=4)(torch.from_numpy(np.array(reopened.hr[row]))[None, None])[0, 0].numpy()
    np.testing.assert_allclose(reopened.lr[row], np.clip(expected, 0, 1), atol=1e-6)
    assert 0.0 <= reopened.hr.min() and reopened.hr.max() <= 1.0
    assert np.abs(reopened.hr[row] - reopened.lr[row]).mean() > 1e-3  # LR really is degraded
    # background rule: every kept slice has >= 5% foreground
    assert min(r["foreground"] for r in reopened.rows) >= 0.05
    info = json.loads((out / "dataset.json").read_text())
    assert info["task"]["name"] == "sr4" and info["planes"] == ["axial", "coronal"]
    assert info["counts"]["test"] == len(brats_rows) and info["counts"]["val"] == 0
    with open(out / "manifest.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["row", "id", "subject", "source", "plane", "slice_index", "split", "foreground"]
    # a MONAI dataset of the test split yields channel-first pairs
    item = slice_dataset(reopened, "test", limit=3)[0]
    assert item["hr"].shape == item["lr"].shape == (1, 64, 64) and item["id"] == reopened.items("test", limit=3)[0]["id"]


@pytest.mark.shared_data
def test_tile_mode_cuts_radiographs_into_overlapping_native_tiles(cxr_pngs):
    from LatentSRLib.data.slice_source import model_slices
    from LatentSRLib.transforms.intensity import PercentileWindow
    from LatentSRLib.io import read_image

    radiograph = next(p for p in cxr_pngs if p.name == "nih-cxr14-0.png")  # 1024 x 1024
    tiles = list(model_slices(radiograph, SliceSelection(size=(128, 128), fit="tile", min_foreground=0.0)))
    assert len(tiles) == 15 * 15  # stride 64: (1024 - 128) / 64 + 1 per side
    by_id = {t.id: t for t in tiles}
    first, right, below = by_id["nih-cxr14-0/tile-0000-0000"], by_id["nih-cxr14-0/tile-0000-0064"], by_id["nih-cxr14-0/tile-0064-0000"]
    assert first.image.shape == (128, 128) and first.subject == "nih-cxr14-0"
    np.testing.assert_array_equal(first.image[:, 64:], right.image[:, :64])  # native pixels, half overlap
    np.testing.assert_array_equal(first.image[64:], below.image[:64])
    windowed, _ = PercentileWindow(0.5, 99.5, clip=True)(read_image(radiograph).array)
    np.testing.assert_allclose(by_id["nih-cxr14-0/tile-0896-0896"].image, np.asarray(windowed)[896:, 896:], atol=1e-6)
    # the background rule applies per tile; a custom stride is honoured
    sparse = list(model_slices(radiograph, SliceSelection(size=(128, 128), fit="tile", tile_stride=128, min_foreground=0.5)))
    assert 0 < len(sparse) < 64 and all(t.foreground >= 0.5 for t in sparse)
    with pytest.raises(ValueError, match="tile stride"):
        SliceSelection(size=(128, 128), fit="tile", tile_stride=200)


def test_tile_mode_pads_small_images_to_one_tile(tmp_path):
    from LatentSRLib.io import write_image
    from LatentSRLib.data.slice_source import model_slices

    small = tmp_path / "small.nii.gz"
    write_image(MedicalImage(np.random.default_rng(0).random((50, 40), dtype=np.float32), (1.0, 1.0), (0.0, 0.0), np.eye(2)), small)
    tiles = list(model_slices(small, SliceSelection(size=(64, 64), fit="tile")))
    assert [t.id for t in tiles] == ["small/tile-0000-0000"]
    assert tiles[0].image.shape == (64, 64) and not tiles[0].image[50:].any() and not tiles[0].image[:, 40:].any()


@pytest.mark.shared_data
def test_noise_is_reproducible_per_slice(tmp_path, brats_flair):
    task = parse_task("sr4", noise=0.02, seed=5)
    a = prepare_dataset([brats_flair], tmp_path / "a", task, selection=SMALL, progress=False)
    b = prepare_dataset([brats_flair], tmp_path / "b", task, selection=SliceSelection(size=(64, 64), every=20),
                        progress=False)
    common = set(a.ids) & set(b.ids)
    assert common
    for slice_id in sorted(common)[:3]:  # same slice, same noise, whatever else was prepared
        np.testing.assert_array_equal(a.lr[a.ids.index(slice_id)], b.lr[b.ids.index(slice_id)])


@pytest.mark.shared_data
def test_refuses_foreign_folders_and_inputs(tmp_path, brats_flair):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a previous LatentSR dataset"):
        prepare_dataset([brats_flair], foreign, parse_task("sr4"), selection=SMALL, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="larger than the image"):
        prepare_dataset([brats_flair], tmp_path / "x", parse_task("sr128"), selection=SMALL, progress=False)
    assert not (tmp_path / "x").exists()  # nothing half-written
    with pytest.raises(InputError, match="subject pattern"):
        prepare_dataset([brats_flair], tmp_path / "y", parse_task("sr4"), selection=SMALL,
                        subject_pattern="nomatch-(\\d+)", progress=False)
    with pytest.raises(InputError, match="not a LatentSR dataset"):
        PreparedDataset(foreign)


@pytest.mark.shared_data
def test_prepare_command(tmp_path, brats_flair, capsys):
    from LatentSRLib.cli import main

    out = tmp_path / "ds"
    code = main(["prepare", str(brats_flair), "-o", str(out), "--task", "refine2", "--size", "64", "--every", "20",
                 "--val-fraction", "0", "--test-fraction", "0"])
    assert code == 0
    assert "task refine2" in capsys.readouterr().out
    assert PreparedDataset(out).task == Task("refine", 2)
    assert main(["prepare", str(brats_flair), "-o", str(tmp_path / "z"), "--task", "sr0x"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_prepare_splits_by_subject_with_val_and_test_fractions(tmp_path):
    # 8 subjects x 2 contrast files x 4 slices (small .npy stacks); the pattern makes a subject of both files
    rng = np.random.default_rng(0)
    inputs = []
    for number in range(8):
        for contrast in ("t1", "t2"):
            path = tmp_path / "in" / f"pat-{number:02d}-{contrast}.npy"
            path.parent.mkdir(exist_ok=True)
            np.save(path, rng.uniform(0.2, 1.0, (4, 32, 32)).astype(np.float32))
            inputs.append(path)
    rule = SplitRule(val_fraction=0.25, test_fraction=0.25, seed=3)
    selection = SliceSelection(size=(32, 32))

    def prepare(paths, name):
        dataset = prepare_dataset(paths, tmp_path / name, parse_task("sr2"), selection=selection, split_rule=rule,
                                  subject_pattern=r"(pat-\d+)", progress=False)
        return {r["id"]: (r["subject"], r["split"]) for r in dataset.rows}, dataset

    by_id, dataset = prepare(inputs, "a")
    assert len(by_id) == 8 * 2 * 4  # every slice kept, IDs unique
    subjects = sorted({subject for subject, _ in by_id.values()})
    assert subjects == [f"pat-{n:02d}" for n in range(8)]
    split_of: dict[str, set[str]] = {}
    for subject, split in by_id.values():
        split_of.setdefault(subject, set()).add(split)
    # every slice of a subject is in one split, so no subject appears in two splits
    assert all(len(splits) == 1 for splits in split_of.values()), split_of
    members = {split: {s for s, v in split_of.items() if v == {split}} for split in ("train", "val", "test")}
    assert members["train"].isdisjoint(members["val"]) and members["train"].isdisjoint(members["test"])
    assert members["val"].isdisjoint(members["test"])
    assert set().union(*members.values()) == set(subjects)
    # the fractions: round(8 * 0.25) = 2 subjects each in val and test, the rest in train; none empty
    assert {k: len(v) for k, v in members.items()} == {"train": 4, "val": 2, "test": 2}
    # the manifest's slices per split and dataset.json agree with the per-subject assignment
    for split in ("train", "val", "test"):
        slices = [i for i, (s, v) in by_id.items() if v == split]
        assert len(slices) == 8 * len(members[split]) == dataset.info["counts"][split]
        assert len(dataset.indices(split)) == len(slices)
        assert sorted(dataset.info["subjects"][split]) == sorted(members[split])
    # reproducible, and independent of the order of the inputs (reversed, shuffled)
    assert prepare(inputs, "b")[0] == by_id
    assert prepare(inputs[::-1], "c")[0] == by_id
    shuffled = [inputs[i] for i in np.random.default_rng(1).permutation(len(inputs))]
    assert prepare(shuffled, "d")[0] == by_id
    # and assign_splits alone: same result for any order or repetition of the subject list
    direct = {s: next(iter(v)) for s, v in split_of.items()}
    assert assign_splits(subjects, rule) == direct
    assert assign_splits(subjects[::-1] + subjects[:3], rule) == direct
    # another seed gives another (still valid) assignment of the same sizes
    other = assign_splits(subjects, SplitRule(val_fraction=0.25, test_fraction=0.25, seed=4))
    assert sorted(other.values()) == sorted(direct.values())


# ------------------------------------------------------------------------------------- thick slices
@pytest.mark.shared_data
def test_prepare_thick_task_degrades_the_superior_inferior_rows_of_coronal_and_sagittal_tiles(tmp_path, brats_flair):
    from LatentSRLib.io import read_image
    from LatentSRLib.transforms.degradations import ThickSlices
    from LatentSRLib.transforms.intensity import PercentileWindow

    selection = SliceSelection(size=(64, 64), fit="tile", max_slices_per_source=2)
    dataset = prepare_dataset([brats_flair], tmp_path / "ds", parse_task("thick5"), selection=selection,
                              planes=["coronal", "sagittal"], split_rule=SplitRule(0.0, 0.0), progress=False)
    assert {r["plane"] for r in dataset.rows} == {"coronal", "sagittal"}
    assert dataset.task == Task("thick", 5) and dataset.info["selection"]["fit"] == "tile"
    # the HR tiles are the volume's own pixels, rows superior -> inferior (BraTS is LPS: k reversed),
    # padded with zeros to 160 rows; columns right -> left (i) for coronal, anterior -> posterior (j) for sagittal
    windowed = np.asarray(PercentileWindow(0.5, 99.5, clip=True)(read_image(brats_flair).array)[0])
    upright = {"coronal": lambda j: windowed[::-1, j, :], "sagittal": lambda i: windowed[::-1, :, i]}
    thick = ThickSlices(5)
    for row in dataset.rows[:: max(1, len(dataset) // 12)]:
        top, left = (int(v) for v in row["id"].rsplit("/tile-", 1)[1].split("-"))
        whole = np.zeros((160, 240), np.float32)
        whole[:155] = upright[row["plane"]](row["slice_index"])
        hr, lr = np.array(dataset.hr[row["row"]]), np.array(dataset.lr[row["row"]])
        np.testing.assert_allclose(hr, whole[top : top + 64, left : left + 64], atol=1e-6)
        # the stored LR is ThickSlices (profile along the rows, every 5th, cubic back) of the stored HR
        expected = thick(torch.from_numpy(hr)[None, None])[0, 0].numpy()
        np.testing.assert_allclose(lr, np.clip(expected, 0, 1), atol=1e-5)
    assert np.abs(dataset.hr[:] - dataset.lr[:]).mean() > 1e-3  # really degraded


def test_prepare_thick_task_refuses_axial_slices_resized_slices_and_2d_images(tmp_path):
    from LatentSRLib.io import write_image

    volume = tmp_path / "vol.nii.gz"
    write_image(MedicalImage(np.random.default_rng(0).random((20, 16, 16), dtype=np.float32), (1.0, 1.0, 1.0),
                             (0.0, 0.0, 0.0), np.eye(3)), volume)
    tiles = SliceSelection(size=(16, 16), fit="tile")
    with pytest.raises(InputError, match="an axial slice does not contain"):
        prepare_dataset([volume], tmp_path / "a", parse_task("thick5"), selection=tiles, planes=["coronal", "axial"],
                        progress=False)
    with pytest.raises(InputError, match="needs --fit tile"):
        prepare_dataset([volume], tmp_path / "b", parse_task("thick5"), selection=SliceSelection(size=(16, 16)),
                        planes=["coronal"], progress=False)
    image = tmp_path / "flat.nii.gz"
    write_image(MedicalImage(np.random.default_rng(1).random((30, 20), dtype=np.float32), (1.0, 1.0), (0.0, 0.0),
                             np.eye(2)), image)
    with pytest.raises(InputError, match="needs volumes"):
        prepare_dataset([image], tmp_path / "c", parse_task("thick5"), selection=tiles, planes=["coronal"],
                        progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")  # nothing half-written


def test_prepare_command_thick_defaults_to_coronal_and_sagittal_tiles(tmp_path, capsys):
    from LatentSRLib.cli import main
    from LatentSRLib.io import write_image

    volume = tmp_path / "vol.nii.gz"
    write_image(MedicalImage(np.random.default_rng(0).uniform(0.2, 1.0, (20, 16, 16)).astype(np.float32),
                             (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), volume)
    out = tmp_path / "ds"
    assert main(["prepare", str(volume), "-o", str(out), "--task", "thick5", "--size", "16", "--max-slices", "2",
                 "--profile", "box", "--val-fraction", "0", "--test-fraction", "0"]) == 0
    dataset = PreparedDataset(out)
    assert dataset.info["planes"] == ["coronal", "sagittal"] and dataset.info["selection"]["fit"] == "tile"
    assert dataset.task == Task("thick", 5, options={"profile": "box"})
    capsys.readouterr()
    for extra, needle in ((["--axis", "axial"], "--axis coronal"), (["--fit", "pad"], "--fit tile"),
                          (["--task", "sr4", "--profile", "box"], "thick tasks")):
        args = ["prepare", str(volume), "-o", str(tmp_path / "no"), "--task", "thick5", *extra]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "no").exists()
