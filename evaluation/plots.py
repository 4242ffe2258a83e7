"""PNG plots of a Report: per-joint errors, error over time, acceleration error.

matplotlib is switched to the non-interactive Agg backend here (and only here), so
plotting works on headless machines and never opens windows.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
import numpy as np  # noqa: E402

from .report import Report  # noqa: E402

__all__ = ["plot_per_joint", "plot_error_over_time", "plot_accel_error", "write_plots"]


def _save(fig: "plt.Figure", path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_per_joint(report: Report, path: str | Path) -> Path:
    """Grouped bars of MPJPE and P-MPJPE per joint (over all evaluated frames)."""
    pj = report.per_joint()
    n = len(pj["names"])
    x = np.arange(n)
    nan = float("nan")
    a = [nan if v is None else v for v in pj["mpjpe"]]
    b = [nan if v is None else v for v in pj["p_mpjpe"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n + 2), 4))
    ax.bar(x - 0.2, a, 0.4, label="MPJPE")
    ax.bar(x + 0.2, b, 0.4, label="P-MPJPE")
    ax.set_xticks(x)
    ax.set_xticklabels(pj["names"], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"error ({report.unit})")
    ax.set_title("Per-joint error")
    ax.legend()
    return _save(fig, path)


def plot_error_over_time(report: Report, path: str | Path, max_sequences: int = 4) -> Path:
    """MPJPE and P-MPJPE against frame index for the first ``max_sequences`` sequences.

    Masked frames are NaN and show as gaps, so excluded frames are visible.
    """
    results = report.results[:max_sequences]
    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.4 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        t = np.arange(r.n_frames)
        ax.plot(t, r.frames["mpjpe"], label="MPJPE", lw=1)
        ax.plot(t, r.frames["p_mpjpe"], label="P-MPJPE", lw=1)
        ax.set_title(f"{r.seq_id} ({r.subject}, {r.action})", fontsize=9)
        ax.set_ylabel(report.unit)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("frame")
    return _save(fig, path)


def plot_accel_error(report: Report, path: str | Path, max_sequences: int = 4) -> Path:
    """Acceleration error against the triplet's centre frame, one line per sequence."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for r in report.results[:max_sequences]:
        v = r.frames["accel_error"]
        ax.plot(np.arange(1, len(v) + 1), v, lw=1, label=r.seq_id)
    ax.set_xlabel("centre frame")
    ax.set_ylabel(f"accel error ({report.unit}/frame$^2$)")
    ax.set_title("Acceleration error")
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def write_plots(report: Report, out_dir: str | Path, max_sequences: int = 4) -> dict[str, Path]:
    """Write per_joint.png, error_over_time.png and accel_error.png into ``out_dir``."""
    d = Path(out_dir)
    return {
        "per_joint": plot_per_joint(report, d / "per_joint.png"),
        "error_over_time": plot_error_over_time(report, d / "error_over_time.png",
                                                max_sequences),
        "accel_error": plot_accel_error(report, d / "accel_error.png", max_sequences),
    }
