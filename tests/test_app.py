"""The Streamlit app, driven through Streamlit's AppTest (no browser): every flow of the page."""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from demo_index import demo_index
from helpers import ASSETS, TINY, write_photos
from PIL import Image

from imgembed.cli import main as cli
from imgembed.query.search import Searcher

APP = str(Path(__file__).resolve().parent.parent / "app.py")
HAT = ASSETS / "hat" / "2a12baab-f020-42e3-8e6b-5d82e3ed0b55.jpg"
CARD = re.compile(r'^<div class="ie-score">(-?\d\.\d{3})</div><div class="ie-name" title="([^"]*)">([^<]*)</div>'
                  r'<div class="ie-name" title="([^"]*)">([^<]*)</div>$')


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    return demo_index(tmp_path_factory)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The app sets PyTorch's thread count for its process; give the other tests theirs back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def start(monkeypatch, index: Path | str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("IMGEMBED_INDEX", str(index))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def cards(at) -> list[dict]:
    """Each result card's score, name (as shown, and in its hover title) and date line, in page order."""
    out = []
    for m in at.markdown:
        c = CARD.match(m.value)
        if c:
            assert c.group(2) == c.group(3) and c.group(4) == c.group(5).replace("&nbsp;", "")  # in full on hover
            out.append({"score": float(c.group(1)), "name": html.unescape(c.group(3)),
                        "about": html.unescape(c.group(5)).replace("\xa0", "")})
    return out


def results(at) -> list[tuple[float, str]]:
    """(score, name) of each result card, in page order."""
    return [(c["score"], c["name"]) for c in cards(at)]


def query_captions(at) -> list[str]:
    """The captions of the query's picture (the result cards have none)."""
    return [c for im in at.get("image") for c in im.captions if c]


def uploader(at):
    """The page's one uploader (a fresh one, under a new key, whenever another query replaces an upload)."""
    ups = [u for u in at.get("file_uploader") if (u.key or "").startswith("upload-")]
    assert len(ups) == 1, ups
    return ups[0]


def latency_ms(at) -> float:
    text = " ".join(m.value for m in at.markdown)
    m = re.search(r"query answered in \*\*(\d+) ms\*\*", text)
    assert m, text
    return float(m.group(1))


def md(text: str) -> str:
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])", r"\\\1", text)


def upload(at, name: str, data: bytes, mime: str = "image/jpeg"):
    uploader(at).set_value((name, data, mime)).run()
    assert not at.exception, at.exception
    return at


def index_tiny(folder: Path, ix: Path, backbone: str = TINY) -> Path:
    assert cli(["index", str(folder), "--index", str(ix), "--backbone", backbone, "--workers", "0"]) == 0
    return ix


# ---------------------------------------------------------------- demo index (real backbone)


@pytest.mark.slow
def test_upload_shows_neighbours_and_more_like_this(demo, monkeypatch):
    at = start(monkeypatch, demo)
    assert any("Upload a photo" in i.value for i in at.info)  # the page says what to do first
    upload(at, "my hat.jpg", HAT.read_bytes())
    hits = results(at)
    assert len(hits) == 10  # default k
    assert [s for s, _ in hits] == sorted((s for s, _ in hits), reverse=True)
    searcher = Searcher(demo)
    hat_id = next(r.id for r in searcher.snapshot.iter_rows() if r.relpath.endswith(HAT.name.encode()))
    expected = searcher.search_id(hat_id, 10)  # an indexed photo, uploaded: what a search from it finds
    assert [n for _, n in hits] == [h.row.relpath.decode() for h in expected]
    assert [s for s, _ in hits] == [round(h.score, 3) for h in expected]
    assert HAT.name not in " ".join(n for _, n in hits)  # never its own result
    assert any("is in the index as hat/" in c.value and "left out of its own results" in c.value for c in at.caption)
    latency_ms(at)
    assert not at.error

    # "More like this" on the second result makes it the query; it is left out of its own results.
    second = hits[1][1]
    buttons = [b for b in at.button if (b.key or "").startswith("more-")]
    assert len(buttons) == 10
    second_id = int(buttons[1].key.removeprefix("more-"))
    buttons[1].click().run()
    assert not at.exception
    assert query_captions(at) == [md(second)]
    assert uploader(at).value is None  # one query on screen: the upload chip went with its query
    again = results(at)
    assert len(again) == 10 and second not in [n for _, n in again]
    assert [n for _, n in again] == [h.row.relpath.decode() for h in Searcher(demo).search_id(second_id, 10)]
    at.button(key="back").click().run()  # back to the upload, with its results
    assert not at.exception and query_captions(at) == ["my hat\\.jpg"] and results(at) == hits


