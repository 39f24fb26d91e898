"""How every evaluation figure is made and written: a matplotlib figure on its own Agg canvas (no
pyplot, no global backend state touched), saved atomically as PNG."""

from __future__ import annotations

import os
from pathlib import Path

from LatentSRLib.io.atomic import atomic_path

__all__ = ["new_figure", "save_png"]


def new_figure(width: float, height: float):
    """A ``Figure`` of ``width`` x ``height`` inches, constrained layout, rendered by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike, dpi: int) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (an interrupted write leaves the old file or none)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return target
