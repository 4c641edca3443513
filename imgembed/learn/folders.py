"""Folders of photos as training and evaluation data: each photo's raw features (cached) and its
label, the name of its first sub-folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from imgembed.config import EmbedCfg, ReaderCfg, ViewCfg
from imgembed.ingest import fs
from imgembed.learn.feature_cache import extract_features
from imgembed.model.embedder import Embedder


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


class TrainingFeatures(NamedTuple):
    feats: np.ndarray  # float32 (N, D) raw features of the photos
    labels: np.ndarray | None  # str (N,) their sub-folders, or None without labels
    failures: list[tuple[str, str]]  # (path, reason) of the files left out
    views: np.ndarray | None = None  # float32 (V, N, D): the features of V augmented views of each photo


def load_training_features(folder: str | Path, labels: str, embedder, reader_cfg, embed_cfg,
                           progress: Callable[[str, int, int], None] | None = None,
                           views: int = 0) -> TrainingFeatures:
    """Raw features (cached) of the photos under ``folder``, and of ``views`` augmented views of
    each (:class:`imgembed.config.ViewCfg` seeds 0 .. views - 1, cached too).

    With ``labels == "folders"`` only photos inside a sub-folder count, labelled by its name. A file
    that fails, or whose view fails, is left out and reported. ``progress(what, done, total)``.
    """
    if labels == "folders":
        try:
            paths, names = labelled_images(folder, reader_cfg)
        except ValueError as e:
            raise ValueError(f"{e}; or train without labels: --labels none") from e
    else:
        root = Path(folder).resolve()
        if not root.is_dir():
            raise NotADirectoryError(f"not a folder: {root}")
        paths, names = [absp for _, absp in fs.iter_image_paths(root, reader_cfg)], None
        if not paths:
            raise ValueError(f"no images under {root}")

    def tell(what: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(what, done, total)) if progress else None

    fset = extract_features(paths, embedder, reader_cfg, embed_cfg, progress=tell("features"))
    paths = [p for p, good in zip(paths, fset.ok) if good]  # the views of the photos that decoded
    feats, names = fset.feats[fset.ok], np.asarray(names)[fset.ok] if names is not None else None
    ok, failures, drawn = np.ones(len(paths), dtype=bool), list(fset.failures), []
    for seed in range(views):
        vset = extract_features(paths, embedder, reader_cfg, embed_cfg, progress=tell(f"view {seed + 1}"),
                                view=ViewCfg(seed=seed))
        failures += [(p, f"augmented view {seed + 1}: {why}") for p, why in vset.failures]
        ok &= vset.ok
        drawn.append(vset.feats)
    return TrainingFeatures(feats[ok], names[ok] if names is not None else None,
                            [(fs.display(p), why) for p, why in failures],
                            np.stack([v[ok] for v in drawn]) if drawn else None)
