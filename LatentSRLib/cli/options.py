"""Argument types and the progress bar shared by the subcommands (light: no torch).

A bad number is refused by argparse in one line naming the option, before anything is read.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Iterator

__all__ = ["fraction", "non_negative_float", "non_negative_int", "positive_int", "progress_bar"]


def _integer(text: str, minimum: int, requirement: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{requirement}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _integer(text, 1, "must be a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _integer(text, 0, "must be 0 or more")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (not NaN, not Inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1, got {text}")
    return value


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[[float, str], None]]:
    """Yield ``advance(fraction, message)`` for a percentage bar on stderr.

    The bar appears at the first call (so a refusal before any work prints only its error line)
    and is erased if the work fails, leaving the error as the one line the user reads.
    """
    from tqdm.auto import tqdm

    bar = None

    def advance(done: float, message: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=100, desc=description, unit="%", file=sys.stderr,
                       bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]")
        bar.n = round(100 * done, 1)
        bar.set_postfix_str(message)
        bar.refresh()

    try:
        yield advance
    except BaseException:
        if bar is not None:
            bar.leave = False
        raise
    finally:
        if bar is not None:
            bar.close()
