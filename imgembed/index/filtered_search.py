"""The k best photos among a subset of an index (the photos a filter keeps), for every index type.

Not "top k, then filter", which returns fewer than k photos, or none, when the filter is strict.

- A subset whose full vectors fit :data:`EXACT_BYTES` (131,072 photos at 128-d, 13,107 at 1280-d)
  is searched exactly, whatever the index type: the snapshot reads the subset's stored
  full-precision vectors once, they are kept with the subset in an exact index of their own, and
  every query scans only them. The same answers as brute force over the matching photos, for
  ivfpq too.
- A larger subset goes into FAISS as an id selector (a bitmap over file ids), so only its vectors
  are scored. ``flat``: exact (every vector checked against the bitmap). ``ivf`` and ``ivfpq``:
  the probes are raised by the share the filter leaves out (nprobe / share, at most every list),
  so a query meets as many matching vectors as an unfiltered query meets vectors: the recall of
  an unfiltered search at a few times its cost. ``hnsw``: ``efSearch`` raised the same way.
  Whenever that finds fewer than ``min(k, subset)`` photos, every list (for hnsw: the graph's flat
  storage, exhaustively) is searched instead.

Pure compute: the snapshot decides which ids match and reads their vectors.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from imgembed.index import faiss_index

# Subsets whose vectors take at most this many bytes are searched exactly in memory. At 1M x
# 128-d a filter keeping 1% (10,000 photos) then answers in well under a millisecond, where
# scanning every IVF list for its members took 29 ms (scripts/bench_search.py --filters).
EXACT_BYTES = 64 << 20


def exact_fits(n: int, dim: int) -> bool:
    """Whether ``n`` vectors of ``dim`` are few enough to be searched exactly in memory."""
    return n * dim * 4 <= EXACT_BYTES


class Subset:
    """A set of file ids as FAISS selectors, and their vectors when few enough (built once, reused
    for every query of the subset)."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray | None = None) -> None:
        """``vectors (len(ids), dim)``: the ids' full vectors in the same order, for exact search."""
        ids = np.asarray(ids, dtype=np.int64)
        self.ids = ids if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()) else np.unique(ids)
        if len(self.ids) and self.ids[0] < 0:
            raise ValueError("file ids are never negative")
        size = int(self.ids[-1]) + 1 if len(self.ids) else 1
        mask = np.zeros(size, dtype=bool)
        mask[self.ids] = True
        self._bits = np.packbits(mask, bitorder="little")  # kept alive: the selector points into it
        # faiss takes the bitmap's size in bytes; ids beyond it are not members
        self.selector = faiss.IDSelectorBitmap(len(self._bits), faiss.swig_ptr(self._bits))
        self._internal: dict[int, tuple[np.ndarray, faiss.IDSelector]] = {}
        self.flat: faiss.IndexFlatIP | None = None  # the subset's own exact index, when its vectors are given
        if vectors is not None:
            if self.ids is not ids or len(vectors) != len(ids):
                raise ValueError("vectors go with strictly increasing ids, one vector each")
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            self.flat = faiss.IndexFlatIP(vectors.shape[1])
            self.flat.add(vectors)

    def __len__(self) -> int:
        return len(self.ids)

    def internal(self, id_map: np.ndarray) -> faiss.IDSelector:
        """A selector over an IndexIDMap's internal positions (0..ntotal-1) of the subset's ids."""
        key = len(id_map)
        if key not in self._internal:
            bits = np.packbits(np.isin(id_map, self.ids), bitorder="little")
            self._internal = {key: (bits, faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)))}
        return self._internal[key][1]


def search(index: faiss.Index, queries: np.ndarray, k: int, subset: Subset) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores (q, k), ids (q, k))`` among ``subset``; missing slots have id -1."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    m = len(subset)
    if m == 0 or index.ntotal == 0:
        return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
    k = max(1, min(k, m))
    if subset.flat is not None:
        scores, pos = _run(subset.flat, queries, k, None)
        return scores, np.where(pos >= 0, subset.ids[np.maximum(pos, 0)], -1)
    kind = faiss_index.kind_of(index)
    share = min(1.0, m / index.ntotal)
    if kind == "flat":
        return _run(index, queries, k, faiss.SearchParameters(sel=subset.selector))
    if kind == "hnsw":
        ef = faiss.downcast_index(index.index).hnsw.efSearch
        params = faiss.SearchParametersHNSW(sel=subset.selector, efSearch=min(index.ntotal, math.ceil(max(ef, k) / share)))
        scores, ids = _run(index, queries, k, params)
        if _complete(ids, k):
            return scores, ids
        return _hnsw_exact(index, queries, k, subset)
    ivf = faiss.extract_index_ivf(index)
    nprobe = min(ivf.nlist, math.ceil(ivf.nprobe / share))
    scores, ids = _run(index, queries, k, faiss.SearchParametersIVF(sel=subset.selector, nprobe=nprobe))
    if nprobe < ivf.nlist and not _complete(ids, k):
        scores, ids = _run(index, queries, k, faiss.SearchParametersIVF(sel=subset.selector, nprobe=ivf.nlist))
    return scores, ids


def _complete(ids: np.ndarray, k: int) -> bool:
    return bool((ids[:, :k] >= 0).all())


def _hnsw_exact(index: faiss.Index, queries: np.ndarray, k: int, subset: Subset) -> tuple[np.ndarray, np.ndarray]:
    """Exact search over the subset in an HNSW index's flat storage (the graph is not used)."""
    id_map = faiss.vector_to_array(index.id_map).astype(np.int64)
    storage = faiss.downcast_index(faiss.downcast_index(index.index).storage)
    scores, pos = _run(storage, queries, k, faiss.SearchParameters(sel=subset.internal(id_map)))
    return scores, np.where(pos >= 0, id_map[np.maximum(pos, 0)], -1)


def _run(index: faiss.Index, queries: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
    if len(queries) > 1:
        return index.search(queries, k, params=params)
    # One query with a selector runs on one thread in every index type; more only wait for each other.
    with faiss_index.one_thread():
        return index.search(queries, k, params=params)
