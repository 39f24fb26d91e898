"""Domain adaptation of a pretrained tiny autoencoder (TAEF2, the TAESD family) through ``train_autoencoder``.

The bundle runs in-process on a tiny randomly initialised TAESD-style network, written here as the
raw ``nn.Sequential`` state dicts the TAESD repository publishes (with one TAEF2-style pool block
on each side), on a small prepared dataset of synthetic slices, so nothing here needs the shared
data. The real TAEF2 weights are used where present (skipped with the reason otherwise).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO_ROOT, shared_path
from LatentSRLib.autoencoders import load_autoencoder
from LatentSRLib.autoencoders.diffusers_tiny import TAESD_MIT_NOTICE, TINY_FORMAT, file_sha256
from LatentSRLib.data.batches import slice_dataset
from LatentSRLib.data.dataset import PreparedDataset, SplitRule, prepare_dataset
from LatentSRLib.data.slice_source import SliceSelection
from LatentSRLib.training.logs import read_log
from LatentSRLib.transforms.tasks import parse_task

CONFIGS = REPO_ROOT / "Training" / "configs"
SMALL = {"patch_size": 32, "batch_size": 2, "epoch_length": 2, "val_interval": 2, "val_images": 3,
         "checkpoint_interval": 2, "num_workers": 0, "learning_rate": 1e-3, "max_iterations": 2, "log_interval": 1}


# ---- a tiny TAESD-style network, as raw state dicts ---------------------------------------------
class _Block(nn.Module):
    """TAESD's block (conv-relu-conv-relu-conv + skip, relu), optionally with TAEF2's pool branch."""

    def __init__(self, n: int, pool: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(n, n, 3, padding=1), nn.ReLU(), nn.Conv2d(n, n, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(n, n, 3, padding=1))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        if pool:
            self.pool = nn.Sequential(nn.Conv2d(n, pool, 1, bias=False), nn.GroupNorm(4, pool), nn.ReLU(),
                                      nn.Conv2d(pool, n, 1, bias=False))


def write_tiny_taesd(folder, name: str = "tiny", width: int = 8, latent: int = 4, seed: int = 0) -> str:
    """Write ``<name>_encoder.pth`` / ``<name>_decoder.pth`` (4x down-sampling, random weights) to
    ``folder``; returns the ``tiny:`` spec of the folder."""
    torch.manual_seed(seed)
    conv = lambda a, b, **kw: nn.Conv2d(a, b, 3, padding=1, **kw)  # noqa: E731
    encoder = nn.Sequential(conv(3, width), _Block(width), conv(width, width, stride=2, bias=False), _Block(width),
                            conv(width, width, stride=2, bias=False), _Block(width, pool=8), conv(width, latent))
    decoder = nn.Sequential(nn.Identity(), conv(latent, width), nn.ReLU(), _Block(width, pool=8), nn.Upsample(scale_factor=2),
                            conv(width, width, bias=False), _Block(width), nn.Upsample(scale_factor=2),
                            conv(width, width, bias=False), _Block(width), conv(width, 3))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(encoder.state_dict(), folder / f"{name}_encoder.pth")
    torch.save(decoder.state_dict(), folder / f"{name}_decoder.pth")
    return f"tiny:{folder}"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three synthetic subjects of smooth blobs (two train, one val), 64 x 64 slices."""
    root = tmp_path_factory.mktemp("tiny-ae")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    paths = []
    for name in ("alpha", "beta", "gamma"):
        volume = np.zeros((6, 64, 64), np.float32)
        for k in range(len(volume)):
            for _ in range(5):
                cx, cy, r, a = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.25), rng.uniform(0.3, 1)
                volume[k] += a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            volume[k] += 0.05 * np.sin(20 * xx + k)
        np.save(root / f"{name}.npy", volume)
        paths.append(root / f"{name}.npy")
    prepare_dataset(paths, root / "dataset", parse_task("sr4"), selection=SliceSelection(size=(64, 64)),
                    split_rule=SplitRule(val_fraction=0, test_fraction=0, val_subjects=("gamma",)), progress=False)
    return root / "dataset"


def run_bundle(dataset_dir, output_dir, **overrides):
    from monai.bundle import run

    run("train_autoencoder", meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "train_autoencoder.yaml"), logging_file=str(CONFIGS / "logging.conf"),
        dataset_dir=str(dataset_dir), output_dir=str(output_dir), **{**SMALL, **overrides})


