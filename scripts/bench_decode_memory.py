"""Peak memory and time of decoding hostile images: small files that declare many pixels.

    python scripts/bench_decode_memory.py [--cases webp,png16,...] [--threads 4]

Writes each case into a temporary folder, then decodes it in a fresh Python process (one per case
and entry point) and prints how far the process's peak resident memory rose above its size just before the decode,
with the seconds the decode took. The peak is ``VmHWM``, reset to the current size first through
``/proc/self/clear_refs`` (``ru_maxrss`` cannot be reset, and pages of the libraries dropped since
import would hide a rise below it); without ``/proc``, the rise of ``ru_maxrss``.

- ``index``: ``reader.decode_file`` with the default ``ReaderCfg`` (what an index run's decode
  worker does per file);
- ``upload``: ``reader.decode_query`` with the reader settings the app and ``imgembed search`` use
  for a query image (``config.query_reader_cfg()`` when this imgembed has it, else ``ReaderCfg()``);
- ``upload xN``: N threads of one process decoding the same upload at once (N app users).

Prints figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageFilter

SIDE = 9999  # 99.98 MP: just below the default 100 MP limit for indexing
QUERY_SIDE = 7000  # 49 MP: just below the 50 MP limit for query images


def _gradient(side: int, dtype, top: float) -> np.ndarray:
    row = np.linspace(0, top, side, dtype=np.float64)
    return np.broadcast_to(row, (side, side)).astype(dtype)


def write_cases(folder: str) -> dict[str, str]:
    """Every hostile case as a file in ``folder``: name -> path."""
    out = {}

    def save(name: str, im: Image.Image, fmt: str, ext: str, **kw) -> None:
        path = os.path.join(folder, name + ext)
        im.save(path, fmt, **kw)
        out[name] = path

    for side, tag in ((SIDE, ""), (QUERY_SIDE, "-49mp")):
        save("webp-lossless" + tag, Image.new("RGB", (side, side), (200, 30, 30)), "WEBP", ".webp", lossless=True)
        save("png-16bit" + tag, Image.fromarray(_gradient(side, np.uint16, 65535)), "PNG", ".png")
    save("tiff-float", Image.new("F", (SIDE, SIDE), 0.5), "TIFF", ".tif", compression="tiff_adobe_deflate")
    save("png-rgba", Image.new("RGBA", (SIDE, SIDE), (10, 200, 10, 128)), "PNG", ".png")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)
    photo = Image.fromarray(noise).filter(ImageFilter.GaussianBlur(2))  # camera-like detail
    save("jpeg-12mp", photo, "JPEG", ".jpg", quality=90)
    return out


CHILD = r"""
import json, resource, sys, threading, time
from imgembed import config
from imgembed.ingest import reader
from imgembed.ingest.preprocess import Preprocess
path, entry, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
pre = Preprocess()
data = open(path, "rb").read()
qcfg = config.query_reader_cfg() if hasattr(config, "query_reader_cfg") else config.ReaderCfg()
def one():
    try:
        if entry == "index":
            reader.decode_file(path, pre, config.ReaderCfg())
        else:
            reader.decode_query(data, pre, qcfg)
        return ""
    except reader.ImageSkipped as e:
        return str(e)
import io  # warm the decode path's imports on a tiny image first
from PIL import Image
b = io.BytesIO(); Image.new("RGB", (8, 8)).save(b, "PNG"); reader.decode_query(b.getvalue(), pre, config.ReaderCfg())
def status_kib(key):
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status[key].split()[0])
try:  # reset the peak (VmHWM) to the current size: library pages may have been dropped since import
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, peak = status_kib("VmRSS"), lambda: status_kib("VmHWM")
except OSError:  # no /proc: the rise of ru_maxrss over its peak so far
    before, peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
t0 = time.perf_counter()
results = []
ts = [threading.Thread(target=lambda: results.append(one())) for _ in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
seconds = time.perf_counter() - t0
after = peak() if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mb": (after - before) / 1024, "seconds": seconds, "skipped": results[0]}))
"""


def measure(path: str, entry: str, threads: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, path, entry, str(threads)], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        return {"mb": float("nan"), "seconds": float("nan"), "skipped": f"process failed: {r.stderr.strip()[-200:]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--threads", type=int, default=4, help="concurrent uploads in one process (0: skip)")
    a = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="imgembed-decode-mem-")
    try:
        cases = write_cases(folder)
        wanted = [c for c in a.cases.split(",") if c] or list(cases)
        entries = ["index", "upload"] + ([f"upload x{a.threads}"] if a.threads > 1 else [])
        print("| case | file | " + " | ".join(f"{e}: peak RSS rise, s" for e in entries) + " |")
        print("|---|---|" + "---|" * len(entries))
        for name in wanted:
            path = cases[name]
            cells = []
            for e in entries:
                entry, _, n = e.partition(" x")
                m = measure(path, entry, int(n or 1))
                cell = f"+{m['mb']:.0f} MB, {m['seconds']:.2f} s"
                if m["skipped"]:
                    cell += f" (skipped: {m['skipped'][:60]})"
                cells.append(cell)
            size = os.path.getsize(path)
            shown = f"{size / 1024:.0f} KiB" if size < 2**20 else f"{size / 2**20:.1f} MiB"
            print(f"| {name} | {shown} | " + " | ".join(cells) + " |", flush=True)
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
