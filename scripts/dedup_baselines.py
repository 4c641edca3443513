"""The comparison hashes for scripts/bench_duplicates.py, run in their own virtualenv.

    python dedup_baselines.py FILE_LIST OUT.npz

FILE_LIST holds one image path a line. Writes, per file in that order, imagededup's four hashes
(pHash, dHash, wHash, aHash: 64 bits each, as imagededup's encode_image makes them) and PDQ's
256-bit hash of the photo and of its 7 flips and rotations (pdqhash.compute_dihedral). imagededup's
CNN method is left out: it downloads MobileNet weights at first use, which this machine cannot.

The virtualenv (imagededup pulls scikit-learn and PyWavelets; pdqhash builds from source):

    python3.11 -m venv ~/.cache/imgembed-bench-venv
    ~/.cache/imgembed-bench-venv/bin/pip install imagededup pdqhash
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pdqhash
from imagededup.methods import AHash, DHash, PHash, WHash
from PIL import Image, ImageOps


def main() -> int:
    files = [line for line in open(sys.argv[1]).read().splitlines() if line]
    methods = {"phash": PHash(verbose=False), "dhash": DHash(verbose=False), "whash": WHash(verbose=False),
               "ahash": AHash(verbose=False)}
    out = {name: np.zeros((len(files), 8), np.uint8) for name in methods}
    out["pdq"] = np.zeros((len(files), 8, 32), np.uint8)
    seconds = {name: 0.0 for name in out}
    for i, path in enumerate(files):
        for name, m in methods.items():
            t = time.perf_counter()
            out[name][i] = np.frombuffer(bytes.fromhex(m.encode_image(image_file=path)), np.uint8)
            seconds[name] += time.perf_counter() - t
        t = time.perf_counter()
        with Image.open(path) as im:
            rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        hashes, _ = pdqhash.compute_dihedral(rgb)
        out["pdq"][i] = np.stack([np.packbits(np.asarray(h, dtype=bool)) for h in hashes])
        seconds["pdq"] += time.perf_counter() - t
    np.savez(sys.argv[2], **out, seconds=np.array([seconds[k] for k in out]), names=np.array(list(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
