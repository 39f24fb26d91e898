"""``latentsr package MODEL -o OUT``: a self-contained, movable copy of a trained SR model (or of a
fine-tuned tiny autoencoder, for shipping)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "package",
        help="make a self-contained copy of a trained model (its autoencoder inside, fp16 weights)",
        description="Copy a trained model folder into OUT with its MONAI autoencoder inside (referenced "
        "relatively, so OUT can be moved, shipped or loaded in Slicer), the denoiser weights stored in "
        "float16 unless --float32. Other autoencoders (medvae:, hub ids) are referenced by name. A fine-tuned "
        "tiny autoencoder folder (train_autoencoder --init_from tiny:...) is copied with its licence notice and "
        "its weights in float16 unless --float32.",
    )
    parser.add_argument("model", metavar="MODEL_FOLDER", help="a model folder written by the training bundle (an SR "
                        "model, or a fine-tuned tiny autoencoder's model/)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the packaged model folder")
    parser.add_argument("--float32", action="store_true", help="keep the weights in float32")
    parser.add_argument("--autoencoder-from", metavar="PACKAGED_MODEL",
                        help="refer to the autoencoder/ of this packaged model beside OUT instead of copying it "
                        "(models shipped together, same latent space); a model in a tiny: autoencoder's space may "
                        "also refer to that autoencoder's shipped folder (e.g. Training/autoencoders/taef2-brain)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from LatentSRLib.errors import InputError
    from LatentSRLib.io.atomic import check_output_folder
    from LatentSRLib.model.config import read_model_config

    source, target = Path(args.model).resolve(), Path(args.output).resolve()
    try:
        tiny = json.loads((source / "config.json").read_text()).get("format") == "latentsr.tiny_autoencoder"
    except (OSError, ValueError, AttributeError):
        tiny = False
    if not tiny:
        read_model_config(args.model)  # before torch is imported
    if target == source or source in target.parents:
        raise InputError("the output must not be the model folder or inside it", args.output)
    check_output_folder(target, [source], is_ours=lambda folder: (folder / "config.json").is_file(),
                        what="model folder")

    if tiny:
        if args.autoencoder_from:
            raise InputError("--autoencoder-from is for SR models; this is an autoencoder", args.model)
        from LatentSRLib.autoencoders.diffusers_tiny import package_tiny_autoencoder

        folder = package_tiny_autoencoder(source, target, half=not args.float32)
    else:
        from LatentSRLib.model.folder import package_sr_model

        folder = package_sr_model(source, target, half=not args.float32, share_autoencoder_with=args.autoencoder_from)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"packaged {args.model} -> {folder} ({size / 2**20:.1f} MB)")
    return 0
