"""Hostile index folders: links planted in a copied index, a folder that is no index, overlapping and
moved roots, non-finite vectors, FAISS files swapped or of another dimension, damaged databases."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat

import faiss
import numpy as np
import pytest
from helpers import TINY, write_photos
from helpers import tiny_cfg as cfg

from imgembed import cli
from imgembed.config import IndexCfg
from imgembed.errors import StoreError
from imgembed.index import faiss_index, store
from imgembed.index import format as index_format
from imgembed.index.verify import repair, verify
from imgembed.indexer import NON_FINITE, index_folder
from imgembed.model.head import HeadError, load_head
from imgembed.query.search import Searcher

VICTIM = b"export PATH=$HOME/bin:$PATH\n"


@pytest.fixture
def ix(photos, tmp_path):
    index_folder(photos, tmp_path / "ix", cfg())
    return tmp_path / "ix"


def _db(ix):
    return sqlite3.connect(ix / index_format.DB, isolation_level=None)


# ---------------------------------------------------------------- 1: links in an index folder


# Every file imgembed or SQLite writes in an index; the fast tier takes one of each kind.
LINKED = ["write.lock", "manifest.json", "meta.sqlite-wal", ".vectors.2.faiss.tmp",
          *(pytest.param(n, marks=pytest.mark.slow) for n in ("meta.sqlite", "meta.sqlite-shm", "meta.sqlite-journal",
                                                              "head.json", "vectors.1.faiss", "vectors.2.faiss",
                                                              ".manifest.json.tmp"))]


@pytest.mark.parametrize("name", LINKED)
def test_a_link_planted_in_a_copied_index_is_refused_and_its_target_untouched(ix, photos, tmp_path, capsys, name):
    copy = tmp_path / "copy"
    shutil.copytree(ix, copy)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    (copy / name).unlink(missing_ok=True)
    os.symlink("../victim.txt", copy / name)
    write_photos(photos / "new", 2, start=50)  # something to embed and publish
    runs = {"index": ["index", str(photos), "--backbone", TINY, "--workers", "0", "--no-progress"],
            "repair": ["verify", "--repair"], "search": ["search", str(next(photos.rglob("*.jpg")))]}
    for what, argv in runs.items():
        assert cli.main(argv + ["--index", str(copy)]) == 1, what
        err = capsys.readouterr().err
        assert f"{copy / name} is a symbolic link; imgembed never writes through a link" in err, (what, err)
    with pytest.raises(StoreError, match="is a symbolic link"):  # the app's "index a folder" form
        index_folder(photos, copy, cfg())
    assert victim.read_bytes() == VICTIM and os.path.islink(copy / name)
    report = verify(copy)
    assert not report.ok and any("is a symbolic link" in f.what for f in report.findings)


@pytest.mark.parametrize("name", ["write.lock", ".manifest.json.tmp", ".vectors.2.faiss.tmp"])
def test_files_are_opened_without_following_links_even_past_the_check(ix, photos, tmp_path, monkeypatch, name):
    """A link planted between the check and the write (or a check that missed it) still writes nothing."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    (ix / name).unlink(missing_ok=True)
    os.symlink(victim, ix / name)
    monkeypatch.setattr(store, "check_entries", lambda d: None)
    monkeypatch.setattr(index_format, "check_entries", lambda d: None)
    write_photos(photos / "new", 2, start=50)
    c = cfg()
    c.index = IndexCfg(index_type="hnsw")  # a changed index type rewrites the manifest too
    with pytest.raises(StoreError):
        index_folder(photos, ix, c)
    assert victim.read_bytes() == VICTIM


def test_a_folder_that_is_a_link_is_the_users_choice(ix, photos, tmp_path):
    os.symlink(ix, tmp_path / "alias")
    assert index_folder(photos, tmp_path / "alias", cfg()).unchanged == 12


# ---------------------------------------------------------------- 3: a folder that is no index


