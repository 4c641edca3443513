"""Near-duplicate groups, checked against a brute-force all-pairs reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from imgembed.query.duplicates import duplicate_groups, neighbour_graph, neighbour_graph_chunked


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference_groups(ids: np.ndarray, x: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components of the all-pairs graph with edges at similarity >= threshold."""
    sim = x @ x.T
    n = len(x)
    seen, out = set(), []
    for start in range(n):
        if start in seen:
            continue
        stack, comp = [start], []
        seen.add(start)
        while stack:
            a = stack.pop()
            comp.append(a)
            for b in np.nonzero(sim[a] >= threshold)[0].tolist():
                if b != a and b not in seen:
                    seen.add(b)
                    stack.append(b)
        if len(comp) > 1:
            out.append(sorted(int(ids[i]) for i in comp))
    return sorted(out)


def planted(seed: int, n: int = 60, dim: int = 16, copies: int = 5):
    """Random unit vectors plus near-copies of a few of them (noise well inside the threshold)."""
    rng = np.random.default_rng(seed)
    base = unit(rng.normal(size=(n, dim)))
    src = rng.choice(n, copies, replace=False)
    near = unit(base[src] + rng.normal(scale=0.02, size=(copies, dim)))
    x = np.concatenate([base, near, base[src[:2]]])  # near-copies, and two exact copies
    ids = rng.permutation(10_000)[: len(x)].astype(np.int64)  # ids are not row numbers
    return ids, x


def test_planted_copies_are_found():
    ids, x = planted(0)
    groups = duplicate_groups(neighbour_graph(ids, x, k=8), 0.95)
    assert sorted(g.ids for g in groups) == reference_groups(ids, x, 0.95)
    assert len(groups) == 5 and {len(g.ids) for g in groups} == {2, 3}
    assert all(0.95 <= g.score <= 1.0 + 1e-6 for g in groups)
    assert [g.score for g in groups] == sorted((g.score for g in groups), reverse=True)
    exact = [g for g in groups if len(g.ids) == 3]
    assert len(exact) == 2 and all(g.score > 0.99 for g in exact)


@settings(max_examples=25, deadline=None)
@given(seed=hs.integers(0, 10_000), threshold=hs.floats(0.0, 0.99))
def test_matches_brute_force_when_k_covers_everyone(seed, threshold):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 25))
    x = unit(rng.normal(size=(n, 4)))  # low dimension: many pairs above moderate thresholds
    ids = np.arange(100, 100 + n)
    groups = duplicate_groups(neighbour_graph(ids, x, k=n - 1), threshold)
    assert sorted(g.ids for g in groups) == reference_groups(ids, x, threshold)
    sim = x @ x.T
    for g in groups:  # the score is the bottleneck: the group splits above it
        rows = [i - 100 for i in g.ids]
        sub = sim[np.ix_(rows, rows)]
        assert g.score >= threshold - 1e-6
        assert len(reference_groups(np.array(g.ids), x[rows], g.score - 1e-6)) == 1
        if g.score < sub.max() - 1e-4:
            assert reference_groups(np.array(g.ids), x[rows], g.score + 1e-4) != [sorted(g.ids)]


def test_self_is_never_its_own_neighbour():
    x = unit(np.ones((4, 3)))  # four identical vectors: self may not come first in the search
    g = neighbour_graph(np.arange(4), x, k=3)
    for r in range(4):
        assert r not in g.nbr[r].tolist() and sorted(g.nbr[r].tolist()) == sorted(set(range(4)) - {r})


def test_small_and_bad_inputs():
    one = neighbour_graph(np.array([7]), unit(np.ones((1, 3))), k=8)
    assert one.nbr.shape == (1, 0) and duplicate_groups(one, 0.5) == []
    with pytest.raises(ValueError):
        neighbour_graph(np.arange(3), np.ones((2, 3)))


def test_chunked_search_through_an_index_matches_exact():
    import faiss

    ids, x = planted(1)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    index.add_with_ids(x, ids)
    chunks = [(ids[i:i + 16], x[i:i + 16]) for i in range(0, len(ids), 16)]
    chunked = neighbour_graph_chunked(chunks, index.search, k=8)
    exact = neighbour_graph(ids, x, k=8)
    assert (chunked.ids == exact.ids).all() and (chunked.nbr == exact.nbr).all()
    assert np.allclose(chunked.score, exact.score)
    assert [g.ids for g in duplicate_groups(chunked, 0.95)] == [g.ids for g in duplicate_groups(exact, 0.95)]
    # A neighbour the graph does not hold (removed since) is no edge, not an error.
    chunked.nbr[chunked.nbr == chunked.nbr[0, 0]] = 999_999
    groups = duplicate_groups(chunked, 0.0)
    assert groups and all(999_999 not in g.ids for g in groups)
