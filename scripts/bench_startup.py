"""Start-up: how long the app and the CLI take to answer their first query.

    python scripts/bench_startup.py [--index IX] [--photo PHOTO] [--runs 3]

Without --index, the sample photos (assets/photos) are indexed first into a temporary folder with
the default backbone. Each CLI figure is a new process, as a user runs it: `imgembed --help`
(Python and the CLI alone), `imgembed info` (no model), and `imgembed search PHOTO` (imports, the
model, one query). The app: `streamlit run app.py` started fresh each run; the figures are the time
until the server answers its health check, until the page in Chromium (Playwright, Debian's
/usr/bin/chromium) shows the search form (the model is loaded and warmed by then), and until the
first upload's results are on screen; plus the latency the page itself reports. Without Chromium
the app rows are left out, with the reason.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def timed(argv: list[str], env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(argv)} failed: {r.stderr[-2000:]}")
    return time.perf_counter() - t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_run(index: Path, photo: Path, env: dict) -> dict[str, float] | str:
    """One fresh app: seconds until it is up, shows the search form, and shows the first results."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "playwright is not installed"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing"
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none"],
        cwd=ROOT, env={**env, "IMGEMBED_INDEX": str(index)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict[str, float] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 120:
                    return "streamlit did not start"
                time.sleep(0.05)
        out["server up"] = time.perf_counter() - t0
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = b.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url, wait_until="domcontentloaded")
            page.locator('input[type="file"]').wait_for(state="attached", timeout=180_000)
            out["search form shown"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            page.locator('input[type="file"]').set_input_files(str(photo))
            page.get_by_text(re.compile(r"query answered in \d+ ms")).wait_for(timeout=180_000)
            page.locator(".ie-score").first.wait_for(timeout=60_000)
            out["first results shown"] = time.perf_counter() - t0
            out["upload to results"] = time.perf_counter() - t1
            text = page.get_by_text(re.compile(r"query answered in \d+ ms")).inner_text()
            out["latency the page reports"] = float(re.search(r"(\d+) ms", text).group(1)) / 1000
            b.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index")
    p.add_argument("--photo", default=str(ROOT / "assets" / "photos" / "hat" / "2a12baab-f020-42e3-8e6b-5d82e3ed0b55.jpg"))
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "IMGEMBED_SETTINGS": str(Path(tmp) / "app.json")}
        cli = [sys.executable, "-m", "imgembed.cli"]
        index = Path(a.index) if a.index else Path(tmp) / "index"
        if not a.index:
            timed(cli + ["index", str(ROOT / "assets" / "photos"), "--index", str(index), "--no-progress"], env)
        print(f"index {index}; query {Path(a.photo).name}; {a.runs} runs each; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        rows: dict[str, list[float]] = {}
        for _ in range(a.runs):
            rows.setdefault("cli: imgembed --help", []).append(timed(cli + ["--help"], env))
            rows.setdefault("cli: imgembed info (no model)", []).append(timed(cli + ["info", "--index", str(index)], env))
            rows.setdefault("cli: imgembed search PHOTO (first query)", []).append(
                timed(cli + ["search", a.photo, "--index", str(index), "-k", "10"], env))
        app_note = None
        for _ in range(a.runs):
            got = app_run(index, Path(a.photo), env)
            if isinstance(got, str):
                app_note = got
                break
            for name, s in got.items():
                rows.setdefault(f"app: {name}", []).append(s)
        print(f"{'':44s} {'median':>8s} {'min':>8s} {'max':>8s}")
        for name, xs in rows.items():
            print(f"{name:44s} {statistics.median(xs):7.2f}s {min(xs):7.2f}s {max(xs):7.2f}s")
        if app_note:
            print(f"app rows left out: {app_note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
