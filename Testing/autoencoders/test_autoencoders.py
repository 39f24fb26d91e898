"""Autoencoder backends behind one interface, loaded offline through their real loading code.

TAEF2 runs with its real pretrained weights on real brain slices (a wrong key mapping gives noise,
not 30+ dB); diffusers, MONAI and MedVAE run on tiny random networks that the tests save where
each backend's own loader looks (``save_pretrained`` folder, a MONAI model folder, a Hugging Face
cache prepared for ``medvae.MVAE`` with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from LatentSRLib.autoencoders import (
    SCHEMES,
    Autoencoder,
    LatentStats,
    load_autoencoder,
    parse_spec,
    save_monai_autoencoder,
)
from LatentSRLib.errors import InputError
from LatentSRLib.io import read_image
from LatentSRLib.transforms import ModelGrid, PercentileWindow, SliceLayout
from conftest import shared_path

MONAI_ARGS = dict(
    spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16), latent_channels=2, num_res_blocks=1,
    attention_levels=(False, False), norm_num_groups=8,
    with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``(B, 1, H, W)`` images in [0, 1]."""
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse)


# ---- real data and TAEF2 ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def taef2_folder() -> Path:
    return shared_path("weights", "taef2")


@pytest.fixture(scope="module")
def taef2(taef2_folder) -> Autoencoder:
    return load_autoencoder(f"tiny:{taef2_folder}", latent_stats=None)


@pytest.fixture(scope="module")
def brain_slices(brats_flair) -> tuple[np.ndarray, tuple[float, float]]:
    """Axial FLAIR slices that show brain, windowed to [0, 1]: ``(N, H, W)`` and pixel spacing."""
    image = read_image(brats_flair)
    windowed, _ = PercentileWindow(0.5, 99.5, nonzero=True)(image.array)
    layout = SliceLayout.for_image(image, "axial")
    slices = layout.extract(windowed)
    brain = [i for i in range(len(slices)) if (slices[i] > 0.05).mean() > 0.15]
    assert len(brain) > 40
    return np.ascontiguousarray(slices[brain]), layout.pixel_spacing


def on_grid(slices: np.ndarray, spacing, count: int, size: int) -> torch.Tensor:
    """``count`` slices spread over the stack, on a ``size`` x ``size`` model grid: ``(count, 1, size, size)``."""
    picks = np.linspace(0, len(slices) - 1, count).round().astype(int)
    return ModelGrid((size, size)).to_model(slices[picks], spacing)[:, None]


@pytest.mark.shared_data
def test_taef2_reconstructs_real_brain_slices(taef2, brain_slices):
    assert (taef2.latent_channels, taef2.downsampling_factor, taef2.name) == (32, 8, "taef2")
    assert not taef2.stochastic and not taef2.normalised
    x = on_grid(*brain_slices, count=4, size=256)
    with torch.no_grad():
        z = taef2.encode(x)
        y = taef2.decode(z)
    assert z.shape == (4, 32, 32, 32) and z.dtype == torch.float32
    assert y.shape == x.shape and 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    scores = psnr(y, x)
    print(f"TAEF2 AE PSNR on {len(x)} BraTS FLAIR slices (256x256): {scores.mean():.2f} dB ({scores.tolist()})")
    assert float(scores.mean()) >= 30.0


@pytest.mark.shared_data
def test_taef2_pair_spec_and_folder_spec_load_the_same_weights(taef2, taef2_folder):
    pair = load_autoencoder(
        f"tiny:{taef2_folder / 'taef2_decoder.pth'},{taef2_folder / 'taef2_encoder.pth'}", latent_stats=None
    )  # given the other way round: roles come from the file names
    ours, theirs = pair.network.state_dict(), taef2.network.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert pair.info["pool_blocks"] == {"encoder": [11, 12, 13], "decoder": [3, 4, 5]}


