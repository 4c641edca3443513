"""FAISS index construction and search for unit vectors (inner product = cosine). Pure compute:
the store decides when to build, update and write; this module never touches files.

Every index maps stable int64 ids (the store's file ids) to vectors.
"""

from __future__ import annotations

import logging
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import faiss
import numpy as np

from imgembed.config import INDEX_TYPES, IndexCfg, check_choice

logger = logging.getLogger(__name__)

# INDEX_TYPES: "ivf" is IVF-Flat, inverted lists of full vectors (exact scores over the probed
# lists); "ivfpq" stores 8-bit product-quantised codes instead (less memory, lower recall).
# Up to this many vectors exact search answers fast enough (about 2 ms at 50k x 128-d here).
AUTO_FLAT_MAX = 50_000
# Beyond exact search, auto picks IVF-Flat while the raw vectors fit this many bytes, and IVF-PQ
# after that. IVF-Flat over HNSW (scripts/bench_search.py, 100k x 128-d, 2 busy cores): recall@10
# 0.97 against 0.98 (efSearch 32), both at p50 0.14 ms, 2.5x faster to build, 527 bytes per
# vector against 792, and it removes vectors in place where HNSW is rebuilt on every deletion.
# At 1M x 128-d the defaults below measured recall@10 0.991 at 1.0 ms p50 / 1.4 ms p99, 522 bytes
# per vector. Higher dimensions need more probes for the same recall; calibrate() finds them (1M x
# 1280-d: 124 probes, recall@10 0.968 at 16.6 ms p99).
AUTO_RAW_BYTES_MAX = 8 << 30
# IVF training sample: faiss's k-means uses at most 256 points per list anyway.
TRAIN_PER_LIST = 64
# k-means iterations when training IVF lists; faiss's 25 cost 2.5x the build time for no recall
# that the probes cannot recover.
KMEANS_ITER = 10
# Calibration of nprobe: this many indexed vectors serve as sample queries.
CALIBRATION_QUERIES = 256
# Probing more than this share of the lists comes close to exact search; calibration stops there.
MAX_PROBE_SHARE = 1 / 8


def choose_type(cfg: IndexCfg, n: int, dim: int = 128) -> str:
    """The index type for ``n`` vectors of ``dim``: the configured one, or the ``auto`` rule."""
    if cfg.index_type != "auto":
        return check_choice("index type", cfg.index_type, INDEX_TYPES)
    if n <= AUTO_FLAT_MAX:
        return "flat"
    return "ivf" if n * dim * 4 <= AUTO_RAW_BYTES_MAX else "ivfpq"


def supports_remove(kind: str) -> bool:
    return kind in ("flat", "ivf", "ivfpq")


def needs_training(kind: str) -> bool:
    return kind in ("ivf", "ivfpq")


