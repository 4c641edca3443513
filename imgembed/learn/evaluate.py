"""``imgembed eval``: class-level retrieval quality, sub-folder names as labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from imgembed.config import EmbedCfg, ReaderCfg
from imgembed.ingest import fs
from imgembed.learn.feature_cache import extract_features
from imgembed.learn.metrics import RetrievalMetrics, retrieval_metrics
from imgembed.model.embedder import Embedder

if TYPE_CHECKING:
    from imgembed.model.head import ProjectionHead


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


def load_heads(paths: list[str], backbone) -> list[tuple[str, "ProjectionHead"]]:
    """``(name, head)`` of each head file, checked to fit ``backbone``. Raises HeadError."""
    from imgembed.model.head import check_fits, load_head, read_head_info

    out = []
    for path in paths:
        head = load_head(path)
        check_fits(head, backbone)
        out.append((f"head {read_head_info(path).get('method', '')} ({Path(path).stem})", head))
    return out


def project(embedder: Embedder, feats: np.ndarray) -> np.ndarray:
    """Raw features -> the embedder's unit vectors (through its head when it has one)."""
    return embedder.project(torch.from_numpy(feats)).cpu().numpy()


# --- comparison table: raw features, PCA, PCA-whitening and trained heads -----------------------

COMPARE_DIMS = (64, 128, 256)


def compare(data: LabelledFeatures, heads: list[tuple[str, "ProjectionHead"]] = (),
            dims: tuple[int, ...] = COMPARE_DIMS) -> list[dict]:
    """One row per method and dimension on the same queries and gallery: mAP, R@1, R@10, bytes/vector.

    Raw features are L2-normalised; PCA and PCA-whitening are fitted on the gallery's features (the
    user's collection, no labels) at each of ``dims`` the gallery can support; each head is applied
    as given. Vectors are float32, so a vector takes ``4 * dim`` bytes.
    """
    from imgembed.learn.baselines import fit_pca, pca_basis, pca_rank

    def row(method: str, q: np.ndarray, g: np.ndarray) -> dict:
        m = score(q, g, data)
        return {"method": method, "dim": int(q.shape[1]), "mAP": m.mAP, "R@1": m.recall_at[1],
                "R@10": m.recall_at[10], "bytes": 4 * int(q.shape[1])}

    def through(head, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(x)).numpy()

    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    rows = [row("raw", unit(data.q_feats), unit(data.g_feats))]
    rank = pca_rank(len(data.g_feats), data.g_feats.shape[1])
    fits = [d for d in dims if d <= rank and d < data.g_feats.shape[1]]
    basis = pca_basis(data.g_feats, max(fits)) if fits else None
    for whiten, name in ((False, "PCA"), (True, "PCA-whitened")):
        for d in fits:
            h = fit_pca(data.g_feats, d, whiten=whiten, basis=basis)
            rows.append(row(name, through(h, data.q_feats), through(h, data.g_feats)))
    for name, h in heads:
        rows.append(row(name, through(h, data.q_feats), through(h, data.g_feats)))
    return rows


def format_table(rows: list[dict]) -> str:
    width = max(len(r["method"]) for r in rows)
    lines = [f"{'method':<{width}}  {'dim':>5}  {'mAP':>5}  {'R@1':>5}  {'R@10':>5}  {'bytes/vec':>9}"]
    for r in rows:
        lines.append(f"{r['method']:<{width}}  {r['dim']:>5}  {100 * r['mAP']:5.1f}  {100 * r['R@1']:5.1f}  "
                     f"{100 * r['R@10']:5.1f}  {r['bytes']:>9}")
    return "\n".join(lines)


def plot_comparison(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """PNG bar chart of mAP and R@1 per method and dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
