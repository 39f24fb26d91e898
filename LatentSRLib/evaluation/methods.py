"""The methods an evaluation compares on one prepared dataset split, behind one small interface.

Every method turns a batch of the dataset's low-resolution slices into ``(B, 1, H, W)`` float32
predictions in ``[0, 1]`` on the high-resolution grid; the evaluator then scores each prediction
against the TRUE high-resolution slice (rule 1 (docs/science.md)). A method is named by the string the user
gives (``--methods``), which is also its name in every table:

=======================  ==============  =========================================================
name                     kind            what it is
=======================  ==============  =========================================================
``bicubic``              interpolation   the dataset's LR array as stored (see below)
``lanczos``              interpolation   area-average the stored LR down by the task scale, then
                                         Lanczos-3 up-sampling (PIL) back to the HR grid
``ae:<spec>``            ae_ceiling      encode-then-decode of the TRUE HR slice by that autoencoder
                                         (the "AE ceiling", an oracle, not an SR method)
``model:<folder>``       sr_model        a trained latent-diffusion SR model: encode LR, sample,
                                         decode (K samples averaged when ``samples > 1``)
``sr:<weights file>``    external        an external SR network (ESRGAN, Real-ESRGAN, SwinIR, HAT,
                                         ... any architecture spandrel detects) from the user's
                                         weights file (``.pth``, ``.safetensors``, ``.ckpt``, ``.pt``)
=======================  ==============  =========================================================

Baselines, exactly:

* ``bicubic``: a prepared dataset stores the LR image already on the HR grid (rule 5 (docs/science.md)): for
  the ``sr`` task it IS the antialiased bicubic down-sampling by the task scale followed by bicubic
  up-sampling back, i.e. the bicubic baseline itself, so the method returns the LR array unchanged.
  For ``refine`` (blur + bicubic down-up) and ``kspace`` (truncated k-space magnitude) tasks it is
  likewise the LR input as given on the HR grid (the paper's note for its refinement task: "bicubic
  copies LR unchanged"); its description says which.
* ``lanczos``: the true low-resolution pixels are not stored, so they are re-derived: the stored LR
  is reduced by the task scale with area averaging (``torch.nn.functional.interpolate(mode="area")``
  to ``round(H / scale) x round(W / scale)``, half up) and enlarged back to ``H x W`` with PIL's
  ``Image.LANCZOS`` filter (Lanczos-3, antialiased) on float32 ``"F"`` images, then clipped to
  ``[0, 1]`` (Lanczos overshoots at edges). At scale 1 it returns the LR unchanged. It differs from
  ``bicubic`` by the kernel and by the extra area step, so it is a second classical baseline, not a
  better estimate of the LR pixels.

Autoencoder noise floors: every SR model's own autoencoder ceiling is added automatically (named
``ae:<the spec recorded in the model>``) unless an ``ae:`` method with the same weights is already
listed; the hallucination analysis of that model uses those reconstructions. :attr:`Method.noise_floor`
names the method whose predictions are the noise floor: the linked ceiling for an SR model, itself
for a ceiling, ``None`` for interpolation (which has no autoencoder, hence no hallucination numbers).

External SR networks (``sr:``), exactly: the weights file is loaded by the ``spandrel`` package
(``ModelLoader``), which detects the architecture from the state dict and builds it from its own
maintained implementations; no network is bundled or re-implemented here, and no weights are
downloaded. The network's scale must equal the dataset task's scale (and divide the grid). Each
batch: the stored LR is area-averaged down by the scale (:func:`downsample_lr`, the same estimate of
the low-resolution pixels as ``lanczos``), gray is repeated to three channels for an RGB network,
the network runs in float32 through spandrel's call (which pads to the network's size
requirements and clips to ``[0, 1]``), and an RGB output is averaged back to gray.

Other methods plug in without changing this module: register a builder in :data:`METHOD_BUILDERS`
under a new prefix. A builder receives the text after the first colon and a :class:`BuildContext`
(dataset, device and sampling settings) and returns a :class:`Method`; a :class:`FunctionMethod`
around any callable ``lr (B, 1, H, W) -> (B, 1, H, W)`` is enough::

    METHOD_BUILDERS["mine"] = lambda argument, context: FunctionMethod(
        f"mine:{argument}", my_function, description="what my_function computes")

``_build_external`` (``sr:``) is a complete built-in example.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from LatentSRLib.errors import InputError
from LatentSRLib.model.sampling import SamplingSettings, sample_sr

__all__ = [
    "METHOD_BUILDERS",
    "METHOD_KINDS",
    "AutoencoderCeiling",
    "BicubicBaseline",
    "BuildContext",
    "FunctionMethod",
    "LanczosBaseline",
    "Method",
    "MethodBatch",
    "MethodOutput",
    "SRModelMethod",
    "SpandrelSRNetwork",
    "build_methods",
    "downsample_lr",
    "lanczos_upsample",
]

#: the kinds of method: classical interpolation, trained SR models, external networks, AE ceilings (oracles)
METHOD_KINDS = ("interpolation", "sr_model", "external", "ae_ceiling")


@dataclass(frozen=True)
class MethodBatch:
    """One batch of the split: ``lr`` and ``hr`` are ``(B, 1, H, W)`` float32 CPU tensors in [0, 1].

    ``lr`` is the degraded input on the HR grid; ``hr`` is the TRUE image. Only oracle methods (the
    AE ceiling) may read ``hr``; every method must return one prediction per id, in this order.
    """

    ids: list[str]
    lr: torch.Tensor
    hr: torch.Tensor


@dataclass
class MethodOutput:
    """A method's predictions for one batch.

    Attributes:
        predictions: ``(B, 1, H, W)`` float32 on the CPU, in [0, 1].
        sr_latents: SR models only: ``(K, B, C, h, w)`` normalised latents of the K samples.
        seconds_per_sample: wall time of :meth:`Method.predict` divided by ``B * samples``
            (filled in by :meth:`Method.run`).
    """

    predictions: torch.Tensor
    sr_latents: torch.Tensor | None = None
    seconds_per_sample: float = math.nan


@dataclass
class BuildContext:
    """What a method builder may use: the dataset, the device and the sampling settings."""

    dataset: Any  # LatentSRLib.data.dataset.PreparedDataset
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    steps: int | None = None
    sampler: str | None = None
    samples: int = 1
    seed: int = 0


def _synchronise(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class Method(abc.ABC):
    """One compared method. Subclasses set the attributes and implement :meth:`predict`.

    Attributes:
        name: the string the user gave (unique within an evaluation).
        kind: one of :data:`METHOD_KINDS`.
        description: one line saying exactly what it computes (shown in the report).
        noise_floor: name of the method whose predictions are this method's autoencoder
            reconstruction of HR (hallucination noise floor), or ``None``.
        autoencoder: the autoencoder it works in, when it has one.
        samples: predictions averaged per image (SR models; 1 otherwise).
        inputs: local files and folders it reads (never written over by an evaluation).
        device: where it computes (``None``: CPU-only code).
    """

    kind: str = "external"
    name: str
    description: str = ""
    noise_floor: str | None = None
    autoencoder: Any = None
    samples: int = 1
    inputs: tuple[Path, ...] = ()
    device: torch.device | None = None

    @abc.abstractmethod
    def predict(self, batch: MethodBatch) -> MethodOutput:
        """Predictions for ``batch`` (see :class:`MethodOutput`)."""

    def hr_latents(self, batch: MethodBatch) -> torch.Tensor | None:
        """Latents of the TRUE images in this method's latent space (SR models), else ``None``."""
        return None

    def run(self, batch: MethodBatch) -> MethodOutput:
        """:meth:`predict`, timed and checked: one ``(1, H, W)`` prediction in [0, 1] per id."""
        _synchronise(self.device)
        started = time.perf_counter()
        output = self.predict(batch)
        _synchronise(self.device)
        elapsed = time.perf_counter() - started
        predictions = torch.as_tensor(output.predictions).detach().to("cpu", torch.float32)
        if tuple(predictions.shape) != tuple(batch.hr.shape):
            raise ValueError(f"method {self.name!r} returned predictions of shape {tuple(predictions.shape)} "
                             f"for a batch of shape {tuple(batch.hr.shape)} (one per image, same grid)")
        if not bool(torch.isfinite(predictions).all()):
            raise ValueError(f"method {self.name!r} returned NaN or infinite pixels")
        output.predictions = predictions.clamp(0.0, 1.0)
        output.seconds_per_sample = elapsed / (len(batch.ids) * max(1, int(self.samples)))
        return output

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record for the summary and the report."""
        out = {"name": self.name, "kind": self.kind, "description": self.description,
               "noise_floor": self.noise_floor, "samples": int(self.samples)}
        if self.autoencoder is not None:
            out["autoencoder"] = {"spec": self.autoencoder.spec, "name": self.autoencoder.name,
                                  "latent_channels": self.autoencoder.latent_channels,
                                  "downsampling_factor": self.autoencoder.downsampling_factor}
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, kind={self.kind!r})"


# ----------------------------------------------------------------------------------- interpolation
def _small_size(height: int, width: int, scale: int) -> tuple[int, int]:
    # half up, never below one pixel (the same rounding as the dataset's degradations)
    return max(1, math.floor(height / scale + 0.5)), max(1, math.floor(width / scale + 0.5))


def downsample_lr(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Area-average ``(B, 1, H, W)`` images down by ``scale`` to ``round(H/scale) x round(W/scale)``.

    The stored LR lies on the HR grid; this recovers an estimate of the low-resolution pixels for
    methods that need them (``lanczos``, external x4 networks). Scale 1 returns the input.
    """
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if scale == 1:
        return lr
    return F.interpolate(lr.float(), size=_small_size(*lr.shape[-2:], scale), mode="area")


