"""``tiny:`` — the TAESD family (TAESD, TAESDXL, TAEF1, TAEF2...) through diffusers' ``AutoencoderTiny``.

Targets:
    * a hub id or a ``save_pretrained`` folder (``config.json`` + weights), ``#subfolder`` allowed;
    * ``path/to/x_encoder.pth,path/to/x_decoder.pth``: the raw state dicts the TAESD repository
      publishes (mapped by :mod:`.taesd_weights`), ``.pt``/``.safetensors`` too;
    * a folder holding one such ``*encoder.*`` / ``*decoder.*`` pair;
* a folder written by :func:`save_tiny_autoencoder` (a fine-tuned pair: the two raw ``.pth`` files,
  ``config.json`` with ``"format": "latentsr.tiny_autoencoder"`` naming them and recording where the
  weights came from, the source weights' licence notice, optionally ``latent_stats.json``).

The networks take RGB in ``[0, 1]`` (diffusers' wrapper expects ``[-1, 1]`` and converts); they
have no posterior, so encoding is deterministic whatever :attr:`Autoencoder.deterministic` says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from LatentSRLib.autoencoders.base import Autoencoder, channels_to_gray, gray_to_channels
from LatentSRLib.autoencoders.latent_stats import STATS_FILE_NAME
from LatentSRLib.autoencoders.sources import first_line, load_with_offline_fallback, resolve_location, spec_error, split_subfolder
from LatentSRLib.io.atomic import atomic_path

__all__ = ["TINY_FORMAT", "TinyAutoencoder", "load_tiny", "package_tiny_autoencoder", "save_tiny_autoencoder", "tiny_decode",
           "tiny_encode"]

_WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
#: ``config.json`` "format" of a folder written by :func:`save_tiny_autoencoder`
TINY_FORMAT = "latentsr.tiny_autoencoder"
_TINY_VERSION = 1
#: the record beside a derived model saved in diffusers' own format (whose config.json is diffusers')
_DIFFUSERS_RECORD = "latentsr.json"
#: licence files copied from the source weights' folder into a derived model folder
NOTICE_PATTERNS = ("LICENSE*", "LICENCE*", "COPYING*", "NOTICE*")
# The TAESD family (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2...) is published under the MIT licence at
# https://github.com/madebyollin/taesd; written beside derived weights when the source folder has
# no licence file of its own.
TAESD_MIT_NOTICE = """\
The weights in this folder are derived (fine-tuned) from a TAESD-family tiny autoencoder
(https://github.com/madebyollin/taesd), published under the MIT License:

MIT License

Copyright (c) 2023 Ollin Boer Bohan

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def tiny_encode(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` gray in ``[0, 1]`` -> an ``AutoencoderTiny``'s raw latents (differentiable).

    The one place the TAESD family's input convention is applied (gray repeated to its input
    channels; diffusers' wrapper takes ``[-1, 1]`` and maps back to TAESD's ``[0, 1]``)."""
    x = gray_to_channels(images * 2.0 - 1.0, network.config.in_channels)
    return network.encode(x).latents


def tiny_decode(network: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Raw latents -> ``(B, 1, H, W)`` gray, roughly in ``[0, 1]`` (not clamped; differentiable)."""
    y = network.decode(latents).sample
    return (channels_to_gray(y) + 1.0) / 2.0


class TinyAutoencoder(Autoencoder):
    """A diffusers ``AutoencoderTiny`` behind the :class:`Autoencoder` interface.

    Native latents are the encoder's raw output (no ``scale_latents`` byte packing).
    """

    def _encode_native(self, images: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        return tiny_encode(self.network, images)

    def _decode_native(self, latents: torch.Tensor) -> torch.Tensor:
        return tiny_decode(self.network, latents)


def _role(path: Path) -> str | None:
    stem = path.name.lower()
    return "encoder" if "encoder" in stem else "decoder" if "decoder" in stem else None


def _pair_in_folder(spec: str, folder: Path) -> tuple[Path, Path] | None:
    """The one ``<prefix>encoder.<ext>`` / ``<prefix>decoder.<ext>`` pair in ``folder``, if any."""
    pairs = []
    for encoder in sorted(folder.iterdir()):
        if encoder.suffix in _WEIGHT_SUFFIXES and encoder.stem.lower().endswith("encoder"):
            decoder = encoder.with_name(encoder.stem[: -len("encoder")] + "decoder" + encoder.suffix)
            if decoder.is_file():
                pairs.append((encoder, decoder))
    if len(pairs) > 1:
        raise spec_error(spec, f"{folder} holds several encoder/decoder pairs ({', '.join(p[0].name for p in pairs)}); "
                               "name the two files: tiny:ENCODER,DECODER")
    return pairs[0] if pairs else None


def _pair_name(encoder: Path) -> str:
    stem = encoder.stem
    for tail in ("_encoder", "-encoder", "encoder"):
        if stem.lower().endswith(tail):
            return stem[: -len(tail)] or stem
    return stem


def _load_pair(spec: str, encoder_path: Path, decoder_path: Path, name: str | None = None) -> TinyAutoencoder:
    from LatentSRLib.autoencoders.taesd_weights import build_tiny_autoencoder, read_state_dict

    weights = {}
    for role, path in (("encoder", encoder_path), ("decoder", decoder_path)):
        if not path.is_file():
            raise spec_error(spec, f"no such {role} file: {path}")
        try:
            weights[role] = read_state_dict(path)
        except Exception as exc:  # pickle, zip and safetensors errors come in many types
            raise spec_error(spec, f"cannot read the {role} weights {path.name}: {first_line(exc)}") from None
    try:
        model, layout = build_tiny_autoencoder(weights["encoder"], weights["decoder"])
    except ValueError as exc:
        raise spec_error(spec, f"not a TAESD-family encoder/decoder pair: {exc}") from None
    return TinyAutoencoder(
        spec,
        model,
        name=name or _pair_name(encoder_path),
        latent_channels=layout.latent_channels,
        downsampling_factor=layout.downsampling_factor,
        stochastic=False,
        stats_path=encoder_path.parent / STATS_FILE_NAME,
        info={
            "backend": "diffusers.AutoencoderTiny (raw TAESD weights)",
            "input_range": [0.0, 1.0],
            "in_channels": layout.in_channels,
            "encoder_weights": str(encoder_path),
            "decoder_weights": str(decoder_path),
            "pool_blocks": {"encoder": sorted(layout.encoder_pools), "decoder": sorted(layout.decoder_pools)},
            "config": layout.diffusers_config(),
        },
    )


def _wrap_pretrained(spec: str, model, name: str, stats_path: Path | None) -> TinyAutoencoder:
    config = model.config
    return TinyAutoencoder(
        spec,
        model,
        name=name,
        latent_channels=config.latent_channels,
        downsampling_factor=2 ** (len(config.num_encoder_blocks) - 1),
        stochastic=False,
        stats_path=stats_path,
        info={
            "backend": "diffusers.AutoencoderTiny",
            "input_range": [0.0, 1.0],
            "in_channels": config.in_channels,
            "scaling_factor": getattr(config, "scaling_factor", None),  # recorded, not applied
            "shift_factor": getattr(config, "shift_factor", None),
        },
    )


def load_tiny(spec: str, target: str) -> TinyAutoencoder:
    """Load ``tiny:<hub id | folder[#subfolder] | encoder,decoder | folder with a pair>`` (float32, CPU)."""
    from diffusers import AutoencoderTiny

    if "," in target:
        first, _, second = (part.strip() for part in target.partition(","))
        paths = [resolve_location(spec, first), resolve_location(spec, second)]
        if not all(isinstance(p, Path) and p.is_file() for p in paths):
            raise spec_error(spec, "tiny:ENCODER,DECODER needs two weight files")
        encoder, decoder = paths
        if _role(encoder) == "decoder" and _role(decoder) == "encoder":  # given the other way round
            encoder, decoder = decoder, encoder
        return _load_pair(spec, encoder, decoder)

    location, subfolder = split_subfolder(target)
    where = resolve_location(spec, location)
    if isinstance(where, str):
        model = load_with_offline_fallback(
            spec, lambda offline: AutoencoderTiny.from_pretrained(where, subfolder=subfolder, local_files_only=offline)
        )
        return _wrap_pretrained(spec, model, where + (f"#{subfolder}" if subfolder else ""), None)
    if where.is_file():
        raise spec_error(spec, f"{where} is one file; give the encoder and the decoder: tiny:ENCODER,DECODER")
    folder = where / subfolder if subfolder else where
    if not folder.is_dir():
        raise spec_error(spec, f"not a folder: {folder}")
    if (folder / "config.json").is_file() and _is_ours(folder / "config.json"):
        return _load_saved(spec, folder)
    if (folder / "config.json").is_file():
        try:
            model = AutoencoderTiny.from_pretrained(str(where), subfolder=subfolder, local_files_only=True)
        except Exception as exc:  # diffusers reports missing/corrupt weights with several types
            raise spec_error(spec, f"cannot load the AutoencoderTiny in {folder}: {first_line(exc)}") from None
        autoencoder = _wrap_pretrained(spec, model, folder.name, folder / STATS_FILE_NAME)
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a derived model's record, when there is one
            record = json.loads((folder / _DIFFUSERS_RECORD).read_text())
            autoencoder.info.update({"format": TINY_FORMAT, "derived_from": record.get("derived_from"),
                                     "metadata": record.get("metadata", {})})
        return autoencoder
    pair = _pair_in_folder(spec, folder)
    if pair is None:
        raise spec_error(spec, f"no AutoencoderTiny config.json and no *_encoder/*_decoder weight pair in {folder}")
    return _load_pair(spec, *pair)


# ---- fine-tuned pairs: the folder format ----------------------------------------------------------
def _is_ours(config_path: Path) -> bool:
    try:
        document = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("format") == TINY_FORMAT


def _load_saved(spec: str, folder: Path) -> TinyAutoencoder:
    config_path = folder / "config.json"
    try:
        document = json.loads(config_path.read_text())
        names = {role: str(document[role]) for role in ("encoder", "decoder")}
        if any(Path(n).name != n for n in names.values()):
            raise ValueError("encoder/decoder must be file names inside the folder")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise spec_error(spec, f"unusable {config_path.name}: {first_line(exc)}") from None
    autoencoder = _load_pair(spec, folder / names["encoder"], folder / names["decoder"], folder.resolve().name)
    autoencoder.info.update({"format": TINY_FORMAT, "derived_from": document.get("derived_from"),
                             "metadata": document.get("metadata", {})})
    return autoencoder


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_notices(source_folder: Path | None, folder: Path) -> tuple[list[str], str]:
    """Copy the source weights' licence files into ``folder``; write the TAESD MIT notice when there
    are none. Returns the notice files and the licence in words."""
    found = [] if source_folder is None else sorted(
        {p for pattern in NOTICE_PATTERNS for p in source_folder.glob(pattern) if p.is_file()})
    for path in found:
        if path.resolve() != (folder / path.name).resolve():
            with atomic_path(folder / path.name) as tmp:
                shutil.copyfile(path, tmp)
    if not found:
        with atomic_path(folder / "LICENSE") as tmp:
            tmp.write_text(TAESD_MIT_NOTICE)
    names = [p.name for p in found] or ["LICENSE"]
    if names == ["LICENSE"] and (folder / "LICENSE").read_text() == TAESD_MIT_NOTICE:
        return names, "MIT"
    return names, f"see {', '.join(names)} (copied from the source weights' folder)"


def save_tiny_autoencoder(
    network: nn.Module,
    folder: str | os.PathLike,
    source: TinyAutoencoder,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save an ``AutoencoderTiny`` derived from ``source`` (e.g. fine-tuned) so that ``tiny:<folder>`` loads it.

    For a ``source`` loaded from raw TAESD weights (``ENC.pth,DEC.pth`` or a folder with a pair) the
    folder gets ``<name>_encoder.pth`` / ``<name>_decoder.pth`` with exactly the source files' keys
    (drop-in replacements for them, e.g. in the TAESD repository's own code), the source folder's
    licence files (else the TAESD MIT notice, ``LICENSE``) and ``config.json``:
    ``{"format": "latentsr.tiny_autoencoder", "version", "encoder", "decoder", "architecture",
    "derived_from": {"name", "spec", "files", "sha256", "licence", "notice"}, "metadata"}``.
    A ``source`` in diffusers' format (hub id, ``save_pretrained`` folder) is saved with
    ``save_pretrained`` (its ``config.json``), with the same record in ``latentsr.json``.

    The weights are written first and ``config.json`` last, each atomically, and checked by
    rebuilding the network from the written state dicts, so a folder that would not load is refused
    here. Returns the folder.
    """
    from LatentSRLib.autoencoders.taesd_weights import build_tiny_autoencoder, raw_state_dicts, read_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    network = network.to("cpu").float()
    paths = [source.info.get("encoder_weights"), source.info.get("decoder_weights")]
    raw = all(paths)
    if raw:
        encoder_path, decoder_path = (Path(p) for p in paths)
        source_folder: Path | None = encoder_path.parent
    else:
        location = Path(source.spec.partition(":")[2].partition("#")[0]).expanduser()
        source_folder = location if location.is_dir() else None
    record: dict[str, Any] = {"name": source.name, "spec": source.spec}
    previous = source.info.get("derived_from") if source.info.get("format") == TINY_FORMAT else None
    if not raw:  # diffusers' format: no raw pair to mirror
        network.save_pretrained(str(folder))
        record["notice"], record["licence"] = _write_notices(source_folder, folder)
        record["summary"] = (previous or {}).get("summary") or f"derived from {source.name} ({record['licence']})"
        if previous:
            record["derived_from"] = previous
        document = {"format": TINY_FORMAT, "version": _TINY_VERSION, "diffusers": "config.json",
                    "derived_from": record, "metadata": json.loads(json.dumps(dict(metadata or {})))}
        with atomic_path(folder / _DIFFUSERS_RECORD) as tmp:
            tmp.write_text(json.dumps(document, indent=2) + "\n")
        return folder
    encoder, decoder = raw_state_dicts(network, read_state_dict(encoder_path), read_state_dict(decoder_path))
    rebuilt, layout = build_tiny_autoencoder(encoder, decoder)  # the saved files load, or this raises
    ours = network.state_dict()
    if any(not torch.equal(tensor, ours[key].detach().cpu()) for key, tensor in rebuilt.state_dict().items()):
        raise ValueError("the raw state dicts do not rebuild the network (mapping error)")
    name = _pair_name(encoder_path)
    files = {"encoder": f"{name}_encoder.pth", "decoder": f"{name}_decoder.pth"}
    for role, state in (("encoder", encoder), ("decoder", decoder)):
        with atomic_path(folder / files[role]) as tmp:
            torch.save(state, tmp)
    record.update({
        "files": {"encoder": encoder_path.name, "decoder": decoder_path.name},
        "sha256": {"encoder": file_sha256(encoder_path), "decoder": file_sha256(decoder_path)},
    })
    record["notice"], record["licence"] = _write_notices(source_folder, folder)
    # fine-tuning a fine-tuned model keeps the chain back to the published weights
    record["summary"] = (previous or {}).get("summary") or f"derived from {name.upper()} ({record['licence']})"
    if previous:
        record["derived_from"] = previous
    document = {
        "format": TINY_FORMAT,
        "version": _TINY_VERSION,
        "encoder": files["encoder"],
        "decoder": files["decoder"],
        "architecture": {**layout.diffusers_config(), "pool_blocks": {"encoder": sorted(layout.encoder_pools),
                                                                      "decoder": sorted(layout.decoder_pools)}},
        "derived_from": record,
        "metadata": json.loads(json.dumps(dict(metadata or {}))),
    }
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
    return folder


def package_tiny_autoencoder(source: str | os.PathLike, target: str | os.PathLike, *, half: bool = True) -> Path:
    """Copy a fine-tuned tiny autoencoder folder (:func:`save_tiny_autoencoder`'s raw-pair format) to
    ``target`` for shipping: its licence notices, latent statistics and ``config.json`` kept, the
    weights stored as float16 with ``half`` (the TAESD releases' own precision; cast back to float32 on
    loading, which measured lossless: 0.01 dB on real brain slices) and ``config.json`` recording
    ``weights_dtype``. Written atomically; the copy is loaded once before it is swapped in.

    Raises:
        InputError: ``source`` is not such a folder, or the copy does not load.
    """
    from LatentSRLib.autoencoders.taesd_weights import read_state_dict
    from LatentSRLib.io.atomic import atomic_directory

    source, target = Path(source), Path(target)
    spec = f"tiny:{source}"
    if not (source / "config.json").is_file() or not _is_ours(source / "config.json"):
        raise spec_error(spec, f"not a fine-tuned tiny autoencoder folder ({TINY_FORMAT} config.json)")
    document = json.loads((source / "config.json").read_text())
    if "diffusers" in document:
        raise spec_error(spec, "a diffusers-format folder; package the raw-pair format (TAESD .pth files)")
    _load_saved(spec, source)  # the source itself loads
    with atomic_directory(target) as staging:
        for path in sorted(source.iterdir()):
            if path.name in (document["encoder"], document["decoder"]):
                state = read_state_dict(path)
                if half:
                    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
                torch.save(state, staging / path.name)
            elif path.is_file():
                shutil.copy2(path, staging / path.name)
        document["weights_dtype"] = "float16" if half else "float32"
        (staging / "config.json").write_text(json.dumps(document, indent=2) + "\n")
        _load_saved(f"tiny:{target}", staging)
    return target
