"""Photo metadata: read from EXIF at index time (capture time, else the file's mtime, and which),
camera, GPS, suffix and folder; an index made before metadata was recorded is brought along by
the next run without re-embedding."""

import os
import sqlite3

import pytest
from helpers import encode, make_photo, tiny_cfg
from PIL import Image

from imgembed.config import ReaderCfg
from imgembed.index.format import META_VERSION, MIGRATIONS, path_meta
from imgembed.indexer import index_folder
from imgembed.ingest.metadata import PhotoMeta, parse_exif_time
from imgembed.ingest.reader import metadata_of, read_metadata
from imgembed.query.search import Searcher


def exif_bytes(taken="2023:06:01 14:03:22", make="Apple", model="iPhone 15", gps=True) -> bytes:
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    if gps:
        g = exif.get_ifd(0x8825)
        g[1], g[2], g[3], g[4] = "S", (33.0, 51.0, 36.0), "E", (151.0, 12.0, 36.0)
    return exif.tobytes()


def photo(path, seed, fmt="JPEG", **exif):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(make_photo(seed, size=(64, 48)), fmt, exif=exif_bytes(**exif)))
    return path


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF", "AVIF", "PNG", "WEBP", "TIFF"])
def test_exif_fields_are_read_from_every_format(fmt):
    data = encode(make_photo(1, size=(32, 24)), fmt, exif=exif_bytes())
    m = metadata_of(data, ReaderCfg())
    assert m == PhotoMeta("2023-06-01T14:03:22", "Apple", "iPhone 15", -33.86, 151.21)


@pytest.mark.parametrize("value,want", [
    ("2023:06:01 14:03:22", "2023-06-01T14:03:22"),
    (b"2023:06:01 14:03:22\x00", "2023-06-01T14:03:22"),
    ("2023-06-01 14:03:22", "2023-06-01T14:03:22"),
    ("0000:00:00 00:00:00", None),
    ("    :  :     :  :  ", None),
    ("1700:01:01 00:00:00", None),
    (12345, None),
])
def test_capture_times_are_parsed_strictly(value, want):
    assert parse_exif_time(value) == want


def test_broken_or_missing_exif_gives_empty_metadata(tmp_path):
    plain = encode(make_photo(1), "JPEG")
    assert metadata_of(plain, ReaderCfg()) == PhotoMeta()
    assert metadata_of(b"not an image", ReaderCfg()) == PhotoMeta()
    assert read_metadata(str(tmp_path / "missing.jpg"), ReaderCfg()) == PhotoMeta()
    bad_gps = encode(make_photo(1), "JPEG", exif=exif_bytes(gps=False))
    assert metadata_of(bad_gps, ReaderCfg()).lat is None


def test_path_meta():
    assert path_meta(b"2023/trip/IMG_1.HEIC") == ("heic", b"2023/trip")
    assert path_meta(b"top.jpg") == ("jpg", b"")
    assert path_meta(b"a/.hidden") == ("", b"a")
    assert path_meta(b"noext") == ("", b"")


def _meta_by_name(ix) -> dict:
    s = Searcher(ix)
    with s.snapshot.read():
        rows = {r.id: r for r in s.snapshot.iter_rows()}
        meta = s.snapshot.meta(rows)
    return {rows[i].relpath.decode(): m for i, m in meta.items()}


