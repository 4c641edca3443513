"""Copies of a few sample photos for the demo, so that the app's Duplicates view has groups to show.

    python scripts/demo_copies.py assets/photos demo-copies

Writes into the second folder (not committed; `make demo` indexes it with the sample photos):
for six of the photos, a few edited copies each (imgembed.ingest.edits): resized and re-encoded,
cropped, flipped, rotated, recoloured, with a text banner, padded, re-saved as PNG, or copied byte
for byte. Same seed, same copies.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from imgembed.config import ReaderCfg
from imgembed.ingest.edits import make_copy
from imgembed.ingest.reader import open_image

# (photo number in sorted order, edits)
PLAN = [(0, ["bytes"]), (13, ["crop80", "png"]), (25, ["flip", "colour"]),
        (37, ["rot90", "grey"]), (49, ["banner", "resize"]), (58, ["pad", "bytes"])]


def main() -> int:
    src, dest = Path(sys.argv[1]), Path(sys.argv[2])
    photos = sorted(src.rglob("*.jpg"))
    rng = np.random.default_rng(0)
    n = 0
    for i, edits in PLAN:
        p = photos[i % len(photos)]
        data = p.read_bytes()
        im = open_image(data, ReaderCfg(), None)
        for e in edits:
            out, suffix = make_copy(e, im, data, rng)
            target = dest / p.parent.name / f"{p.stem[:8]}-{e}{suffix or p.suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(out)
            n += 1
    print(f"wrote {n} copies of {len(PLAN)} photos to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