@pytest.mark.slow
def test_k_and_minimum_score(demo, monkeypatch):
    at = start(monkeypatch, demo)
    upload(at, "hat.jpg", HAT.read_bytes())
    at.slider(key="k").set_value(3).run()
    assert len(results(at)) == 3
    at.slider(key="k").set_value(30).run()
    all_hits = results(at)
    assert len(all_hits) == 30
    cut = all_hits[7][0]  # a threshold that keeps the first results and hides the rest
    at.slider(key="min_score").set_value(round(cut + 0.005, 2)).run()
    kept = results(at)
    assert 0 < len(kept) < 30 and all(s >= round(cut + 0.005, 2) for s, _ in kept)
    assert any("hidden" in m.value for m in at.markdown)
    at.slider(key="min_score").set_value(1.0).run()
    assert results(at) == []  # the photo itself, the only one that similar, is not its own result
    assert any("No photo reaches the minimum score" in i.value for i in at.info)


@pytest.mark.slow
def test_text_box_explains_why_it_is_unavailable(demo, monkeypatch):
    at = start(monkeypatch, demo)
    box = at.text_input(key="text_query")
    assert box.disabled
    why = " ".join(c.value for c in at.caption)
    assert "text tower" in why and "efficientnet" in why and "open_clip" in why


@pytest.mark.slow
def test_collection_info_and_map(demo, monkeypatch):
    at = start(monkeypatch, demo)
    at.radio(key="view").set_value("Collection").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Photos"] == "60" and metrics["Dimensions"] == "1280"
    assert metrics["On disk"].endswith("MiB") and float(metrics["On disk"].split()[0]) > 0
    facts = " ".join(m.value for m in at.markdown)
    assert "**Backbone** efficientnet\\-lite0" in facts and "**index type** flat" in facts
    assert len(at.get("plotly_chart")) == 1 and not at.get("image")  # the map, one chart
    assert any("All 60 photos" in c.value and "click it to search" in c.value for c in at.caption)