def lanczos_upsample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL ``Image.LANCZOS`` resize of each ``(B, 1, h, w)`` image to ``size = (H, W)`` (float32, no clipping)."""
    from PIL import Image

    height, width = int(size[0]), int(size[1])
    array = images.detach().to("cpu", torch.float32).numpy()
    out = np.empty((array.shape[0], 1, height, width), dtype=np.float32)
    for i in range(array.shape[0]):
        picture = Image.fromarray(np.ascontiguousarray(array[i, 0]))  # float32 -> mode "F"
        out[i, 0] = np.asarray(picture.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32)
    return torch.from_numpy(out)


class BicubicBaseline(Method):
    """``bicubic``: the LR input exactly as the dataset stores it (on the HR grid); see the module docstring."""

    kind = "interpolation"

    def __init__(self, task, name: str = "bicubic") -> None:
        self.name = name
        self.task = task
        if task.mode == "sr":
            self.description = (f"the dataset's LR input as stored: antialiased bicubic down-sampling by {task.scale} "
                                "and bicubic up-sampling back to the HR grid (this IS bicubic interpolation)")
        elif task.mode == "refine":
            self.description = (f"the dataset's LR input as stored (Gaussian blur, bicubic down-up by {task.scale}); "
                                "bicubic copies the LR unchanged on this refinement task")
        else:
            self.description = (f"the dataset's LR input as stored ({task.name}: its degraded image on the HR grid), "
                                "not a separate interpolation")

    def predict(self, batch: MethodBatch) -> MethodOutput:
        return MethodOutput(batch.lr.clone())


class LanczosBaseline(Method):
    """``lanczos``: area-average the stored LR down by the task scale, PIL Lanczos-3 back up, clip to [0, 1]."""

    kind = "interpolation"

    def __init__(self, scale: int, name: str = "lanczos") -> None:
        self.name = name
        self.scale = int(scale)
        self.description = (f"the stored LR area-averaged down by {self.scale} and Lanczos-3 up-sampled back "
                            "(PIL Image.LANCZOS, float32), clipped to [0, 1]")

    def predict(self, batch: MethodBatch) -> MethodOutput:
        if self.scale == 1:
            return MethodOutput(batch.lr.clone())
        small = downsample_lr(batch.lr, self.scale)
        return MethodOutput(lanczos_upsample(small, tuple(batch.lr.shape[-2:])).clamp(0.0, 1.0))


# ----------------------------------------------------------------------------------- latent methods
class AutoencoderCeiling(Method):
    """``ae:<spec>``: encode-then-decode (posterior mean) of the TRUE HR image: the AE ceiling (an oracle)."""

    kind = "ae_ceiling"

    def __init__(self, name: str, autoencoder, *, inputs: Sequence[Path] = (), added_for: str | None = None) -> None:
        self.name = name
        self.autoencoder = autoencoder
        self.device = autoencoder.device
        self.inputs = tuple(inputs)
        self.noise_floor = name
        self.added_for = added_for
        how = f"; added automatically as the noise floor of {added_for}" if added_for else ""
        self.description = (f"encode-then-decode of the TRUE HR image by {autoencoder.name} (posterior mean): "
                            f"the AE ceiling, an oracle upper bound, not an SR method{how}")

    def predict(self, batch: MethodBatch) -> MethodOutput:
        with torch.inference_mode():
            out = self.autoencoder.reconstruct(batch.hr.to(self.device))
        return MethodOutput(out.float().cpu())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "added_automatically": self.added_for is not None}


class SRModelMethod(Method):
    """``model:<folder>``: the one sampling path (:func:`~LatentSRLib.model.sampling.sample_sr`):
    encode the LR image, sample K times, decode, average in image space.

    Every random draw of image ``id``'s sample ``k`` is seeded by ``seed``, the id and ``k`` alone
    (:mod:`LatentSRLib.model.sampling`), so results do not depend on the batch size.
    """

    kind = "sr_model"

    def __init__(self, name: str, model, *, steps: int | None = None, sampler: str | None = None,
                 samples: int = 1, seed: int = 0) -> None:
        try:
            settings = SamplingSettings(steps=steps, sampler=sampler, samples=int(samples), seed=int(seed))
        except ValueError as exc:
            raise InputError(str(exc)) from None
        self.settings = settings.resolved(model.objective, model.config.get("sampling"), model.folder)
        self.name = name
        self.model = model
        self.autoencoder = model.autoencoder
        self.device = model.device
        self.steps, self.sampler = self.settings.steps, self.settings.sampler
        self.samples, self.seed = self.settings.samples, self.settings.seed
        self.inputs = (Path(model.folder),)
        preset = model.config["denoiser"].get("preset")
        self.description = (f"latent diffusion SR model {Path(model.folder).name} ({preset} "
                            f"denoiser, {model.objective.kind}) in {self.autoencoder.name}'s latent space: "
                            f"{self.sampler}, {self.steps} steps, {self.samples} sample(s) averaged, seed {self.seed}")

    def predict(self, batch: MethodBatch) -> MethodOutput:
        with torch.inference_mode():
            result = sample_sr(self.model, batch.lr.to(self.device), batch.ids, self.settings, keep_latents=True)
        return MethodOutput(result.mean.cpu(), sr_latents=result.latents)

    def hr_latents(self, batch: MethodBatch) -> torch.Tensor:
        with torch.inference_mode():
            return self.autoencoder.encode(batch.hr.to(self.device)).float().cpu()

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {**super().describe(), "folder": str(Path(self.model.folder).resolve()), "steps": self.steps,
                "sampler": self.sampler, "seed": self.seed, "objective": config.get("objective"),
                "denoiser_preset": config.get("denoiser", {}).get("preset"), "task": config.get("task"),
                "recorded_autoencoder": config.get("autoencoder")}


class FunctionMethod(Method):
    """Any callable ``lr (B, 1, H, W) on the HR grid -> (B, 1, H, W) in [0, 1]`` as a method.

    The simplest way to plug in another method (see the module docstring); the callable receives
    the LR batch on the CPU and may move it wherever it runs.
    """

    def __init__(self, name: str, function: Callable[[torch.Tensor], torch.Tensor], *, kind: str = "external",
                 description: str = "", inputs: Sequence[Path] = (), device: torch.device | None = None) -> None:
        if kind not in METHOD_KINDS:
            raise ValueError(f"kind must be one of {METHOD_KINDS}, got {kind!r}")
        self.name = name
        self.function = function
        self.kind = kind
        self.description = description or f"external method {name}"
        self.inputs = tuple(Path(p) for p in inputs)
        self.device = device

    def predict(self, batch: MethodBatch) -> MethodOutput:
        with torch.inference_mode():
            return MethodOutput(torch.as_tensor(self.function(batch.lr)).float().cpu())


# ----------------------------------------------------------------------------------- external networks
def _gray_to(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``(B, 1, h, w)`` gray to a network's input channels: 1 as is, 3 repeated (gray = R = G = B)."""
    return images if channels == 1 else images.repeat(1, channels, 1, 1)