def test_indexing_into_a_folder_of_other_files_is_refused_and_deletes_nothing(photos, tmp_path, capsys):
    docs = tmp_path / "Documents"
    docs.mkdir()
    mine = {"report.docx": b"draft", ".draft.tmp": b"autosave", "vectors.old.faiss": b"my own file",
            "write.lock": b"do not truncate me"}
    for name, data in mine.items():
        (docs / name).write_bytes(data)
    rc = cli.main(["index", str(photos), "--index", str(docs), "--backbone", TINY, "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{docs} is not an imgembed index (it has no manifest.json) and is not empty" in err
    assert "pass another --index" in err
    assert {p.name: p.read_bytes() for p in docs.iterdir()} == mine
    (docs / "report.docx").unlink()
    (docs / ".draft.tmp").unlink()
    (docs / "vectors.old.faiss").unlink()
    with pytest.raises(StoreError, match="it holds 'write.lock'"):  # not a lock imgembed wrote
        index_folder(photos, docs, cfg())


def test_a_first_run_interrupted_before_its_manifest_can_be_finished(photos, tmp_path, monkeypatch):
    ix = tmp_path / "ix"

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.StoreWriter, "_create", killed)
    with pytest.raises(KeyboardInterrupt):
        index_folder(photos, ix, cfg())
    monkeypatch.undo()
    assert not (ix / "manifest.json").exists() and (ix / "meta.sqlite").exists()
    assert index_folder(photos, ix, cfg()).total == 12


def test_a_writer_deletes_only_files_it_recorded(ix, photos):
    mine = {"vectors.7.faiss": b"not ours", ".notes.tmp": b"not ours either", "README": b"about this index"}
    for name, data in mine.items():
        (ix / name).write_bytes(data)
    write_photos(photos / "new", 3, start=40)
    assert index_folder(photos, ix, cfg()).total == 15
    assert all((ix / n).read_bytes() == d for n, d in mine.items())
    assert sorted(p.name for p in ix.glob("vectors.*.faiss")) == ["vectors.2.faiss", "vectors.7.faiss"]
    with _db(ix) as con:
        assert con.execute("SELECT count(*) FROM scratch").fetchone()[0] == 0


def test_the_scratch_table_is_a_numbered_migration():
    """Added as a migration of its own (wherever it lands in the list), not into the first schema."""
    scripts = [m for m in index_format.MIGRATIONS if "CREATE TABLE scratch" in m]
    assert len(scripts) == 1 and scripts[0] is not index_format.MIGRATIONS[0]


def test_an_index_from_before_the_scratch_table_has_its_leftovers_cleaned_once(ix, photos):
    """An older index: its writer left a FAISS file and a temporary file, which that version's next
    writer would have deleted; this version adopts and deletes them, and nothing else."""
    step = next(i for i, m in enumerate(index_format.MIGRATIONS) if "CREATE TABLE scratch" in m)
    with _db(ix) as con:
        con.execute("DROP TABLE scratch")
        con.execute(f"PRAGMA user_version={step}")
    (ix / "vectors.5.faiss").write_bytes(b"left by a killed publish")
    (ix / ".manifest.json.abc123.tmp").write_bytes(b"{")
    assert index_folder(photos, ix, cfg()).unchanged == 12
    assert not (ix / "vectors.5.faiss").exists() and not (ix / ".manifest.json.abc123.tmp").exists()
    assert verify(ix).ok


# ---------------------------------------------------------------- 18: file modes


def test_every_file_keeps_the_umask_mode(photos, tmp_path):
    from imgembed.model.head import HeadCfg, ProjectionHead, save_head

    old = os.umask(0o022)
    try:
        head = tmp_path / "h"
        save_head(head, ProjectionHead(HeadCfg(in_dim=32, out_dim=8, backbone=TINY)))
        c = cfg()
        c.head = str(head)
        index_folder(photos, tmp_path / "ix", c)
    finally:
        os.umask(old)
    files = [*tmp_path.joinpath("ix").iterdir(), *tmp_path.glob("h.*")]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert {"manifest.json", "head.json", "head.safetensors", "h.json", "h.safetensors"} <= set(modes)
    assert all(m == 0o644 for m in modes.values()), modes


# ---------------------------------------------------------------- 4: overlapping and moved roots


def test_a_folder_inside_an_indexed_one_is_refused(ix, photos, capsys):
    rc = cli.main(["index", str(photos / "c1"), "--index", str(ix), "--backbone", TINY, "--workers", "0",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{photos / 'c1'} is inside {photos}, which this index already holds; index {photos}" in err
    assert Searcher(ix).snapshot.count == 12


def test_indexing_the_folder_around_an_indexed_one_takes_it_in(photos, tmp_path):
    ix = tmp_path / "ix"
    inner = index_folder(photos / "c1", ix, cfg())
    assert inner.total == 4
    s = index_folder(photos, ix, cfg())
    assert (s.total, s.unchanged, s.indexed, s.new, s.renamed, s.copied) == (12, 4, 8, 8, 0, 0)
    assert f"took in the 4 entries of {photos / 'c1'}, indexed before as a folder of its own" in "\n".join(s.lines())
    paths = [r.path for r in Searcher(ix).snapshot.iter_rows()]
    assert len(paths) == len(set(paths)) == 12
    assert verify(ix).ok


def test_an_index_already_listing_photos_twice_is_mended(photos, tmp_path):
    """An index made before overlapping roots were refused: every photo of c1 twice."""
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    with _db(ix) as con:  # c1's entries again under a root of its own, as the old code made them
        con.execute("INSERT INTO roots(path) VALUES (?)", (os.fsencode(photos / "c1"),))
        rid = con.execute("SELECT max(id) FROM roots").fetchone()[0]
        rows = [r for r in con.execute("SELECT relpath, size, mtime_ns, hash, width, height, indexed_at, added_gen "
                                       "FROM files").fetchall() if r[0].startswith(b"c1/")]
        con.executemany("INSERT INTO files(root_id, relpath, size, mtime_ns, hash, width, height, indexed_at, "
                        "added_gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [(rid, r[0][3:], *r[1:]) for r in rows])
        assert len(rows) == 4 and con.execute("SELECT count(*) FROM files").fetchone()[0] == 16
    s = index_folder(photos, ix, cfg())
    assert s.total == 12
    paths = [r.path for r in Searcher(ix).snapshot.iter_rows()]
    assert len(paths) == len(set(paths)) == 12


def test_a_moved_folder_does_not_leave_every_photo_twice(photos, tmp_path):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    moved = tmp_path / "Pictures"
    photos.rename(moved)
    s = index_folder(moved, ix, cfg())
    assert (s.total, s.indexed, s.renamed, s.copied) == (12, 0, 12, 0)  # moved, nothing embedded again
    assert f"dropped 12 entries of {photos}: that folder is gone and the same photos are in this one" in s.lines()
    assert {os.path.dirname(r.path) for r in Searcher(ix).snapshot.iter_rows()} <= {
        os.fsencode(moved / c) for c in ("c0", "c1", "c2")}
    assert verify(ix).ok


def test_a_folder_that_is_still_there_keeps_its_copies(photos, tmp_path):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    shutil.copytree(photos, tmp_path / "backup")
    assert index_folder(tmp_path / "backup", ix, cfg()).total == 24


# ---------------------------------------------------------------- 7: non-finite vectors


def test_a_head_with_nan_weights_is_refused(tmp_path):
    from imgembed.model.head import HeadCfg, ProjectionHead, save_head

    head = ProjectionHead(HeadCfg(in_dim=32, out_dim=8))
    head.proj.weight.data[0, 0] = float("nan")
    save_head(tmp_path / "nan", head)
    with pytest.raises(HeadError, match="not finite .NaN or infinity. in proj.weight; train the head again"):
        load_head(tmp_path / "nan")


def test_the_store_refuses_non_finite_vectors(ix):
    from imgembed.index.format import NewFile

    ident = Searcher(ix).embedder.identity()
    v = np.zeros((1, 32), np.float32)
    v[0, 3] = np.nan
    with store.StoreWriter(ix, ident, IndexCfg()) as w:
        with pytest.raises(StoreError, match="refusing 1 vectors that are not finite"):
            w.add(w.root_id(ix.parent / "photos"), [NewFile(b"x.jpg", 1, 1, "f" * 32, 1, 1)], v)


def test_a_model_that_gives_nan_skips_those_photos(photos, tmp_path, monkeypatch):
    from imgembed.model.embedder import Embedder

    real = Embedder.embed

    def half_nan(self, pixels):
        out = real(self, pixels)
        out[::2] = np.nan
        return out

    monkeypatch.setattr(Embedder, "embed", half_nan)
    s = index_folder(photos, tmp_path / "ix", cfg())
    assert s.total == 6 and len(s.skipped) == 6 and {why for _, why in s.skipped} == {NON_FINITE}
    monkeypatch.undo()
    assert verify(tmp_path / "ix").ok and index_folder(photos, tmp_path / "ix", cfg()).total == 12


def test_verify_finds_a_nan_vector_and_repair_drops_it(ix, photos, capsys):
    with _db(ix) as con:
        h, vec = con.execute("SELECT hash, vec FROM vectors LIMIT 1").fetchone()
        bad = np.frombuffer(vec, np.float32).copy()
        bad[5] = np.nan
        con.execute("UPDATE vectors SET vec=? WHERE hash=?", (bad.tobytes(), h))
    assert cli.main(["verify", "--index", str(ix)]) == 1
    out = capsys.readouterr().out
    assert "error: 1 stored vectors are not finite (NaN or infinity)" in out and "--repair fixes it" in out
    fixed = repair(ix)
    assert fixed.ok and any("deleted 1 vectors that were not finite" in r for r in fixed.repaired)
    assert index_folder(photos, ix, cfg()).indexed == 1  # embedded again


# ---------------------------------------------------------------- 14, 15: FAISS files swapped


def test_a_faiss_file_of_another_dimension_is_rebuilt_from_the_metadata(ix, capsys):
    faiss.write_index(faiss_index.build("flat", 16, IndexCfg(), iter([])), str(ix / "vectors.1.faiss"))
    assert cli.main(["verify", "--index", str(ix)]) == 1
    out = capsys.readouterr().out
    assert "vectors.1.faiss holds 16-d vectors but the manifest says 32 (imgembed verify --repair fixes it)" in out
    assert cli.main(["verify", "--index", str(ix), "--repair"]) == 0
    assert "rebuilt vectors.2.faiss from the stored vectors (12 vectors" in capsys.readouterr().out
    assert Searcher(ix).snapshot.count == 12 and verify(ix).ok


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_faiss_vectors_replaced_under_the_same_ids_are_found(tmp_path, kind, capsys):
    from test_index import _synthetic_store

    ix = tmp_path / "ix"
    _synthetic_store(ix, kind, n=400)
    assert verify(ix, check_files=False).ok
    snap = Searcher(ix).snapshot
    ids = snap.visible_ids()
    vecs = snap.vectors(ids.tolist())
    x = np.stack([vecs[int(i)] for i in ids])
    rolled = np.roll(x, 1, axis=0)  # every id now holds its neighbour's vector
    train = rolled if faiss_index.needs_training(kind) else None
    index = faiss_index.build(kind, 16, IndexCfg(), iter([(ids, rolled)]), train, len(ids))
    faiss.write_index(index, str(ix / "vectors.1.faiss"))
    report = verify(ix, check_files=False)
    assert not report.ok
    assert any("sampled vectors in vectors.1.faiss are not the ones stored in the metadata" in f.what and f.repairable
               for f in report.findings), report.lines()
    assert repair(ix).ok


# ---------------------------------------------------------------- 19: a damaged database


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_database_says_so_and_how_to_rebuild(ix, photos, capsys, damage):
    db = ix / index_format.DB
    for side in ("-wal", "-shm"):
        (ix / (index_format.DB + side)).unlink(missing_ok=True)
    if damage == "garbage":
        db.write_bytes(b"this is not a database " * 400)
    else:
        data = db.read_bytes()
        db.write_bytes(data[:100] + b"\xff" * (len(data) - 100))  # header kept, every page garbage
    query = str(next(photos.rglob("*.jpg")))
    for argv in (["index", str(photos), "--backbone", TINY, "--workers", "0", "--no-progress"],
                 ["search", query], ["info"], ["verify"]):
        rc = cli.main(argv + ["--index", str(ix)])
        out, err = capsys.readouterr()
        assert rc == 1, argv
        text = out + err
        assert f"{db} is damaged" in text and f"move {ix} away and run imgembed index YOUR_PHOTOS --index {ix}" in text, (
            argv, text)
        assert "Free disk space" not in text and "Traceback" not in text


def test_a_symlinked_wal_is_named_as_a_link_not_a_full_disk(ix, tmp_path, capsys):
    (ix / "meta.sqlite-wal").unlink(missing_ok=True)
    os.symlink(tmp_path / "elsewhere-wal", ix / "meta.sqlite-wal")
    assert cli.main(["info", "--index", str(ix)]) == 1
    err = capsys.readouterr().err
    assert "meta.sqlite-wal is a symbolic link" in err and "Free disk space" not in err
    assert not (tmp_path / "elsewhere-wal").exists()


def test_a_database_whose_tables_do_not_match_its_schema_version_says_so(tmp_path):
    folder = tmp_path / "p"
    write_photos(folder, 3)
    index_folder(folder, tmp_path / "ix", cfg(index=IndexCfg(dba="on")))
    con = sqlite3.connect(tmp_path / "ix" / index_format.DB)
    con.executescript("DROP TABLE plain;")  # as an index written by another version might be
    con.close()
    write_photos(folder, 1, start=50)
    with pytest.raises(StoreError, match="written by another version of imgembed"):
        index_folder(folder, tmp_path / "ix", cfg())
