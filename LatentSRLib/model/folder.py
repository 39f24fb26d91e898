"""A trained latent-diffusion SR model as a folder that the evaluator, the volume engine and the
Slicer module load by path.

A model folder holds::

    config.json            everything needed to rebuild and use the model (below)
    denoiser.safetensors   the denoiser's weights (the EMA weights when training kept an EMA)
    latent_stats.json      the autoencoder's latent normalisation the model was trained with (rule 4)
    calibration.json       only in a calibrated model (``latentsr calibrate``): its per-pixel intervals
                           (:class:`~LatentSRLib.metrics.calibration.Calibration`)
    autoencoder/           only in a packaged model (:func:`package_sr_model`): its own autoencoder,
                           referenced by a spec relative to the model folder (``monai:autoencoder``)

``config.json``: ``{"format": "latentsr.sr_model", "version": 1, "denoiser": {preset, latent_channels,
network}, "objective": {kind, ...}, "autoencoder": {spec, name, weights_sha256, latent_channels,
downsampling_factor}, "task": {name, mode, scale, ...}, "grid": {size, fit, percentiles, lr_grid},
"sampling": {sampler, steps[, overlap]}, "data": {...}, "training": {...}}``. ``sampling`` holds the
defaults ``latentsr sr`` uses when the user gives none (the steps and the sliding window's tile overlap
chosen from the model's own measurements; see its card).

:class:`SRModel` holds the loaded pieces; :func:`LatentSRLib.model.sampling.sample_sr` is the one
path that turns LR slices into SR samples with them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from LatentSRLib.autoencoders.base import Autoencoder
from LatentSRLib.autoencoders.latent_stats import STATS_FILE_NAME, LatentStats
from LatentSRLib.diffusion import ConditionalDenoiser, objective_from_dict
from LatentSRLib.errors import InputError
from LatentSRLib.io.atomic import atomic_path
from LatentSRLib.metrics.calibration import CALIBRATION_FILE
from LatentSRLib.model.config import CONFIG_FILE, MODEL_FORMAT, read_model_config
from LatentSRLib.model.sampling import DEFAULT_STEPS, SampleSet, SamplingSettings, check_decoding, decoding_of, sample_sr
from LatentSRLib.transforms.tasks import Task

__all__ = ["SRModel", "load_sr_model", "package_sr_model", "save_sr_model", "MODEL_FORMAT"]

_VERSION = 1
WEIGHTS_FILE = "denoiser.safetensors"


def save_sr_model(
    folder: str | os.PathLike,
    denoiser: ConditionalDenoiser,
    *,
    objective: Mapping[str, Any],
    autoencoder: Mapping[str, Any],
    latent_stats: LatentStats,
    task: Mapping[str, Any],
    grid: Mapping[str, Any],
    sampling: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    decoding: str = "latent",
) -> Path:
    """Write a model folder (weights first, config last, each atomically); ``decoding``: how its sampled
    latents become images (:data:`~LatentSRLib.model.sampling.DECODINGS`)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    document = {
        "format": MODEL_FORMAT,
        "version": _VERSION,
        "denoiser": denoiser.config,
        "objective": dict(objective),
        "autoencoder": dict(autoencoder),
        "task": dict(task),
        "grid": dict(grid),
        "sampling": dict(sampling or {"sampler": None, "steps": DEFAULT_STEPS}),
        "decoding": check_decoding(decoding),
        "data": dict(data or {}),
        "training": dict(training or {}),
    }
    document = json.loads(json.dumps(document))  # JSON-clean; fails early on objects
    state = {k: v.detach().to("cpu").contiguous() for k, v in denoiser.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": MODEL_FORMAT})
    latent_stats.save(folder / STATS_FILE_NAME)
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
    return folder


class SRModel:
    """A loaded SR model: denoiser, objective, the autoencoder it works in, and its task.

    Attributes:
        folder, config: where it came from and its parsed ``config.json``.
        denoiser: the network (eval mode).
        objective: the training objective (decides the samplers).
        autoencoder: loaded from the recorded spec, with the model's latent statistics.
        task: the degradation the model was trained to undo (None for a model being trained without one).
    """

    def __init__(self, folder: Path | None, config: dict[str, Any], denoiser: ConditionalDenoiser,
                 autoencoder: Autoencoder) -> None:
        self.folder = folder
        self.config = config
        self.denoiser = denoiser.eval()
        self.objective = objective_from_dict(config["objective"])
        self.autoencoder = autoencoder
        self.task = Task.from_dict(config["task"]) if config.get("task") else None

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def to(self, device: torch.device | str, *, channels_last: bool = False) -> SRModel:
        """Move both networks to ``device``, their 4D weights in channels-last (NHWC) layout or the default."""
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.denoiser.to(device, memory_format=layout)
        self.autoencoder.to(device, memory_format=layout)
        return self

    def super_resolve(self, lr_images: torch.Tensor, ids: Sequence[str | int] | None = None,
                      settings: SamplingSettings = SamplingSettings()) -> SampleSet:
        """``(B, 1, H, W)`` LR images in [0, 1] on the HR grid -> mean and std of K SR samples
        (:func:`~LatentSRLib.model.sampling.sample_sr`; ``ids`` default to the batch positions)."""
        ids = list(range(len(lr_images))) if ids is None else list(ids)
        return sample_sr(self, lr_images.to(self.device), ids, settings)


def load_sr_model(folder: str | os.PathLike, *, device: str | torch.device = "cpu",
                  autoencoder: Autoencoder | str | None = None) -> SRModel:
    """Load a model folder.

    Args:
        folder: written by :func:`save_sr_model` (the training bundle's ``model/``).
        device: where to put the networks.
        autoencoder: override the recorded autoencoder (an object, or a spec string, e.g. when the
            autoencoder folder has moved); its weights must be the ones the model was trained with.

    Raises:
        InputError: not a model folder, a damaged one, or an autoencoder that differs from the
            one it was trained with.
    """
    from safetensors.torch import load_file

    from LatentSRLib.autoencoders import load_autoencoder
    from LatentSRLib.autoencoders import weights_fingerprint

    folder = Path(folder)
    config = read_model_config(folder)
    decoding_of(config, folder)  # refused before anything heavy is read
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"the model's weights are missing (no {WEIGHTS_FILE})", folder)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for damaged files
        raise InputError(f"truncated or corrupt weights ({str(exc).splitlines()[0]})", weights) from None
    try:
        denoiser = ConditionalDenoiser.from_config(config["denoiser"])
        # a packaged model may store half-precision weights: they are cast to float32 here
        denoiser.load_state_dict(state, strict=True)
        stats = LatentStats.load(folder / STATS_FILE_NAME)
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise InputError(f"damaged model folder: {str(exc).splitlines()[0]}", folder) from None
    recorded = config["autoencoder"]
    if autoencoder is None or isinstance(autoencoder, str):
        autoencoder = load_autoencoder(autoencoder or _resolve_spec(recorded["spec"], folder), latent_stats=None)
    expected = recorded.get("weights_sha256")
    if expected and weights_fingerprint(autoencoder) != expected:
        raise InputError(f"the autoencoder {autoencoder.spec!r} is not the one this model was trained with "
                         f"({recorded.get('spec')!r}: other weights)", folder)
    autoencoder.deterministic = True
    autoencoder.latent_stats = stats
    model = SRModel(folder, config, denoiser, autoencoder)
    return model.to(device)


