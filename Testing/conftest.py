"""Shared fixtures: where the real test data lives, and small helpers.

Real scans sit beside the project at ``../shared/data`` (override with ``LATENTSR_TEST_DATA``);
tests that need them skip with the reason when the folder is absent. Registry data
(pydicom's and pydicom-data's files) is always installed with the test extra.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:  # one thread per test worker: the suite runs under pytest-xdist on 2 cores
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LATENTSR_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path inside the shared data folder; skips the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data not available: {path} (set LATENTSR_TEST_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def brats_flair() -> Path:
    return shared_path("brain", "BraTS-GLI-00001-000-t2f.nii.gz")


@pytest.fixture(scope="session")
def brats_t1() -> Path:
    return shared_path("brain", "BraTS-GLI-00001-000-t1n.nii.gz")


@pytest.fixture(scope="session")
def brats_tumour_mask() -> Path:
    return shared_path("brain", "BraTS-GLI-00001-000-wt-approx.nii.gz")


@pytest.fixture(scope="session")
def knee_dicom_dir() -> Path:
    return shared_path("knee", "DESS-01")


@pytest.fixture(scope="session")
def t1_3slice_dir() -> Path:
    return shared_path("dicom", "t1-3slice")


@pytest.fixture(scope="session")
def cxr_png() -> Path:
    return shared_path("cxr", "nih-cxr14-00027426_000.png")


@pytest.fixture(scope="session")
def cxr_pngs() -> list[Path]:
    folder = shared_path("cxr")
    return sorted(folder.glob("*.png"))


def registry_dicom(name: str) -> Path:
    """A DICOM test file shipped with pydicom or pydicom-data (both installed by the test extra)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


def load_script(name: str):
    """A script of ``Training/scripts`` imported as a module (they are not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"latentsr_script_{name}", REPO_ROOT / "Training" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_tiny_sr_model(root: Path, grid: int = 64, fit: str = "pad", task: str = "sr4") -> Path:
    """A tiny untrained SR model (sr4, ``grid`` x ``grid``, grid ``fit`` "pad" or "tile") in
    ``root/model``: for geometry and plumbing tests, which do not need a trained one. Its autoencoder
    sits in ``root/vae``."""
    import numpy as np

    from LatentSRLib.autoencoders import load_autoencoder
    from LatentSRLib.autoencoders.latent_stats import LatentStats
    from LatentSRLib.autoencoders.monai_kl import save_monai_autoencoder
    from LatentSRLib.diffusion import DDPMObjective, build_denoiser
    from LatentSRLib.model.folder import save_sr_model
    from LatentSRLib.transforms.tasks import parse_task
    from LatentSRLib.training.autoencoder import autoencoder_config, build_autoencoder
    from LatentSRLib.autoencoders import weights_fingerprint

    torch.manual_seed(0)
    config = autoencoder_config(downsampling=4, latent_channels=2, width=8)
    save_monai_autoencoder(build_autoencoder(config), root / "vae", config)
    autoencoder = load_autoencoder(f"monai:{root / 'vae'}", latent_stats=None)
    stats = LatentStats.estimate(autoencoder, [np.random.default_rng(0).random((4, grid, grid), dtype=np.float32)])
    denoiser = build_denoiser("tiny", 2)
    with torch.no_grad():  # MONAI zero-initialises the output layer: give the untrained net a noise-dependent output
        for parameter in denoiser.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    save_sr_model(root / "model", denoiser, objective=DDPMObjective().to_dict(),
                  autoencoder={"spec": f"monai:{root / 'vae'}", "name": "vae",
                               "weights_sha256": weights_fingerprint(autoencoder), "latent_channels": 2,
                               "downsampling_factor": 4},
                  latent_stats=stats, task=parse_task(task).to_dict(),
                  grid={"size": [grid, grid], "fit": fit, "lower_percentile": 0.5, "upper_percentile": 99.5},
                  sampling={"sampler": "ddim", "steps": 2})
    return root / "model"


class ConditionEcho(torch.nn.Module):
    """An x0-predicting denoiser that answers the condition: DDIM's last step returns it exactly."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return condition


def install_pooling_model(model, monkeypatch, decode_mode: str = "nearest"):
    """Replace ``model``'s latent path by 4x average pooling and 4x up-sampling (``decode_mode``): SR ~ LR,
    so where a bright voxel ends up tests the grids, slicing and re-assembly, not the untrained networks."""
    import torch.nn.functional as F

    channels = model.autoencoder.latent_channels
    monkeypatch.setattr(model.autoencoder, "encode", lambda x, **kw: F.avg_pool2d(x, 4).repeat(1, channels, 1, 1))
    monkeypatch.setattr(model.autoencoder, "decode",
                        lambda z: F.interpolate(z[:, :1], scale_factor=4, mode=decode_mode).clamp(0, 1))
    monkeypatch.setattr(model, "denoiser", ConditionEcho())
    return model
