"""FAISS index types against a brute-force numpy reference on clustered unit vectors."""

import numpy as np
import pytest

from imgembed import vector_index
from imgembed.config import IndexCfg


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(4, n // 50), dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind,min_recall", [("flat", 1.0), ("hnsw", 0.95), ("ivfpq", 0.5)])
def test_recall_against_brute_force(kind, min_recall):
    X = clustered(3000, 32)
    ids = np.arange(1000, 4000, dtype=np.int64)
    cfg = IndexCfg(ivf_nprobe=16)
    index = vector_index.build(kind, 32, cfg, iter([(ids, X)]), train=X if kind == "ivfpq" else None)
    assert vector_index.kind_of(index) == kind
    assert sorted(vector_index.ids_of(index)) == list(ids)
    Q = X[:100] + 0.05 * np.random.default_rng(1).normal(size=(100, 32)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    truth = ids[np.argsort(-(Q @ X.T), axis=1)[:, :10]]
    _, got = vector_index.search(index, Q, 10)
    recall = np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth, got)])
    assert recall >= min_recall, recall


def test_remove_then_add_keeps_ids():
    X = clustered(500, 16)
    ids = np.arange(500, dtype=np.int64)
    index = vector_index.build("flat", 16, IndexCfg(), iter([(ids, X)]))
    assert vector_index.remove(index, np.array([3, 4, 5])) == 3
    vector_index.add(index, np.array([900], dtype=np.int64), X[3:4])
    _, got = vector_index.search(index, X[3:4], 1)
    assert got[0, 0] == 900 and index.ntotal == 498


def test_auto_rule_by_size():
    cfg = IndexCfg()
    assert vector_index.choose_type(cfg, 1000) == "flat"
    assert vector_index.choose_type(cfg, 1_000_000) == "hnsw"
    assert vector_index.choose_type(cfg, 50_000_000) == "ivfpq"
    with pytest.raises(ValueError, match="unknown index type"):
        vector_index.choose_type(IndexCfg(index_type="lsh"), 10)
