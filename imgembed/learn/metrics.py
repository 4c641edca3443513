"""Class-level retrieval metrics from a similarity matrix. Pure numpy, vectorised over queries.

For each query the gallery is ranked by similarity; a gallery item is relevant when it has the
query's label. Items masked out (the query itself, when it is also in the gallery) are dropped
from the ranking before scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Queries ranked at once: bounds the (chunk, gallery) work arrays (4,300 x 4,400 in one go is 150 MB).
_CHUNK = 512


@dataclass
class RetrievalMetrics:
    mAP: float
    precision_at: dict[int, float]  # P@k: mean fraction of relevant items in the top k
    recall_at: dict[int, float]  # R@k: fraction of queries with at least one relevant in the top k
    n_queries: int
    n_gallery: int

    def as_dict(self) -> dict:
        d = {"mAP": self.mAP, "n_queries": self.n_queries, "n_gallery": self.n_gallery}
        d.update({f"P@{k}": v for k, v in self.precision_at.items()})
        d.update({f"R@{k}": v for k, v in self.recall_at.items()})
        return d


def average_precision(relevant_sorted: np.ndarray) -> float:
    """AP of one ranked list given as booleans, best first; 0 when nothing is relevant."""
    rel = np.asarray(relevant_sorted, dtype=bool)
    n_rel = rel.sum()
    if n_rel == 0:
        return 0.0
    hits = np.cumsum(rel)
    ranks = np.flatnonzero(rel) + 1
    return float((hits[rel] / ranks).sum() / n_rel)


def ranked_relevance(sim: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray,
                     exclude: np.ndarray | None = None) -> np.ndarray:
    """``bool (Q, G)``: whether each query's i-th best gallery item is relevant. Excluded items rank
    last and are never relevant, so they change no other item's rank."""
    sim = np.array(sim, dtype=np.float64)
    rel = np.asarray(g_labels)[None, :] == np.asarray(q_labels)[:, None]
    if exclude is not None:
        sim[exclude] = -np.inf
        rel = rel & ~exclude
    order = np.argsort(-sim, axis=1, kind="stable")
    return np.take_along_axis(rel, order, axis=1)


def per_query(sim: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray, exclude: np.ndarray | None = None,
              ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, np.ndarray]:
    """Per-query scores ``(Q,)``: ``"AP"``, ``"P@k"`` and ``"R@k"`` (R@k is 1 when any of the top k is relevant)."""
    q_labels, g_labels = np.asarray(q_labels), np.asarray(g_labels)
    out: dict[str, list] = {"AP": [], **{f"P@{k}": [] for k in ks}, **{f"R@{k}": [] for k in ks}}
    for s in range(0, len(q_labels), _CHUNK):
        part = slice(s, s + _CHUNK)
        rel = ranked_relevance(sim[part], q_labels[part], g_labels, None if exclude is None else exclude[part])
        hits = np.cumsum(rel, axis=1)
        precision = hits / np.arange(1, rel.shape[1] + 1)
        out["AP"].append((precision * rel).sum(1) / np.maximum(rel.sum(1), 1))
        for k in ks:
            out[f"P@{k}"].append(rel[:, :k].sum(1) / k)
            out[f"R@{k}"].append(rel[:, :k].any(1).astype(np.float64))
    return {name: np.concatenate(v) if v else np.zeros(0) for name, v in out.items()}


def mean_average_precision(sim: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray,
                           exclude: np.ndarray | None = None) -> float:
    """mAP for ``sim (Q, G)``."""
    ap = per_query(sim, q_labels, g_labels, exclude, ks=())["AP"]
    return float(ap.mean()) if len(ap) else 0.0


def retrieval_metrics(sim: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray,
                      exclude: np.ndarray | None = None, ks: tuple[int, ...] = (1, 5, 10)) -> RetrievalMetrics:
    """Metrics for ``sim (Q, G)``; ``exclude (Q, G)`` bool marks pairs to drop (e.g. self-matches)."""
    sim = np.asarray(sim)
    scores = per_query(sim, q_labels, g_labels, exclude, ks)
    mean = lambda v: float(v.mean()) if len(v) else 0.0  # noqa: E731
    return RetrievalMetrics(
        mAP=mean(scores["AP"]),
        precision_at={k: mean(scores[f"P@{k}"]) for k in ks},
        recall_at={k: mean(scores[f"R@{k}"]) for k in ks},
        n_queries=int(sim.shape[0]), n_gallery=int(sim.shape[1]),
    )
