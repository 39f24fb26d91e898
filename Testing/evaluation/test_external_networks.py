"""External SR networks in an evaluation (``sr:<weights file>``, loaded by spandrel): tiny randomly
initialised ESRGAN (RRDBNet) networks built from spandrel's own architecture class and saved as a
user would save weights, run through the method string on real BraTS slices; the gray/RGB handling
against the network run by hand; refusals of wrong scales and unusable files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from spandrel.architectures.ESRGAN import ESRGAN

from LatentSRLib.errors import InputError
from LatentSRLib.evaluation.evaluate import evaluate
from LatentSRLib.evaluation.methods import BuildContext, MethodBatch, SpandrelSRNetwork, build_methods
from LatentSRLib.data.slice_source import SliceSelection
from LatentSRLib.transforms.tasks import parse_task
from LatentSRLib.data.dataset import PreparedDataset, SplitRule, prepare_dataset

GRID = 64


def save_esrgan(path, *, scale=4, channels=3):
    """A tiny RRDBNet (1 block, 8 filters), randomly initialised, saved as a plain state dict."""
    torch.manual_seed(scale * 10 + channels)
    network = ESRGAN(in_nc=channels, out_nc=channels, num_filters=8, num_blocks=1, scale=scale)
    torch.save(network.state_dict(), path)
    return network.eval()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, brats_flair) -> PreparedDataset:
    root = tmp_path_factory.mktemp("external")
    return prepare_dataset([brats_flair], root / "dataset", parse_task("sr4"),
                           selection=SliceSelection(size=(GRID, GRID), every=20),
                           split_rule=SplitRule(val_fraction=0, test_fraction=0, test_subjects=("*t2f",)),
                           progress=False)


def _batch(dataset: PreparedDataset, n: int = 3) -> MethodBatch:
    items = dataset.items("test", n)
    rows = [item["row"] for item in items]
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a[rows], dtype=np.float32))[:, None]  # noqa: E731
    return MethodBatch(ids=[item["id"] for item in items], lr=as_tensor(dataset.lr), hr=as_tensor(dataset.hr))


@pytest.mark.parametrize("channels", [3, 1])
def test_a_spandrel_network_runs_through_its_method_string(dataset, tmp_path, channels):
    weights = tmp_path / f"tiny_x4_{channels}ch.pth"
    network = save_esrgan(weights, channels=channels)
    (method,) = build_methods([f"sr:{weights}"], BuildContext(dataset=dataset))
    assert isinstance(method, SpandrelSRNetwork) and method.kind == "external" and method.name == f"sr:{weights}"
    assert method.inputs == (weights,) and method.noise_floor is None
    batch = _batch(dataset)
    out = method.run(batch).predictions
    assert out.shape == (3, 1, GRID, GRID) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1 and float(out.std()) > 0
    # by hand: area-average the LR down by 4, gray to the network's channels, clip, RGB back to gray
    small = F.avg_pool2d(batch.lr, 4)
    with torch.no_grad():
        expected = network(small.repeat(1, channels, 1, 1)).clamp(0, 1).mean(dim=1, keepdim=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    record = method.describe()
    assert record["architecture"] == "ESRGAN" and record["network_scale"] == 4
    assert record["input_channels"] == record["output_channels"] == channels
    assert "ESRGAN x4" in method.description and weights.name in method.description
    assert ("averaged back to gray" in method.description) == (channels == 3)


def test_wrong_scale_and_unusable_files_are_refused(dataset, tmp_path):
    context = BuildContext(dataset=dataset)
    x2 = tmp_path / "tiny_x2.pth"
    save_esrgan(x2, scale=2)
    with pytest.raises(InputError, match=r"up-scales by 2 but the dataset holds task sr4") as caught:
        build_methods([f"sr:{x2}"], context)
    assert str(x2) in str(caught.value)  # the message names the file
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a network")
    with pytest.raises(InputError, match="spandrel cannot load") as caught:
        build_methods([f"sr:{garbage}"], context)
    assert str(garbage) in str(caught.value)
    foreign = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, foreign)  # a state dict of no known architecture
    with pytest.raises(InputError, match="spandrel cannot load"):
        build_methods([f"sr:{foreign}"], context)
    text = tmp_path / "weights.txt"
    text.write_text("weights")
    with pytest.raises(InputError, match="spandrel cannot load"):
        build_methods([f"sr:{text}"], context)
    with pytest.raises(InputError, match="no such weights file"):
        build_methods([f"sr:{tmp_path / 'absent.pth'}"], context)
    with pytest.raises(InputError, match="needs a weights file"):
        build_methods(["sr:"], context)


@pytest.mark.slow
@pytest.mark.shared_data
def test_evaluation_with_an_external_network(dataset, tmp_path):
    weights = tmp_path / "tiny_x4.pth"
    save_esrgan(weights)
    methods = [f"sr:{weights}", "bicubic"]
    result = evaluate(dataset.folder, methods, tmp_path / "run", limit=3, lpips=False, fid_download=False,
                      n_resamples=50, device="cpu", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [m["name"] for m in summary["methods"]] == methods
    assert summary["methods"][0]["kind"] == "external" and summary["methods"][0]["architecture"] == "ESRGAN"
    assert summary["settings"]["reference"] == methods[0]  # no SR model: the first method is the reference
    assert {r["method"] for r in result.rows} == set(methods) and len(result.rows) == 6
    assert f"`{methods[0]}`" in result.tables
    fid = summary["fid"]
    if fid["label"]:  # FID is one value per method, the external network included
        assert list(fid["values"][dataset.folder.name]) == methods and "## Table S12" in result.tables
