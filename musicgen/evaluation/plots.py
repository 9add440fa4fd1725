"""Figures of evaluate: NLL by position (moving average, L marked) and drift per window."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_savefig
from .likelihood import PositionNLL

DRIFT_PLOT_KEYS: tuple[str, ...] = ("H4", "GS", "note_density", "empty_bar_rate", "skipped_share")


def save_figure(fig, path: str | Path, dpi: int) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    try:
        atomic_savefig(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def smoothed_curve(result: PositionNLL, window: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(positions, moving-average NLL) over `window` positions, weighted by the number of targets.

    Weighting by counts matters past the shortest songs' ends, where few targets remain; positions with no
    target in the window are NaN (a gap in the plot, not a fake value).
    """
    kernel = np.ones(max(1, int(window)))
    s = np.convolve(result.nll_sum, kernel, mode="same")
    c = np.convolve(result.count.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(c > 0, s / np.maximum(c, 1e-12), np.nan)
    return np.arange(len(curve)), curve


def plot_nll_by_position(curves: Mapping[str, PositionNLL], train_len: int, path: str | Path, smooth: int = 64,
                         title: str = "NLL by position", baseline: float | None = None) -> Path:
    """One line per curve (moving average over `smooth` positions), the training length L marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, result in curves.items():
        x, y = smoothed_curve(result, smooth)
        ax.plot(x, y, label=name, linewidth=1.4)
    ax.axvline(train_len, color="black", linestyle="--", linewidth=1)
    ax.text(train_len, 1.0, f" L={train_len} (training length)", transform=ax.get_xaxis_transform(),
            va="top", ha="left", fontsize=8)
    if baseline is not None and math.isfinite(baseline):
        ax.axhline(baseline, color="grey", linestyle=":", linewidth=1, label=f"unigram ({baseline:.2f})")
    ax.set_xlabel("token position from the song start")
    ax.set_ylabel(f"NLL (nats/token, moving average over {smooth})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def plot_drift(reports: Mapping[str, Any], path: str | Path,
               keys: Sequence[str] = DRIFT_PLOT_KEYS) -> Path:
    """A panel per statistic, x = window start token, one line per report (mean over its samples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, report in reports.items():
            means = report.window_means()
            x = [m.get("start_token", i * report.window) for i, m in enumerate(means)]
            ax.plot(x, [m.get(key, float("nan")) for m in means], marker="o", markersize=3, label=name)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("window start (token)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path, dpi=110)