@pytest.mark.shared_data
def test_latent_normalisation_on_held_out_slices(taef2, taef2_folder, brain_slices, tmp_path):
    slices = on_grid(*brain_slices, count=32, size=128)
    fit, held_out = slices[0::2], slices[1::2]
    stats = LatentStats.estimate(
        taef2, (fit[i : i + 5].numpy()[:, 0] for i in range(0, len(fit), 5)),  # uneven (B, H, W) chunks
        batch_size=4, preprocessing={"window": "percentile 0.5-99.5 nonzero", "grid": [128, 128]},
    )
    assert stats.n_images == 16 and stats.channels == 32 and stats.spec == taef2.spec
    assert stats.n_values == 16 * 16 * 16

    # stored beside the model: a copy of the weight pair in a writable folder, found by "auto"
    model_dir = tmp_path / "taef2"
    shutil.copytree(taef2_folder, model_dir)
    written = stats.save(model_dir)
    assert written == model_dir / "latent_stats.json"
    assert LatentStats.load(written) == stats
    normalised = load_autoencoder(f"tiny:{model_dir}")
    assert normalised.normalised and normalised.latent_stats == stats

    with torch.no_grad():
        z = normalised.encode(held_out)
    mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
    assert float(mean.abs().max()) < 0.15, mean
    assert float((std - 1).abs().max()) < 0.15, std

    # normalisation is invisible to decode(encode(x))
    with torch.no_grad():
        plain = taef2.reconstruct(held_out[:2])
        through_normalised = normalised.decode(normalised.encode(held_out[:2]))
    torch.testing.assert_close(through_normalised, plain, atol=1e-5, rtol=0)
    native = torch.randn(3, 32, 4, 4) * 7 + 2
    torch.testing.assert_close(stats.denormalise(stats.normalise(native)), native, atol=1e-5, rtol=1e-6)


def test_latent_stats_json_round_trip_and_estimate_matches_direct_computation(tmp_path):
    folder = tmp_path / "ae"
    torch.manual_seed(0)
    save_monai_autoencoder(_monai_net(), folder, MONAI_ARGS)
    ae = load_autoencoder(f"monai:{folder}")
    assert not ae.normalised and ae.latent_stats is None
    images = torch.rand(10, 1, 16, 16)
    stats = LatentStats.estimate(ae, [images[:3], images[3:4], images[4:]], max_images=7, batch_size=2)
    with torch.no_grad():
        z = ae.encode_native(images[:7], sample=False).double()
    assert stats.n_images == 7
    np.testing.assert_allclose(stats.shift, z.mean(dim=(0, 2, 3)).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats.scale, z.std(dim=(0, 2, 3), unbiased=False).numpy(), rtol=1e-6)

    path = stats.save(tmp_path / "stats" / "vae.json")
    document = json.loads(path.read_text())
    assert document["format"] == "latentsr.latent_stats" and document["channels"] == 2
    again = LatentStats.load(path)
    assert again == stats
    ae_with = load_autoencoder(f"monai:{folder}", latent_stats=path)
    assert ae_with.normalised
    torch.testing.assert_close(ae_with.encode(images[:2]), stats.normalise(ae.encode(images[:2])))

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        LatentStats.load(tmp_path / "bad.json")
    wrong = LatentStats(shift=(0.0,) * 3, scale=(1.0,) * 3, spec="other")
    with pytest.raises(InputError, match="3 channels"):
        load_autoencoder(f"monai:{folder}", latent_stats=wrong)


# ---- diffusers AutoencoderKL --------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusers_kl_folder(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=32, scaling_factor=0.3,
    )
    folder = tmp_path_factory.mktemp("diffusers") / "tiny-kl"
    vae.save_pretrained(folder)
    return folder


