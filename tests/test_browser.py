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


@pytest.fixture
def app_url(tmp_path_factory, tmp_path):
    index = demo_index(tmp_path_factory)
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
            return first && first.innerText.trim() === c;
        }""", arg=query_caption, timeout=120_000)
    _wait_idle(page)
    text = page.get_by_text(re.compile(r"query answered in \d+ ms")).inner_text()
    return re.search(r"query answered in \d+ ms", text).group(0)


def _result_scores(page) -> list[float]:
    captions = page.locator('[data-testid="stImage"]').all_inner_texts()
    return [float(m.group(1)) for c in captions if (m := re.match(r"\s*(-?\d\.\d{3}) · ", c))]


def _rendered_images(page, count: int) -> list[dict]:
    """Wait until the page shows ``count`` images, all loaded; return their sizes and sources."""
    page.wait_for_function(
        """n => {
            const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
            return imgs.length == n && imgs.every(i => i.complete && i.naturalWidth > 0);
        }""", arg=count, timeout=60_000)
    return page.eval_on_selector_all(
        '[data-testid="stImage"] img',
        "imgs => imgs.map(i => ({w: i.naturalWidth, h: i.naturalHeight, ok: i.complete, src: i.src}))")


def test_upload_in_chromium_renders_neighbours(browser, app_url):  # browser first: skips fast
    t0 = time.perf_counter()
    page = browser.new_page(viewport={"width": 1440, "height": 1500})
    page.goto(app_url, wait_until="domcontentloaded")
    page.locator('input[type="file"]').wait_for(state="attached", timeout=180_000)  # model loads first
    page.locator('input[type="file"]').set_input_files(str(QUERY))
    first = _wait_for_results(page, QUERY.name)
    images = _rendered_images(page, K + 1)  # the query and its K neighbours
    assert len(images) == K + 1
    assert all(i["ok"] and i["w"] > 0 and i["h"] > 0 for i in images), images
    assert all("/media/" in i["src"] for i in images)
    scores = _result_scores(page)  # one consistent grid: K results, best first, the photo itself on top
    assert len(scores) == K and scores == sorted(scores, reverse=True) and scores[0] > 0.999, scores
    assert page.get_by_text("More like this").count() == K
    captions = page.locator('[data-testid="stImage"]').all_inner_texts()
    assert any(QUERY.name in c for c in captions)  # the photo finds itself, its name shown plainly

    # A second upload on the now warm app: the latency a user sees.
    page.locator('input[type="file"]').set_input_files(str(SECOND))
    warm = _wait_for_results(page, SECOND.name)
    _rendered_images(page, K + 1)
    scores = _result_scores(page)
    assert len(scores) == K and scores == sorted(scores, reverse=True) and scores[0] > 0.999, scores
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    shot = out / "app-search.png"
    page.screenshot(path=str(shot), full_page=True)

    # "More like this" on the first result makes it the query.
    # a result's caption: "score · name", then a line with the capture date (and camera)
    top = page.locator('[data-testid="stImage"]').nth(1).inner_text().split(" · ", 1)[1].splitlines()[0].strip()
    page.get_by_text("More like this").first.click()
    third = _wait_for_results(page, top)
    _rendered_images(page, K + 1)
    scores = _result_scores(page)  # the clicked photo is the query now, so it is not among its results
    assert len(scores) == K and scores == sorted(scores, reverse=True) and scores[0] < 0.999, scores

    # The collection view draws the map.
    page.get_by_text("Collection", exact=True).click()
    page.get_by_text("Map of the collection").wait_for(timeout=60_000)
    _wait_idle(page)
    maps = _rendered_images(page, 1)
    assert len(maps) == 1 and maps[0]["w"] > 500
    page.screenshot(path=str(out / "app-map.png"), full_page=True)
    print(f"\nbrowser flow {time.perf_counter() - t0:.1f} s; latency shown: first upload '{first}', "
          f"warm upload '{warm}', more like this '{third}'; screenshots {shot} and {out / 'app-map.png'}")