def _to_gray(images: torch.Tensor) -> torch.Tensor:
    """A network's ``(B, C, H, W)`` output to ``(B, 1, H, W)`` gray: the mean over channels (RGB averaged)."""
    return images.mean(dim=1, keepdim=True)


class SpandrelSRNetwork(Method):
    """``sr:<weights file>``: an external SR network loaded by spandrel, run on the area-averaged LR.

    Args:
        name: the method's name.
        descriptor: spandrel's ``ImageModelDescriptor`` of the loaded network (on its device).
        weights: the weights file it came from.
        scale: the dataset task's scale (checked against the network's by :func:`_build_external`).
    """

    kind = "external"

    def __init__(self, name: str, descriptor, weights: Path, scale: int) -> None:
        import spandrel

        self.name = name
        self.descriptor = descriptor
        self.weights = Path(weights)
        self.scale = int(scale)
        self.inputs = (self.weights,)
        self.device = descriptor.device
        self.architecture = descriptor.architecture.name
        tags = f" ({', '.join(descriptor.tags)})" if descriptor.tags else ""
        colour = ("gray repeated to RGB, its RGB output averaged back to gray"
                  if descriptor.input_channels == 3 else "gray in, gray out")
        self.description = (f"external SR network {self.architecture} x{descriptor.scale}{tags} from "
                            f"{self.weights.name}, loaded by spandrel {spandrel.__version__}: the stored LR "
                            f"area-averaged down by {self.scale}, {colour}, clipped to [0, 1]")

    def predict(self, batch: MethodBatch) -> MethodOutput:
        small = downsample_lr(batch.lr, self.scale)
        image = _gray_to(small, self.descriptor.input_channels).to(self.device, torch.float32)
        out = self.descriptor(image)  # spandrel pads to the network's size needs, crops back, clips to [0, 1]
        return MethodOutput(_to_gray(out.float()).clamp(0.0, 1.0).cpu())

    def describe(self) -> dict[str, Any]:
        d = self.descriptor
        return {**super().describe(), "weights": str(self.weights.resolve()), "architecture": self.architecture,
                "network_scale": int(d.scale), "input_channels": int(d.input_channels),
                "output_channels": int(d.output_channels), "tags": list(d.tags)}


