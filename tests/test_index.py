"""The indexing job and the store: incremental updates, identity checks, locking, search."""

import os
import shutil

import numpy as np
import pytest
from helpers import TINY, make_photo, write_photos

from imgembed.config import BackboneCfg, IndexCfg, IndexJobCfg
from imgembed.index.format import StoreError
from imgembed.index.store import StoreWriter
from imgembed.indexer import index_folder
from imgembed.query.search import Searcher


def cfg(**kw) -> IndexJobCfg:
    c = IndexJobCfg(backbone=BackboneCfg(name=TINY), **kw)
    c.embed.workers = 0
    return c


def live_paths(index_dir) -> set[str]:
    s = Searcher(index_dir)
    return {os.path.basename(r.path).decode() for r in s.snapshot.iter_rows()}


def test_first_run_indexes_everything_then_nothing(photos, tmp_path):
    ix = tmp_path / "ix"
    s1 = index_folder(photos, ix, cfg())
    assert (s1.indexed, s1.new, s1.unchanged, s1.deleted, s1.total) == (12, 12, 0, 0, 12)
    s2 = index_folder(photos, ix, cfg())
    assert (s2.indexed, s2.new, s2.unchanged, s2.deleted, s2.total) == (0, 0, 12, 0, 12)
    assert s2.publish.generation == 1  # nothing changed, nothing republished


def test_add_modify_rename_delete(photos, tmp_path):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    write_photos(photos / "new", 2, start=100)  # two new photos
    os.rename(photos / "c0" / "img0000.jpg", photos / "c0" / "renamed.jpg")  # rename
    shutil.copy(photos / "c1" / "img0001.jpg", photos / "copy.jpg")  # copy
    (photos / "c2" / "img0002.jpg").unlink()  # delete
    make_photo(999).save(photos / "c0" / "img0003.jpg")  # modify in place
    os.utime(photos / "c0" / "img0003.jpg", ns=(1, 1))
    s = index_folder(photos, ix, cfg())
    assert s.indexed == 3  # two new + one modified
    assert (s.new, s.changed, s.renamed, s.copied, s.deleted) == (2, 1, 1, 1, 1)
    assert s.total == 12 - 1 + 2 + 1
    names = live_paths(ix)
    assert "renamed.jpg" in names and "copy.jpg" in names
    assert "img0000.jpg" not in names and "img0002.jpg" not in names


def test_vectors_match_a_clean_build(photos, tmp_path):
    index_folder(photos, tmp_path / "a", cfg())
    (photos / "c0" / "img0000.jpg").unlink()
    write_photos(photos, 3, start=50)
    index_folder(photos, tmp_path / "a", cfg())
    index_folder(photos, tmp_path / "b", cfg())
    a, b = Searcher(tmp_path / "a").snapshot, Searcher(tmp_path / "b").snapshot
    ra = {r.relpath: r.id for r in a.iter_rows()}
    rb = {r.relpath: r.id for r in b.iter_rows()}
    assert ra.keys() == rb.keys()
    va, vb = a.vectors(ra.values()), b.vectors(rb.values())
    for rel in ra:
        np.testing.assert_allclose(va[ra[rel]], vb[rb[rel]], atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_agrees_with_brute_force(tmp_path, kind):
    folder = tmp_path / "p"
    write_photos(folder, 60)
    ix = tmp_path / "ix"
    c = cfg()
    c.index = IndexCfg(index_type=kind, ivf_nprobe=64)
    index_folder(folder, ix, c)
    s = Searcher(ix)
    rows = list(s.snapshot.iter_rows())
    vecs = s.snapshot.vectors([r.id for r in rows])
    ids = np.array([r.id for r in rows])
    X = np.stack([vecs[i] for i in ids])
    q = X[7]
    sims = X @ q
    expected = np.sort(sims)[::-1][:5]
    hits = s.search_vectors(q[None], k=5)[0]
    assert s.snapshot.index_type == kind
    assert hits[0].id == ids[7]
    # exact scores, and each is the true similarity of the id returned
    np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-5)
    np.testing.assert_allclose([h.score for h in hits], [sims[ids == h.id][0] for h in hits], atol=1e-5)