def test_diffusers_kl_from_a_save_pretrained_folder(diffusers_kl_folder):
    ae = load_autoencoder(f"diffusers:{diffusers_kl_folder}")
    assert (ae.latent_channels, ae.downsampling_factor, ae.name) == (4, 4, "tiny-kl")
    assert ae.stochastic and ae.deterministic and not ae.normalised
    assert ae.info["scaling_factor"] == 0.3  # recorded, not applied
    assert ae.default_stats_path == diffusers_kl_folder / "latent_stats.json"
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        z = ae.encode(x)
        expected = ae.network.encode(x.repeat(1, 3, 1, 1) * 2 - 1).latent_dist.mean
        y = ae.decode(z)
    assert z.shape == (2, 4, 8, 8)
    torch.testing.assert_close(z, expected)
    assert y.shape == (2, 1, 32, 32) and 0 <= float(y.min()) and float(y.max()) <= 1

    ae.deterministic = False
    with torch.no_grad():
        s1 = ae.encode(x, generator=torch.Generator().manual_seed(7))
        s2 = ae.encode(x, generator=torch.Generator().manual_seed(7))
        s3 = ae.encode(x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(s1, s2)
    assert float((s1 - z).abs().mean()) > 1e-2 and float((s1 - s3).abs().mean()) > 1e-2


def test_diffusers_kl_subfolder_and_missing_weights(diffusers_kl_folder, tmp_path):
    repo = tmp_path / "pipeline"
    shutil.copytree(diffusers_kl_folder, repo / "vae")
    assert load_autoencoder(f"diffusers:{repo}#vae").latent_channels == 4

    no_weights = tmp_path / "config-only"
    no_weights.mkdir()
    shutil.copy(diffusers_kl_folder / "config.json", no_weights)
    with pytest.raises(InputError, match=r"diffusers:.*config-only"):
        load_autoencoder(f"diffusers:{no_weights}")
    with pytest.raises(InputError, match="no config.json"):
        load_autoencoder(f"diffusers:{tmp_path}")


def test_hub_id_without_network_or_cache_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"'diffusers:stabilityai/sd-vae-ft-ema'.*cache"):
        load_autoencoder("diffusers:stabilityai/sd-vae-ft-ema")


# ---- MONAI AutoencoderKL ------------------------------------------------------------------------
def _monai_net():
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(**MONAI_ARGS)


def test_monai_save_and_load_give_identical_outputs(tmp_path):
    torch.manual_seed(0)
    net = _monai_net().eval()
    config_path = save_monai_autoencoder(net, tmp_path / "vae", MONAI_ARGS, input_range=(-1, 1),
                                         metadata={"trained_on": "test"})
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads(config_path.read_text())["input_range"] == [-1.0, 1.0]
    ae = load_autoencoder(f"monai:{tmp_path / 'vae'}")
    assert (ae.latent_channels, ae.downsampling_factor) == (2, 2)
    assert ae.info["metadata"] == {"trained_on": "test"}
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        mu, sigma = net.encode(x * 2 - 1)
        torch.testing.assert_close(ae.encode(x), mu, rtol=0, atol=0)
        torch.testing.assert_close(ae.decode(mu), ((net.decode(mu) + 1) / 2).clamp(0, 1), rtol=0, atol=0)
        # batching changes nothing
        torch.testing.assert_close(ae.encode_batched(x, batch_size=2), ae.encode(x))
        torch.testing.assert_close(ae.reconstruct(x, batch_size=2), ae.reconstruct(x))
        ae.deterministic = False
        sample = ae.encode(x, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sample, mu + sigma * noise)


