"""imgembed verify finds damage; --repair fixes what can be fixed without re-embedding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_cfg as cfg

from imgembed import cli
from imgembed.config import IndexCfg
from imgembed.index import faiss_index, store
from imgembed.index import format as index_format
from imgembed.index.verify import verify
from imgembed.indexer import index_folder
from imgembed.query.search import Searcher


def _db(ix: Path):
    import sqlite3

    return sqlite3.connect(ix / index_format.DB, isolation_level=None)


def _search_ok(ix: Path, n: int) -> None:
    s = Searcher(ix)
    assert s.snapshot.count == n and len(s.snapshot.visible_ids()) == n
    q = s.snapshot.vectors(s.snapshot.visible_ids()[:1].tolist())
    assert len(s.search_vectors(next(iter(q.values()))[None], k=3)[0]) == 3


@pytest.mark.parametrize("damage", ["delete", "garbage", "wrong_ids", "fewer"])
def test_verify_finds_a_damaged_vectors_file_and_repair_rebuilds_it(photos, tmp_path, capsys, damage):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    f = ix / store.faiss_name(1)
    if damage == "delete":
        f.unlink()
    elif damage == "garbage":
        f.write_bytes(b"\0garbage" * 100)
    else:
        snap = Searcher(ix).snapshot
        ids = snap.visible_ids()
        vecs = snap.vectors(ids.tolist())
        keep = ids if damage == "wrong_ids" else ids[:-3]
        X = np.stack([vecs[int(i)] for i in keep])
        new_ids = keep + 1000 if damage == "wrong_ids" else keep
        import faiss

        faiss.write_index(faiss_index.build("flat", 32, IndexCfg(), iter([(new_ids, X)])), str(f))
    assert cli.main(["verify", "--index", str(ix)]) == 1
    out = capsys.readouterr().out
    expected = {"delete": "is missing", "garbage": "cannot be read",
                "wrong_ids": "12 ids without an entry, 12 entries without a vector",
                "fewer": "holds 9 vectors but 12 entries are visible"}[damage]
    assert expected in out and "--repair fixes it" in out and out.strip().endswith("FAILED")
    assert cli.main(["verify", "--index", str(ix), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "rebuilt vectors.2.faiss from the stored vectors (12 vectors, was generation 1)" in out
    assert verify(ix).ok and not list(ix.glob("vectors.1.faiss"))
    _search_ok(ix, 12)


def test_repair_drops_entries_without_vectors_and_the_next_run_embeds_them(photos, tmp_path):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    with _db(ix) as con:
        con.execute("DELETE FROM vectors WHERE hash IN (SELECT hash FROM files ORDER BY id LIMIT 2)")
    report = verify(ix)
    assert not report.ok and any("2 entries have no stored vector" in f.what for f in report.findings)
    from imgembed.index.verify import repair

    fixed = repair(ix)
    assert fixed.ok and fixed.rows == 10
    assert any("dropped 2 entries without a vector" in r for r in fixed.repaired)
    s = index_folder(photos, ix, cfg())
    assert (s.indexed, s.total) == (2, 12) and verify(ix).ok


def test_vanished_files_are_a_warning_and_repair_drops_them_on_request(photos, tmp_path, capsys):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    for p in sorted(photos.rglob("*.jpg"))[:3]:
        p.unlink()
    with _db(ix) as con:  # what a killed publish leaves: a file it recorded before creating it
        con.execute("INSERT INTO scratch VALUES ('.vectors.7.faiss.tmp')")
    (ix / ".vectors.7.faiss.tmp").write_bytes(b"x")
    (ix / ".notes.tmp").write_bytes(b"mine")  # not imgembed's: reported, never deleted
    assert cli.main(["verify", "--index", str(ix)]) == 0
    out = capsys.readouterr().out
    assert "warning: 3 recorded files no longer exist" in out and "note: files left by an interrupted run" in out
    assert "note: files imgembed did not make: .notes.tmp" in out
    assert cli.main(["verify", "--index", str(ix), "--repair"]) == 0
    assert "nothing needed repair" in capsys.readouterr().out and not (ix / ".vectors.7.faiss.tmp").exists()
    assert (ix / ".notes.tmp").read_bytes() == b"mine"
    assert cli.main(["verify", "--index", str(ix), "--repair", "--drop-missing"]) == 0
    out = capsys.readouterr().out
    assert "dropped 3 entries of files that no longer exist" in out and "warning" not in out
    _search_ok(ix, 9)


def test_repair_refuses_while_another_process_writes_and_what_it_cannot_fix(photos, tmp_path, capsys):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    ident = Searcher(ix).embedder.identity()
    with store.StoreWriter(ix, ident, IndexCfg()):
        assert cli.main(["verify", "--index", str(ix), "--repair"]) == 1
        assert "is being written by pid" in capsys.readouterr().err
    m = json.loads((ix / "manifest.json").read_text())
    (ix / "manifest.json").write_text(json.dumps({**m, "dim": 16}))
    assert cli.main(["verify", "--index", str(ix), "--repair"]) == 1
    err = capsys.readouterr().err
    assert "cannot repair" in err and "manifest says 16" in err
    with _db(ix) as con:  # nothing was deleted by the refused repair
        assert con.execute("SELECT count(*) FROM vectors").fetchone()[0] == 12
