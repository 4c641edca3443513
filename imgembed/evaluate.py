"""``imgembed eval``: class-level retrieval quality, sub-folder names as labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from imgembed import fs
from imgembed.config import EmbedCfg, ReaderCfg
from imgembed.embedder import Embedder
from imgembed.features import extract_features
from imgembed.metrics import RetrievalMetrics, retrieval_metrics


@dataclass
class LabelledFeatures:
    """Raw backbone features of a query set and a gallery, with labels."""

    q_feats: np.ndarray  # float32 (Q, D)
    g_feats: np.ndarray  # float32 (G, D)
    q_labels: np.ndarray  # str (Q,)
    g_labels: np.ndarray  # str (G,)
    exclude: np.ndarray  # bool (Q, G): the same file on both sides
    failures: list[tuple[str, str]]


def labelled_images(root: str | Path, cfg: ReaderCfg) -> tuple[list[bytes], list[str]]:
    """Absolute paths and labels (the first sub-folder's name) of the images under ``root``."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    paths, labels = [], []
    for rel, absp in fs.iter_image_paths(root, cfg):
        parts = rel.split(b"/")
        if len(parts) >= 2:
            paths.append(absp)
            labels.append(fs.display(parts[0]))
    if not paths:
        raise ValueError(f"no labelled images under {root}: put each class's photos in a sub-folder named after it")
    return paths, labels


def load_features(gallery: str | Path, queries: str | Path, embedder: Embedder, reader_cfg: ReaderCfg,
                  embed_cfg: EmbedCfg, progress: Callable[[int, int], None] | None = None) -> LabelledFeatures:
    g_paths, g_labels = labelled_images(gallery, reader_cfg)
    q_paths, q_labels = labelled_images(queries, reader_cfg)
    union = sorted(set(g_paths) | set(q_paths))
    pos = {p: i for i, p in enumerate(union)}
    fset = extract_features(union, embedder, reader_cfg, embed_cfg, progress=progress)
    q_keep = [i for i, p in enumerate(q_paths) if fset.ok[pos[p]]]
    g_keep = [i for i, p in enumerate(g_paths) if fset.ok[pos[p]]]
    q_idx = np.array([pos[q_paths[i]] for i in q_keep], dtype=np.int64)
    g_idx = np.array([pos[g_paths[i]] for i in g_keep], dtype=np.int64)
    return LabelledFeatures(
        q_feats=fset.feats[q_idx], g_feats=fset.feats[g_idx],
        q_labels=np.array([q_labels[i] for i in q_keep]), g_labels=np.array([g_labels[i] for i in g_keep]),
        exclude=q_idx[:, None] == g_idx[None, :],
        failures=[(fs.display(p), why) for p, why in fset.failures],
    )


def score(q_vecs: np.ndarray, g_vecs: np.ndarray, data: LabelledFeatures,
          ks: tuple[int, ...] = (1, 5, 10)) -> RetrievalMetrics:
    """Metrics for unit query and gallery vectors (cosine similarity)."""
    return retrieval_metrics(q_vecs @ g_vecs.T, data.q_labels, data.g_labels, data.exclude, ks)


def project(embedder: Embedder, feats: np.ndarray) -> np.ndarray:
    """Raw features -> the embedder's unit vectors (through its head when it has one)."""
    return embedder.project(torch.from_numpy(feats)).cpu().numpy()