def _build_external(argument: str, context: BuildContext) -> Method:
    if not argument:
        raise InputError("method 'sr:' needs a weights file, e.g. sr:weights/RealESRGAN_x4plus.pth")
    path = Path(argument).expanduser()
    if not path.is_file():
        raise InputError("no such weights file (method sr:)", path)
    try:
        from spandrel import ImageModelDescriptor, ModelLoader
    except ImportError:
        raise InputError("method 'sr:' needs the PyPI package spandrel (pip install spandrel)") from None
    try:
        descriptor = ModelLoader(device=context.device).load_from_file(path)
    except Exception as exc:  # unsupported extension or architecture, damaged or foreign file
        raise InputError(f"spandrel cannot load an SR network from this file ({type(exc).__name__}: {exc})",
                         path) from None
    name = descriptor.architecture.name
    if not isinstance(descriptor, ImageModelDescriptor):
        raise InputError(f"this is a {name} network for {descriptor.purpose}, not an image-to-image SR network", path)
    task = context.dataset.task
    if int(descriptor.scale) != int(task.scale):
        raise InputError(f"this {name} network up-scales by {descriptor.scale} but the dataset holds task "
                         f"{task.name} (scale {task.scale}); use a x{task.scale} network", path)
    for what, channels in (("input", descriptor.input_channels), ("output", descriptor.output_channels)):
        if channels not in (1, 3):
            raise InputError(f"this {name} network has {channels} {what} channels; gray (1) or RGB (3) are supported",
                             path)
    height, width = context.dataset.size
    if height % task.scale or width % task.scale:
        raise InputError(f"the dataset grid {height}x{width} is not a multiple of the scale {task.scale}: the "
                         f"x{task.scale} network's output would not lie on the HR grid", context.dataset.folder)
    descriptor.to(torch.float32).eval()
    return SpandrelSRNetwork(f"sr:{argument}", descriptor, path, task.scale)


