"""The one sampling path (LatentSRLib.model.sampling): seeds per item, K samples, defaults, and that
every workflow goes through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LatentSRLib.errors import InputError
from LatentSRLib.model.folder import load_sr_model
from LatentSRLib.model.sampling import DEFAULT_STEPS, SamplingSettings, item_seed, sample_sr, start_noise
from conftest import make_tiny_sr_model

GRID = 32


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_sr_model(make_tiny_sr_model(tmp_path_factory.mktemp("model"), grid=GRID))


@pytest.fixture(scope="module")
def lr():
    return torch.rand(4, 1, GRID, GRID, generator=torch.Generator().manual_seed(1))


IDS = ["BraTS-1/axial-070", "BraTS-1/axial-071", "colin/axial-010", "colin/axial-011"]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_an_item_depends_on_its_id_and_seed_only(model, lr, sampler):
    settings = SamplingSettings(steps=3, sampler=sampler, seed=7)
    torch.manual_seed(0)
    whole = sample_sr(model, lr, IDS, settings).mean
    torch.manual_seed(12345)  # the global random state plays no part
    alone = torch.cat([sample_sr(model, lr[i : i + 1], [IDS[i]], settings).mean for i in range(len(IDS))])
    reordered = sample_sr(model, lr[[2, 0]], [IDS[2], IDS[0]], settings).mean
    # float32 kernels may sum in another order for another batch size (1.03e-5 seen on a 2-core CPU); a
    # different seed moves the output by far more than this tolerance (checked below)
    torch.testing.assert_close(alone, whole, atol=5e-5, rtol=0)
    torch.testing.assert_close(reordered, whole[[2, 0]], atol=5e-5, rtol=0)
    other_seed = sample_sr(model, lr, IDS, SamplingSettings(steps=3, sampler=sampler, seed=8)).mean
    assert float((other_seed - whole).abs().max()) > 1e-3


def test_ancestral_sampling_draws_after_the_start_noise(model, lr):
    # ddpm adds fresh noise at every step but the last: with the same start noise it still differs from ddim
    ddim = sample_sr(model, lr, IDS, SamplingSettings(steps=3, sampler="ddim")).mean
    ddpm = sample_sr(model, lr, IDS, SamplingSettings(steps=3, sampler="ddpm")).mean
    assert float((ddim - ddpm).abs().max()) > 1e-3


def test_k_samples_give_their_mean_and_population_std(model, lr):
    settings = SamplingSettings(steps=2, samples=3, seed=4)
    result = sample_sr(model, lr, IDS, settings, keep_latents=True)
    stack = torch.stack([model.autoencoder.decode(z) for z in result.latents]).numpy()
    np.testing.assert_allclose(result.mean.numpy(), stack.mean(0), atol=1e-5)
    np.testing.assert_allclose(result.std.numpy(), stack.std(0), atol=1e-5)
    assert result.latents.shape[:2] == (3, len(IDS)) and float(result.std.max()) > 0
    # sample 0 of a K-sample run is the one-sample run: the noise of sample k depends on k alone
    one = sample_sr(model, lr, IDS, SamplingSettings(steps=2, samples=1, seed=4), keep_latents=True)
    assert float(one.std.abs().max()) == 0.0
    torch.testing.assert_close(one.mean, torch.from_numpy(stack[0]), atol=1e-5, rtol=0)
    first_noise = start_noise(IDS, tuple(result.latents.shape[2:]), 4, 0)
    assert not torch.equal(first_noise, start_noise(IDS, tuple(result.latents.shape[2:]), 4, 1))


def test_defaults_come_from_the_model_then_the_package(model):
    resolved = SamplingSettings().resolved(model.objective, model.config["sampling"])
    assert (resolved.steps, resolved.sampler) == (2, "ddim")  # as the tiny model records them
    assert SamplingSettings().resolved(model.objective, {}).steps == DEFAULT_STEPS
    assert SamplingSettings(steps=9).resolved(model.objective, model.config["sampling"]).steps == 9
    with pytest.raises(InputError, match="euler"):
        SamplingSettings(sampler="euler").resolved(model.objective, {}, model.folder)
    for bad in ({"samples": 0}, {"steps": 0}, {"samples": 1.5}):
        with pytest.raises(ValueError):
            SamplingSettings(**bad)


def test_string_and_integer_ids_seed_alike():
    import zlib

    assert item_seed(3, "a/b", 1) == item_seed(3, zlib.crc32(b"a/b"), 1)
    assert item_seed(3, 5, 0) != item_seed(3, 6, 0) != item_seed(4, 6, 0)


def test_every_workflow_samples_through_the_one_path():
    """No module but model.sampling calls the diffusion sampler or draws start noise."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "LatentSRLib"
    callers = []
    for path in package.rglob("*.py"):
        if path.parts[-2] == "diffusion" or path.name == "sampling.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("LatentSRLib.diffusion"):
                if any(alias.name in ("sample", "samplers") for alias in node.names):
                    callers.append(str(path.relative_to(package)))
    assert not callers, f"sampling outside LatentSRLib.model.sampling: {callers}"


def test_lr_residual_decoding_passes_the_lr_image_through_and_adds_only_the_latent_change(tmp_path, lr):
    """``"lr_residual"`` decoding: LR + decode(sample) - decode(LR latent). A network that returns the LR
    latent (an untrained condition-skip net) gives the LR image itself, where plain decoding gives the
    autoencoder's reconstruction of it; a sample moved away from the LR latent adds exactly its decoded
    change. An unknown decoding is refused on loading, naming the folder."""
    import json

    from conftest import ConditionEcho

    folder = make_tiny_sr_model(tmp_path / "m", grid=GRID)
    config = json.loads((folder / "config.json").read_text())
    config["objective"]["prediction"] = "x0"  # DDIM's last step then returns the echoed condition exactly
    config["decoding"] = "lr_residual"
    (folder / "config.json").write_text(json.dumps(config))
    model = load_sr_model(folder)
    model.denoiser = ConditionEcho()
    settings = SamplingSettings(steps=2, sampler="ddim", samples=2)
    result = sample_sr(model, lr, IDS, settings)
    torch.testing.assert_close(result.mean, lr, atol=1e-5, rtol=0)
    assert float(result.std.abs().max()) < 1e-5
    reconstruction = model.autoencoder.decode(model.autoencoder.encode(lr))
    assert float((reconstruction - lr).abs().mean()) > 1e-2  # what plain decoding would have returned
    model.config["decoding"] = "latent"
    torch.testing.assert_close(sample_sr(model, lr, IDS, settings).mean, reconstruction, atol=1e-5, rtol=0)
    # a sample moved by a fixed latent change: the image moves by that change decoded, nothing else
    shift = 0.3 * torch.randn(1, *model.autoencoder.encode(lr[:1]).shape[1:], generator=torch.Generator().manual_seed(3))
    model.denoiser = lambda x, t, condition: condition + shift
    model.config["decoding"] = "lr_residual"
    moved = sample_sr(model, lr, IDS, SamplingSettings(steps=1, sampler="ddim")).mean
    condition = model.autoencoder.encode(lr)
    expected = lr + model.autoencoder.decode(condition + shift) - model.autoencoder.decode(condition)
    torch.testing.assert_close(moved, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs the LR images"):
        sample_sr(model, None, IDS, settings, condition=condition)
    config["decoding"] = "pixel_magic"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="unknown decoding 'pixel_magic'") as error:
        load_sr_model(folder)
    assert str(folder) in str(error.value)
