"""The latent cache: encoded once, keyed by the dataset's IDs, resumable, refuses the wrong autoencoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from LatentSRLib.autoencoders import load_autoencoder
from LatentSRLib.autoencoders.monai_kl import save_monai_autoencoder
from LatentSRLib.errors import InputError
from LatentSRLib.data.slice_source import SliceSelection
from LatentSRLib.transforms.tasks import parse_task
from LatentSRLib.training.autoencoder import autoencoder_config, build_autoencoder
from LatentSRLib.data.dataset import PreparedDataset, SplitRule, prepare_dataset
from LatentSRLib.data.latent_cache import build_latent_cache, open_latent_cache


def tiny_autoencoder(folder, seed):
    torch.manual_seed(seed)
    config = autoencoder_config(downsampling=4, latent_channels=2, width=8)
    save_monai_autoencoder(build_autoencoder(config), folder, config)
    return load_autoencoder(f"monai:{folder}", latent_stats=None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, brats_flair):
    folder = tmp_path_factory.mktemp("cache") / "dataset"
    return prepare_dataset([brats_flair], folder, parse_task("sr4"), selection=SliceSelection(size=(64, 64), every=12),
                           split_rule=SplitRule(val_fraction=0, test_fraction=0), progress=False)


@pytest.mark.shared_data
def test_cache_matches_direct_encoding_and_resumes(dataset, tmp_path):
    autoencoder = tiny_autoencoder(tmp_path / "ae", seed=0)
    cache = build_latent_cache(dataset, autoencoder, progress=False)
    assert cache.folder.parent == dataset.folder / "latents"
    assert cache.hr.shape == (len(dataset), 2, 16, 16) and cache.complete
    row = cache.index(dataset.ids[2])
    with torch.no_grad():
        expected_hr = autoencoder.encode(torch.from_numpy(np.array(dataset.hr[row]))[None, None])[0].numpy()
        expected_lr = autoencoder.encode(torch.from_numpy(np.array(dataset.lr[row]))[None, None])[0].numpy()
    np.testing.assert_allclose(cache.hr[row], expected_hr, atol=1e-5)
    np.testing.assert_allclose(cache.lr[row], expected_lr, atol=1e-5)
    assert not np.allclose(cache.hr[row], cache.lr[row])
    info = json.loads((cache.folder / "cache.json").read_text())
    assert info["identity"]["dataset"]["task"]["name"] == "sr4"

    # a run killed half-way: rows not marked done are encoded again, the rest are kept
    reference = np.array(cache.hr)
    done = np.load(cache.folder / "done.npy")
    done[len(done) // 2 :] = False
    np.save(cache.folder / "done.npy", done)
    with pytest.raises(InputError, match="unfinished"):
        open_latent_cache(dataset, autoencoder)
    writable = np.load(cache.folder / "hr.npy", mmap_mode="r+")
    writable[len(done) // 2 :] = 0.0
    writable.flush()
    del writable
    resumed = build_latent_cache(dataset, autoencoder, progress=False)
    np.testing.assert_allclose(resumed.hr, reference, atol=1e-6)


@pytest.mark.shared_data
def test_cache_refuses_another_autoencoder(dataset, tmp_path):
    first = tiny_autoencoder(tmp_path / "ae1", seed=1)
    cache = build_latent_cache(dataset, first, folder=tmp_path / "cache", progress=False)
    other = tiny_autoencoder(tmp_path / "ae2", seed=2)  # same architecture, other weights
    with pytest.raises(InputError, match="weights_sha256"):
        open_latent_cache(dataset, other, folder=cache.folder)
    with pytest.raises(InputError, match="in the way"):
        build_latent_cache(dataset, other, folder=cache.folder, progress=False)
    # the default folder of another autoencoder is simply a different cache
    assert build_latent_cache(dataset, other, progress=False).folder != cache.folder


@pytest.mark.shared_data
def test_cache_refuses_another_task(dataset, tmp_path, brats_flair):
    autoencoder = tiny_autoencoder(tmp_path / "ae", seed=3)
    cache = build_latent_cache(dataset, autoencoder, folder=tmp_path / "cache", progress=False)
    refine = prepare_dataset([brats_flair], tmp_path / "refine", parse_task("refine2"),
                             selection=SliceSelection(size=(64, 64), every=12),
                             split_rule=SplitRule(val_fraction=0, test_fraction=0), progress=False)
    with pytest.raises(InputError, match="task"):
        open_latent_cache(PreparedDataset(refine.folder), autoencoder, folder=cache.folder)