def _resolve_spec(spec: str, folder: Path) -> str:
    """A recorded ``scheme:relative/path`` is relative to the model folder (packaged models)."""
    scheme, _, target = spec.partition(":")
    if scheme in ("monai", "tiny", "diffusers") and target and not Path(target).is_absolute() \
            and (folder / target.split("#")[0]).exists():
        return f"{scheme}:{folder / target}"
    return spec


def _shared_autoencoder_spec(sibling: Path, target: Path, recorded: Mapping[str, Any]) -> str:
    from LatentSRLib.autoencoders import load_autoencoder
    from LatentSRLib.autoencoders import weights_fingerprint

    if sibling.resolve().parent != target.resolve().parent or not (sibling / "autoencoder").is_dir():
        raise InputError(f"can share only the autoencoder/ of a packaged model beside {target.name}", sibling)
    shared = load_autoencoder(f"monai:{sibling / 'autoencoder'}", latent_stats=None)
    if recorded.get("weights_sha256") and weights_fingerprint(shared) != recorded["weights_sha256"]:
        raise InputError("its autoencoder is not the one this model was trained with", sibling)
    return f"monai:../{sibling.name}/autoencoder"


def _shared_tiny_spec(folder: Path, target: Path, recorded: Mapping[str, Any]) -> str:
    """A ``tiny:`` spec relative to ``target`` for the shipped tiny autoencoder ``folder`` (or a packaged
    model's ``autoencoder/``), checked to hold the weights the model was trained with."""
    from LatentSRLib.autoencoders import load_autoencoder, weights_fingerprint

    location = folder / "autoencoder" if (folder / "autoencoder" / "config.json").is_file() else folder
    shared = load_autoencoder(f"tiny:{location}", latent_stats=None)
    if recorded.get("weights_sha256") and weights_fingerprint(shared) != recorded["weights_sha256"]:
        raise InputError("this autoencoder is not the one the model was trained with", folder)
    return "tiny:" + Path(os.path.relpath(location.resolve(), target.resolve())).as_posix()


