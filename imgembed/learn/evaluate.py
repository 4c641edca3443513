"""``imgembed eval``: class-level retrieval quality, sub-folder names as labels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

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


# --- comparison table: raw features, PCA, PCA-whitening and trained heads, with re-ranking ------

COMPARE_DIMS = (64, 128, 256)
# Re-ranking variants of each method: plain, database-side augmentation of the gallery, alpha query
# expansion, both (k = 10, alpha = 3: imgembed.index.augment).
RERANK = ("", "+DBA", "+QE", "+DBA+QE")
BOOTSTRAP = 1000  # resamples of the queries for the 95% interval of mAP


def rerank_vectors(q: np.ndarray, g: np.ndarray, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery unit vectors after a :data:`RERANK` variant (DBA on the gallery, then QE)."""
    from imgembed.index.augment import augment, exact_search, expand

    if "DBA" in variant:
        g = augment(g)[0]
    if "QE" in variant:
        sims, pos = exact_search(g)(q, min(10, len(g)))
        q = expand(q, sims, g[pos])
    return q, g


def bootstrap_interval(per_query: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``per_query`` over ``n`` resamples of the queries."""
    if not len(per_query):
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = per_query[rng.integers(0, len(per_query), (n, len(per_query)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def metrics_row(method: str, q: np.ndarray, g: np.ndarray, data: LabelledFeatures) -> dict:
    """One table row: mAP with its bootstrap 95% interval, P@5, R@1/5/10, bytes/vector."""
    from imgembed.learn.metrics import per_query

    scores = per_query(q @ g.T, data.q_labels, data.g_labels, data.exclude, (1, 5, 10))
    lo, hi = bootstrap_interval(scores["AP"])
    mean = lambda v: float(v.mean()) if len(v) else 0.0  # noqa: E731
    return {"method": method, "dim": int(q.shape[1]), "mAP": mean(scores["AP"]), "mAP_lo": lo, "mAP_hi": hi,
            "P@5": mean(scores["P@5"]), "R@1": mean(scores["R@1"]), "R@5": mean(scores["R@5"]),
            "R@10": mean(scores["R@10"]), "bytes": 4 * int(q.shape[1])}


def compare(data: LabelledFeatures, heads: list[tuple[str, "ProjectionHead"]] = (),
            dims: tuple[int, ...] = COMPARE_DIMS, rerank: bool = True,
            progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """One row per method, dimension and re-ranking variant on the same queries and gallery.

    Raw features are L2-normalised; PCA and PCA-whitening are fitted on the gallery's features (the
    user's collection, no labels) at each of ``dims`` the gallery can support; each head is applied
    as given. With ``rerank``, raw, PCA and each head also get the :data:`RERANK` variants (not
    PCA-whitening, which loses already). Vectors are float32, so a vector takes ``4 * dim`` bytes.
    """
    from imgembed.learn.baselines import fit_pca, pca_basis, pca_rank

    def through(head, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(x)).numpy()

    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    spaces = [("raw", unit(data.q_feats), unit(data.g_feats), True)]
    rank = pca_rank(len(data.g_feats), data.g_feats.shape[1])
    fits = [d for d in dims if d <= rank and d < data.g_feats.shape[1]]
    basis = pca_basis(data.g_feats, max(fits)) if fits else None
    for whiten, name in ((False, "PCA"), (True, "PCA-whitened")):
        for d in fits:
            h = fit_pca(data.g_feats, d, whiten=whiten, basis=basis)
            spaces.append((name, through(h, data.q_feats), through(h, data.g_feats), not whiten))
    for name, h in heads:
        spaces.append((name, through(h, data.q_feats), through(h, data.g_feats), True))
    jobs = [(name, q, g, v) for name, q, g, rr in spaces for v in (RERANK if rerank and rr else ("",))]
    rows = []
    for i, (name, q, g, variant) in enumerate(jobs):
        rows.append(metrics_row(name + (f" {variant}" if variant else ""), *rerank_vectors(q, g, variant), data))
        if progress:
            progress(i + 1, len(jobs))
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width table: mAP [95% interval], P@5, R@1, R@5, R@10, bytes/vector."""
    width = max(len(r["method"]) for r in rows)
    lines = [f"{'method':<{width}}  {'dim':>5}  {'mAP':>5}  {'95% interval':>12}  {'P@5':>5}  {'R@1':>5}  "
             f"{'R@5':>5}  {'R@10':>5}  {'bytes/vec':>9}"]
    for r in rows:
        ci = f"{100 * r['mAP_lo']:.1f}-{100 * r['mAP_hi']:.1f}"
        lines.append(f"{r['method']:<{width}}  {r['dim']:>5}  {100 * r['mAP']:5.1f}  {ci:>12}  {100 * r['P@5']:5.1f}  "
                     f"{100 * r['R@1']:5.1f}  {100 * r['R@5']:5.1f}  {100 * r['R@10']:5.1f}  {r['bytes']:>9}")
    return "\n".join(lines)