def test_ivfpq_index_through_the_store(tmp_path):
    folder = tmp_path / "p"
    write_photos(folder, 30)
    c = cfg()
    c.index = IndexCfg(index_type="ivfpq")
    index_folder(folder, tmp_path / "ix", c)
    s = Searcher(tmp_path / "ix")
    from imgembed.index.faiss_index import ids_of
    ids = sorted(r.id for r in s.snapshot.iter_rows())
    assert s.snapshot.index_type == "ivfpq" and sorted(ids_of(s.snapshot.index)) == ids
    hits = s.search_image_file(folder / "img0004.jpg", k=5)
    assert len({h.id for h in hits}) == 5 and set(h.id for h in hits) <= set(ids)
    # against brute force on the stored full-precision vectors: each score is close to the true
    # cosine of the photo it names, and every hit is among the exact top 10: the photos of the
    # query's kind (the test backbone puts those within 1e-3 of each other, below PQ's resolution)
    vecs = s.snapshot.vectors(ids)
    query = vecs[next(r.id for r in s.snapshot.iter_rows() if r.relpath == b"img0004.jpg")]
    exact = {i: float(v @ query) for i, v in vecs.items()}
    assert max(abs(h.score - exact[h.id]) for h in hits) < 0.01
    top10 = set(sorted(exact, key=exact.get, reverse=True)[:10])
    assert {h.id for h in hits} <= top10
    kind = {r.id: int(r.relpath[3:7]) % 3 for r in s.snapshot.iter_rows()}
    assert {kind[i] for i in top10} == {1}  # img0004 is of kind 1, like the other 9 of the top 10


def _synthetic_store(ix, kind: str, n: int = 6000, dim: int = 16, seed: int = 0):
    """A store filled through StoreWriter with ``n`` clustered unit vectors; returns them by id."""
    from imgembed.index.format import NewFile

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(60, dim))
    x = centres[rng.integers(0, 60, n)] + 0.4 * rng.normal(size=(n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ident = {"backbone": "synthetic", "backbone_fingerprint": "x", "pool": None, "head_fingerprint": None,
             "dim": dim, "preprocess": {}}
    files = [NewFile(f"{i:05d}.jpg".encode(), 1, i, f"{i:032x}", 8, 8) for i in range(n)]
    with StoreWriter(ix, ident, IndexCfg(index_type=kind)) as w:
        root = w.root_id("/photos")
        w.add(root, files, x)
        stats = w.publish()
    return stats, x


@pytest.mark.parametrize("kind,min_recall", [("ivf", 0.95), ("ivfpq", 0.5)])
def test_ivf_kinds_through_the_store_against_brute_force(tmp_path, kind, min_recall):
    """The store trains the lists on a sample, calibrates the probes, and answers like exact search."""
    stats, x = _synthetic_store(tmp_path / "ix", kind)
    assert stats.index_type == kind and stats.calibration is not None
    s = Searcher(tmp_path / "ix")
    by_rel = {r.relpath: r.id for r in s.snapshot.iter_rows()}
    ids = np.array([by_rel[f"{i:05d}.jpg".encode()] for i in range(len(x))])
    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), 50, replace=False)] + 0.05 * rng.normal(size=(50, x.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    got = [[h.id for h in hits] for hits in s.search_vectors(q, k=10)]
    recall = np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth, got)])
    assert recall >= min_recall, recall
    if kind == "ivf":  # full vectors in the lists: the scores are exact
        hits = s.search_vectors(q[:1], k=10)[0]
        exact = x[np.searchsorted(ids, [h.id for h in hits])] @ q[0]
        np.testing.assert_allclose([h.score for h in hits], exact, atol=1e-5)


def test_removal_in_hnsw_rebuilds(tmp_path):
    folder = tmp_path / "p"
    write_photos(folder, 10)
    c = cfg()
    c.index = IndexCfg(index_type="hnsw")
    index_folder(folder, tmp_path / "ix", c)
    (folder / "img0003.jpg").unlink()
    s = index_folder(folder, tmp_path / "ix", c)
    assert s.publish.rebuilt and s.total == 9
    assert Searcher(tmp_path / "ix").snapshot.count == 9


def test_other_backbone_is_a_clear_error(photos, tmp_path):
    index_folder(photos, tmp_path / "ix", cfg())
    other = cfg()
    other.backbone = BackboneCfg(name="test-tiny:16")
    with pytest.raises(StoreError, match="was built with backbone test-tiny") as e:
        index_folder(photos, tmp_path / "ix", other)
    assert "dim" in str(e.value)


