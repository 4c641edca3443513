"""How long scanning a folder with many entries takes (the reliability issue's 100,000-entry case).

    python scripts/bench_scan.py [--entries 100000] [--images 100]

Creates ENTRIES empty non-image files and IMAGES small JPEGs in a temporary folder (on /dev/shm
when there is one), then times ``imgembed.ingest.fs.scan`` over it, cold and warm. Prints figures only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from PIL import Image

from imgembed.config import ReaderCfg
from imgembed.ingest import fs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix="imgembed-scan-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        t0 = time.perf_counter()
        fd = os.open(base, os.O_RDONLY)
        try:
            for i in range(a.entries):
                os.close(os.open(f"note{i:07d}.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        finally:
            os.close(fd)
        for i in range(a.images):
            Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(os.path.join(base, f"img{i:05d}.jpg"))
        made = time.perf_counter() - t0
        times = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            result = fs.scan(base, ReaderCfg())
            times.append(time.perf_counter() - t)
        assert len(result.files) == a.images
        print(f"folder: {a.entries} non-image entries + {a.images} images in {base} (created in {made:.1f} s)")
        print(f"scan: {', '.join(f'{t:.3f}' for t in times)} s "
              f"(best {min(times):.3f} s, {(a.entries + a.images) / min(times) / 1e3:.0f}k entries/s); "
              f"{len(result.files)} images found")
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
