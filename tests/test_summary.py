"""The index run's summary describes what the user did, and adds up to what is on disk; a folder or
an index with nothing in it says so."""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import TINY, make_photo, write_photos

from imgembed.cli import main
from imgembed.config import BackboneCfg, IndexJobCfg
from imgembed.indexer import NothingToIndex, index_folder
from imgembed.query.search import Searcher


def cfg() -> IndexJobCfg:
    c = IndexJobCfg(backbone=BackboneCfg(name=TINY))
    c.embed.workers = 0
    return c


def classes(s) -> dict[str, int]:
    return {"new": s.new, "changed": s.changed, "renamed": s.renamed, "copied": s.copied,
            "unchanged": s.unchanged, "skipped": len(s.skipped), "deleted": s.deleted}


def index_cli(folder, ix, capsys) -> tuple[int, str, str]:
    rc = main(["index", str(folder), "--index", str(ix), "--backbone", TINY, "--workers", "0"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_the_issues_mix_of_changes(tmp_path, capsys):
    """5 renames, 3 copies, 4 in-place edits, 2 touches, 6 deletes and 8 additions on 40 photos."""
    folder = tmp_path / "photos"
    paths = write_photos(folder, 40)
    ix = tmp_path / "ix"
    rc, out, _ = index_cli(folder, ix, capsys)
    assert rc == 0 and out.startswith("found 40 images: 40 new; 40 images in the index\n"), out

    for i, p in enumerate(paths[0:5]):  # renames: one in place, the others moved into a sub-folder
        dest = folder / f"renamed{i}.jpg" if i == 0 else folder / "moved" / p.name
        dest.parent.mkdir(exist_ok=True)
        os.rename(p, dest)
    for i, p in enumerate(paths[5:8]):
        shutil.copy2(p, folder / f"copy{i}.jpg")
    for i, p in enumerate(paths[8:12]):  # edited in place: other pixels, same name
        make_photo(500 + i).save(p, quality=90)
        os.utime(p, ns=(10**9 * (i + 1), 10**9 * (i + 1)))
    for p in paths[12:14]:  # touched: same bytes, a new mtime
        os.utime(p, ns=(7 * 10**18, 7 * 10**18))
    for p in paths[14:20]:
        p.unlink()
    write_photos(folder / "added", 8, start=200)

    on_disk = sum(1 for _ in folder.rglob("*.jpg"))
    assert on_disk == 40 - 6 + 3 + 8
    s = index_folder(folder, ix, cfg())
    assert classes(s) == {"new": 8, "changed": 4, "renamed": 5, "copied": 3, "unchanged": 40 - 5 - 4 - 6,
                          "skipped": 0, "deleted": 6}
    assert s.found == on_disk == s.total
    assert s.indexed == 12  # the 8 new and the 4 edited photos: nothing else is embedded
    line = s.lines()[0]
    assert line == (f"found {on_disk} images: 8 new, 4 changed, 5 renamed or moved, 3 copied, 25 unchanged; "
                    f"6 deleted; {on_disk} images in the index")

    # The index holds exactly the files on disk, each with the vector of its content.
    rows = {r.relpath.decode(): r for r in Searcher(ix).snapshot.iter_rows()}
    assert set(rows) == {str(p.relative_to(folder)) for p in folder.rglob("*.jpg")}
    # The touched files kept their entries and now cost one stat: a third run finds all unchanged.
    stages = []
    again = index_folder(folder, ix, cfg(), progress=lambda stage, d, t: stages.append(stage))
    assert classes(again) == {"new": 0, "changed": 0, "renamed": 0, "copied": 0, "unchanged": on_disk,
                              "skipped": 0, "deleted": 0}
    assert stages == [] and again.publish.generation == s.publish.generation  # nothing hashed or published


def test_a_touched_file_is_unchanged_and_keeps_its_entry(tmp_path):
    folder = tmp_path / "photos"
    paths = write_photos(folder, 4)
    ix = tmp_path / "ix"
    index_folder(folder, ix, cfg())
    before = {r.relpath: r.id for r in Searcher(ix).snapshot.iter_rows()}
    os.utime(paths[0], ns=(5 * 10**18, 5 * 10**18))
    s = index_folder(folder, ix, cfg())
    assert (s.unchanged, s.changed, s.copied, s.renamed, s.deleted) == (4, 0, 0, 0, 0)
    assert {r.relpath: r.id for r in Searcher(ix).snapshot.iter_rows()} == before


def test_copies_within_a_first_run_are_counted_as_copies(tmp_path):
    folder = tmp_path / "photos"
    paths = write_photos(folder, 3)
    shutil.copy(paths[0], folder / "again.jpg")
    s = index_folder(folder, tmp_path / "ix", cfg())
    assert (s.new, s.copied, s.found, s.total) == (3, 1, 4, 4)


def test_a_moved_folder_counts_as_moved(tmp_path):
    old = tmp_path / "trip"
    write_photos(old, 5)
    ix = tmp_path / "ix"
    index_folder(old, ix, cfg())
    new = tmp_path / "2024 trip"
    os.rename(old, new)
    s = index_folder(new, ix, cfg())
    assert (s.renamed, s.copied, s.new, s.deleted, s.total, s.indexed) == (5, 0, 0, 0, 5, 0)
    assert any(line.startswith("dropped 5 entries of") for line in s.lines())


def test_skipped_files_add_up(tmp_path, capsys):
    folder = tmp_path / "photos"
    write_photos(folder, 5)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    rc, out, err = index_cli(folder, tmp_path / "ix", capsys)
    assert rc == 0
    assert out.splitlines()[0] == "found 6 images: 5 new, 1 skipped; 5 images in the index"
    assert "skipped broken.jpg" in err


def test_a_folder_without_images_says_so_and_fails(tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "clip.mov").write_bytes(b"\0" * 10)
    (folder / "notes.txt").write_text("hello")
    ix = tmp_path / "ix"
    rc, out, err = index_cli(folder, ix, capsys)
    assert rc == 1 and out == ""
    assert err.startswith(f"error: no images found in {folder}; imgembed reads .jpg, .jpeg, .png"), err
    assert "(not read: 1 ." in err and "1 .txt" in err and "1 .mov" in err and len(err.splitlines()) == 1
    assert not ix.exists()  # no index made of nothing


def test_an_emptied_folder_keeps_its_entries(tmp_path, capsys):
    """An empty (or unmounted) folder is refused, never taken as "delete everything"."""
    folder = tmp_path / "photos"
    paths = write_photos(folder, 3)
    ix = tmp_path / "ix"
    index_folder(folder, ix, cfg())
    for p in paths:
        p.unlink()
    with pytest.raises(NothingToIndex, match="the index is unchanged"):
        index_folder(folder, ix, cfg())
    assert Searcher(ix).info().count == 3


def test_a_folder_of_unreadable_images_fails(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not an image at all")
    (folder / "b.png").write_bytes(b"")
    rc, out, err = index_cli(folder, tmp_path / "ix", capsys)
    assert rc == 1
    lines = out.splitlines()
    assert lines[0] == "found 2 images: 2 skipped; 0 images in the index"
    assert lines[1].startswith("none of the 2 images could be read (reasons above); imgembed reads .jpg")
    assert "skipped a.jpg" in err and "skipped b.png" in err


def test_a_missing_folder_and_a_file_are_named_as_such(tmp_path, capsys):
    rc, _, err = index_cli(tmp_path / "nope", tmp_path / "ix", capsys)
    assert rc == 1 and err == f"error: {tmp_path / 'nope'}: no such folder\n"
    (tmp_path / "a.jpg").write_bytes(b"x")
    rc, _, err = index_cli(tmp_path / "a.jpg", tmp_path / "ix", capsys)
    assert rc == 1 and "is a file, not a folder" in err


def test_searching_an_empty_index_says_it_is_empty(tmp_path, capsys):
    folder = tmp_path / "photos"
    paths = write_photos(folder, 2)
    ix = tmp_path / "ix"
    index_folder(folder, ix, cfg())
    for p in paths:  # the photos were deleted and the index updated with --drop-missing
        p.unlink()
    assert main(["verify", "--index", str(ix), "--repair", "--drop-missing"]) == 0
    capsys.readouterr()
    q = tmp_path / "q.jpg"
    make_photo(3).save(q)
    assert main(["search", str(q), "--index", str(ix)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: the index at {ix} is empty"), err
    assert "imgembed index" in err
