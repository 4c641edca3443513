"""The duplicate finder end to end: copies of sample photos indexed with the tiny backbone, every
preset, the migration that brings older indexes along, the CLI's outputs and the move script."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess

import numpy as np
import pytest
from helpers import ASSETS, TINY

from imgembed.cli import main as cli
from imgembed.config import BackboneCfg, IndexJobCfg, ReaderCfg
from imgembed.index import format as index_format
from imgembed.index.snapshot import Snapshot
from imgembed.indexer import index_folder
from imgembed.ingest.edits import EDITS, make_copy
from imgembed.ingest.reader import open_image
from imgembed.query.copies import find_duplicates
from imgembed.query.duplicate_export import drop_csv, move_script

ORIGINALS = [sorted((ASSETS / c).glob("*.jpg"))[0] for c in ("dress", "hat", "shoes")]
OTHERS = [p for c in ("dress", "hat", "shoes", "pants", "t-shirt") for p in sorted((ASSETS / c).glob("*.jpg"))[1:4]]


def tiny_cfg() -> IndexJobCfg:
    cfg = IndexJobCfg(backbone=BackboneCfg(name=TINY))
    cfg.embed.workers = 0
    return cfg


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Three originals with every edit, twelve other photos of the same classes; the index."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    truth = {}
    for k, src in enumerate(ORIGINALS):
        data = src.read_bytes()
        (folder / f"o{k}.jpg").write_bytes(data)
        truth[f"o{k}.jpg"] = k
        im = open_image(data, ReaderCfg(), None)
        for e in EDITS:
            copy, suffix = make_copy(e, im, data, rng)
            name = f"o{k}-{e}{suffix or '.jpg'}"
            (folder / name).write_bytes(copy)
            truth[name] = k
    for i, src in enumerate(OTHERS):
        shutil.copy(src, folder / f"other{i}.jpg")
        truth[f"other{i}.jpg"] = 100 + i
    ix = tmp_path_factory.mktemp("ix") / "ix"
    summary = index_folder(folder, ix, tiny_cfg())
    assert summary.copy_data == len(truth) - 3  # the byte copies share their original's content
    return folder, ix, truth


def _groups(report) -> list[set[str]]:
    return [{m.row.relpath.decode() for m in g.members} for g in report.groups]


def test_copies_preset_groups_each_original_with_its_copies_only(collection):
    folder, ix, truth = collection
    report = find_duplicates(Snapshot(ix), "copies")
    groups = _groups(report)
    for g in groups:
        assert len({truth[n] for n in g}) == 1, g  # no group mixes photos
    for k in range(3):
        group = next(g for g in groups if f"o{k}.jpg" in g)
        found = {n.split("-", 1)[1].rsplit(".", 1)[0] for n in group if "-" in n}
        assert found >= set(EDITS) - {"crop60", "pad"}, (k, set(EDITS) - found)  # the benchmark measures those
    assert not any(n.startswith("other") for g in groups for n in g)
    kinds = {m.row.relpath.decode(): m.kind for g in report.groups for m in g.members}
    assert kinds["o0-bytes.jpg"] == "identical bytes" and kinds["o0-png.png"] == "same pixels"
    assert kinds["o0-crop80.jpg"] == "copy" and kinds["o0-rot90.jpg"] == "copy"
    for g in report.groups:  # the keeper has the largest canvas (the padded copy, when found)
        assert g.keeper.row.width * g.keeper.row.height == max(m.row.width * m.row.height for m in g.members)
        assert g.reason.startswith("largest")
    assert report.stats["missing copy data"] == 0 and report.stats["pairs verified"] > 0


def test_exact_preset_is_byte_copies_and_lossless_resaves(collection):
    folder, ix, truth = collection
    groups = _groups(find_duplicates(Snapshot(ix), "exact"))
    assert sorted(map(sorted, groups)) == sorted([f"o{k}-bytes.jpg", f"o{k}-png.png", f"o{k}.jpg"] for k in range(3))


def test_similar_preset_keeps_the_copies_and_a_threshold_groups_by_cosine(collection):
    folder, ix, truth = collection
    copies = _groups(find_duplicates(Snapshot(ix), "copies"))
    similar = _groups(find_duplicates(Snapshot(ix), "similar"))
    assert all(any(g <= s for s in similar) for g in copies)  # looser: every copies group is inside one
    by_cosine = find_duplicates(Snapshot(ix), threshold=0.999999)
    assert by_cosine.preset == "threshold"
    assert all(len({truth[m.row.relpath.decode()] for m in g.members}) == 1 for g in by_cosine.groups)
    with pytest.raises(ValueError, match="unknown preset"):
        find_duplicates(Snapshot(ix), "fuzzy")


def _copy_migration() -> int:
    return next(i for i, m in enumerate(index_format.MIGRATIONS) if "copy_data (hash" in m)


def test_an_index_from_before_the_migration_gets_copy_data_without_reembedding(collection, tmp_path):
    folder, ix, truth = collection
    old = tmp_path / "old"
    old.mkdir()
    for p in ix.iterdir():
        if p.name != index_format.DB and not p.name.startswith(index_format.DB):
            shutil.copy(p, old / p.name)
    pos = _copy_migration()
    con = sqlite3.connect(old / index_format.DB)  # the schema as it was before that migration
    for script in index_format.MIGRATIONS[:pos]:
        con.executescript(script)
    con.execute(f"PRAGMA user_version={pos}")
    con.execute("ATTACH ? AS new", (str(ix / index_format.DB),))
    for (table,) in con.execute("SELECT name FROM main.sqlite_master WHERE type='table'").fetchall():
        con.execute(f"DELETE FROM main.{table}")
        con.execute(f"INSERT INTO main.{table} SELECT * FROM new.{table}")
    con.commit()
    con.execute("DETACH new")
    con.close()
    before = Snapshot(old)  # a reader never migrates: the old index is read as it is
    assert find_duplicates(before, "copies").stats["missing copy data"] == len(truth)
    summary = index_folder(folder, old, tiny_cfg())
    assert summary.indexed == 0 and summary.unchanged == len(truth)  # nothing embedded again
    assert summary.copy_data == len(truth) - 3
    assert any("copy-detection data for" in line for line in summary.lines())
    assert _groups(find_duplicates(Snapshot(old), "copies")) == _groups(find_duplicates(Snapshot(ix), "copies"))
    con = sqlite3.connect(old / index_format.DB)
    assert con.execute("PRAGMA user_version").fetchone()[0] == len(index_format.MIGRATIONS)
    con.close()


def test_copy_data_of_removed_photos_is_purged(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    for i, src in enumerate(OTHERS[:4]):
        shutil.copy(src, folder / f"{i}.jpg")
    ix = tmp_path / "ix"
    index_folder(folder, ix, tiny_cfg())
    (folder / "0.jpg").unlink()
    index_folder(folder, ix, tiny_cfg())
    con = sqlite3.connect(ix / index_format.DB)
    assert con.execute("SELECT count(*) FROM copy_data").fetchone()[0] == 3
    con.close()


def test_cli_text_json_and_csv(collection, tmp_path, capsys):
    folder, ix, truth = collection
    out_csv = tmp_path / "d.csv"
    assert cli(["duplicates", "--index", str(ix), "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert text.count("group ") == 3 and "keep " in text and "largest resolution" in text
    assert "3 groups" in text.splitlines()[-2] and f"wrote {out_csv}" in text
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == sum(len(g.members) for g in find_duplicates(Snapshot(ix), "copies").groups)
    assert {r["keep"] for r in rows} == {"True", "False"} and all(r["kind"] for r in rows)
    assert cli(["duplicates", "--index", str(ix), "--preset", "exact", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["preset"] == "exact" and len(data["groups"]) == 3
    g = data["groups"][0]
    assert g["reason"] and sum(m["keep"] for m in g["members"]) == 1
    assert {m["kind"] for m in g["members"]} == {"identical bytes", "same pixels"}
    assert cli(["duplicates", "--index", str(ix), "--threshold", "2"]) == 1
    assert "--threshold is a cosine" in capsys.readouterr().err
    assert cli(["duplicates", "--index", str(tmp_path / "none")]) == 1
    assert "no index at" in capsys.readouterr().err


def test_move_script_moves_never_deletes_nor_overwrites(tmp_path):
    from imgembed.index.format import Row

    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    names = [b"a/one.jpg", b"two 'quoted' $x.jpg", "caf\u00e9.jpg".encode(), b"gone.jpg"]
    rows = []
    for i, rel in enumerate(names):
        if rel != b"gone.jpg":
            (root / os.fsdecode(rel)).write_bytes(b"x%d" % i)
        rows.append(Row(i, os.fsencode(root), rel, 2, 0, "h", 1, 1, 0.0))
    (tmp_path / "target" / "photos").mkdir(parents=True)
    (tmp_path / "target" / "photos" / "caf\u00e9.jpg").write_bytes(b"already there")
    script = tmp_path / "move.sh"
    script.write_bytes(move_script(rows, str(tmp_path / "target")))
    assert b"rm " not in script.read_bytes()
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True)
    assert (tmp_path / "target" / "photos" / "a" / "one.jpg").read_bytes() == b"x0"
    assert (tmp_path / "target" / "photos" / "two 'quoted' $x.jpg").read_bytes() == b"x1"
    assert not (root / "a" / "one.jpg").exists()
    assert (root / "caf\u00e9.jpg").read_bytes() == b"x2"  # not overwritten, left in place
    assert (tmp_path / "target" / "photos" / "caf\u00e9.jpg").read_bytes() == b"already there"
    assert "moved 2 files" in out.stdout and "skipped 2" in out.stdout and "not found" in out.stderr
    other = tmp_path / "elsewhere"
    script.write_bytes(move_script(rows[2:3], str(tmp_path / "target")))
    subprocess.run(["sh", str(script), str(other)], check=True, capture_output=True)
    assert (other / "photos" / "caf\u00e9.jpg").read_bytes() == b"x2"  # the first argument wins
    listing = list(csv.reader(io.StringIO(drop_csv(rows))))
    assert listing[0] == ["path", "size", "width", "height"] and len(listing) == 5