def auto_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: about 4 sqrt(n) (4,000 at 1M)."""
    return max(16, min(65536, int(4 * math.sqrt(max(n, 1)))))


def auto_nprobe(nlist: int, cfg: IndexCfg) -> int:
    """Lists probed per query: the configured floor, or nlist / 64 when that is more.

    At nlist = 4 sqrt(n) the work per query grows like sqrt(n) while recall stays level.
    """
    return min(nlist, max(cfg.ivf_nprobe, nlist // 64))


@dataclass
class Calibration:
    """The nprobe an IVF index was set to, and the recall@10 it measured there."""

    nprobe: int
    recall: float  # mean recall@10 of the sample queries against searching every list
    queries: int
    reached: bool  # recall met the target within the probe cap

    def describe(self) -> str:
        state = "" if self.reached else f" (below the target: capped at 1/{round(1 / MAX_PROBE_SHARE)} of the lists)"
        return f"nprobe {self.nprobe}: recall@10 {self.recall:.3f} on {self.queries} sample queries{state}"


def calibrate(index: faiss.Index, query_ids: np.ndarray, queries: np.ndarray, target: float,
              k: int = 10) -> Calibration:
    """Raise an IVF index's nprobe (doubling) until recall@``k`` reaches ``target``.

    The queries are vectors of the index itself (``query_ids`` are theirs); each one's own entry is
    left out of both result lists, so it stands for a new photo near the others. The reference is
    the same index probing every list: exact search for IVF-Flat, the best the codes allow for
    IVF-PQ (so PQ's own loss does not drive the probes up). Recall at a fixed nprobe falls as the
    dimension grows (measured at 1M vectors, default probes: 0.991 at 128-d, 0.964 at 512-d).
    """
    ivf = faiss.extract_index_ivf(index)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    query_ids = np.asarray(query_ids, dtype=np.int64)
    start = ivf.nprobe
    ivf.nprobe = ivf.nlist
    truth = _without_self(index.search(queries, k + 1)[1], query_ids, k)
    cap = max(start, int(ivf.nlist * MAX_PROBE_SHARE))
    nprobe = start
    while True:
        ivf.nprobe = nprobe
        got = _without_self(index.search(queries, k + 1)[1], query_ids, k)
        recall = _recall(got, truth)
        if recall >= target or nprobe >= cap:
            return Calibration(nprobe, recall, len(queries), recall >= target)
        nprobe = min(cap, nprobe * 2)


def _without_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> list[set]:
    return [set(row[(row != me) & (row >= 0)][:k].tolist()) for row, me in zip(ids, self_ids)]


def _recall(got: list[set], truth: list[set]) -> float:
    scores = [len(g & t) / len(t) for g, t in zip(got, truth) if t]
    return float(np.mean(scores)) if scores else 1.0


def outgrown(index: faiss.Index, n: int) -> bool:
    """True when an IVF index trained for far fewer vectors should be retrained for ``n``.

    Lists trained at n0 vectors hold n / nlist(n0) each; once n passes about 4 n0 a query scans
    twice the vectors it would after a rebuild, so the store rebuilds (amortised O(1) per add).
    """
    if not isinstance(index, faiss.IndexIVF):
        return False
    wanted = min(auto_nlist(n), max(1, n // 39))  # as new_index would train it on n vectors
    return index.nlist < wanted // 2


def _ivf_params(cfg: IndexCfg, n: int, dim: int) -> tuple[int, int]:
    nlist = cfg.ivf_nlist or auto_nlist(n)
    m = cfg.pq_m or max(1, dim // 4)
    while dim % m:
        m -= 1
    return nlist, m


def new_index(kind: str, dim: int, cfg: IndexCfg, train: np.ndarray | None = None,
              n: int | None = None) -> faiss.Index:
    """An empty index of ``kind``; IVF kinds are trained on ``train`` (a sample of the vectors).

    ``n`` is the number of vectors the index is built for (it sets the number of IVF lists);
    by default the size of ``train``.
    """
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = cfg.hnsw_ef_construction
        base.hnsw.efSearch = cfg.hnsw_ef_search
        return faiss.IndexIDMap2(base)
    if kind in ("ivf", "ivfpq"):
        if train is None or len(train) == 0:
            raise ValueError(f"an {kind} index needs training vectors")
        nlist, m = _ivf_params(cfg, max(n or 0, len(train)), dim)
        nlist = min(nlist, max(1, len(train) // 39))  # faiss wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            nbits = max(1, min(8, int(math.log2(len(train)))))  # PQ codebooks need >= 2**nbits points
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            # faiss prints a warning on stderr, once per sub-quantizer, when a codebook gets fewer than
            # 39 training points per centroid: the sample is bounded on purpose (TRAIN_PER_LIST), so
            # the note goes to the log instead (imgembed -v shows it).
            index.pq.cp.min_points_per_centroid = 1
            wanted = 39 * 2**nbits
            if min(len(train), TRAIN_PER_LIST * nlist) < wanted:
                logger.info("IVF-PQ codebooks trained on %d points (faiss suggests at least %d)",
                            min(len(train), TRAIN_PER_LIST * nlist), wanted)
        index.cp.niter = KMEANS_ITER
        train = np.ascontiguousarray(train[: TRAIN_PER_LIST * nlist], dtype=np.float32)
        index.train(train)
        index.nprobe = auto_nprobe(nlist, cfg)
        return index
    raise ValueError(f"unknown index type '{kind}'")


def build(kind: str, dim: int, cfg: IndexCfg, chunks: Iterator[tuple[np.ndarray, np.ndarray]],
          train: np.ndarray | None = None, n: int | None = None) -> faiss.Index:
    """A new index filled from ``(ids int64 (n,), vectors float32 (n, dim))`` chunks."""
    index = new_index(kind, dim, cfg, train, n)
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
    if isinstance(inner, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(inner, faiss.IndexIVF):
        return "ivfpq"
    raise ValueError(f"unsupported faiss index {type(inner).__name__}")


def nprobe_of(index: faiss.Index | None) -> int | None:
    """Lists an IVF index probes per query; None for other kinds."""
    if index is None or kind_of(index) not in ("ivf", "ivfpq"):
        return None
    return int(faiss.extract_index_ivf(index).nprobe)


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


def reconstruct(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """The vectors ``index`` holds for ``ids`` (float32 (n, d)); IVF-PQ gives its decoded codes.
    IVF indexes get an id lookup table for it (memory: a hash entry per vector)."""
    if not isinstance(index, faiss.IndexIDMap2):
        ivf = faiss.extract_index_ivf(index)
        if ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    return np.stack([index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, index.d), np.float32)


def read_flags(mmap: bool) -> int:
    """faiss read flags that map the index file instead of loading it.

    In faiss 1.15 ``IO_FLAG_MMAP`` maps only IVF inverted lists (flat and HNSW indexes are still
    read into memory); ``IO_FLAG_MMAP_IFC`` maps the codes of flat, HNSW and IVF indexes alike.
    """
    return faiss.IO_FLAG_MMAP_IFC if mmap else 0


def read(path: str, mmap: bool = False) -> faiss.Index:
    """Load an index file, or memory-map it (pages are read on demand, shared between processes)."""
    flags = read_flags(mmap)
    return faiss.read_index(path, flags) if flags else faiss.read_index(path)


_one_thread = threading.Lock()


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores (q, k), ids (q, k))``; missing slots have id -1."""
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(queries) > 1 or isinstance(index, faiss.IndexIDMap) and isinstance(
            faiss.downcast_index(index.index), faiss.IndexFlat):
        return index.search(queries, k)
    with one_thread():
        return index.search(queries, k)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run FAISS on one OpenMP thread inside the block (one query on an IVF or HNSW index).

    One such query does its work on one thread anyway; entering an OpenMP region of several
    threads only adds waits when other processes hold the cores (measured at 100k x 128-d on the
    busy 2 cores here: p50 0.14 ms, p99 16-20 ms with 2 threads).
    """
    with _one_thread:
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(threads)