# ----------------------------------------------------------------------------------- building
def _no_argument(key: str, argument: str) -> None:
    if argument:
        raise InputError(f"method {key!r} takes no argument (got {key}:{argument})")


def _build_bicubic(argument: str, context: BuildContext) -> Method:
    _no_argument("bicubic", argument)
    return BicubicBaseline(context.dataset.task)


def _build_lanczos(argument: str, context: BuildContext) -> Method:
    _no_argument("lanczos", argument)
    return LanczosBaseline(context.dataset.task.scale)


def _spec_inputs(spec: str) -> list[Path]:
    """Local files or folders named by an autoencoder spec (protected from being written over)."""
    from LatentSRLib.autoencoders import parse_spec

    _, target = parse_spec(spec)
    paths = []
    for part in target.split("#", 1)[0].split(","):
        path = Path(part.strip()).expanduser()
        if part.strip() and path.exists():
            paths.append(path)
    return paths


def _check_grid(autoencoder, context: BuildContext, what: str) -> None:
    f = autoencoder.downsampling_factor
    height, width = context.dataset.size
    if height % f or width % f:
        raise InputError(f"{what}: the dataset grid {height}x{width} is not a multiple of the autoencoder's "
                         f"downsampling factor {f}", context.dataset.folder)


def _build_autoencoder(argument: str, context: BuildContext) -> Method:
    from LatentSRLib.autoencoders import load_autoencoder

    if not argument:
        raise InputError("method 'ae:' needs an autoencoder spec, e.g. ae:monai:runs/brain-ae/model")
    # float32 on every device: the same weights (and fingerprint) as an SR model's own autoencoder
    autoencoder = load_autoencoder(argument, device=context.device, dtype=torch.float32)
    autoencoder.deterministic = True
    _check_grid(autoencoder, context, f"ae:{argument}")
    return AutoencoderCeiling(f"ae:{argument}", autoencoder, inputs=_spec_inputs(argument))


