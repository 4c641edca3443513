"""Filtered search returns the k best photos among those the filters keep, for every index type,
checked against brute force over the matching photos (whose match is decided here in Python, not
by the SQL under test)."""

import numpy as np
import pytest

from imgembed.config import INDEX_TYPES, IndexCfg
from imgembed.index import filtered_search
from imgembed.index.filters import Filters, bound
from imgembed.index.format import META_VERSION, NewFile, StoreError
from imgembed.index.store import StoreWriter
from imgembed.query.search import Searcher

N, DIM = 4000, 16
EXTS = ["jpg"] * 90 + ["jpeg"] * 5 + ["heic"] * 4 + ["png"]  # heic: 4%, png: 1%
CAMERAS = [("Apple", "iPhone 15"), ("Canon", "Canon EOS R6"), (None, None), ("samsung", "SM-G991B")]


def _catalogue(n: int = N, seed: int = 0):
    """``(vectors, files)``: clustered unit vectors and files with varied metadata, in id order."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    x = centres[rng.integers(0, 40, n)] + 0.5 * rng.normal(size=(n, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    files = []
    for i in range(n):
        ext = EXTS[rng.integers(len(EXTS))]
        folder = ["2021/summer", "2022", "2023/trip", "2023/trip/day2", ""][rng.integers(5)]
        make, model = CAMERAS[rng.integers(len(CAMERAS))]
        exif = rng.random() < 0.8
        taken = f"{rng.integers(2019, 2025)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}T12:00:00"
        rel = (f"{folder}/" if folder else "") + f"p{i:05d}.{ext}"
        files.append(NewFile(rel.encode(), 1000 + i, i, f"{i:032x}", int(rng.integers(100, 4000)), 100,
                             taken, "exif" if exif else "mtime", make, model, None, None))
    return x, files


def _store(ix, kind: str, n: int = N):
    x, files = _catalogue(n)
    ident = {"backbone": "synthetic", "backbone_fingerprint": "x", "pool": None, "head_fingerprint": None,
             "dim": DIM, "preprocess": {}}
    with StoreWriter(ix, ident, IndexCfg(index_type=kind)) as w:
        w.add(w.root_id("/photos"), files, x)
        assert w.publish().index_type == kind
    return x, files


def _keeps(f: NewFile, filters: Filters) -> bool:
    """Whether a file matches, decided independently of the SQL."""
    rel = f.relpath.decode()
    folder, _, name = rel.rpartition("/")
    ext = name.rpartition(".")[2].lower()
    if filters.under and not (rel.startswith(filters.under.strip("/") + "/")):
        return False
    if filters.after and not f.taken >= bound(filters.after, "after"):
        return False
    if filters.before and not f.taken < bound(filters.before, "before"):
        return False
    if filters.camera and filters.camera.lower() not in f"{f.make or ''} {f.model or ''}".lower():
        return False
    if filters.min_width is not None and f.width < filters.min_width:
        return False
    aliases = {"jpg": {"jpg", "jpeg"}, "tif": {"tif", "tiff"}}
    if filters.ext and ext not in set().union(*(aliases.get(e, {e}) for e in filters.ext)):
        return False
    return True


FILTERS = [
    Filters(ext=("png",)),  # 1%
    Filters(ext=("heic",), camera="iphone"),  # about 1%
    Filters(under="2023/trip"),  # 40%, with its sub-folder
    Filters(after="2022-03", before="2024"),  # about 30%
    Filters(min_width=2000, ext=("jpg",)),  # about 50%, jpg keeps .jpeg
    Filters(camera="Canon EOS", under="2022", min_width=3900),  # a handful
    Filters(under="2021/summer", after="2030"),  # none
]


def _brute(x: np.ndarray, ids: np.ndarray, files, q: np.ndarray, filters: Filters, k: int):
    keep = np.array([_keeps(f, filters) for f in files])
    scores = x[keep] @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[keep][order], scores[order], int(keep.sum())


@pytest.mark.parametrize("kind", INDEX_TYPES)
def test_filtered_search_is_brute_force_over_the_matching_photos(tmp_path, kind):
    x, files = _store(tmp_path / "ix", kind)
    s = Searcher(tmp_path / "ix")
    ids = np.array(sorted(r.id for r in s.snapshot.iter_rows()))
    rng = np.random.default_rng(2)
    queries = x[rng.choice(N, 6, replace=False)] + 0.1 * rng.normal(size=(6, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for filters in FILTERS:
        for q in queries:
            want, want_scores, matching = _brute(x, ids, files, q, filters, 10)
            hits = s.search_vectors(q, k=10, filters=filters)[0]
            assert len(hits) == min(10, matching), (filters, len(hits), matching)
            assert all(_keeps(files[int(np.searchsorted(ids, h.id))], filters) for h in hits)
            np.testing.assert_allclose([h.score for h in hits], want_scores, atol=1e-5, err_msg=str(filters))
            assert [h.id for h in hits] == want.tolist(), filters


def test_a_large_subset_of_a_flat_index_is_still_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(filtered_search, "EXACT_BYTES", 0)  # through the FAISS id selector
    x, files = _store(tmp_path / "ix", "flat")
    s = Searcher(tmp_path / "ix")
    ids = np.array(sorted(r.id for r in s.snapshot.iter_rows()))
    for filters in FILTERS:
        for q in x[:3]:
            want, want_scores, matching = _brute(x, ids, files, q, filters, 10)
            hits = s.search_vectors(q, k=10, filters=filters)[0]
            assert [h.id for h in hits] == want.tolist(), filters


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_a_large_subset_keeps_the_recall_of_an_unfiltered_search(tmp_path, kind, monkeypatch):
    """Beyond what is searched exactly in memory, the index's own search runs with raised probes (efSearch)."""
    monkeypatch.setattr(filtered_search, "EXACT_BYTES", 100 * DIM * 4)
    x, files = _store(tmp_path / "ix", kind)
    s = Searcher(tmp_path / "ix")
    ids = np.array(sorted(r.id for r in s.snapshot.iter_rows()))
    rng = np.random.default_rng(3)
    queries = x[rng.choice(N, 40, replace=False)] + 0.1 * rng.normal(size=(40, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    filters = Filters(min_width=2000)  # about half
    plain, filtered = [], []
    for q in queries:
        want, _, matching = _brute(x, ids, files, q, filters, 10)
        hits = s.search_vectors(q, k=10, filters=filters)[0]
        assert len(hits) == 10 and matching > 100
        assert all(files[int(np.searchsorted(ids, h.id))].width >= 2000 for h in hits)
        filtered.append(len(set(want.tolist()) & {h.id for h in hits}) / 10)
        all_want = ids[np.argsort(-(x @ q))[:10]]
        plain.append(len(set(all_want.tolist()) & {h.id for h in s.search_vectors(q, k=10)[0]}) / 10)
    floor = 0.5 if kind == "ivfpq" else 0.9
    assert np.mean(filtered) >= min(floor, np.mean(plain) - 0.05), (np.mean(filtered), np.mean(plain))


def test_a_strict_filter_still_returns_k_photos(tmp_path):
    """Not "top k, then filter": 40 png photos, none of them among any query's unfiltered top 100."""
    x, files = _store(tmp_path / "ix", "ivf")
    s = Searcher(tmp_path / "ix")
    pngs = sum(f.relpath.endswith(b".png") for f in files)
    assert 10 <= pngs < 100
    for q in x[:20]:
        assert len(s.search_vectors(q, k=10, filters={"ext": ["png"]})[0]) == 10


def test_a_photo_is_left_out_of_its_own_filtered_neighbours(tmp_path):
    _store(tmp_path / "ix", "flat", n=300)
    s = Searcher(tmp_path / "ix")
    row = next(r for r in s.snapshot.iter_rows() if r.relpath.startswith(b"2022/"))
    hits = s.search_id(row.id, k=5, filters=Filters(under="2022"))
    assert len(hits) == 5 and row.id not in {h.id for h in hits}
    assert all(h.row.relpath.startswith(b"2022/") for h in hits)


def test_under_takes_absolute_paths_and_refuses_folders_outside_the_index(tmp_path):
    _store(tmp_path / "ix", "flat", n=300)
    s = Searcher(tmp_path / "ix")
    q = s.snapshot.vectors([1])[1]
    absolute = s.search_vectors(q, k=300, filters=Filters(under="/photos/2023/trip"))[0]
    relative = s.search_vectors(q, k=300, filters=Filters(under="2023/trip"))[0]
    assert absolute and [h.id for h in absolute] == [h.id for h in relative]
    assert len(s.search_vectors(q, k=300, filters=Filters(under="/"))[0]) == 300
    with pytest.raises(ValueError, match="no indexed folder contains"):
        s.search_vectors(q, k=5, filters=Filters(under=str(tmp_path)))


def test_results_carry_their_metadata(tmp_path):
    _, files = _store(tmp_path / "ix", "flat", n=50)
    s = Searcher(tmp_path / "ix")
    hits = s.search_vectors(s.snapshot.vectors([1])[1], k=50)[0]
    by_rel = {f.relpath: f for f in files}
    for h in hits:
        f = by_rel[h.row.relpath]
        assert h.taken == f.taken and h.meta.taken_from == f.taken_from
        assert h.meta.ext == f.relpath.rpartition(b".")[2].decode()
        assert h.meta.folder == f.relpath.rpartition(b"/")[0]
    assert {h.camera for h in hits} >= {"Apple iPhone 15", "Canon EOS R6"}  # no "Canon Canon EOS R6"


@pytest.mark.parametrize("bad,match", [
    ({"after": "yesterday"}, "expected a date"),
    ({"before": "2023-02-30"}, "not a valid date"),
    ({"min_width": -1}, "whole number"),
    ({"colour": "red"}, "unknown filter colour"),
])
def test_bad_filters_say_what_is_wrong(bad, match):
    with pytest.raises(ValueError, match=match):
        Filters.of(bad)


def test_filter_values_are_normalised():
    f = Filters(ext=".JPG, heic,", camera="  ", after="2023")
    assert f.ext == ("heic", "jpg") and f.camera is None
    assert bound("2023", "after") == "2023-01-01T00:00:00"
    assert bound("2023-06-01T14:30", "before") == "2023-06-01T14:30:00"
    assert not Filters() and Filters(min_width=0)
    assert Filters(ext="jpg").describe() == "ext jpg"


def test_a_filter_on_metadata_of_an_index_without_it_says_what_to_do(tmp_path):
    import sqlite3

    _store(tmp_path / "ix", "flat", n=20)
    con = sqlite3.connect(tmp_path / "ix" / "meta.sqlite")
    con.executescript(f"DROP TABLE photo_meta; PRAGMA user_version={META_VERSION - 1};")
    con.close()
    s = Searcher(tmp_path / "ix")
    q = s.snapshot.vectors([1])[1]
    assert len(s.search_vectors(q, k=5, filters=Filters(min_width=0))[0]) == 5  # no metadata needed
    with pytest.raises(StoreError, match="run imgembed index FOLDER"):
        s.search_vectors(q, k=5, filters=Filters(camera="canon"))


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_query_expansion_keeps_to_the_filter(tmp_path, kind):
    """Both searches of query expansion (the first, whose hits are folded in, and the expanded
    one) keep to the matching photos."""
    from imgembed.query.rerank import QE_K, expand_with

    x, files = _store(tmp_path / "ix", kind)
    s = Searcher(tmp_path / "ix")
    ids = np.array(sorted(r.id for r in s.snapshot.iter_rows()))
    for filters in FILTERS[:-1]:  # (the last keeps no photo)
        keep = np.array([_keeps(f, filters) for f in files])
        sub_x, sub_ids = x[keep], ids[keep]

        def brute(q, k):  # the reference: brute force over the matching photos only
            order = np.argsort(-(q @ sub_x.T), axis=1)[:, :k]
            return np.take_along_axis(q @ sub_x.T, order, axis=1), sub_ids[order]

        for q in x[:3]:
            expanded = expand_with(q[None], brute, lambda i: x[np.searchsorted(ids, i)], QE_K)
            want = brute(expanded, 10)[1][0]
            hits = s.search_vectors(q, k=10, filters=filters, qe=True)[0]
            assert [h.id for h in hits] == want.tolist(), filters
