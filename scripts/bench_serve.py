"""Latency of the HTTP API: image queries uploaded to `imgembed serve` on the demo index.

    python scripts/bench_serve.py [--index demo-index] [--queries 200] [--concurrent 20]

Builds the demo index from assets/photos with the CLI when it is missing (as `make demo` does),
starts `python -m imgembed.cli serve` on a free localhost port, uploads the sample photos one at a
time (``--queries`` requests, after 5 warm-up ones) and prints p50/p99 of the whole request as
the client sees it (upload, decode, embed, search, JSON); then ``--concurrent`` requests at once.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    import httpx

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", default=str(ROOT / "demo-index"))
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--concurrent", type=int, default=20)
    p.add_argument("-k", type=int, default=10)
    a = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "imgembed.cli"]
    if not (Path(a.index) / "manifest.json").is_file():
        print(f"building {a.index} from assets/photos", flush=True)
        subprocess.run(cli + ["index", str(ROOT / "assets" / "photos"), "--index", a.index], env=env, check=True)
    photos = sorted((ROOT / "assets" / "photos").rglob("*.jpg"))
    datas = [p.read_bytes() for p in photos]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t = time.perf_counter()
    server = subprocess.Popen(cli + ["serve", "--index", a.index, "--port", str(port)], env=env)
    try:
        while True:
            try:
                if httpx.get(url + "/info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            if server.poll() is not None:
                sys.exit("the server did not start")
        print(f"server ready in {time.perf_counter() - t:.1f} s (model loaded at start)")
        info = httpx.get(url + "/info").json()
        print(f"index {a.index}: {info['count']} photos, {info['backbone']}, {info['dim']}-d, {info['index_type']}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        with httpx.Client(base_url=url, timeout=120) as client:

            def one(i: int) -> float:
                t0 = time.perf_counter()
                r = client.post("/search/image", params={"k": a.k},
                                files={"file": (photos[i % len(photos)].name, datas[i % len(datas)], "image/jpeg")})
                r.raise_for_status()
                assert len(r.json()["results"]) == a.k
                return (time.perf_counter() - t0) * 1000

            for i in range(5):
                one(i)
            seq = np.array([one(i) for i in range(a.queries)])
            print(f"image query, one at a time ({a.queries} requests, k={a.k}): "
                  f"p50 {np.percentile(seq, 50):.1f} ms, p99 {np.percentile(seq, 99):.1f} ms, "
                  f"mean {seq.mean():.1f} ms")
            t0 = time.perf_counter()
            with ThreadPoolExecutor(a.concurrent) as pool:
                conc = np.array(list(pool.map(one, range(a.concurrent))))
            wall = time.perf_counter() - t0
            print(f"{a.concurrent} requests at once: all answered in {wall:.2f} s; each took p50 "
                  f"{np.percentile(conc, 50):.0f} ms, p99 {np.percentile(conc, 99):.0f} ms")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