def _hr(dataset_dir, n: int = 3) -> torch.Tensor:
    return torch.from_numpy(np.array(PreparedDataset(dataset_dir).hr[:n]))[:, None]


def _raw(folder, name: str, role: str) -> dict[str, torch.Tensor]:
    return torch.load(folder / f"{name}_{role}.pth", weights_only=True)


# ---- the bundle ----------------------------------------------------------------------------------
def test_fine_tunes_a_tiny_autoencoder_into_a_loadable_model(dataset, tmp_path):
    source = write_tiny_taesd(tmp_path / "source")
    run_dir = tmp_path / "run"
    run_bundle(dataset, run_dir, init_from=source, val_at_start=False, perceptual_weight=0.0)

    train = read_log(run_dir / "train_log.csv")
    assert [r["iteration"] for r in train] == [1, 2] and "kl" not in train[0]  # no posterior, no KL term
    assert [r["iteration"] for r in read_log(run_dir / "val_log.csv")] == [2]
    model = run_dir / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["format"] == TINY_FORMAT and (config["encoder"], config["decoder"]) == ("tiny_encoder.pth", "tiny_decoder.pth")
    derived = config["derived_from"]
    assert derived["spec"] == source and derived["summary"] == "derived from TINY (MIT)"
    assert derived["sha256"] == {r: file_sha256(tmp_path / "source" / f"tiny_{r}.pth") for r in ("encoder", "decoder")}
    assert (model / "LICENSE").read_text() == TAESD_MIT_NOTICE  # the source folder has no licence file of its own
    training = config["metadata"]["training"]
    assert training["init_from"] == source and training["train_encoder"] is True
    assert training["augmentation"]["gamma_prob"] > 0 and training["perceptual_network"] is None
    assert config["metadata"]["best_iteration"] == 2

    # the saved files carry exactly the source files' keys (drop-in TAESD weights)
    for role in ("encoder", "decoder"):
        assert _raw(model, "tiny", role).keys() == _raw(tmp_path / "source", "tiny", role).keys()
    tuned = load_autoencoder(f"tiny:{model}")
    generic = load_autoencoder(source, latent_stats=None)
    assert tuned.normalised and (model / "latent_stats.json").is_file()
    assert tuned.info["derived_from"]["spec"] == source
    x = _hr(dataset)
    with torch.no_grad():
        ours, theirs = tuned.reconstruct(x), generic.reconstruct(x)
    assert ours.shape == x.shape
    assert float((ours - theirs).abs().max()) > 1e-4  # fine-tuning changed the reconstruction
    # the tuned weights are the trained network's: the folder reproduces the checkpoint's reconstruction
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["network"]
    state = tuned.network.state_dict()
    assert all(torch.equal(state[k], best[f"network.{k}"]) for k in state)


def test_decoder_only_fine_tuning_keeps_the_encoder_bit_identical(dataset, tmp_path):
    source = write_tiny_taesd(tmp_path / "source", seed=1)
    run_dir = tmp_path / "run"
    run_bundle(dataset, run_dir, init_from=source, train_encoder="false", augment="false")  # as the command line gives them

    val = read_log(run_dir / "val_log.csv")
    assert [r["iteration"] for r in val] == [0, 2]  # fine-tuning validates the starting weights first
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["network"]
    start = load_autoencoder(source, latent_stats=None).network.state_dict()
    encoder = [k for k in start if k.startswith("encoder.")]
    decoder = [k for k in start if k.startswith("decoder.")]
    assert encoder and decoder
    assert all(torch.equal(last[f"network.{k}"], start[k]) for k in encoder)
    assert any(not torch.equal(last[f"network.{k}"], start[k]) for k in decoder)
    # the exported encoder file holds the source encoder's tensors, whichever checkpoint was best
    exported, original = _raw(run_dir / "model", "tiny", "encoder"), _raw(tmp_path / "source", "tiny", "encoder")
    assert exported.keys() == original.keys() and all(torch.equal(exported[k], original[k]) for k in original)
    metadata = json.loads((run_dir / "model" / "config.json").read_text())["metadata"]
    assert metadata["training"]["train_encoder"] is False and metadata["training"]["augmentation"] is None
    assert metadata["start_val_psnr"] == pytest.approx(val[0]["val_psnr"], abs=1e-4)
    assert metadata["best_val_psnr"] == pytest.approx(max(r["val_psnr"] for r in val), abs=1e-4)


