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
    """PNG bar chart of mAP and R@1 per method and dimension."""
    plt = _pyplot()
    labels = [f"{r['method']}\n{r['dim']}-d" for r in rows]
    xs = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5), dpi=100)
    ax.bar(xs - 0.2, [100 * r["mAP"] for r in rows], 0.4, label="mAP")
    ax.bar(xs + 0.2, [100 * r["R@1"] for r in rows], 0.4, label="R@1")
    ax.set_xticks(xs, labels, fontsize=7, rotation=45, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title(title or "retrieval quality by method and dimension")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
