"""Near-duplicate groups: photos whose vectors lie within a cosine threshold of one another.

Two steps, so that moving the threshold is cheap: :func:`neighbour_graph` finds each photo's ``k``
nearest other photos once (exact inner product over the stored unit vectors), then
:func:`duplicate_groups` keeps the edges at or above a threshold and joins them into connected
groups. A group can only be missed in part when more than ``k + 1`` photos are all near-identical
and their nearest-neighbour lists do not link up; raise ``k`` for collections with many copies.
Pure compute: arrays in, arrays and lists out. Nothing here touches files.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


@dataclass
class NeighbourGraph:
    ids: np.ndarray  # (n,) int64 file ids, in row order
    nbr: np.ndarray  # (n, k) int64 row positions of each photo's nearest others, best first; -1: none
    score: np.ndarray  # (n, k) float32 cosine similarity of those neighbours


@dataclass
class DuplicateGroup:
    ids: list[int]  # file ids in the group, ascending
    score: float  # the highest threshold at which the group still holds together


def neighbour_graph(ids: np.ndarray, vectors: np.ndarray, k: int = 8, block: int = 2048) -> NeighbourGraph:
    """Each row's ``k`` most similar other rows of ``vectors (n, dim)`` (unit vectors, exact search)."""
    ids = np.asarray(ids, dtype=np.int64)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(ids) != len(x):
        raise ValueError(f"expected ids (n,) and vectors (n, dim), got {ids.shape} and {x.shape}")
    n = len(x)
    k = max(0, min(k, n - 1))
    nbr = np.full((n, k), -1, dtype=np.int64)
    score = np.full((n, k), -np.inf, dtype=np.float32)
    if k == 0:
        return NeighbourGraph(ids, nbr, score)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    for start in range(0, n, block):
        s, j = index.search(x[start:start + block], k + 1)  # (b, k + 1): self is among them
        for r in range(len(j)):
            keep = j[r] != start + r  # drop self by position: exact copies may outrank it
            row_j, row_s = j[r][keep][:k], s[r][keep][:k]
            nbr[start + r, :len(row_j)] = row_j
            score[start + r, :len(row_s)] = row_s
    return NeighbourGraph(ids, nbr, score)


def duplicate_groups(graph: NeighbourGraph, threshold: float) -> list[DuplicateGroup]:
    """Connected groups of photos linked by similarities ``>= threshold``, most similar first."""
    n = len(graph.ids)
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    rows, cols = np.nonzero((graph.score >= threshold) & (graph.nbr >= 0))
    order = np.argsort(-graph.score[rows, cols], kind="stable")  # strongest edges first (Kruskal)
    weakest: dict[int, float] = {}  # root -> similarity of the last edge that joined its group
    for r, c in zip(rows[order].tolist(), cols[order].tolist()):
        a, b = find(r), find(int(graph.nbr[r, c]))
        if a != b:
            parent[b] = a
            weakest.pop(b, None)
            weakest[a] = float(graph.score[r, c])
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(int(graph.ids[i]))
    groups = [DuplicateGroup(sorted(m), weakest[root]) for root, m in members.items() if len(m) > 1]
    groups.sort(key=lambda g: (-g.score, -len(g.ids), g.ids[0]))
    return groups
