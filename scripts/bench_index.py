"""Incremental re-index of an unchanged folder: it should cost the scan (``stat``), nothing more.

    python scripts/bench_index.py [FOLDER] [--n 100000] [--backbone test-tiny]

Without FOLDER (or when it does not exist) N distinct tiny JPEGs are written there first (one
32x32 JPEG with a different comment segment per file: distinct content hashes, no encoding cost).
Prints: the first index run, a bare scan of the folder (``imgembed.ingest.fs.scan``: one ``stat`` per
file), the re-index of the unchanged folder and its ratio to the scan, and what building the
model would have added (the re-index no longer builds it).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path


def make_folder(folder: Path, n: int, per_dir: int = 1000) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 60, 200)).save(buf, "JPEG", quality=80)
    base = buf.getvalue()
    for i in range(n):
        d = folder / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        tag = f"imgembed bench {i}".encode()
        comment = b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag  # JPEG COM segment
        (d / f"{i:07d}.jpg").write_bytes(base[:2] + comment + base[2:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", type=Path, default=Path(tempfile.gettempdir()) / "imgembed-bench-100k")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--backbone", default="test-tiny")
    p.add_argument("--model-cost", default="efficientnet-lite0",
                   help="backbone whose build time the unchanged re-index avoids (printed for reference)")
    a = p.parse_args(argv)

    from imgembed.config import BackboneCfg, IndexJobCfg, ReaderCfg
    from imgembed.indexer import index_folder
    from imgembed.ingest import fs
    from imgembed.model.embedder import Embedder

    if not a.folder.exists():
        t = time.perf_counter()
        make_folder(a.folder, a.n)
        print(f"wrote {a.n} tiny JPEGs to {a.folder} in {time.perf_counter() - t:.0f} s")
    cfg = IndexJobCfg(backbone=BackboneCfg(name=a.backbone))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as d:
        ix = Path(d) / "ix"
        t = time.perf_counter()
        s1 = index_folder(a.folder, ix, cfg)
        print(f"first index    {time.perf_counter() - t:8.1f} s  ({s1.indexed} indexed, "
              f"{s1.images_per_second:.0f} images/s embedding with {a.backbone})")
        t = time.perf_counter()
        n = len(fs.scan(a.folder, ReaderCfg()).files)
        scan_s = time.perf_counter() - t
        print(f"scan only      {scan_s:8.2f} s  ({n} files stat'ed)")
        t = time.perf_counter()
        s2 = index_folder(a.folder, ix, cfg)
        re_s = time.perf_counter() - t
        print(f"re-index       {re_s:8.2f} s  ({s2.unchanged} unchanged, {s2.indexed} indexed); "
              f"{re_s / scan_s:.1f}x the bare scan")
    t = time.perf_counter()
    Embedder.from_cfg(BackboneCfg(name=a.model_cost, device="cpu"))
    print(f"model build    {time.perf_counter() - t:8.2f} s  ({a.model_cost}; no longer paid by an "
          "unchanged re-index)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