def test_second_writer_is_refused(photos, tmp_path):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    ident = Searcher(ix).embedder.identity()
    with StoreWriter(ix, ident, IndexCfg()):
        with pytest.raises(StoreError, match="being written by pid"):
            index_folder(photos, ix, cfg())
    assert index_folder(photos, ix, cfg()).unchanged == 12  # lock released


def test_roots_share_one_index(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_photos(a, 4)
    write_photos(b, 5, start=10)
    ix = tmp_path / "ix"
    index_folder(a, ix, cfg())
    s = index_folder(b, ix, cfg())
    assert s.total == 9
    (a / "img0000.jpg").unlink()
    s = index_folder(b, ix, cfg())  # indexing b never touches a's entries
    assert s.total == 9 and s.deleted == 0
    assert index_folder(a, ix, cfg()).total == 8


def test_interrupted_run_keeps_vectors_and_finishes(photos, tmp_path, monkeypatch):
    """A run that dies after committing vectors leaves the old index readable; the next run
    publishes without embedding again."""
    ix = tmp_path / "ix"
    write_photos(photos / "more", 20, start=200)
    c = cfg()
    c.commit_every = 8
    c.embed.batch_size = 8
    from imgembed.index import store

    def boom(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.StoreWriter, "publish", boom)
    with pytest.raises(KeyboardInterrupt):
        index_folder(photos, ix, c)
    monkeypatch.undo()
    assert Searcher(ix).snapshot.count == 0  # nothing was published: an empty, openable index
    s = index_folder(photos, ix, c)
    assert s.indexed == 0 and s.unchanged == 32 and s.total == 32
    assert Searcher(ix).snapshot.count == 32


def test_search_by_image_bytes_and_by_id(photos, tmp_path):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    s = Searcher(ix)
    q = photos / "c1" / "img0004.jpg"
    hits = s.search_image_file(q, k=3)
    assert hits[0].path.endswith("img0004.jpg") and hits[0].score > 0.999
    row = s.snapshot.row_by_path(os.fsencode(q.resolve()))
    more = s.search_id(row.id, k=3)
    assert row.id not in [h.id for h in more] and len(more) == 3
    info = s.info()
    assert info.count == 12 and info.dim == 32 and info.index_type == "flat" and info.disk_bytes > 0


def test_hostile_manifest_is_a_clear_error(photos, tmp_path):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    (ix / "manifest.json").write_text('{"format_version": 1, "dim": "lots"}')
    with pytest.raises(StoreError, match="not a valid imgembed manifest"):
        Searcher(ix)
    (ix / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        Searcher(ix)


def test_missing_index_says_how_to_build(tmp_path):
    with pytest.raises(StoreError, match="imgembed index FOLDER"):
        Searcher(tmp_path / "nothing")


def test_explicit_index_type_sticks(photos, tmp_path):
    ix = tmp_path / "ix"
    c = cfg()
    c.index = IndexCfg(index_type="hnsw")
    index_folder(photos, ix, c)
    write_photos(photos, 1, start=77)
    s = index_folder(photos, ix, cfg())  # auto on a later run keeps the chosen type
    assert s.publish.index_type == "hnsw"
    assert Searcher(ix).snapshot.index_type == "hnsw"


def test_ivf_probes_are_calibrated_when_lists_are_trained(tmp_path):
    folder = tmp_path / "p"
    write_photos(folder, 60)
    c = cfg()
    c.index = IndexCfg(index_type="ivf")
    s = index_folder(folder, tmp_path / "ix", c)
    cal = s.publish.calibration
    assert cal is not None and cal.reached and cal.queries == 60 and cal.recall >= 0.95
    assert f"nprobe {cal.nprobe}: recall@10" in "\n".join(s.lines())
    searcher = Searcher(tmp_path / "ix")
    assert searcher.snapshot.index.nprobe == cal.nprobe == searcher.info().nprobe  # saved in the file
    write_photos(folder / "more", 3, start=200)
    assert index_folder(folder, tmp_path / "ix", c).publish.calibration is None  # lists kept: no rerun

    c.index = IndexCfg(index_type="ivf", target_recall=0.0)
    assert index_folder(folder, tmp_path / "off", c).publish.calibration is None
