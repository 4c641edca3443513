"""`imgembed similar`: the first call on a folder (builds its cached index) and the calls after it.

    python scripts/bench_similar.py [FOLDER] [--photo PHOTO]

Runs `python -m imgembed.cli similar PHOTO FOLDER` as a user would, each call a new process, with
an empty cache of its own ($IMGEMBED_CACHE_DIR in a temporary folder). FOLDER defaults to the
sample photos, PHOTO to one of them. Prints the wall time of: the first call, the second call on
the unchanged folder (three times), a call after one photo was added, and a call with a query
photo from outside the folder (the model must then be loaded to embed it). Also prints the time
Python takes to start the CLI at all (`imgembed --help`), for scale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(argv: list[str], env: dict) -> tuple[float, str, str]:
    t = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(argv)} failed: {r.stderr}")
    return time.perf_counter() - t, r.stdout, r.stderr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default=str(ROOT / "assets" / "photos"))
    p.add_argument("--photo")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        shutil.copytree(a.folder, folder)  # a copy: one photo is added to it below
        photos = sorted(folder.rglob("*.jpg"))
        photo = Path(a.photo) if a.photo else photos[len(photos) // 2]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "IMGEMBED_CACHE_DIR": str(Path(tmp) / "cache")}
        cli = [sys.executable, "-m", "imgembed.cli"]
        print(f"{len(photos)} photos in {a.folder}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        s, _, _ = timed(cli + ["--help"], env)
        print(f"{'imgembed --help (start-up alone)':48s} {s:6.2f} s")
        s, _, err = timed(cli + ["similar", str(photo), str(folder)], env)
        print(f"{'first call (indexes the folder)':48s} {s:6.2f} s   {err.strip().splitlines()[-1][:70]}")
        for n in range(3):
            s, out, err = timed(cli + ["similar", str(photo), str(folder)], env)
            print(f"{f'second call, unchanged folder (run {n + 1})':48s} {s:6.2f} s   {err.strip().splitlines()[-1][:70]}")
        from PIL import Image, ImageOps

        with Image.open(photos[0]) as im:  # new content (a mirrored photo): it has to be embedded
            ImageOps.mirror(im.convert("RGB")).save(folder / "added.jpg", quality=90)
        s, _, err = timed(cli + ["similar", str(photo), str(folder)], env)
        print(f"{'after adding one new photo (loads the model)':48s} {s:6.2f} s   {err.strip().splitlines()[-1][:70]}")
        outside = Path(tmp) / "query.jpg"
        shutil.copy(photos[1], outside)
        s, out, err = timed(cli + ["similar", str(outside), str(folder)], env)
        print(f"{'a query photo from outside (loads the model)':48s} {s:6.2f} s")
        print("results of the last call:\n" + out.rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