def test_indexing_records_metadata(tmp_path):
    root = tmp_path / "photos"
    photo(root / "2023" / "trip" / "a.jpg", 1)
    photo(root / "b.heic", 2, fmt="HEIF", make="Canon", model="Canon EOS R6", gps=False)
    plain = root / "c.png"
    make_photo(3).save(plain)
    os.utime(plain, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    index_folder(root, tmp_path / "ix", tiny_cfg())
    meta = _meta_by_name(tmp_path / "ix")
    a, b, c = meta["2023/trip/a.jpg"], meta["b.heic"], meta["c.png"]
    assert (a.taken, a.taken_from, a.camera, a.lat, a.lon) == ("2023-06-01T14:03:22", "exif", "Apple iPhone 15",
                                                               -33.86, 151.21)
    assert (a.ext, a.folder) == ("jpg", b"2023/trip")
    assert (b.camera, b.ext, b.folder, b.lat) == ("Canon EOS R6", "heic", b"", None)
    from datetime import datetime

    assert c.taken_from == "mtime" and c.taken == datetime.fromtimestamp(1_600_000_000).isoformat()
    assert c.camera is None


def test_renamed_photos_get_metadata_without_being_embedded(tmp_path):
    root = tmp_path / "photos"
    photo(root / "a.jpg", 1)
    index_folder(root, tmp_path / "ix", tiny_cfg())
    (root / "a.jpg").rename(root / "moved.jpg")
    s = index_folder(root, tmp_path / "ix", tiny_cfg())
    assert (s.indexed, s.renamed, s.copied) == (0, 1, 0)
    assert _meta_by_name(tmp_path / "ix")["moved.jpg"].camera == "Apple iPhone 15"


def _downgrade(ix) -> None:
    """The index as an imgembed before photo metadata left it: schema version 1, no photo_meta table."""
    assert MIGRATIONS[META_VERSION - 1].strip().startswith("CREATE TABLE IF NOT EXISTS photo_meta")
    con = sqlite3.connect(ix / "meta.sqlite")
    con.executescript(f"DROP TABLE photo_meta; PRAGMA user_version={META_VERSION - 1};")
    con.close()


def test_an_index_made_before_metadata_is_brought_along_without_re_embedding(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for i in range(6):
        photo(root / f"p{i}.jpg", i, model=f"iPhone {i}")
    index_folder(root, tmp_path / "ix", tiny_cfg())
    _downgrade(tmp_path / "ix")

    old = Searcher(tmp_path / "ix")  # searching an older index works; it just has no metadata
    assert not old.snapshot.has_meta
    q = old.snapshot.vectors([1])[1]
    before = [(h.id, round(h.score, 6)) for h in old.search_vectors(q, k=6)[0]]
    assert len(before) == 6 and all(h.meta is None for h in old.search_vectors(q, k=6)[0])
    gen = old.snapshot.generation
    old.snapshot.close()

    import imgembed.model.embedder as embedder

    def no_model(*a, **k):
        raise AssertionError("nothing should be embedded")

    monkeypatch.setattr(embedder.Embedder, "embed", no_model)
    s = index_folder(root, tmp_path / "ix", tiny_cfg())
    assert (s.indexed, s.renamed, s.copied, s.unchanged, s.metadata) == (0, 0, 0, 6, 6)
    assert any("metadata" in line and "6 photos" in line for line in s.lines())

    new = Searcher(tmp_path / "ix")
    assert new.snapshot.has_meta and new.snapshot.generation == gen  # the same published vectors
    hits = new.search_vectors(q, k=6)[0]
    assert [(h.id, round(h.score, 6)) for h in hits] == before
    assert sorted(h.camera for h in hits) == [f"Apple iPhone {i}" for i in range(6)]
    assert len(new.search_vectors(q, k=6, filters={"camera": "iphone 3"})[0]) == 1
    again = index_folder(root, tmp_path / "ix", tiny_cfg())  # read once only
    assert again.metadata == 0


def test_a_long_lived_reader_sees_metadata_read_later(tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        photo(root / f"p{i}.jpg", i)
    index_folder(root, tmp_path / "ix", tiny_cfg())
    con = sqlite3.connect(tmp_path / "ix" / "meta.sqlite")
    con.execute("DELETE FROM photo_meta")  # as build-index leaves it: no metadata yet
    con.commit()
    con.close()
    reader = Searcher(tmp_path / "ix")
    q = reader.snapshot.vectors([1])[1]
    assert reader.search_vectors(q, k=3, filters={"camera": "iphone"})[0] == []
    gen = reader.snapshot.generation
    index_folder(root, tmp_path / "ix", tiny_cfg())  # reads it, same generation
    assert reader.snapshot.current_generation() == gen
    assert len(reader.search_vectors(q, k=3, filters={"camera": "iphone"})[0]) == 3


def test_removed_photos_take_their_metadata_with_them(tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        photo(root / f"p{i}.jpg", i)
    index_folder(root, tmp_path / "ix", tiny_cfg())
    (root / "p0.jpg").unlink()
    index_folder(root, tmp_path / "ix", tiny_cfg())
    index_folder(root, tmp_path / "ix", tiny_cfg())  # the removed row is purged here
    con = sqlite3.connect(tmp_path / "ix" / "meta.sqlite")
    n_files, n_meta = con.execute("SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM photo_meta)").fetchone()
    con.close()
    assert n_files == n_meta == 2


def test_a_folder_taken_in_by_its_parent_keeps_its_metadata_right(tmp_path):
    """Indexing photos/ after photos/hat/ moves hat's entries under photos/: their folder follows."""
    root = tmp_path / "photos"
    photo(root / "hat" / "a.jpg", 1)
    photo(root / "b.jpg", 2)
    index_folder(root / "hat", tmp_path / "ix", tiny_cfg())
    assert _meta_by_name(tmp_path / "ix")["a.jpg"].folder == b""
    index_folder(root, tmp_path / "ix", tiny_cfg())
    meta = _meta_by_name(tmp_path / "ix")
    assert meta["hat/a.jpg"].folder == b"hat" and meta["b.jpg"].folder == b""
