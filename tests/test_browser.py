"""End to end in a real browser: Debian's Chromium, driven by Playwright, against `streamlit run app.py`.

Needs /usr/bin/chromium (`apt-get install chromium`; `make test` installs it). Without it the test
is skipped with the reason, except in CI (CI=true), where it fails: CI must run it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from demo_index import demo_index
from helpers import ASSETS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
QUERY = ASSETS / "hat" / "2a12baab-f020-42e3-8e6b-5d82e3ed0b55.jpg"
SECOND = sorted((ASSETS / "dress").glob("*.jpg"))[0]
K = 10


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(index, tmp_path):
    port = _free_port()
    log = open(tmp_path / "streamlit.log", "w+")
    env = {**os.environ, "IMGEMBED_INDEX": str(index), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"streamlit did not start (exit {proc.poll()}):\n{log.read()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium, or run `make test`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def app_url(tmp_path_factory, tmp_path):
    yield from _serve(demo_index(tmp_path_factory), tmp_path)


@pytest.fixture
def dup_url(tmp_path_factory, tmp_path):
    """The app on an index of the sample photos plus the demo's copies of six of them (make demo)."""
    from imgembed.config import EmbedCfg, IndexJobCfg
    from imgembed.indexer import index_folder

    copies = tmp_path / "demo-copies"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_copies.py"), str(ASSETS), str(copies)],
                   check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    index = tmp_path / "dup-index"
    for folder in (ASSETS, copies):
        index_folder(folder, index, IndexJobCfg(embed=EmbedCfg(workers=0)))
    yield from _serve(index, tmp_path)


def _wait_idle(page) -> None:
    """Wait until the script run has finished and no element of the previous run is left."""
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app && app.getAttribute('data-test-script-state') === 'notRunning'
                && !document.querySelector('[data-stale="true"]');
        }""", timeout=120_000)


def _wait_for_results(page, query_caption: str) -> str:
    """Wait until the grid for the query shown as ``query_caption`` is complete; return its latency."""
    page.wait_for_function(
        """c => {
            const first = document.querySelector('[data-testid="stImage"]');  // the query comes first
            return first && first.innerText.trim() === c && document.querySelector('.ie-score');
        }""", arg=query_caption, timeout=120_000)
    _wait_idle(page)
    text = page.get_by_text(re.compile(r"query answered in \d+ ms")).inner_text()
    return re.search(r"query answered in \d+ ms", text).group(0)


def _result_scores(page) -> list[float]:
    return [float(t) for t in page.locator(".ie-score").all_inner_texts()]


def _result_names(page) -> list[str]:
    """Each card's name as its hover title holds it (in full, however the card cuts it)."""
    return page.eval_on_selector_all(".ie-score + .ie-name", "els => els.map(e => e.getAttribute('title'))")


def _rendered_images(page, count: int, where: str = "") -> list[dict]:
    """Wait until the page shows ``count`` images (under ``where``), all loaded; return their sizes."""
    sel = f'{where} [data-testid="stImage"] img'.strip()
    page.wait_for_function(
        """sel => {
            const imgs = [...document.querySelectorAll(sel)];
            return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) && imgs.length;
        }""", arg=sel, timeout=60_000)
    page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length == n", arg=[sel, count],
                           timeout=60_000)
    return page.eval_on_selector_all(
        sel, "imgs => imgs.map(i => ({w: i.naturalWidth, h: i.naturalHeight, ok: i.complete, src: i.src}))")


def _card_boxes(page) -> list[dict]:
    """The on-screen box of each result card."""
    return page.eval_on_selector_all(
        '.st-key-results [class*="st-key-card-"]',
        "cols => cols.map(c => { const r = c.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; })")


def _map_point(page, i: int) -> dict:
    """Where point ``i`` of the collection map is on the page, and the photo name it carries."""
    return page.evaluate(
        """i => {
            const gd = document.querySelector('.js-plotly-plot');
            const fl = gd._fullLayout, tr = gd._fullData[0], box = gd.getBoundingClientRect();
            return {x: box.x + fl.xaxis._offset + fl.xaxis.l2p(tr.x[i]),
                    y: box.y + fl.yaxis._offset + fl.yaxis.l2p(tr.y[i]), name: tr.customdata[i][1],
                    n: tr.x.length};
        }""", i)


