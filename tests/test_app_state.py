"""The app's state, kept in plain library code: the open and recent indexes (a settings file), the one
current query with its way back, and the words the page shows about photos and queries."""

from __future__ import annotations

import json

from imgembed.config import settings_path
from imgembed.index.format import MANIFEST, Meta, Row
from imgembed.query.history import QueryHistory
from imgembed.query.present import details, itself_note, meta_line, query_label, upload_problem
from imgembed.query.recent import (
    RECENT_MAX,
    AppSettings,
    index_for_page,
    index_to_open,
    is_index,
    load_settings,
    opened,
    recent_indexes,
    remember,
    save_settings,
)
from imgembed.query.search import Query


def _row(i: int, rel: bytes, **kw) -> Row:
    base = dict(id=i, root=b"/photos", relpath=rel, size=2_500_000, mtime_ns=0, hash="h", width=4000,
                height=3000, indexed_at=0.0)
    return Row(**{**base, **kw})


# ---------------------------------------------------------------- settings: the open and recent indexes


def test_settings_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("IMGEMBED_SETTINGS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert settings_path() == tmp_path / "cfg" / "imgembed" / "app.json"
    monkeypatch.setenv("IMGEMBED_SETTINGS", str(tmp_path / "s.json"))
    assert settings_path() == tmp_path / "s.json"


def test_missing_or_damaged_settings_read_as_empty(tmp_path):
    f = tmp_path / "app.json"
    assert load_settings(f) == AppSettings()
    for junk in ("{not json", "[1, 2]", json.dumps({"current": 3, "recent": "x"}), "\x00\xff"):
        f.write_text(junk)
        assert load_settings(f) == AppSettings()
    f.write_text(json.dumps({"current": "/a", "recent": ["/a", 7, "/b"]}))
    assert load_settings(f) == AppSettings("/a", None, ["/a", "/b"])


def test_remember_puts_the_index_first_once_and_keeps_a_few(tmp_path):
    f = tmp_path / "sub" / "app.json"  # the folder is made
    for i in range(RECENT_MAX + 3):
        remember(tmp_path / f"ix{i}", None, f)
    s = remember(tmp_path / "ix2", "/env", f)
    assert s.current == str(tmp_path / "ix2") and s.launched_with == "/env"
    assert s.recent[0] == str(tmp_path / "ix2") and len(s.recent) == RECENT_MAX
    assert len(set(s.recent)) == len(s.recent)
    assert load_settings(f) == s  # written


def test_unwritable_settings_are_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert save_settings(AppSettings("/a"), blocker / "app.json") is False


def test_which_index_a_page_opens():
    s = AppSettings(current="/built", launched_with=None)
    assert index_to_open("/url", s, None, "default") == "/url"  # the address wins
    assert index_to_open(None, s, None, "default") == "/built"  # remembered across tabs and restarts
    assert index_to_open(None, s, "/other", "default") == "/other"  # started for another index: that one
    assert index_to_open(None, AppSettings("/built", "/other"), "/other", "d") == "/built"
    assert index_to_open(None, AppSettings(), None, "default") == "default"


def test_opened_remembers_and_the_next_page_opens_it(tmp_path, monkeypatch):
    f = tmp_path / "app.json"
    monkeypatch.delenv("IMGEMBED_INDEX", raising=False)
    ix = tmp_path / "ix"
    ix.mkdir()
    (ix / MANIFEST).write_text("{}")
    opened(ix, f)
    mtime = f.stat().st_mtime_ns
    opened(ix, f)  # nothing changed: not written again
    assert f.stat().st_mtime_ns == mtime
    assert index_for_page(None, "fallback", f) == str(ix)
    assert index_for_page("/url", "fallback", f) == "/url"
    gone = tmp_path / "gone"
    opened(gone, f)
    assert [(r.path, r.exists) for r in recent_indexes(load_settings(f))] == [(str(gone), False), (str(ix), True)]
    assert is_index(ix) and not is_index(gone) and not is_index(tmp_path)


# ---------------------------------------------------------------- one current query, and back


def test_history_keeps_one_current_query_and_goes_back():
    h = QueryHistory(limit=3)
    assert h.current is None and not h.can_go_back
    up = Query("image", image=b"jpeg", name="a.jpg")
    h.go(up)
    v = h.version
    h.go(up)  # the same query again changes nothing
    assert h.version == v and not h.can_go_back
    h.go(Query("id", id=4))
    h.go(Query("text", text="a hat"))
    assert h.current == Query("text", text="a hat") and h.previous() == Query("id", id=4)
    assert h.back() == Query("id", id=4)
    assert h.back() == up and h.current.image == b"jpeg"  # an upload comes back with its bytes
    assert h.back() is None and not h.can_go_back
    for i in range(10):
        h.go(Query("id", id=i))
    assert len([h.back() for _ in range(5) if h.can_go_back]) == 3  # at most ``limit`` kept


# ---------------------------------------------------------------- words on the page


def test_upload_problem_names_the_type_or_the_size():
    assert upload_problem("a.JPG", 1000) is None
    assert "a .pdf file" in upload_problem("doc.pdf", 10)
    assert ".jpg" in upload_problem("doc.pdf", 10)  # says what it reads
    assert "without a suffix" in upload_problem("README", 10)
    assert "above the 25 MB upload limit" in upload_problem("big.png", 26 * 2**20)


def test_query_labels_and_the_note_about_the_query_photo():
    rows = {3: _row(3, b"hats/a.jpg")}
    assert query_label(Query("image", image=b"x", name="u.jpg")) == "upload u.jpg"
    assert query_label(Query("id", id=3), rows) == "hats/a.jpg"
    assert query_label(Query("id", id=9), rows) == "photo 9"
    assert query_label(Query("text", text="a hat")) == "“a hat”"
    same = [_row(3, b"hats/a.jpg"), _row(5, b"copy.jpg")]
    assert itself_note(Query("image", image=b"x"), []) is None
    note = itself_note(Query("image", image=b"x"), same)
    assert "hats/a.jpg, copy.jpg" in note and "left out of its own results" in note
    assert itself_note(Query("id", id=3), same) == "Identical copies left out of the results: copy.jpg."
    assert itself_note(Query("id", id=3), same[:1]) is None
    many = [_row(i, f"c{i}.jpg".encode()) for i in range(6)]
    assert "and 3 more" in itself_note(Query("image", image=b"x"), many)


def test_details_of_a_photo():
    facts = dict(details(_row(3, b"hats/a.jpg", mtime_ns=int(1.7e18))))
    assert facts["Name"] == "hats/a.jpg" and facts["Folder"] == "/photos"
    assert facts["Pixels"] == "4000 × 3000" and facts["File size"] == "2.4 MB"
    assert facts["Modified"].startswith("20")


def test_the_date_and_camera_line_and_the_facts_of_a_photo_with_metadata():
    exif = Meta("2023-06-01T10:00:00", "exif", "Apple", "iPhone 15", 48.85837, 2.29448, "heic", b"")
    file_date = Meta("2024-01-02T03:04:05", "mtime", None, None, None, None, "jpg", b"")
    assert meta_line(exif) == "2023-06-01 · Apple iPhone 15"
    assert meta_line(file_date) == "~2024-01-02"  # no capture time: the file's date, marked
    assert meta_line(None) == ""
    facts = dict(details(_row(3, b"a.heic"), exif))
    assert facts["Taken"] == "2023-06-01 10:00" and facts["Camera"] == "Apple iPhone 15"
    assert facts["Location"] == "48.85837, 2.29448"
    facts = dict(details(_row(3, b"a.jpg"), file_date))
    assert "no capture time recorded" in facts["Taken"] and "Camera" not in facts and "Location" not in facts