def _same_task(a, b) -> bool:
    return (a.mode, a.scale, a.noise, a.noise_kind, a.options) == (b.mode, b.scale, b.noise, b.noise_kind, b.options)


def _build_model(argument: str, context: BuildContext) -> Method:
    from LatentSRLib.model.folder import load_sr_model

    if not argument:
        raise InputError("method 'model:' needs a model folder, e.g. model:runs/sr/model")
    model = load_sr_model(argument, device=context.device)
    dataset = context.dataset
    grid = tuple(int(v) for v in model.config.get("grid", {}).get("size", dataset.size))
    if grid != tuple(dataset.size):
        raise InputError(f"the model works on a {grid[0]}x{grid[1]} grid but the dataset's slices are "
                         f"{dataset.size[0]}x{dataset.size[1]}; prepare the dataset with --size {grid[0]}", argument)
    if not _same_task(model.task, dataset.task):
        raise InputError(f"the model was trained for task {model.task.name} (noise {model.task.noise}) but the dataset "
                         f"holds task {dataset.task.name} (noise {dataset.task.noise}): its LR inputs are not what "
                         "the model undoes", argument)
    _check_grid(model.autoencoder, context, f"model:{argument}")
    return SRModelMethod(f"model:{argument}", model, steps=context.steps, sampler=context.sampler,
                         samples=context.samples, seed=context.seed)


#: prefix -> builder(argument, context). The text before the first colon of a method name picks the
#: builder (a name without a colon is its own prefix); add entries to plug in other methods.
METHOD_BUILDERS: dict[str, Callable[[str, BuildContext], Method]] = {
    "bicubic": _build_bicubic,
    "lanczos": _build_lanczos,
    "ae": _build_autoencoder,
    "model": _build_model,
    "sr": _build_external,
}


def build_methods(names: Sequence[str], context: BuildContext) -> list[Method]:
    """Build every named method, then link each SR model to its autoencoder's ceiling.

    An SR model whose autoencoder (same weights, by SHA-256 of the network) is already listed as an
    ``ae:`` method uses it as its noise floor; otherwise ``ae:<the model's recorded spec>`` is
    appended, reusing the model's own loaded autoencoder.

    Raises:
        InputError: no method, a repeated name, an unknown prefix, or a method that cannot be built.
    """
    from LatentSRLib.autoencoders import weights_fingerprint

    names = [str(n).strip() for n in names]
    if not names:
        raise InputError("give at least one method (e.g. --methods \"['model:runs/sr/model','bicubic']\")")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"method(s) given twice: {', '.join(repeated)}")
    methods: list[Method] = []
    for name in names:
        key, _, argument = name.partition(":")
        builder = METHOD_BUILDERS.get(key.strip().lower())
        if builder is None:
            known = ", ".join(f"{k}:..." if k in ("ae", "model", "sr") else k for k in METHOD_BUILDERS)
            raise InputError(f"unknown method {name!r}; known: {known}")
        method = builder(argument.strip(), context)
        if method.name != name:
            method.name = name  # the user's string names the method everywhere
        methods.append(method)

    ceilings = {weights_fingerprint(m.autoencoder): m for m in methods if isinstance(m, AutoencoderCeiling)}
    for method in list(methods):
        if not isinstance(method, SRModelMethod):
            continue
        fingerprint = weights_fingerprint(method.autoencoder)
        ceiling = ceilings.get(fingerprint)
        if ceiling is None:
            spec = method.model.config.get("autoencoder", {}).get("spec") or method.autoencoder.spec
            name = f"ae:{spec}"
            while any(m.name == name for m in methods):
                name += "'"
            ceiling = AutoencoderCeiling(name, method.autoencoder, inputs=_spec_inputs(spec), added_for=method.name)
            ceilings[fingerprint] = ceiling
            methods.append(ceiling)
        method.noise_floor = ceiling.name
    return methods