def _copy_tiny_autoencoder(where: str, destination: Path) -> bool:
    """Copy a ``tiny:`` autoencoder stored on disk into ``destination``; False for a hub id (kept as is)."""
    import shutil

    from LatentSRLib.autoencoders.diffusers_tiny import NOTICE_PATTERNS, TAESD_MIT_NOTICE

    location = where.partition("#")[0]
    if "," in location:  # ENC.pth,DEC.pth: the pair goes into a folder, which tiny: loads as such
        files = [Path(part).expanduser() for part in location.split(",")]
        if not all(f.is_file() for f in files):
            return False
        destination.mkdir()
        for f in files:
            shutil.copy2(f, destination / f.name)
    elif Path(location).expanduser().is_dir() and "#" not in where:
        shutil.copytree(Path(location).expanduser(), destination)
    else:
        return False
    if not any(any(destination.glob(pattern)) for pattern in NOTICE_PATTERNS):
        (destination / "LICENSE").write_text(TAESD_MIT_NOTICE)
    return True


def package_sr_model(source: str | os.PathLike, target: str | os.PathLike, *, half: bool = True,
                     share_autoencoder_with: str | os.PathLike | None = None) -> Path:
    """Write a self-contained copy of a model folder that can be moved or shipped.

    A ``monai:`` autoencoder, and a ``tiny:`` one stored on disk (a folder, or an ``ENC,DEC`` pair
    of files), is copied into ``target/autoencoder`` and referenced relatively (its weights
    unchanged, so the recorded fingerprint still holds; a tiny one keeps its licence notice, or gets
    the TAESD family's MIT notice when its folder has none); other specs (``medvae:`` names, hub
    ids) are kept as they are. With ``share_autoencoder_with`` (a packaged model in the
    same parent folder, trained in the same latent space) the copy is not made: the model refers to
    ``../<that model>/autoencoder``, so models shipped together store a shared autoencoder once; for a
    ``tiny:`` autoencoder it may also be a shipped autoencoder folder anywhere (e.g.
    ``Training/autoencoders/taef2-brain``), referred to by its path relative to ``target``.
    With ``half`` the denoiser's floating-point weights are stored as float16 (about half the size;
    they are cast back to float32 on loading) and the config records it. The folder is written
    atomically.

    Raises:
        InputError: the model to share with is not a packaged sibling of ``target`` or holds another
            autoencoder.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    from LatentSRLib.io.atomic import atomic_directory

    source, target = Path(source), Path(target)
    model = load_sr_model(source)  # validates the folder and its autoencoder
    config = json.loads(json.dumps(model.config))
    with atomic_directory(target) as staging:
        recorded = config["autoencoder"]
        scheme, _, where = _resolve_spec(recorded["spec"], source).partition(":")
        if scheme == "monai" and share_autoencoder_with is not None:
            recorded["spec"] = _shared_autoencoder_spec(Path(share_autoencoder_with), target, recorded)
        elif scheme == "monai":
            shutil.copytree(where, staging / "autoencoder")
            recorded["spec"] = "monai:autoencoder"
        elif scheme == "tiny" and share_autoencoder_with is not None:
            recorded["spec"] = _shared_tiny_spec(Path(share_autoencoder_with), target, recorded)
        elif scheme == "tiny" and _copy_tiny_autoencoder(where, staging / "autoencoder"):
            recorded["spec"] = "tiny:autoencoder"
        state = load_file(str(source / WEIGHTS_FILE))
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": MODEL_FORMAT})
        shutil.copy2(source / STATS_FILE_NAME, staging / STATS_FILE_NAME)
        if (source / CALIBRATION_FILE).is_file():  # the calibrated intervals travel with the model
            shutil.copy2(source / CALIBRATION_FILE, staging / CALIBRATION_FILE)
        config["weights_dtype"] = "float16" if half else "float32"
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        load_sr_model(staging)  # the copy loads on its own
    return target