@pytest.mark.slow
def test_bad_uploads_get_a_message_and_the_app_keeps_working(demo, monkeypatch):
    at = start(monkeypatch, demo)
    good = HAT.read_bytes()
    huge = io.BytesIO()
    Image.new("1", (11_000, 10_000)).save(huge, format="PNG")  # 110 MP declared, a small file
    bad = {
        "notes.jpg": (b"this is not an image\n" * 10, "not an image"),
        "cut.jpg": (good[: len(good) // 3], "broken image"),
        "empty.png": (b"", "empty file"),
        "huge.png": (huge.getvalue(), "MP"),
        "big.jpg": (b"\xff" * (26 * 2**20), "upload limit"),
        "notes.pdf": (b"%PDF-1.4", "it is a .pdf file; the app reads .jpg"),  # refused in words, not an icon
    }
    for name, (data, why) in bad.items():
        upload(at, name, data)
        assert len(at.error) == 1, name
        assert why in at.error[0].value.replace("\\", "") and "cannot be used as a query" in at.error[0].value, name
        assert not results(at)
    upload(at, "fine.jpg", good)
    assert not at.error and len(results(at)) == 10


# ---------------------------------------------------------------- small indexes (test backbones)


def test_duplicates_view_groups_copies_ticks_and_downloads(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for cls in ("dress", "hat", "pants", "shoes", "t-shirt"):
        for p in sorted((ASSETS / cls).glob("*.jpg"))[:1]:
            shutil.copy(p, folder / f"{cls}.jpg")
    shutil.copy(folder / "hat.jpg", folder / "hat copy.jpg")  # exact copy
    with Image.open(folder / "shoes.jpg") as im:  # resized, re-encoded copy
        im.resize((im.width // 2, im.height // 2)).save(folder / "shoes small.jpg", quality=80)
    with Image.open(folder / "dress.jpg") as im:  # a crop: found by keypoints
        im.crop((0, 0, int(im.width * 0.8), int(im.height * 0.8))).save(folder / "dress crop.jpg", quality=90)
    ix = index_tiny(folder, tmp_path / "ix")
    at = start(monkeypatch, ix)
    at.radio(key="view").set_value("Duplicates").run()
    assert not at.exception
    groups = [m.value for m in at.markdown if m.value.startswith("**Group")]
    assert len(groups) == 3, groups  # the default preset: copies
    assert "identical bytes" in groups[0] and "hat" in groups[0]  # byte copies come first
    shoes = next(g for g in groups if "shoes" in g)
    assert "keep **shoes\\.jpg**" in shoes and "largest resolution" in shoes
    caps = [c for im in at.get("image") for c in im.captions]
    assert len(caps) == 6 and sum(c.startswith("**keep**") for c in caps) == 3
    assert any(c.startswith("dress crop") and "matching keypoints" in c for c in caps)
    assert not at.get("download_button")  # nothing ticked yet
    at.checkbox(key=f"drop-{_id(ix, b'shoes small.jpg')}").check().run()
    assert any("1 files ticked" in m.value for m in at.markdown)
    assert len(at.get("download_button")) == 2  # the CSV and the move script
    at.button(key="tick-all").click().run()
    assert any("3 files ticked" in m.value for m in at.markdown)
    at.radio(key="dup_mode").set_value("exact").run()
    groups = [m.value for m in at.markdown if m.value.startswith("**Group")]
    assert len(groups) == 1 and "hat" in groups[0]
    at.radio(key="dup_mode").set_value("threshold").run()
    at.slider(key="dup_threshold").set_value(1.0).run()
    assert len(at.get("image")) <= 2  # only the byte copy survives a cosine of 1.000
    assert all((folder / n).exists() for n in ("hat copy.jpg", "shoes small.jpg", "dress crop.jpg"))  # nothing moved


def _id(ix, relpath: bytes) -> int:
    return next(r.id for r in Searcher(ix).snapshot.iter_rows() if r.relpath == relpath)


def test_text_query_with_a_clip_backbone(photos, tmp_path, monkeypatch, tiny_clip):
    ix = index_tiny(photos, tmp_path / "ix", tiny_clip)
    at = start(monkeypatch, ix)
    box = at.text_input(key="text_query")
    assert not box.disabled
    box.input("a striped red photo").run()
    assert not at.exception and not at.error
    assert len(results(at)) == 10
    assert any("“a striped red photo”" in m.value for m in at.markdown)
    latency_ms(at)


def test_sidebar_filters_narrow_the_results_and_captions_show_date_and_camera(tmp_path, monkeypatch):
    from helpers import encode, make_photo

    folder = tmp_path / "photos"
    write_photos(folder / "old", 6)
    (folder / "phone").mkdir()
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Apple", "iPhone 15"
    exif.get_ifd(0x8769)[0x9003] = "2023:06:01 10:00:00"
    for i in range(3):
        data = encode(make_photo(30 + i, size=(160, 120)), "HEIF", exif=exif.tobytes())
        (folder / "phone" / f"IMG_{i}.HEIC").write_bytes(data)
    ix = index_tiny(folder, tmp_path / "ix")
    at = start(monkeypatch, ix)
    upload(at, "q.heic", (folder / "phone" / "IMG_0.HEIC").read_bytes(), "image/heic")  # a phone upload
    about = [c["about"] for c in cards(at)]
    assert len(about) == 8  # the query photo itself is left out
    assert sum(a == "2023-06-01 · Apple iPhone 15" for a in about) == 2  # date and camera
    assert sum(a.startswith("~") for a in about) == 6  # no EXIF: the file's date, marked
    at.selectbox(key="f_camera").set_value("Apple iPhone 15").run()
    assert [n.split("/")[0] for _, n in results(at)] == ["phone"] * 2
    at.selectbox(key="f_camera").set_value(None).run()
    at.multiselect(key="f_ext").set_value(["jpg"]).run()
    assert len(results(at)) == 6
    at.selectbox(key="f_under").set_value("phone").run()
    assert results(at) == [] and any("No photo matches these filters" in i.value for i in at.info)
    at.multiselect(key="f_ext").set_value([]).run()
    import datetime

    at.date_input(key="f_after").set_value(datetime.date(2023, 1, 1)).run()
    assert len(results(at)) == 2 and not at.exception


def test_pick_from_index_escapes_names_and_survives_missing_files(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    write_photos(folder, 6)
    odd = folder / "*bold*_[x](y)<b>:smile:.jpg"
    (folder / "img0000.jpg").rename(odd)
    ix = index_tiny(folder, tmp_path / "ix")
    (folder / "img0001.jpg").unlink()  # indexed, then gone from disk
    at = start(monkeypatch, ix)
    pick = at.selectbox(key="pick")
    assert len(pick.options) == 6
    # The list shows names as plain text; the app maps the choice back to an id, never to a path.
    pick.select_index(next(i for i, o in enumerate(pick.options) if o.startswith("*bold*"))).run()
    assert not at.exception
    escaped = "\\*bold\\*\\_\\[x\\]\\(y\\)\\<b\\>\\:smile\\:\\.jpg"
    assert query_captions(at) == [escaped]  # the query, shown escaped
    assert len(results(at)) == 5  # five neighbours, one of them gone from disk since indexing:
    assert len(at.warning) == 1
    assert at.warning[0].value.startswith("No preview of img0001\\.jpg") and "No such file" in at.warning[0].value
    for im in at.get("image"):
        assert all("/media/" in u and str(folder) not in u for u in im.value)  # bytes we decoded, not a path


def test_missing_index_explains_and_builds_one_from_the_page(photos, tmp_path, monkeypatch):
    target = tmp_path / "new-index"
    at = start(monkeypatch, target)
    assert not at.error and len(at.info) == 1 and at.info[0].value.startswith("There is no index at")  # no alarm
    assert any("imgembed index" in m.value for m in at.markdown)  # how to build one on the CLI
    at.text_input(key="first-folder").input(str(photos))
    at.text_input(key="first-backbone").input(TINY)
    next(b for b in at.button if b.label == "Index this folder").click().run()
    assert not at.exception and not at.error
    done = " ".join(s.value for s in at.success).replace("\\", "")
    assert "found 12 images: 12 new; 12 images in the index" in done and "images/s" in done
    assert any(c.value.startswith("12 photos") for c in at.caption)
    assert len(at.selectbox(key="pick").options) == 12  # the new index is open and searchable
    assert (target / "manifest.json").is_file()


def test_bad_folder_typed_into_the_page_is_explained(tmp_path, monkeypatch):
    at = start(monkeypatch, tmp_path / "ix")
    at.text_input(key="first-folder").input(str(tmp_path / "no such folder"))
    at.text_input(key="first-backbone").input(TINY)
    next(b for b in at.button if b.label == "Index this folder").click().run()
    assert not at.exception
    assert any("Could not index that folder" in e.value and "no such folder" in e.value for e in at.error)


def test_mismatched_index_is_explained(photos, tmp_path, monkeypatch):
    ix = index_tiny(photos, tmp_path / "ix")
    manifest = json.loads((ix / "manifest.json").read_text())
    manifest["backbone_fingerprint"] = "0" * 16  # as if built with other weights
    (ix / "manifest.json").write_text(json.dumps(manifest))
    at = start(monkeypatch, ix)
    assert len(at.error) == 1 and "was built with" in at.error[0].value
    assert not at.file_uploader  # no search page on an index it cannot read correctly


def test_hostile_uploads_and_names(tmp_path, monkeypatch):
    """A PostScript file named .jpg reaches no other Pillow plugin, a query image declaring 64 MP is
    refused (the upload limit is 50 MP), and a name with control characters is shown escaped."""
    from helpers import EPS, declared_png

    folder = tmp_path / "photos"
    write_photos(folder, 5)
    (folder / "img0000.jpg").rename(folder / "evil\x1b[2J\nname.jpg")
    at = start(monkeypatch, index_tiny(folder, tmp_path / "ix"))
    for name, data, why in [("holiday.jpg", EPS, "not an image"),
                            ("wide.png", declared_png(8000, 8000), "above the 50 MP limit")]:
        upload(at, name, data)
        assert len(at.error) == 1 and why in at.error[0].value, (name, at.error)
    upload(at, "fine.jpg", (folder / "img0001.jpg").read_bytes())
    names = [n for _, n in results(at)]
    assert "evil\\x1b[2J\\nname.jpg" in names, names  # control characters shown escaped
    shown = [c for im in at.get("image") for c in im.captions] + [m.value for m in at.markdown]
    assert not any("\x1b" in c or "\n" in c.replace("  \n", "") for c in shown)


# ---------------------------------------------------------------- the page keeps up with the user


def test_an_index_built_on_the_page_stays_open_in_new_tabs_and_is_listed_as_recent(photos, tmp_path, monkeypatch):
    other = index_tiny(photos, tmp_path / "other")
    at = start(monkeypatch, tmp_path / "missing")  # the app was started for an index that is not there
    at.text_input(key="first-folder").input(str(photos))
    at.text_input(key="first-index").input(str(tmp_path / "built"))
    at.text_input(key="first-backbone").input(TINY)
    next(b for b in at.button if b.label == "Index this folder").click().run()
    assert not at.exception and not at.error
    assert at.query_params["index"] == str(tmp_path / "built")  # a reload keeps it
    assert len(at.selectbox(key="pick").options) == 12

    from streamlit.testing.v1 import AppTest

    tab = AppTest.from_file(APP, default_timeout=180)  # a new tab (or a restart): no address, same app
    tab.run()
    assert not tab.exception and not tab.error
    assert any(c.value.startswith("12 photos") and "built" in c.value for c in tab.caption)

    tab.text_input(key="open-path").input(str(other))  # open another index from the sidebar
    next(b for b in tab.button if b.label == "Open").click().run()
    assert not tab.exception and tab.query_params["index"] == str(other)
    recent = tab.selectbox(key="recent")  # the one before is a click away
    assert recent.options == [str(tmp_path / "built")]
    recent.set_value(str(tmp_path / "built")).run()
    assert not tab.exception and tab.query_params["index"] == str(tmp_path / "built")

    monkeypatch.setenv("IMGEMBED_INDEX", str(other))  # started for another index: that one wins
    fresh = AppTest.from_file(APP, default_timeout=180)
    fresh.run()
    assert fresh.query_params["index"] == str(other)


def test_one_query_on_screen_with_a_way_back(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    write_photos(photos, 10)
    ix = index_tiny(photos, tmp_path / "ix")
    at = start(monkeypatch, ix)
    assert not [b for b in at.button if b.key == "back"]  # nothing to go back to yet
    upload(at, "mine.jpg", (photos / "img0003.jpg").read_bytes())
    first = results(at)
    more = [b for b in at.button if (b.key or "").startswith("more-")]
    more[0].click().run()
    assert uploader(at).value is None and query_captions(at) == [md(first[0][1])]  # the upload chip went
    assert at.selectbox(key="pick").value == int(more[0].key.removeprefix("more-"))  # the list shows the query
    at.selectbox(key="pick").select_index(5).run()
    picked = query_captions(at)
    assert picked == [md(at.selectbox(key="pick").options[5])]
    at.button(key="back").click().run()
    assert query_captions(at) == [md(first[0][1])]
    at.button(key="back").click().run()
    assert query_captions(at) == ["mine\\.jpg"] and results(at) == first  # the upload, its bytes kept
    assert not [b for b in at.button if b.key == "back"]  # the first query: nothing before it


def test_the_query_photo_is_never_its_own_result(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    write_photos(photos, 10)
    import shutil as sh

    sh.copy(photos / "img0003.jpg", photos / "copy of 3.jpg")
    ix = index_tiny(photos, tmp_path / "ix")
    at = start(monkeypatch, ix)
    upload(at, "img0003.jpg", (photos / "img0003.jpg").read_bytes())
    by_upload = results(at)
    note = " ".join(c.value for c in at.caption)
    assert "This photo is in the index as" in note and "copy of 3" in note
    pick = at.selectbox(key="pick")
    pick.select_index(pick.options.index("img0003.jpg")).run()
    by_pick = results(at)
    assert by_upload == by_pick and not {"img0003.jpg", "copy of 3.jpg"} & {n for _, n in by_pick}
    assert any("Identical copies left out of the results\\: copy of 3\\.jpg" in c.value for c in at.caption)


def test_cards_are_one_line_each_and_open_a_full_size_view(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    write_photos(photos, 10)
    long = photos / ("a very long name of a holiday photo taken on the beach at sunset " * 3).strip()
    (photos / "img0004.jpg").rename(long.with_suffix(".jpg"))
    ix = index_tiny(photos, tmp_path / "ix")
    at = start(monkeypatch, ix)
    upload(at, "q.jpg", (photos / "img0001.jpg").read_bytes())
    assert any(c["name"] == long.with_suffix(".jpg").name for c in cards(at))  # in full, in the hover title
    view = [b for b in at.button if (b.key or "").startswith("view-")]
    assert len(view) == len(cards(at))
    hit_id = int(view[0].key.removeprefix("view-"))
    view[0].click().run()
    assert not at.exception
    facts = " ".join(m.value for m in at.markdown if m.value.startswith("**Name**"))
    for label in ("Name", "Folder", "Pixels", "File size", "Taken", "Modified", "Indexed"):
        assert f"**{label}**" in facts, label
    row = Searcher(ix).snapshot.rows([hit_id])[hit_id]
    assert [c.value for c in at.code] == [os.fsdecode(row.path)]  # the path, to copy
    at.button(key=f"dialog-more-{hit_id}").click().run()  # "More like this" from the full-size view
    assert not at.exception and query_captions(at) == [md(row.relpath.decode())]


def test_streamlit_settings_hide_deploy_and_let_the_page_answer_large_uploads():
    import tomllib

    from imgembed.config import MAX_UPLOAD_MB

    cfg = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text())
    assert cfg["client"]["toolbarMode"] == "viewer"  # no "Deploy" button
    assert cfg["server"]["maxUploadSize"] > MAX_UPLOAD_MB  # the page says why, not the uploader's red icon
    assert cfg["server"]["address"] == "localhost"
