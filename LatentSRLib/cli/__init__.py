"""The ``latentsr`` command: one subcommand per module of this package.

Each subcommand module exposes ``register(subparsers)`` (adds its parser and sets ``run``).
User errors (:class:`LatentSRError`) become one line on stderr and exit status 2; warnings are
printed as one line each.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from LatentSRLib import __version__
from LatentSRLib.errors import LatentSRError

#: the subcommand modules, in the order ``--help`` lists them (imported by :func:`build_parser`, inside
#: :func:`main`'s error handling: a Ctrl-C even during start-up ends in one line, not a traceback)
SUBCOMMANDS = ("demo", "info", "degrade", "screen", "prepare", "sr", "calibrate", "package")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``latentsr sr: error: argument --steps: ...``)
    with a pointer to ``--help`` on the same line, instead of argparse's usage block."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="latentsr",
        description="Latent-diffusion super-resolution for medical images.",
    )
    parser.add_argument("--version", action="version", version=f"latentsr {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"latentsr: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    previous = warnings.showwarning
    warnings.showwarning = _print_warning
    command = "latentsr"
    try:
        args = build_parser().parse_args(argv)
        command = f"latentsr {args.command}"
        return int(args.run(args) or 0)
    except LatentSRError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
