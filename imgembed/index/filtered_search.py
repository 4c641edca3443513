"""The k best photos among a subset of an index (the photos a filter keeps), for every index type.

Not "top k, then filter", which returns fewer than k photos, or none, when the filter is strict.
The subset travels into FAISS as an id selector (a bitmap over file ids), so only its vectors are
scored:

- ``flat``: exact search over the subset (every vector checked against the bitmap, only members
  scored). The same answers as brute force over the matching photos.
- ``ivf``: when the subset holds at most :data:`EXACT_MAX` photos, every list is scanned (members
  only): exact, since IVF-Flat stores full vectors. A larger subset is searched with the probes
  raised by the share it leaves out (nprobe / share), so a query meets as many matching vectors as
  an unfiltered query meets vectors: the recall of an unfiltered search, at a few times its cost.
- ``hnsw``: a small subset is searched exactly in the graph's flat storage; a larger one through
  the graph with ``efSearch`` raised the same way.
- ``ivfpq``: as ``ivf``, over its compressed codes: the best matches as the codes score them (the
  ranking of an unfiltered ivfpq search, restricted to the subset).

Whenever the approximate path finds fewer than ``min(k, subset)`` photos, the exact path answers.
Pure compute: the store and the snapshot decide which ids match.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from imgembed.index import faiss_index

# Up to this many matching photos the subset is searched exhaustively: scoring 100,000 x 128-d
# vectors costs about as much as an IVF query over 1M vectors with probes raised 2x (measured by
# scripts/bench_search.py --filters: p50 figures in the README).
EXACT_MAX = 100_000


class Subset:
    """A set of file ids as FAISS selectors (built once, reused for every query of the subset)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(self.ids) and self.ids[0] < 0:
            raise ValueError("file ids are never negative")
        size = int(self.ids[-1]) + 1 if len(self.ids) else 1
        mask = np.zeros(size, dtype=bool)
        mask[self.ids] = True
        self._bits = np.packbits(mask, bitorder="little")  # kept alive: the selector points into it
        # faiss takes the bitmap's size in bytes; ids beyond it are not members
        self.selector = faiss.IDSelectorBitmap(len(self._bits), faiss.swig_ptr(self._bits))
        self._internal: dict[int, tuple[np.ndarray, faiss.IDSelector]] = {}

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
    kind = faiss_index.kind_of(index)
    share = min(1.0, m / index.ntotal)
    exact = m <= EXACT_MAX
    if kind == "flat":
        return _run(index, queries, k, faiss.SearchParameters(sel=subset.selector))
    if kind == "hnsw" and exact:
        return _hnsw_exact(index, queries, k, subset)
    if kind == "hnsw":
        ef = faiss.downcast_index(index.index).hnsw.efSearch
        params = faiss.SearchParametersHNSW(sel=subset.selector, efSearch=min(index.ntotal, math.ceil(max(ef, k) / share)))
        scores, ids = _run(index, queries, k, params)
        if _complete(ids, k):
            return scores, ids
        return _hnsw_exact(index, queries, k, subset)
    ivf = faiss.extract_index_ivf(index)
    nprobe = ivf.nlist if exact else min(ivf.nlist, math.ceil(ivf.nprobe / share))
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
    if len(queries) > 1 or isinstance(index, faiss.IndexFlat) or faiss_index.kind_of(index) == "flat":
        return index.search(queries, k, params=params)
    with faiss_index.one_thread():
        return index.search(queries, k, params=params)
