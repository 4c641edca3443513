"""FAISS index construction and search for unit vectors (inner product = cosine). Pure compute:
the store decides when to build, update and write; this module never touches files.

Every index maps stable int64 ids (the store's file ids) to vectors.
"""

from __future__ import annotations

import math
from typing import Iterator

import faiss
import numpy as np

from imgembed.config import IndexCfg

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
# Below this many vectors exact search answers fast enough (about 2 ms at 50k x 128-d here).
AUTO_FLAT_MAX = 50_000
# Above this many vectors HNSW's memory (the raw vectors plus the graph) gets hard to hold.
AUTO_HNSW_MAX = 5_000_000


def choose_type(cfg: IndexCfg, n: int) -> str:
    """The index type for ``n`` vectors: the configured one, or the ``auto`` rule by size."""
    if cfg.index_type != "auto":
        if cfg.index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index type '{cfg.index_type}'; use auto, {', '.join(INDEX_TYPES)}")
        return cfg.index_type
    if n <= AUTO_FLAT_MAX:
        return "flat"
    return "hnsw" if n <= AUTO_HNSW_MAX else "ivfpq"


def supports_remove(kind: str) -> bool:
    return kind in ("flat", "ivfpq")


def _ivf_params(cfg: IndexCfg, n: int, dim: int) -> tuple[int, int]:
    nlist = cfg.ivf_nlist or max(16, min(65536, int(4 * math.sqrt(max(n, 1)))))
    m = cfg.pq_m or max(1, dim // 4)
    while dim % m:
        m -= 1
    return nlist, m


def new_index(kind: str, dim: int, cfg: IndexCfg, train: np.ndarray | None = None) -> faiss.Index:
    """An empty index of ``kind``; IVF-PQ is trained on ``train`` (a sample of the vectors)."""
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = cfg.hnsw_ef_construction
        base.hnsw.efSearch = cfg.hnsw_ef_search
        return faiss.IndexIDMap2(base)
    if kind == "ivfpq":
        if train is None or len(train) == 0:
            raise ValueError("an IVF-PQ index needs training vectors")
        nlist, m = _ivf_params(cfg, len(train), dim)
        nlist = min(nlist, max(1, len(train) // 39))  # faiss wants >= 39 training points per list
        nbits = max(1, min(8, int(math.log2(len(train)))))  # PQ codebooks need >= 2**nbits points
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        index.nprobe = min(cfg.ivf_nprobe, nlist)
        return index
    raise ValueError(f"unknown index type '{kind}'")


def build(kind: str, dim: int, cfg: IndexCfg, chunks: Iterator[tuple[np.ndarray, np.ndarray]],
          train: np.ndarray | None = None) -> faiss.Index:
    """A new index filled from ``(ids int64 (n,), vectors float32 (n, dim))`` chunks."""
    index = new_index(kind, dim, cfg, train)
    for ids, vecs in chunks:
        add(index, ids, vecs)
    return index


def add(index: faiss.Index, ids: np.ndarray, vecs: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32),
                           np.ascontiguousarray(ids, dtype=np.int64))


def remove(index: faiss.Index, ids: np.ndarray) -> int:
    if not len(ids):
        return 0
    return int(index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))


def kind_of(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVF):
        return "ivfpq"
    raise ValueError(f"unsupported faiss index {type(inner).__name__}")


def ids_of(index: faiss.Index) -> np.ndarray:
    """All ids stored in ``index`` (int64, unordered)."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    out = []
    for lst in range(ivf.nlist):
        n = invlists.list_size(lst)
        if n:
            out.append(faiss.rev_swig_ptr(invlists.get_ids(lst), n).copy())
    return np.concatenate(out).astype(np.int64) if out else np.empty(0, np.int64)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores (q, k), ids (q, k))``; missing slots have id -1."""
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