def test_monai_lower_precision_and_model_pt(tmp_path):
    torch.manual_seed(0)
    net = _monai_net()
    save_monai_autoencoder(net, tmp_path / "vae", MONAI_ARGS)
    (tmp_path / "vae" / "model.safetensors").unlink()
    torch.save(net.state_dict(), tmp_path / "vae" / "model.pt")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    config.pop("weights")
    (tmp_path / "vae" / "config.json").write_text(json.dumps(config))
    full = load_autoencoder(f"monai:{tmp_path / 'vae'}")
    half = load_autoencoder(f"monai:{tmp_path / 'vae'}", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        out = half.reconstruct(x)
        assert out.dtype == torch.float32
        assert float((out - full.reconstruct(x)).abs().max()) < 0.1


def test_monai_save_refuses_a_config_that_does_not_describe_the_network(tmp_path):
    with pytest.raises(ValueError, match="does not describe"):
        save_monai_autoencoder(_monai_net(), tmp_path / "vae", {**MONAI_ARGS, "latent_channels": 3})
    assert not (tmp_path / "vae" / "config.json").exists()


def test_input_checks():
    torch.manual_seed(0)
    ae = _wrap_monai()
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        ae.encode(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple of"):
        ae.encode(torch.rand(1, 1, 15, 16))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ae.encode(torch.rand(1, 1, 16, 16) * 1000)
    with pytest.raises(ValueError, match="latents must be"):
        ae.decode(torch.rand(1, 5, 8, 8))
    ae.train()
    assert not ae.network.training  # a frozen autoencoder never enters training mode


def _wrap_monai() -> Autoencoder:
    from LatentSRLib.autoencoders.monai_kl import MonaiKLAutoencoder

    return MonaiKLAutoencoder("monai:test", _monai_net(), name="test", latent_channels=2,
                              downsampling_factor=2, stochastic=True)


# ---- MedVAE -------------------------------------------------------------------------------------
def _medvae_cache(root: Path, name: str, in_channels: int, latent_channels: int, lora: bool) -> torch.nn.Module:
    """A random tiny MedVAE saved where ``hf_hub_download`` finds it offline; returns the network."""
    import yaml
    from medvae.models import AutoencoderKL_2D
    from medvae.utils.factory import FILE_DICT_ASSOCIATIONS, HF_REPO_PATH
    from medvae.utils.lora import inject_trainable_lora_extended

    ddconfig = dict(double_z=True, z_channels=latent_channels, resolution=32, in_channels=in_channels,
                    out_ch=in_channels, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    torch.manual_seed(0)
    net = AutoencoderKL_2D(ddconfig=ddconfig, embed_dim=latent_channels)
    if lora:  # the 3- and 4-channel models are LoRA-tuned: their YAML nests the config
        inject_trainable_lora_extended(net, {"ResnetBlock", "AttnBlock"}, r=4)
        config = {"model": {"params": {"ddconfig": ddconfig, "embed_dim": latent_channels}}}
    else:
        config = {"ddconfig": ddconfig, "embed_dim": latent_channels}
    repo = root / ("models--" + HF_REPO_PATH.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    files = FILE_DICT_ASSOCIATIONS[name]
    config_file, ckpt_file = (repo / "snapshots" / commit / files[k] for k in ("config", "ckpt"))
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(config))
    torch.save({"state_dict": net.state_dict()}, ckpt_file)
    return net.eval()


@pytest.fixture
def offline_hub(monkeypatch, tmp_path) -> Path:
    import huggingface_hub.constants as hub

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("name, in_channels, latent_channels, lora", [
    ("medvae_4_1_2d", 1, 1, False),
    ("medvae_4_3_2d", 3, 3, True),
])
def test_medvae_loads_through_its_own_api_from_an_offline_cache(offline_hub, name, in_channels, latent_channels, lora):
    pytest.importorskip("medvae", reason="the medvae extra is not installed")
    reference = _medvae_cache(offline_hub, name, in_channels, latent_channels, lora)
    ae = load_autoencoder(f"medvae:{name}")
    assert (ae.name, ae.latent_channels, ae.downsampling_factor) == (name, latent_channels, 4)
    assert ae.default_stats_path is None
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        z = ae.encode(x)
        expected = reference.encode(x.repeat(1, in_channels, 1, 1) * 2 - 1).mean  # the weights we saved
        y = ae.decode(z)
        ae.deterministic = False
        s1 = ae.encode(x, generator=torch.Generator().manual_seed(0))
        s2 = ae.encode(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, expected)
    assert z.shape == (2, latent_channels, 8, 8) and y.shape == (2, 1, 32, 32)
    torch.testing.assert_close(s1, s2)
    assert not torch.equal(s1, z)


def test_medvae_errors(offline_hub, monkeypatch):
    with pytest.raises(InputError, match="3D MedVAE"):
        load_autoencoder("medvae:medvae_4_1_3d")
    with pytest.raises(InputError, match="medvae_8_4_2d"):  # the message lists the models
        load_autoencoder("medvae:medvae_16_2d")
    if "medvae" in sys.modules or _installed("medvae"):
        with pytest.raises(InputError, match=r"'medvae:medvae_8_1_2d'.*MedVAE weights"):
            load_autoencoder("medvae:medvae_8_1_2d")  # not in the (empty) offline cache
    monkeypatch.setitem(sys.modules, "medvae", None)  # as if the extra were not installed
    with pytest.raises(InputError, match=r"medvae is not installed: pip install 'latentsr\[medvae\]'"):
        load_autoencoder("medvae:medvae_4_1_2d")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---- bad specs ----------------------------------------------------------------------------------
def test_unknown_scheme_lists_the_schemes():
    with pytest.raises(InputError, match=r"'sdvae:x'.*diffusers, tiny, monai, medvae"):
        load_autoencoder("sdvae:x")
    with pytest.raises(InputError, match="unknown autoencoder scheme"):
        parse_spec("no-scheme-here")
    assert parse_spec(" TINY:/a/b ") == ("tiny", "/a/b")
    assert SCHEMES == ("diffusers", "tiny", "monai", "medvae")


@pytest.mark.parametrize("spec", ["tiny:/no/such/folder", "monai:./missing-model", "diffusers:/no/such/vae",
                                  "tiny:a.pth,b.pth", "monai:"])
def test_missing_locations_name_the_spec(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        load_autoencoder(spec)
    assert spec in str(info.value)


def test_folders_without_weights(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no AutoencoderTiny config.json and no"):
        load_autoencoder(f"tiny:{empty}")
    with pytest.raises(InputError, match="no config.json"):
        load_autoencoder(f"monai:{empty}")
    save_monai_autoencoder(_monai_net(), tmp_path / "vae", MONAI_ARGS)
    (tmp_path / "vae" / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"monai:.*no weights"):
        load_autoencoder(f"monai:{tmp_path / 'vae'}")


@pytest.mark.shared_data
def test_pth_pair_with_wrong_shapes(taef2_folder, tmp_path):
    encoder = torch.load(taef2_folder / "taef2_encoder.pth", weights_only=True)
    decoder = torch.load(taef2_folder / "taef2_decoder.pth", weights_only=True)

    def pair(name: str, enc: dict, dec: dict) -> str:
        torch.save(enc, tmp_path / f"{name}_encoder.pth")
        torch.save(dec, tmp_path / f"{name}_decoder.pth")
        return f"tiny:{tmp_path / f'{name}_encoder.pth'},{tmp_path / f'{name}_decoder.pth'}"

    cases = {
        "latents": (encoder, {**decoder, "1.weight": torch.zeros(64, 16, 3, 3)}, "16 latent channels"),
        "kernel": ({**encoder, "3.conv.2.weight": torch.zeros(64, 64, 1, 1)}, decoder, "shape"),
        "missing": ({k: v for k, v in encoder.items() if k != "12.pool.3.weight"}, decoder, "missing"),
        "foreign": ({"encoder.conv_in.weight": torch.zeros(1)}, decoder, "not a TAESD-style"),
    }
    for name, (enc, dec, problem) in cases.items():
        spec = pair(name, enc, dec)
        with pytest.raises(InputError, match=problem) as info:
            load_autoencoder(spec)
        assert spec in str(info.value)
    (tmp_path / "garbage_encoder.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read the encoder"):
        load_autoencoder(f"tiny:{tmp_path / 'garbage_encoder.pth'},{taef2_folder / 'taef2_decoder.pth'}")
