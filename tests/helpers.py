"""Helpers shared by the tests: generated photos, the sample photos, the tiny test backbone."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "photos"
TINY = "test-tiny"
REPO = Path(__file__).resolve().parent.parent
ROOT = os.geteuid() == 0  # as root, permissions do not stop reads


def make_photo(seed: int, size=(96, 72), kind: int | None = None) -> Image.Image:
    """A synthetic photo: a class-dependent colour and shape on noise; same seed, same image."""
    rng = np.random.default_rng(seed)
    kind = seed % 3 if kind is None else kind
    w, h = size
    base = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)][kind], dtype=np.float64)
    arr = base + rng.normal(0, 25, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 0:
        arr[(yy // 8) % 2 == 0] *= 0.4
    elif kind == 1:
        arr[(xx // 8) % 2 == 0] *= 0.4
    else:
        arr[((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (min(w, h) / 3) ** 2] = 255
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def write_photos(folder: Path, n: int, start: int = 0, classes: bool = False) -> list[Path]:
    """``n`` JPEGs under ``folder`` (in sub-folders c0/c1/c2 when ``classes``)."""
    out = []
    for i in range(start, start + n):
        sub = folder / f"c{i % 3}" if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img{i:04d}.jpg"
        make_photo(i).save(p, quality=90)
        out.append(p)
    return out


def plain_metrics(folder, backbone=TINY, head=None):
    """mAP, P@5 and R@1 of every photo of ``folder`` against the others (labels: sub-folders), by loops."""
    from imgembed.config import BackboneCfg, ReaderCfg
    from imgembed.ingest.reader import decode_file
    from imgembed.model.embedder import Embedder

    e = Embedder.from_cfg(BackboneCfg(name=backbone, device="cpu"), head)
    paths = sorted(folder.rglob("*.jpg"))
    labels = [p.parent.name for p in paths]
    v = np.concatenate([e.embed(decode_file(str(p), e.preprocess, ReaderCfg()).pixels[None]) for p in paths])
    aps, p5, r1 = [], [], []
    for i in range(len(paths)):
        order = [j for j in sorted(range(len(paths)), key=lambda j: -float(v[i] @ v[j])) if j != i]
        rel = [labels[j] == labels[i] for j in order]
        hits, precs = 0, []
        for rank, r in enumerate(rel, 1):
            if r:
                hits += 1
                precs.append(hits / rank)
        aps.append(sum(precs) / max(1, sum(rel)))
        p5.append(sum(rel[:5]) / 5)
        r1.append(float(rel[0]))
    return np.mean(aps), np.mean(p5), np.mean(r1)


def tiny_cfg(**kw):
    """An index job with the tiny test backbone, in batches of 4, decoding in this process (so that
    races a test monkeypatches happen in this process)."""
    from imgembed.config import BackboneCfg, IndexJobCfg

    c = IndexJobCfg(backbone=BackboneCfg(name=TINY), **kw)
    c.embed.workers = 0
    c.embed.batch_size = 4
    return c


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()
