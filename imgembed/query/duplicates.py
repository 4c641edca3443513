"""Near-duplicate groups: photos whose vectors lie within a cosine threshold of one another, and the
member of a group to keep.

Two steps, so that moving the threshold is cheap: a neighbour graph gives each photo's ``k``
nearest other photos once, then :func:`duplicate_groups` keeps the edges at or above a threshold
and joins them into connected groups. :func:`neighbour_graph` is exact (all vectors in memory);
:func:`neighbour_graph_chunked` asks any search function (the collection's own FAISS index, which
may be approximate) chunk by chunk, for collections too large to compare exhaustively.
A group can only be missed in part when more than ``k + 1`` photos are all near-identical and
their neighbour lists do not link up; raise ``k`` for collections with many copies.
Pure compute: arrays in, arrays and lists out. Nothing here touches files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import faiss
import numpy as np

# search(queries (q, dim), k) -> (scores (q, k), file ids (q, k), -1 where none)
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass
class NeighbourGraph:
    ids: np.ndarray  # (n,) int64 file ids
    nbr: np.ndarray  # (n, k) int64 file ids of each photo's nearest others, best first; -1: none
    score: np.ndarray  # (n, k) float32 cosine similarity of those neighbours


@dataclass
class DuplicateGroup:
    ids: list[int]  # file ids in the group, ascending
    score: float  # the highest threshold at which the group still holds together


def neighbour_graph(ids: np.ndarray, vectors: np.ndarray, k: int = 8) -> NeighbourGraph:
    """Each row's ``k`` most similar other rows of ``vectors (n, dim)`` (unit vectors, exact search)."""
    ids = np.asarray(ids, dtype=np.int64)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(ids) != len(x):
        raise ValueError(f"expected ids (n,) and vectors (n, dim), got {ids.shape} and {x.shape}")
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    if len(x):
        index.add_with_ids(x, ids)
    k = max(0, min(k, len(x) - 1))
    return neighbour_graph_chunked([(ids, x)], lambda q, kk: index.search(q, kk), k)


def neighbour_graph_chunked(chunks: Iterable[tuple[np.ndarray, np.ndarray]], search: SearchFn,
                            k: int = 8) -> NeighbourGraph:
    """The neighbour graph of ``(ids, vectors)`` chunks, found with ``search`` (self left out)."""
    all_ids, all_nbr, all_score = [], [], []
    for ids, vecs in chunks:
        ids = np.asarray(ids, dtype=np.int64)
        nbr = np.full((len(ids), k), -1, dtype=np.int64)
        score = np.full((len(ids), k), -np.inf, dtype=np.float32)
        if k and len(ids):
            s, j = search(np.ascontiguousarray(vecs, dtype=np.float32), k + 1)  # self is among them
            for r in range(len(ids)):
                keep = (j[r] != ids[r]) & (j[r] >= 0)  # drop self by id: exact copies may outrank it
                row_j, row_s = j[r][keep][:k], s[r][keep][:k]
                nbr[r, :len(row_j)] = row_j
                score[r, :len(row_s)] = row_s
        all_ids.append(ids)
        all_nbr.append(nbr)
        all_score.append(score)
    if not all_ids:
        return NeighbourGraph(np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
    return NeighbourGraph(np.concatenate(all_ids), np.concatenate(all_nbr), np.concatenate(all_score))


def keeper_of(members: list) -> tuple[int, str]:
    """The id of the member to keep, and why: the largest resolution, then the largest file, then the
    oldest (modification time), then the first path.

    ``members`` are index rows (anything with ``id``, ``width``, ``height``, ``size``, ``mtime_ns``
    and ``path``). Raises ValueError when there are none.
    """
    if not members:
        raise ValueError("no members to choose a keeper from")

    def rank(r):
        return (-r.width * r.height, -r.size, r.mtime_ns, r.path)

    order = sorted(members, key=rank)
    best, rest = order[0], order[1:]
    if not rest:
        return best.id, "the only photo"
    if all(r.width * r.height < best.width * best.height for r in rest):
        return best.id, f"largest resolution ({best.width}x{best.height})"
    tied = [r for r in rest if r.width * r.height == best.width * best.height]
    if all(r.size < best.size for r in tied):
        return best.id, f"largest file ({_size(best.size)}) at the largest resolution"
    tied = [r for r in tied if r.size == best.size]
    if all(r.mtime_ns > best.mtime_ns for r in tied):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(best.mtime_ns / 1e9))
        return best.id, f"oldest ({when}) of the largest files"
    return best.id, "identical size, resolution and age: the first path"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def duplicate_groups(graph: NeighbourGraph, threshold: float) -> list[DuplicateGroup]:
    """Connected groups of photos linked by similarities ``>= threshold``, most similar first."""
    n = len(graph.ids)
    pos = {int(i): p for p, i in enumerate(graph.ids.tolist())}
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
        other = pos.get(int(graph.nbr[r, c]))
        if other is None:  # a neighbour outside the graph (e.g. removed since): no edge
            continue
        a, b = find(r), find(other)
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
