"""Does the autoencoder ceiling predict SR quality? Ordinary least squares across (method x dataset) points.

The paper (Fig. 3, Table S11) regresses each method's SR PSNR on the PSNR of its VAE's
encode-then-decode reconstruction (the "AE ceiling"), one point per method and dataset. Here:

* points are paired by key (rule 2 (docs/science.md)): ``ae_ceiling[key]`` with ``sr[key]``, keys such as
  ``("MedVAE", "BraTS")``; two sets of different keys are refused;
* Pearson r and its two-sided p-value (:func:`scipy.stats.pearsonr`, exact under bivariate
  normality), R² = r², and the OLS line ``sr = slope * ae + intercept`` with standard errors
  (:func:`scipy.stats.linregress`);
* ``n`` is the number of POINTS, not of images: with the paper's six points the test has 4 degrees
  of freedom. Its own numbers (Table S11 ceilings, Table 2 SR PSNRs) give r = 0.816, p = 0.048,
  not the "p < 0.001" printed with Fig. 3, which is why the p-value is always computed and shown
  with n. Fewer than 3 points are refused (two points always lie on a line: r = +-1, no test).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from LatentSRLib.metrics.plotting import new_figure, save_png
from LatentSRLib.metrics.statistics import pair_by_id

__all__ = ["CeilingRegression", "ceiling_regression", "save_ceiling_regression_figure"]


def _label(key: Hashable) -> str:
    return " / ".join(str(part) for part in key) if isinstance(key, tuple) else str(key)


@dataclass(frozen=True)
class CeilingRegression:
    """OLS of SR quality (``y``) on the AE ceiling (``x``) over ``n`` (method x dataset) points.

    ``keys``/``labels``/``x``/``y`` are per point, in the same (sorted key) order.
    """

    n: int
    pearson_r: float
    r_squared: float
    p_value: float
    slope: float
    intercept: float
    slope_stderr: float
    intercept_stderr: float
    keys: list[Hashable] = field(repr=False)
    labels: list[str] = field(repr=False)
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)

    def predict(self, x) -> np.ndarray:
        """The fitted line at ``x``."""
        return self.slope * np.asarray(x, dtype=np.float64) + self.intercept

    def confidence_band(self, x, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise confidence band of the fitted MEAN at ``x`` (t with n - 2 df), as in the paper's Fig. 3.

        ``yhat +- t * s * sqrt(1/n + (x - mean x)**2 / Sxx)``, ``s`` the residual SD.
        """
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
        x = np.asarray(x, dtype=np.float64)
        residuals = self.y - self.predict(self.x)
        s = np.sqrt(np.sum(residuals**2) / (self.n - 2))
        sxx = np.sum((self.x - self.x.mean()) ** 2)
        half = stats.t.ppf(0.5 + confidence / 2, self.n - 2) * s * np.sqrt(1 / self.n + (x - self.x.mean()) ** 2 / sxx)
        fit = self.predict(x)
        return fit - half, fit + half

    def to_dict(self, per_point: bool = False) -> dict[str, Any]:
        """Summary as a JSON-ready dict; ``per_point`` adds labels, x and y."""
        out: dict[str, Any] = {
            "n": self.n,
            "pearson_r": self.pearson_r,
            "r_squared": self.r_squared,
            "p_value": self.p_value,
            "slope": self.slope,
            "intercept": self.intercept,
            "slope_stderr": self.slope_stderr,
            "intercept_stderr": self.intercept_stderr,
        }
        if per_point:
            out.update(labels=list(self.labels), x=self.x.tolist(), y=self.y.tolist())
        return out


def ceiling_regression(ae_ceiling: Mapping[Hashable, float], sr: Mapping[Hashable, float]) -> CeilingRegression:
    """Regress SR quality on the AE ceiling, one point per key (e.g. ``(method, dataset)``).

    Args:
        ae_ceiling: ``{key: encode-then-decode PSNR of the method's VAE on that dataset}``.
        sr: ``{key: the method's SR PSNR on that dataset}``, the same keys (both against the TRUE images).

    Returns:
        :class:`CeilingRegression`.

    Raises:
        ValueError: different key sets, fewer than 3 points, non-finite values, or no spread in
            either variable (r undefined).
    """
    keys, x, y = pair_by_id(ae_ceiling, sr)
    if x.size < 3:
        raise ValueError(f"a regression needs at least 3 (method x dataset) points, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("ceiling and SR values must be finite")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("all ceiling values or all SR values are equal: the correlation is undefined")
    pearson = stats.pearsonr(x, y)
    fit = stats.linregress(x, y)
    r = float(pearson.statistic)
    return CeilingRegression(
        n=int(x.size),
        pearson_r=r,
        r_squared=r * r,
        p_value=float(pearson.pvalue),
        slope=float(fit.slope),
        intercept=float(fit.intercept),
        slope_stderr=float(fit.stderr),
        intercept_stderr=float(fit.intercept_stderr),
        keys=list(keys),
        labels=[_label(k) for k in keys],
        x=x,
        y=y,
    )


def save_ceiling_regression_figure(
    path: str | os.PathLike,
    result: CeilingRegression,
    *,
    confidence: float = 0.95,
    xlabel: str = "AE ceiling PSNR (dB)",
    ylabel: str = "SR PSNR (dB)",
    dpi: int = 100,
) -> Path:
    """Scatter of the points (each labelled), the fitted line and its confidence band, written atomically as PNG.

    The title states r, R², p and n (the number of points).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fig = new_figure(6, 4.5)
    ax = fig.add_subplot()
    margin = 0.05 * np.ptp(result.x)
    grid = np.linspace(result.x.min() - margin, result.x.max() + margin, 200)
    low, high = result.confidence_band(grid, confidence)
    band_label = f"{100 * confidence:g}% CI of the fit"
    ax.fill_between(grid, low, high, color="#9ecae1", alpha=0.5, linewidth=0, label=band_label)
    ax.plot(grid, result.predict(grid), color="#08519c", label=f"OLS: y = {result.slope:.3f} x {result.intercept:+.2f}")
    ax.scatter(result.x, result.y, color="#d62728", zorder=3)
    for label, xi, yi in zip(result.labels, result.x, result.y, strict=True):
        ax.annotate(label, (xi, yi), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(
        f"r = {result.pearson_r:.3f}, R² = {result.r_squared:.3f}, p = {result.p_value:.3g}, n = {result.n} points"
    )
    ax.legend(fontsize=8, loc="best")
    return save_png(fig, path, dpi)
