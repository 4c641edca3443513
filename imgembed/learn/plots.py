"""Charts written beside the artefacts: a head's training curve and the ``imgembed eval`` comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curve(result, path: str | Path, title: str = "") -> Path:
    """PNG of training loss and validation score per epoch, the kept epoch marked."""
    plt = _pyplot()
    h = result.history
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ep = [r["epoch"] for r in h if r["loss"] is not None]
    ax.plot(ep, [r["loss"] for r in h if r["loss"] is not None], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot([r["epoch"] for r in h], [r["val"] for r in h], color="tab:orange", marker=".", label=result.val_metric)
    ax2.axvline(result.best_epoch, color="grey", linestyle="--", linewidth=1)
    ax2.set_ylabel(f"{result.val_metric} (kept epoch {result.best_epoch})", color="tab:orange")
    ax.set_title(title or "projection head training")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_comparison(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """PNG of mAP (with its 95% interval) and R@1 per row, one horizontal pair of bars per row,
    the values printed on the bars and the full row names beside them."""
    plt = _pyplot()
    labels = [f"{r['method']}, {r['dim']}-d" for r in rows]
    ys = np.arange(len(rows))[::-1]
    height = 0.38
    width = 7.5 + 0.075 * max(len(s) for s in labels)
    fig, ax = plt.subplots(figsize=(width, 1.1 + 0.42 * len(rows)), dpi=100)
    m = np.array([100 * r["mAP"] for r in rows])
    err = None
    if all("mAP_lo" in r for r in rows):
        err = np.array([[100 * (r["mAP"] - r["mAP_lo"]) for r in rows], [100 * (r["mAP_hi"] - r["mAP"]) for r in rows]])
    ax.barh(ys + height / 2, m, height, xerr=err, capsize=2, label="mAP (95% interval)", color="tab:blue")
    r1 = np.array([100 * r["R@1"] for r in rows])
    ax.barh(ys - height / 2, r1, height, label="R@1", color="tab:orange")
    for y, a, b in zip(ys, m, r1):
        ax.text(1, y + height / 2, f"{a:.1f}", va="center", ha="left", fontsize=8, color="white", weight="bold")
        ax.text(1, y - height / 2, f"{b:.1f}", va="center", ha="left", fontsize=8, color="black")
    ax.set_yticks(ys, labels, fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_xlabel("%")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "retrieval quality by method and dimension")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
