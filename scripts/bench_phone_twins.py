"""Phone formats end to end: HEIC and AVIF twins of real photos are found by their JPEG twins, and
the other way round, with the default backbone.

    python scripts/bench_phone_twins.py [FOLDER] [--backbone NAME]

FOLDER (default: the 60 sample photos in assets/photos) is copied into a temporary gallery in which
every other photo is replaced by a HEIC made from it (pillow-heif, quality 90), and an AVIF of
every fourth photo is added as a query. Then: each replaced photo's original JPEG is the query,
and the rank of its HEIC twin in the results is counted; each kept JPEG is found by a HEIC query
made from it; each AVIF query finds its JPEG or HEIC source. Prints, per direction, how many
twins came first and the cosine between the twins.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def convert(path: Path, fmt: str) -> bytes:
    from PIL import Image

    import imgembed.ingest.reader  # noqa: F401  (registers the HEIF plugin)

    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(buf, format=fmt, quality=90)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default=str(ROOT / "assets" / "photos"))
    p.add_argument("--backbone", default="efficientnet-lite0")
    a = p.parse_args(argv)

    from imgembed.api import open_index
    from imgembed.config import BackboneCfg, IndexJobCfg
    from imgembed.indexer import index_folder

    photos = sorted(Path(a.folder).rglob("*.jpg"))
    if len(photos) < 4:
        sys.exit(f"need at least 4 JPEGs under {a.folder}")
    with tempfile.TemporaryDirectory() as tmp:
        gallery, queries = Path(tmp) / "gallery", Path(tmp) / "queries"
        queries.mkdir()
        heic_of, jpeg_kept = {}, {}
        for i, src in enumerate(photos):
            rel = src.relative_to(a.folder)
            (gallery / rel.parent).mkdir(parents=True, exist_ok=True)
            if i % 2 == 0:  # the gallery holds a HEIC of it
                dst = (gallery / rel).with_suffix(".heic")
                dst.write_bytes(convert(src, "HEIF"))
                heic_of[src] = dst
            else:  # the gallery holds the JPEG; its HEIC twin is a query
                dst = gallery / rel
                dst.write_bytes(src.read_bytes())
                q = queries / f"{i:04d}.heic"
                q.write_bytes(convert(src, "HEIF"))
                jpeg_kept[q] = dst
        avif = {}
        for i, src in enumerate(photos[::4]):
            q = queries / f"{i:04d}.avif"
            q.write_bytes(convert(src, "AVIF"))
            avif[q] = heic_of.get(src) or next(v for k, v in jpeg_kept.items() if v.name == src.name)
        t = time.perf_counter()
        s = index_folder(gallery, Path(tmp) / "ix", IndexJobCfg(backbone=BackboneCfg(name=a.backbone)))
        print(f"gallery: {s.total} photos ({len(heic_of)} HEIC, {s.total - len(heic_of)} JPEG), "
              f"{a.backbone}, indexed in {time.perf_counter() - t:.0f} s; skipped {len(s.skipped)}")
        ix = open_index(Path(tmp) / "ix")
        rows = [("HEIC in the gallery, its JPEG twin as the query", {src: heic for src, heic in heic_of.items()}),
                ("JPEG in the gallery, its HEIC twin as the query", jpeg_kept),
                ("AVIF query, its source (JPEG or HEIC) in the gallery", avif)]
        print(f"{'direction':55s} {'pairs':>5s} {'first':>6s} {'worst rank':>10s} {'cosine min':>10s} "
              f"{'median':>7s}")
        for label, pairs in rows:
            answers = list(ix.search_many([str(q) for q in pairs], k=s.total))
            ranks, cos = [], []
            for (q, want), ans in zip(pairs.items(), answers):
                paths = [h.path for h in ans.hits]
                rank = paths.index(str(want.resolve())) + 1
                ranks.append(rank)
                cos.append(ans.hits[rank - 1].score)
            ranks, cos = np.array(ranks), np.array(cos)
            print(f"{label:55s} {len(ranks):5d} {int((ranks == 1).sum()):6d} {int(ranks.max()):10d} "
                  f"{cos.min():10.4f} {np.median(cos):7.4f}")
        ix.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
