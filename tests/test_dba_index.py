"""Database-side augmentation in an index: after any sequence of adds and removes, the stored and
searchable vectors are those a clean build of the same photos has; turning it off restores the
model's vectors; the schema migration that adds it upgrades an older index."""

import shutil
import sqlite3

import numpy as np
import pytest
from helpers import tiny_cfg, write_photos

from imgembed.index import format as fmt
from imgembed.index.augment import augment
from imgembed.index.snapshot import Snapshot
from imgembed.indexer import index_folder


def dba_cfg(mode="on"):
    c = tiny_cfg()
    c.index.dba = mode
    return c


def stored(ix):
    """``id -> vector`` from SQLite and from the FAISS file of the published generation."""
    snap = Snapshot(ix)
    ids = snap.visible_ids()
    sql = snap.vectors(ids.tolist())
    faiss_vecs = {int(i): snap.index.reconstruct(int(i)) for i in ids} if snap.index is not None else {}
    rows = {r.id: r for r in snap.iter_rows()}
    snap.close()
    return sql, faiss_vecs, rows


def plain_of(ix):
    con = sqlite3.connect(ix / fmt.DB)
    out = {h: np.frombuffer(v, dtype=np.float32) for h, v in con.execute("SELECT hash, vec FROM plain")}
    con.close()
    return out


def check_against_full_recompute(ix):
    sql, faiss_vecs, rows = stored(ix)
    plain = plain_of(ix)
    hashes = sorted({r.hash for r in rows.values()})
    assert set(plain) == set(hashes)  # nothing orphaned, nothing missing
    expect, _ = augment(np.stack([plain[h] for h in hashes]))
    by_hash = dict(zip(hashes, expect))
    for i, r in rows.items():
        assert np.allclose(sql[i], by_hash[r.hash], atol=1e-5), r.relpath
        assert np.allclose(faiss_vecs[i], by_hash[r.hash], atol=1e-5), r.relpath
    return {r.relpath: sql[i] for i, r in rows.items()}


def test_dba_stays_exact_under_adds_and_removes(tmp_path):
    photos, ix = tmp_path / "p", tmp_path / "ix"
    paths = write_photos(photos, 30)
    index_folder(photos, ix, dba_cfg())
    check_against_full_recompute(ix)
    write_photos(photos, 3, start=30)  # a few new photos: only the affected ones are recomputed
    index_folder(photos, ix, tiny_cfg())  # no option given: the index keeps DBA on
    check_against_full_recompute(ix)
    for p in paths[:2]:
        p.unlink()
    shutil.copy(paths[5], photos / "copy-of-5.jpg")  # a copy shares its vector, adds no neighbour
    index_folder(photos, ix, tiny_cfg())
    stepped = check_against_full_recompute(ix)
    clean = tmp_path / "clean"
    index_folder(photos, clean, dba_cfg())
    fresh = check_against_full_recompute(clean)
    assert stepped.keys() == fresh.keys()
    for rel in fresh:
        assert np.allclose(stepped[rel], fresh[rel], atol=1e-5), rel
    assert np.allclose(stepped[b"copy-of-5.jpg"], stepped[paths[5].name.encode()])


def test_dba_off_restores_the_model_vectors(tmp_path):
    photos = tmp_path / "p"
    write_photos(photos, 20)
    on, off = tmp_path / "on", tmp_path / "off"
    index_folder(photos, on, dba_cfg())
    index_folder(photos, off, tiny_cfg())
    a, _, rows_a = stored(on)
    b, _, rows_b = stored(off)
    plain = {r.relpath: b[i] for i, r in rows_b.items()}
    assert not all(np.allclose(a[i], plain[r.relpath], atol=1e-4) for i, r in rows_a.items())
    index_folder(photos, on, dba_cfg("off"))
    a, faiss_a, rows_a = stored(on)
    for i, r in rows_a.items():
        assert np.allclose(a[i], plain[r.relpath], atol=1e-6) and np.allclose(faiss_a[i], plain[r.relpath], atol=1e-6)
    assert plain_of(on) == {}


def test_the_dba_migration_upgrades_an_older_index(tmp_path):
    """Found by what it creates, not by its position: other migrations may come before or after it."""
    step = next(i for i, m in enumerate(fmt.MIGRATIONS) if "CREATE TABLE plain" in m)
    db = tmp_path / fmt.DB
    con = sqlite3.connect(db, isolation_level=None)
    for i in range(step):
        con.executescript("BEGIN;" + fmt.MIGRATIONS[i] + f"PRAGMA user_version={i + 1}; COMMIT;")
    assert not con.execute("SELECT 1 FROM sqlite_master WHERE name='plain'").fetchone()
    fmt.migrate(con)
    assert con.execute("SELECT 1 FROM sqlite_master WHERE name='plain'").fetchone()
    assert fmt.read_meta(con, "dba") == ""
    assert con.execute("PRAGMA user_version").fetchone()[0] == len(fmt.MIGRATIONS)
    con.close()


def test_unknown_dba_mode_is_refused(tmp_path):
    photos = tmp_path / "p"
    write_photos(photos, 4)
    with pytest.raises(ValueError, match="unknown DBA mode 'maybe'"):
        index_folder(photos, tmp_path / "ix", dba_cfg("maybe"))
