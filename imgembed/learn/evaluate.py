"""``imgembed eval``: class-level retrieval quality, sub-folder names as labels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from imgembed.learn.folders import LabelledFeatures
from imgembed.learn.metrics import RetrievalMetrics, retrieval_metrics
from imgembed.model.embedder import Embedder

if TYPE_CHECKING:
    from imgembed.model.head import ProjectionHead


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
