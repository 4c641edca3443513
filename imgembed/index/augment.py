"""Database-side augmentation (DBA): each indexed vector is replaced by a weighted mean of its
nearest neighbours in the collection, so that a photo "borrows" what its neighbourhood agrees on.
Pure compute (numpy and FAISS); the store decides when to run it (:mod:`imgembed.index.store`).

For a unit vector ``p_i`` with nearest neighbours ``N_k(i)`` (itself included, cosine ``s_ij``)::

    v_i = normalise( sum_{j in N_k(i)} max(s_ij, 0) ** alpha * p_j )

(alpha-weighted DBA, Radenovic et al., "Fine-tuning CNN image retrieval with no human annotation",
2018). ``p`` are the *plain* vectors (what the model and head give); ``v`` are the searchable ones.
Each photo also keeps ``kth_i``, the cosine of the last neighbour in its list: a changed photo
``c`` can alter ``v_i`` only if ``s_ic >= kth_i`` (it enters or leaves the list), which is how an
incremental update finds the photos to recompute (:func:`affected`) without storing neighbour
lists. On measured collections (README, "Re-ranking") k = 10, alpha = 3 gave the gains; the same
values serve alpha query expansion (:func:`expand`; run by a search in :mod:`imgembed.query.rerank`):

    q' = normalise( q + sum_{j in top_k(q)} max(s_qj, 0) ** alpha * v_j )
"""

from __future__ import annotations

from typing import Callable

import faiss
import numpy as np

DBA_K = 10  # neighbours averaged, the photo itself included
DBA_ALPHA = 3.0  # weight = cosine ** alpha: near neighbours count far more than the k-th
# kth when a photo has fewer than k neighbours in the whole collection: any new photo enters its list.
NO_KTH = -2.0
# Queries searched at once (bounds the (chunk, n) similarity block of exact search to ~400 MB at 100k).
_CHUNK = 1024

# search(queries (q, d), k) -> (similarities (q, k), row positions (q, k), -1 where fewer)
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def weights(sims: np.ndarray, alpha: float = DBA_ALPHA) -> np.ndarray:
    """``max(sims, 0) ** alpha``: the weight of each neighbour."""
    return np.maximum(sims, 0.0) ** alpha


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def exact_search(base: np.ndarray) -> Search:
    """A :data:`Search` over the rows of ``base (n, d)`` by exact inner product."""
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, pos = [], []
        for s in range(0, len(queries), _CHUNK):
            d, i = index.search(np.ascontiguousarray(queries[s:s + _CHUNK], dtype=np.float32), k)
            sims.append(d)
            pos.append(i)
        if not sims:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(sims), np.concatenate(pos)

    return search


def augment_rows(base: np.ndarray, rows: np.ndarray, search: Search, k: int = DBA_K,
                 alpha: float = DBA_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """DBA vectors ``(len(rows), d)`` and ``kth (len(rows),)`` for ``base[rows]``.

    ``search`` finds neighbours among all rows of ``base`` (the row itself is its own first
    neighbour, at cosine 1). Fewer than ``k`` rows in all: every row is a neighbour, kth is NO_KTH.
    """
    rows = np.asarray(rows, dtype=np.int64)
    kk = min(k, len(base))
    out = np.zeros((len(rows), base.shape[1]), np.float32)
    kth = np.full(len(rows), NO_KTH, np.float32)
    if not len(rows):
        return out, kth
    sims, pos = search(base[rows], kk)  # (m, kk)
    valid = pos >= 0
    w = np.where(valid, weights(sims, alpha), 0.0).astype(np.float32)
    out = unit(np.einsum("mk,mkd->md", w, base[np.where(valid, pos, 0)]))
    if kk == k and len(base) > k:
        kth = np.where(valid[:, -1], sims[:, -1], NO_KTH).astype(np.float32)
    return out, kth


def augment(base: np.ndarray, k: int = DBA_K, alpha: float = DBA_ALPHA,
            search: Search | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DBA of every row of ``base (n, d)`` unit vectors: ``(vectors (n, d), kth (n,))``."""
    search = search or exact_search(base)
    return augment_rows(base, np.arange(len(base)), search, k, alpha)


def affected(base: np.ndarray, kth: np.ndarray, changed: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Rows of ``base (n, d)`` whose DBA vector can change when the ``changed (c, d)`` vectors enter
    or leave the collection: those with cosine >= their ``kth`` to any of them. Exact (bool (n,))."""
    hit = np.zeros(len(base), dtype=bool)
    if not len(changed) or not len(base):
        return hit
    changed = np.ascontiguousarray(changed, dtype=np.float32)
    for s in range(0, len(base), chunk):
        block = base[s:s + chunk] @ changed.T  # (chunk, c)
        hit[s:s + chunk] = (block >= kth[s:s + chunk, None] - 1e-6).any(axis=1)
    return hit


def expand(queries: np.ndarray, sims: np.ndarray, neighbours: np.ndarray, alpha: float = DBA_ALPHA) -> np.ndarray:
    """alpha-QE: expanded unit queries ``(q, d)`` from ``queries (q, d)``, their hits' cosines
    ``sims (q, k)`` and the hits' (searchable) vectors ``neighbours (q, k, d)``; zero rows where a
    query had fewer hits."""
    w = weights(sims, alpha).astype(np.float32)  # (q, k)
    return unit(np.asarray(queries, np.float32) + np.einsum("qk,qkd->qd", w, neighbours))
