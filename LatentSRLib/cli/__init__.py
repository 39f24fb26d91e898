"""The ``latentsr`` command: one subcommand per module of this package.

Each subcommand module exposes ``register(subparsers)`` (adds its parser and sets ``run``).
User errors (:class:`LatentSRError`) become one line on stderr and exit status 2; warnings are
printed as one line each.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from LatentSRLib import __version__
from LatentSRLib.errors import LatentSRError
from LatentSRLib.cli import degrade, demo, info, package, prepare, screen, sr

SUBCOMMANDS = (demo, info, degrade, screen, prepare, sr, package)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentsr",
        description="Latent-diffusion super-resolution for medical images.",
    )
    parser.add_argument("--version", action="version", version=f"latentsr {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"latentsr: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _print_warning
    try:
        return int(args.run(args) or 0)
    except LatentSRError as exc:
        print(f"latentsr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"latentsr {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
