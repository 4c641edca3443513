"""Time training a projection head on cached features (wall and CPU seconds), and how it scores.

    python scripts/bench_head.py [TRAIN_FOLDER [VAL_FOLDER]] [--labels folders|none] [--dim 128]

Defaults to ../shared/data/clothing-small (train, validation). Features come from the feature
cache (computed once if missing, with one augmented view of each photo for --labels none); only
the training itself is timed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from imgembed.config import BackboneCfg, EmbedCfg, ReaderCfg
from imgembed.learn.folders import load_training_features
from imgembed.learn.train import TrainCfg, train_head
from imgembed.model.embedder import Embedder

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "clothing-small"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("train", nargs="?", default=str(DATA / "train"))
    ap.add_argument("val", nargs="?", default=str(DATA / "validation"))
    ap.add_argument("--labels", default="folders", choices=["folders", "none"])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=TrainCfg.epochs)
    a = ap.parse_args()
    emb = Embedder.from_cfg(BackboneCfg())
    cfg = TrainCfg(dim=a.dim, labels=a.labels, epochs=a.epochs)
    x, y, _, views = load_training_features(a.train, a.labels, emb, ReaderCfg(), EmbedCfg(),
                                            views=cfg.views if a.labels == "none" else 0)
    xv, yv, _, _ = load_training_features(a.val, a.labels, emb, ReaderCfg(), EmbedCfg())
    print(f"{len(x)} training + {len(xv)} validation photos, {x.shape[1]}-d features, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    wall, cpu = time.perf_counter(), time.process_time()
    r = train_head(x, y, cfg, xv, yv, views=views)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    epochs = len(r.history) - 1
    print(f"{a.labels}: {epochs} epochs (kept {r.best_epoch}) in {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"({wall / max(epochs, 1):.2f} s/epoch); {r.val_metric} {r.history[0]['val']:.4f} -> "
          f"{r.history[r.best_epoch]['val']:.4f}")


if __name__ == "__main__":
    main()