def test_decoder_only_is_refused_for_a_monai_autoencoder(dataset, tmp_path):
    with pytest.raises(Exception) as info:
        run_bundle(dataset, tmp_path / "run", train_encoder=False, width=8, latent_channels=1)
    assert isinstance(info.value.__cause__, ValueError)
    assert "decoder-only fine-tuning) is for init_from tiny:" in str(info.value.__cause__)


# ---- the loss ------------------------------------------------------------------------------------
class _Engine:
    """What ``AutoencoderTrainStep`` uses of a MONAI trainer."""

    def __init__(self, network, optimizer) -> None:
        from types import SimpleNamespace

        self.network, self.optimizer, self.amp, self.scaler = network, optimizer, False, None
        self.state = SimpleNamespace(device=torch.device("cpu"), iteration=1)


def test_training_loss_is_l1_plus_weighted_stlpips(dataset, tmp_path):
    from LatentSRLib.metrics.perceptual import LPIPSMetric
    from LatentSRLib.training.autoencoder import AutoencoderLoss, AutoencoderTrainStep, build_autoencoder, pretrained_config

    metric = LPIPSMetric("stlpips")
    if not metric.available:
        pytest.skip(f"ST-LPIPS is not available here: {metric.reason}")
    spec = write_tiny_taesd(tmp_path / "source")
    network = build_autoencoder(pretrained_config(spec))
    weight = 0.7
    loss = AutoencoderLoss(perceptual_weight=weight, perceptual_network="stlpips")
    assert "ST-LPIPS" in loss.perceptual_label and "offline stand-in" in loss.perceptual_label
    images = _hr(dataset, 2)
    with torch.no_grad():
        recon = network(images)
    expected_l1 = float((recon - images).abs().mean())
    expected = expected_l1 + weight * float(np.mean(metric(recon, images)))  # scores clamp to [0, 1] as the loss does

    step = AutoencoderTrainStep(loss, grad_clip=1.0)
    output = step(_Engine(network, torch.optim.Adam(network.parameters(), lr=1e-3)), {"hr": images})
    assert "kl" not in output  # a tiny autoencoder has no posterior
    assert output["l1"] == pytest.approx(expected_l1, rel=1e-5)
    assert output["loss"] == pytest.approx(expected, rel=1e-4)
    assert output["perceptual"] > 0


# ---- augmentation ---------------------------------------------------------------------------------
def _items(data, n: int = 4) -> torch.Tensor:
    return torch.stack([torch.as_tensor(data[i]["hr"]) for i in range(n)])


def test_augmentation_off_is_deterministic_and_each_transform_changes_the_slices(dataset):
    stored = _hr(dataset, 4)
    off = slice_dataset(dataset, "train", keys=["hr"], patch_size=32, augmentation=None, random_crop=False)
    first, second = _items(off), _items(off)
    assert torch.equal(first, second)
    assert torch.equal(first, stored[:, :, 16:48, 16:48])  # the centre crop of the stored slice, untouched

    crops = slice_dataset(dataset, "train", keys=["hr"], patch_size=32, augmentation={"flip_prob": 0.0})
    assert not torch.equal(_items(crops, 8), _items(crops, 8))  # random crops move
    settings = {"flip_prob": {}, "rotate_prob": {"rotate_degrees": 10}, "gamma_prob": {}, "bias_field_prob": {}}
    for name, extra in settings.items():
        chosen = {"flip_prob": 0.0, name: 1.0, **extra}
        whole = slice_dataset(dataset, "train", keys=["hr"], augmentation=chosen)
        changed = _items(whole)
        assert changed.shape == stored.shape
        assert float(changed.min()) >= 0.0 and float(changed.max()) <= 1.0, name
        assert not torch.equal(changed, stored), name
    with pytest.raises(ValueError, match="unknown augmentation"):
        slice_dataset(dataset, "train", keys=["hr"], augmentation={"gama_prob": 0.5})


