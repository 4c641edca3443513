"""Class-level retrieval metrics from a similarity matrix. Pure numpy.

For each query the gallery is ranked by similarity; a gallery item is relevant when it has the
query's label. Items masked out (the query itself, when it is also in the gallery) are dropped
from the ranking before scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def retrieval_metrics(sim: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray,
                      exclude: np.ndarray | None = None, ks: tuple[int, ...] = (1, 5, 10)) -> RetrievalMetrics:
    """Metrics for ``sim (Q, G)``; ``exclude (Q, G)`` bool marks pairs to drop (e.g. self-matches)."""
    sim = np.asarray(sim, dtype=np.float64)
    q_labels, g_labels = np.asarray(q_labels), np.asarray(g_labels)
    aps, prec, rec = [], {k: [] for k in ks}, {k: [] for k in ks}
    for qi in range(sim.shape[0]):
        keep = np.ones(sim.shape[1], dtype=bool) if exclude is None else ~exclude[qi]
        scores = sim[qi, keep]
        rel = g_labels[keep] == q_labels[qi]
        order = np.argsort(-scores, kind="stable")
        rel_sorted = rel[order]
        aps.append(average_precision(rel_sorted))
        for k in ks:
            top = rel_sorted[:k]
            prec[k].append(top.sum() / k)
            rec[k].append(float(top.any()))
    return RetrievalMetrics(
        mAP=float(np.mean(aps)) if aps else 0.0,
        precision_at={k: float(np.mean(v)) if v else 0.0 for k, v in prec.items()},
        recall_at={k: float(np.mean(v)) if v else 0.0 for k, v in rec.items()},
        n_queries=int(sim.shape[0]), n_gallery=int(sim.shape[1]),
    )