SIZES = {"desktop": (1440, 900), "phone": (390, 844)}


@pytest.mark.parametrize("size", list(SIZES))
def test_every_view_in_chromium(browser, app_url, size):  # browser first: skips fast
    """The result grid, the full-size view, Back, the map (hover names a photo, a click searches
    with it) and the duplicates view, at a desktop and a phone size; a screenshot of each."""
    t0 = time.perf_counter()
    w, h = SIZES[size]
    page = browser.new_page(viewport={"width": w, "height": h})
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    shots = []

    def shot(name: str, full: bool = True) -> None:
        path = out / f"app-{size}-{name}.png"
        page.screenshot(path=str(path), full_page=full)
        shots.append(path.name)

    page.goto(app_url, wait_until="domcontentloaded")
    page.locator('input[type="file"]').wait_for(state="attached", timeout=180_000)  # model loads first
    _wait_idle(page)
    assert page.get_by_text("Deploy", exact=True).count() == 0  # client.toolbarMode = "viewer"
    assert page.get_by_text(re.compile(r"\d+ ?MB per file")).filter(visible=True).count() == 0  # one limit shown: 25 MB
    opened = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["index"]  # a reload keeps it
    assert len(opened) == 1 and opened[0].endswith("demo-index"), page.url
    shot("start")

    # Upload an indexed photo: its results, the photo itself left out and said so.
    page.locator('input[type="file"]').set_input_files(str(QUERY))
    first = _wait_for_results(page, QUERY.name)
    images = _rendered_images(page, K + 1)  # the query and its K neighbours
    assert all(i["ok"] and i["w"] > 0 and i["h"] > 0 and "/media/" in i["src"] for i in images), images
    scores = _result_scores(page)
    assert len(scores) == K and scores == sorted(scores, reverse=True) and scores[0] < 0.999, scores
    assert QUERY.name not in " ".join(_result_names(page))
    assert page.get_by_text("left out of its own results").count() == 1
    assert page.get_by_role("button", name="More like this").count() == K
    boxes = _card_boxes(page)
    assert len(boxes) == K
    rows: dict[int, list[dict]] = {}
    for b in boxes:
        rows.setdefault(round(b["y"]), []).append(b)
    for row in rows.values():  # cards of one row have one height, and none is wider than the page
        assert max(b["h"] for b in row) - min(b["h"] for b in row) < 2, row
    assert all(b["x"] >= 0 and b["x"] + b["w"] <= w + 1 for b in boxes), boxes
    if size == "phone":
        assert max(len(r) for r in rows.values()) == 2  # two cards a row, not one long column
    shot("search")

    # The full-size view of the first result: the picture, its facts, its path.
    top_name = _result_names(page)[0]
    page.locator('.st-key-results [class*="st-key-view-"] button:visible').first.click()
    dialog = page.locator('[role="dialog"]')
    dialog.wait_for(timeout=60_000)
    _wait_idle(page)
    _rendered_images(page, 1, '[role="dialog"]')
    assert top_name in dialog.inner_text() and "Pixels" in dialog.inner_text()
    assert dialog.locator('[data-testid="stCode"]').inner_text().strip().endswith(top_name)
    shot("photo", full=False)
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached", timeout=30_000)

    # "More like this" on the first result: one query on screen, the upload chip gone, Back returns.
    page.get_by_role("button", name="More like this").first.click()
    third = _wait_for_results(page, top_name)
    scores = _result_scores(page)
    assert len(scores) == K and scores[0] < 0.999 and top_name not in _result_names(page), scores
    assert page.locator('[data-testid="stFileUploaderFile"]').count() == 0
    shot("more-like-this")
    page.get_by_role("button", name="← Back").click()
    _wait_for_results(page, QUERY.name)

    # A file the app cannot read is refused in words.
    page.locator('input[type="file"]').set_input_files(files=[{"name": "notes.pdf", "mimeType": "application/pdf",
                                                              "buffer": b"%PDF-1.4 not a photo"}])
    page.get_by_text("cannot be used as a query").wait_for(timeout=60_000)
    _wait_idle(page)
    assert "it is a .pdf file" in page.locator('[data-testid="stAlert"]').first.inner_text()
    shot("rejected-upload", full=False)

    # The map: every photo placed, hover names one, a click makes it the query.
    page.get_by_text("Collection", exact=True).click()
    page.get_by_text("Map of the collection").wait_for(timeout=60_000)
    page.locator(".js-plotly-plot .imagelayer image").wait_for(state="attached", timeout=60_000)
    _wait_idle(page)
    disk = page.locator('[data-testid="stMetric"]', has_text="On disk").inner_text()
    assert re.search(r"\d+\.\d MiB", disk), disk  # the figure in full, not cut
    page.locator(".js-plotly-plot").scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # the scroll settles
    p = _map_point(page, 3)
    assert p["n"] == 60 and 0 < p["x"] < w and 0 < p["y"] < h, p  # on screen
    page.mouse.move(p["x"], p["y"])
    page.locator(".hoverlayer .hovertext").wait_for(timeout=30_000)
    assert p["name"] in page.locator(".hoverlayer .hovertext").text_content()
    shot("map", full=size == "phone")
    page.mouse.click(p["x"], p["y"])
    _wait_for_results(page, p["name"])
    assert page.get_by_role("radio", name="Search").is_checked()
    assert p["name"] not in _result_names(page)

    page.get_by_text("Duplicates", exact=True).click()
    page.get_by_text(re.compile(r"\d+ groups holding \d+ photos")).wait_for(timeout=120_000)
    _wait_idle(page)
    shot("duplicates")
    print(f"\n{size} {w}x{h}: browser flow {time.perf_counter() - t0:.1f} s; latency shown: upload '{first}', "
          f"more like this '{third}'; screenshots in {out}: {', '.join(shots)}")


