"""The Streamlit app, driven through Streamlit's AppTest (no browser): every flow of the page."""

from __future__ import annotations

import io
import json
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
SCORE = re.compile(r"^\*\*(-?\d\.\d{3})\*\* · (.*)$")


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


def results(at) -> list[tuple[float, str]]:
    """(score, shown name) of each result tile, in page order."""
    out = []
    for im in at.get("image"):
        for cap in im.captions:
            m = SCORE.match(cap)
            if m:
                out.append((float(m.group(1)), m.group(2)))
    return out


def latency_ms(at) -> float:
    text = " ".join(m.value for m in at.markdown)
    m = re.search(r"query answered in \*\*(\d+) ms\*\*", text)
    assert m, text
    return float(m.group(1))


def md(text: str) -> str:
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])", r"\\\1", text)


def upload(at, name: str, data: bytes, mime: str = "image/jpeg"):
    at.file_uploader(key="upload").set_value((name, data, mime)).run()
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
    assert hits[0][1].endswith("2a12baab\\-f020\\-42e3\\-8e6b\\-5d82e3ed0b55\\.jpg") and hits[0][0] > 0.999
    assert [s for s, _ in hits] == sorted((s for s, _ in hits), reverse=True)
    expected = Searcher(demo).search_image_file(HAT, 10)  # the page shows what the library finds
    assert [n for _, n in hits] == [md(h.row.relpath.decode()) for h in expected]
    assert [s for s, _ in hits] == [round(h.score, 3) for h in expected]
    latency_ms(at)
    assert not at.error

    # "More like this" on the second result makes it the query; it is left out of its own results.
    second = hits[1][1]
    buttons = [b for b in at.button if (b.key or "").startswith("more-")]
    assert len(buttons) == 10
    second_id = int(buttons[1].key.removeprefix("more-"))
    buttons[1].click().run()
    assert not at.exception
    query_caps = [c for im in at.get("image") for c in im.captions if not SCORE.match(c)]
    assert query_caps == [second]
    again = results(at)
    assert len(again) == 10 and second not in [n for _, n in again]
    assert [n for _, n in again] == [md(h.row.relpath.decode()) for h in Searcher(demo).search_id(second_id, 10)]


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
    assert [s for s, _ in results(at)] == [1.0]  # only the photo itself is that similar


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
    assert metrics["Photos"] == "60" and metrics["Backbone"] == "efficientnet-lite0"
    assert metrics["Dimensions"] == "1280" and metrics["Index type"] == "flat"
    assert metrics["On disk"].endswith("MiB") and float(metrics["On disk"].split()[0]) > 0
    assert len(at.get("image")) == 1  # the map
    assert any("All 60 photos" in c.value for c in at.caption)


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
    }
    for name, (data, why) in bad.items():
        upload(at, name, data)
        assert len(at.error) == 1, name
        assert why in at.error[0].value and "cannot be used as a query" in at.error[0].value, name
        assert not results(at)
    upload(at, "fine.jpg", good)
    assert not at.error and len(results(at)) == 10


# ---------------------------------------------------------------- small indexes (test backbones)


def test_duplicates_view_groups_copies_side_by_side(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for cls in ("dress", "hat", "pants", "shoes", "t-shirt"):
        for p in sorted((ASSETS / cls).glob("*.jpg"))[:1]:
            shutil.copy(p, folder / f"{cls}.jpg")
    shutil.copy(folder / "hat.jpg", folder / "hat copy.jpg")  # exact copy
    with Image.open(folder / "shoes.jpg") as im:  # resized, re-encoded copy
        im.resize((im.width // 2, im.height // 2)).save(folder / "shoes small.jpg", quality=80)
    ix = index_tiny(folder, tmp_path / "ix", "efficientnet-lite0")
    at = start(monkeypatch, ix)
    at.radio(key="view").set_value("Duplicates").run()
    assert not at.exception
    at.slider(key="dup_threshold").set_value(0.9).run()
    caps = [c for im in at.get("image") for c in im.captions]
    assert len(caps) == 4, caps  # two groups of two, nothing else
    groups = [m.value for m in at.markdown if m.value.startswith("**Group")]
    assert len(groups) == 2 and all("2 photos" in g for g in groups)
    joined = " | ".join(caps)
    assert "hat copy\\.jpg" in joined and "shoes small\\.jpg" in joined
    small = next(c for c in caps if c.startswith("shoes small"))
    large = next(c for c in caps if c.startswith("shoes\\.jpg"))
    assert "**largest**" in large and "largest" not in small and "px" in small and "KB" in small
    assert not any("largest" in c for c in caps if c.startswith("hat"))  # same size: no pick made
    at.slider(key="dup_threshold").set_value(1.0).run()
    assert len(at.get("image")) <= 2  # only the exact copy can survive 1.000
    assert (folder / "hat copy.jpg").exists() and (folder / "shoes small.jpg").exists()  # nothing deleted


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
    caps = [c for im in at.get("image") for c in im.captions]
    escaped = "\\*bold\\*\\_\\[x\\]\\(y\\)\\<b\\>\\:smile\\:\\.jpg"
    assert caps and caps[0] == escaped  # the query, shown escaped
    assert len(results(at)) == 4  # five neighbours, one of them gone from disk since indexing:
    assert len(at.warning) == 1
    assert at.warning[0].value.startswith("No preview of img0001\\.jpg") and "No such file" in at.warning[0].value
    for im in at.get("image"):
        assert all("/media/" in u and str(folder) not in u for u in im.value)  # bytes we decoded, not a path


def test_missing_index_explains_and_builds_one_from_the_page(photos, tmp_path, monkeypatch):
    target = tmp_path / "new-index"
    at = start(monkeypatch, target)
    assert len(at.error) == 1 and "no index at" in at.error[0].value
    assert any("imgembed index" in m.value for m in at.markdown)  # how to build one on the CLI
    at.text_input(key="first-folder").input(str(photos))
    at.text_input(key="first-backbone").input(TINY)
    at.button[0].click().run()
    assert not at.exception and not at.error
    done = " ".join(s.value for s in at.success)
    assert "found 12 images: 12 new; 12 images in the index" in done and "images/s" in done
    assert any(c.value.startswith("12 photos") for c in at.caption)
    assert len(at.selectbox(key="pick").options) == 12  # the new index is open and searchable
    assert (target / "manifest.json").is_file()


def test_bad_folder_typed_into_the_page_is_explained(tmp_path, monkeypatch):
    at = start(monkeypatch, tmp_path / "ix")
    at.text_input(key="first-folder").input(str(tmp_path / "no such folder"))
    at.text_input(key="first-backbone").input(TINY)
    at.button[0].click().run()
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
    shown = [c for im in at.get("image") for c in im.captions] + [m.value for m in at.markdown]
    assert any("evil\\\\x1b\\[2J\\\\nname\\.jpg" in c for c in shown), shown
    assert not any("\x1b" in c or "\n" in c.replace("  \n", "") for c in shown)
