"""FAISS index types against a brute-force numpy reference on clustered unit vectors."""

import numpy as np
import pytest

from imgembed.config import IndexCfg
from imgembed.index import faiss_index


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(4, n // 50), dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind,min_recall", [("flat", 1.0), ("ivf", 0.95), ("hnsw", 0.95), ("ivfpq", 0.5)])
def test_recall_against_brute_force(kind, min_recall):
    X = clustered(3000, 32)
    ids = np.arange(1000, 4000, dtype=np.int64)
    cfg = IndexCfg(ivf_nprobe=16)
    index = faiss_index.build(kind, 32, cfg, iter([(ids, X)]), train=X if faiss_index.needs_training(kind) else None)
    assert faiss_index.kind_of(index) == kind
    assert sorted(faiss_index.ids_of(index)) == list(ids)
    Q = X[:100] + 0.05 * np.random.default_rng(1).normal(size=(100, 32)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    truth = ids[np.argsort(-(Q @ X.T), axis=1)[:, :10]]
    _, got = faiss_index.search(index, Q, 10)
    recall = np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth, got)])
    assert recall >= min_recall, recall


def test_remove_then_add_keeps_ids():
    X = clustered(500, 16)
    ids = np.arange(500, dtype=np.int64)
    index = faiss_index.build("flat", 16, IndexCfg(), iter([(ids, X)]))
    assert faiss_index.remove(index, np.array([3, 4, 5])) == 3
    faiss_index.add(index, np.array([900], dtype=np.int64), X[3:4])
    _, got = faiss_index.search(index, X[3:4], 1)
    assert got[0, 0] == 900 and index.ntotal == 498


def test_auto_rule_by_size():
    cfg = IndexCfg()
    assert faiss_index.choose_type(cfg, 1000) == "flat"
    assert faiss_index.choose_type(cfg, faiss_index.AUTO_FLAT_MAX + 1) == "ivf"
    assert faiss_index.choose_type(cfg, 1_000_000, 128) == "ivf"
    assert faiss_index.choose_type(cfg, 1_000_000, 1280) == "ivf"  # 5.1 GB of raw vectors
    assert faiss_index.choose_type(cfg, 50_000_000, 128) == "ivfpq"  # 25.6 GB would not fit
    assert faiss_index.choose_type(IndexCfg(index_type="hnsw"), 10) == "hnsw"
    with pytest.raises(ValueError, match="unknown index type"):
        faiss_index.choose_type(IndexCfg(index_type="lsh"), 10)