def test_a_page_without_an_index_in_chromium(browser, tmp_path, monkeypatch):
    """The first page a new user sees (no index yet), at both sizes."""
    port = _free_port()
    env = {**os.environ, "IMGEMBED_INDEX": str(tmp_path / "no-index-yet"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "streamlit did not start"
                time.sleep(0.25)
        for size, (w, h) in SIZES.items():
            page = browser.new_page(viewport={"width": w, "height": h})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text("There is no index at").wait_for(timeout=120_000)
            _wait_idle(page)
            assert page.get_by_role("button", name="Index this folder").is_visible()
            page.screenshot(path=str(ROOT / "artifacts" / f"app-{size}-no-index.png"), full_page=True)
    finally:
        proc.terminate()
        proc.wait(10)


def test_duplicates_review_in_chromium(browser, dup_url):
    page = browser.new_page(viewport={"width": 1440, "height": 1500})
    page.goto(dup_url, wait_until="domcontentloaded")
    page.get_by_text("Duplicates", exact=True).wait_for(timeout=180_000)
    page.get_by_text("Duplicates", exact=True).click()
    page.get_by_text(re.compile(r"^Group 1")).wait_for(timeout=120_000)
    _wait_idle(page)
    groups = page.locator('[data-testid="stMarkdownContainer"]').filter(
        has_text=re.compile(r"^Group \d+ · ")).all_inner_texts()
    assert len(groups) == 6, groups  # the six photos the demo copies
    assert "identical bytes" in groups[0]  # byte copies first
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    page.screenshot(path=str(out / "app-duplicates-top.png"))
    page.get_by_text("Tick all but the suggested keepers").click()
    page.get_by_text(re.compile(r"\d+ files ticked")).wait_for(timeout=60_000)
    _wait_idle(page)
    ticked = page.get_by_text(re.compile(r"\d+ files ticked")).inner_text()
    assert ticked.startswith("11 files ticked"), ticked
    page.screenshot(path=str(out / "app-duplicates.png"), full_page=True)
    buttons = page.locator('[data-testid="stDownloadButton"]')
    assert buttons.count() == 2, buttons.all_inner_texts()
    with page.expect_download() as dl:
        buttons.filter(has_text="script").locator("button").click()
    script = Path(dl.value.path()).read_bytes()
    assert script.startswith(b"#!/bin/sh") and script.count(b"\nmove ") == 11 and b"rm " not in script