def test_the_bundle_switch_turns_every_random_transform_off(dataset):
    from monai.bundle import ConfigParser

    stored = _hr(dataset, 4)
    batches = {}
    for augment in (False, True):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train_autoencoder.yaml"))
        parser.update({"dataset_dir": str(dataset), "patch_size": 32, "augment": augment, "init_from": "tiny:unused"})
        # a tiny source gets the intensity augmentations; is_tiny only reads the spec
        data = parser.get_parsed_content("train_dataset")
        batches[augment] = (_items(data), _items(data))
    assert torch.equal(*batches[False]) and torch.equal(batches[False][0], stored[:, :, 16:48, 16:48])
    assert not torch.equal(*batches[True])


# ---- the real TAEF2 -------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_taef2_round_trips_through_the_fine_tuned_folder_format(tmp_path):
    from LatentSRLib.autoencoders.diffusers_tiny import save_tiny_autoencoder

    folder = shared_path("weights", "taef2")
    taef2 = load_autoencoder(f"tiny:{folder}", latent_stats=None)
    save_tiny_autoencoder(taef2.network, tmp_path / "copy", taef2, metadata={"note": "unchanged"})
    for role in ("encoder", "decoder"):
        saved, original = _raw(tmp_path / "copy", "taef2", role), _raw(folder, "taef2", role)
        assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in original)
    copy = load_autoencoder(f"tiny:{tmp_path / 'copy'}", latent_stats=None)
    assert copy.info["pool_blocks"] == taef2.info["pool_blocks"] == {"encoder": [11, 12, 13], "decoder": [3, 4, 5]}
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["derived_from"]["summary"] == "derived from TAEF2 (MIT)"
    assert config["derived_from"]["sha256"]["encoder"] == file_sha256(folder / "taef2_encoder.pth")


@pytest.mark.shared_data
def test_package_ships_a_fine_tuned_tiny_autoencoder_in_float16_with_its_notice(tmp_path, capsys):
    """``latentsr package`` on a fine-tuned tiny folder: float16 weights with the published keys, the MIT
    notice and the record kept, ``weights_dtype`` set; the copy reconstructs a real brain slice as the
    float32 original does (within 0.05 dB); a folder that is not one is refused in one line."""
    from LatentSRLib.cli import main
    from LatentSRLib.autoencoders.diffusers_tiny import save_tiny_autoencoder
    from LatentSRLib.io import read_image

    taef2 = load_autoencoder(f"tiny:{shared_path('weights', 'taef2')}", latent_stats=None)
    save_tiny_autoencoder(taef2.network, tmp_path / "tuned", taef2, metadata={"note": "as if fine-tuned"})
    for role in ("encoder", "decoder"):  # a fine-tuned folder stores float32
        state = _raw(tmp_path / "tuned", "taef2", role)
        torch.save({k: v.float() for k, v in state.items()}, tmp_path / "tuned" / f"taef2_{role}.pth")
    assert main(["package", str(tmp_path / "tuned"), "-o", str(tmp_path / "shipped")]) == 0
    assert "packaged" in capsys.readouterr().out
    shipped = tmp_path / "shipped"
    config = json.loads((shipped / "config.json").read_text())
    assert config["weights_dtype"] == "float16" and config["metadata"] == {"note": "as if fine-tuned"}
    assert (shipped / "LICENSE").read_text() == TAESD_MIT_NOTICE
    for role in ("encoder", "decoder"):
        half, full = _raw(shipped, "taef2", role), _raw(tmp_path / "tuned", "taef2", role)
        assert half.keys() == full.keys() and all(v.dtype == torch.float16 for v in half.values())
    volume = read_image(shared_path("brain", "BraTS-GLI-00001-000-t2f.nii.gz")).array
    truth = torch.from_numpy(np.clip(volume[70:74, 8:232, 8:232] / np.percentile(volume, 99.5), 0, 1).astype(np.float32))[:, None]

    def psnr(spec: str) -> float:
        autoencoder = load_autoencoder(spec, latent_stats=None)
        with torch.no_grad():
            out = autoencoder.decode(autoencoder.encode(truth)).clamp(0, 1)
        return float((10 * torch.log10(1 / ((out - truth) ** 2).mean(dim=(1, 2, 3)))).mean())

    assert psnr(f"tiny:{shipped}") == pytest.approx(psnr(f"tiny:{tmp_path / 'tuned'}"), abs=0.05)
    assert main(["package", str(shared_path("weights", "taef2")), "-o", str(tmp_path / "no")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "no").exists()