def test_ivf_lists_and_probes_follow_the_size():
    assert faiss_index.auto_nlist(1_000_000) == 4000
    assert faiss_index.auto_nprobe(4000, IndexCfg(ivf_nprobe=16)) == 62  # nlist / 64 beats the floor
    assert faiss_index.auto_nprobe(200, IndexCfg(ivf_nprobe=16)) == 16
    assert faiss_index.auto_nprobe(8, IndexCfg(ivf_nprobe=16)) == 8  # never more than the lists
    X = clustered(4000, 16)
    index = faiss_index.build("ivf", 16, IndexCfg(), iter([(np.arange(4000), X)]), train=X[:2000], n=4000)
    assert index.nlist == min(faiss_index.auto_nlist(4000), 2000 // 39)
    assert not faiss_index.outgrown(index, 4000)
    assert faiss_index.outgrown(index, 100 * 4000)  # lists trained for 4k vectors, now 400k
    assert not faiss_index.outgrown(faiss_index.build("flat", 16, IndexCfg(), iter([])), 10**7)


def test_ivf_removes_in_place():
    X = clustered(2000, 16)
    ids = np.arange(2000, dtype=np.int64)
    index = faiss_index.build("ivf", 16, IndexCfg(ivf_nprobe=64), iter([(ids, X)]), train=X)
    assert faiss_index.remove(index, np.array([5, 6, 7])) == 3
    assert sorted(faiss_index.ids_of(index)) == [i for i in range(2000) if i not in (5, 6, 7)]
    _, got = faiss_index.search(index, X[5:6], 5)
    assert 5 not in got[0]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_mmap_read_gives_the_same_answers(kind, tmp_path):
    import faiss

    X = clustered(1500, 16)
    ids = np.arange(1500, dtype=np.int64)
    index = faiss_index.build(kind, 16, IndexCfg(), iter([(ids, X)]), train=X if kind == "ivf" else None)
    path = str(tmp_path / "x.faiss")
    faiss.write_index(index, path)
    mapped = faiss_index.read(path, mmap=True)
    loaded = faiss_index.read(path)
    assert faiss_index.kind_of(mapped) == kind
    s1, i1 = faiss_index.search(loaded, X[:20], 5)
    s2, i2 = faiss_index.search(mapped, X[:20], 5)
    assert (i1 == i2).all() and np.allclose(s1, s2)
    assert faiss_index.read_flags(True) & faiss.IO_FLAG_MMAP_IFC and faiss_index.read_flags(False) == 0


def test_single_queries_match_the_batch_and_restore_threads():
    import faiss

    X = clustered(2000, 16)
    index = faiss_index.build("ivf", 16, IndexCfg(), iter([(np.arange(2000), X)]), train=X)
    threads = faiss.omp_get_max_threads()
    _, batch = faiss_index.search(index, X[:10], 5)
    one = np.concatenate([faiss_index.search(index, X[i:i + 1], 5)[1] for i in range(10)])
    assert (one == batch).all() and faiss.omp_get_max_threads() == threads


def _recall_excluding_self(index, ids, X, Q_idx, k=10):
    """Brute-force reference for calibrate(): queries are indexed vectors, their own entry left out."""
    sims = X[Q_idx] @ X.T
    sims[np.arange(len(Q_idx)), Q_idx] = -np.inf
    truth = ids[np.argsort(-sims, axis=1)[:, :k]]
    _, got = index.search(X[Q_idx], k + 1)
    got = [[g for g in row if g != ids[q]][:k] for row, q in zip(got, Q_idx)]
    return float(np.mean([len(set(t) & set(g)) / k for t, g in zip(truth, got)]))


def test_calibration_raises_probes_until_recall_meets_the_target():
    X = clustered(6000, 16, seed=3)
    X = X + np.random.default_rng(5).normal(size=X.shape).astype(np.float32)  # blur the clusters
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = np.arange(10_000, 16_000, dtype=np.int64)
    index = faiss_index.build("ivf", 16, IndexCfg(ivf_nlist=128, ivf_nprobe=1), iter([(ids, X)]), train=X)
    q = np.arange(0, 6000, 30)  # 200 indexed vectors as queries
    start = _recall_excluding_self(index, ids, X, q)
    assert start < 0.9  # one probe of 128 lists misses many neighbours

    cal = faiss_index.calibrate(index, ids[q], X[q], target=0.8)
    assert cal.reached and cal.recall >= 0.8 and cal.queries == len(q)
    assert index.nprobe == cal.nprobe > 1
    # the reported recall is what a brute-force search measures at that nprobe
    assert cal.recall == pytest.approx(_recall_excluding_self(index, ids, X, q), abs=1e-9)
    # and it is the smallest doubling that gets there
    index.nprobe = cal.nprobe // 2
    assert _recall_excluding_self(index, ids, X, q) < 0.8


def test_calibration_stops_at_the_probe_cap():
    X = clustered(4000, 32, seed=4)
    ids = np.arange(4000, dtype=np.int64)
    index = faiss_index.build("ivf", 32, IndexCfg(ivf_nlist=64, ivf_nprobe=1), iter([(ids, X)]), train=X)
    cal = faiss_index.calibrate(index, ids[:100], X[:100], target=1.01)  # unreachable
    assert not cal.reached and cal.nprobe == index.nprobe == 64 // 8
    assert "below the target" in cal.describe()
