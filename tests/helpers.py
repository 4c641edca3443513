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


def icc_profile(primaries, description: str = "imgembed test RGB", gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB display profile: ``primaries`` are the XYZ (D50) of its red, green and
    blue; one gamma curve for all three. Pass sRGB's primaries in another order to get a profile under
    which "red" means another colour."""
    import struct

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(v) -> bytes:
        return b"XYZ " + b"\0" * 4 + b"".join(s15(c) for c in v)

    text = description.encode("ascii") + b"\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 3 + b"\0" * 67
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0" * 2
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(primaries[0])),
            (b"gXYZ", xyz(primaries[1])), (b"bXYZ", xyz(primaries[2])), (b"rTRC", curve),
            (b"gTRC", curve), (b"bTRC", curve), (b"cprt", b"text" + b"\0" * 4 + b"none\0\0\0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


# sRGB's primaries adapted to D50 (what ICC profiles store): red, green, blue.
SRGB_PRIMARIES = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(w: int, h: int) -> bytes:
    """A PNG header declaring ``w x h`` grey pixels, with almost no pixel data: a bomb's shape."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


# A PostScript file: what Pillow's EPS plugin would hand to Ghostscript.
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n/Helvetica findfont 10 scalefont setfont\nshowpage\n"


def lying_jpeg(w: int, h: int, progressive: bool = False) -> bytes:
    """A smooth 200 x 260 photo whose frame header claims ``w`` x ``h``."""
    import struct

    data = bytearray(encode(make_photo(6, size=(200, 260)), "JPEG", quality=85, progressive=progressive))
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    assert struct.unpack(">HH", data[sof + 5:sof + 9]) == (260, 200)
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def xmp_png(zip_text: bool = True) -> bytes:
    """A small photo as PNG with 3.2 MB of XMP metadata (above Pillow's 1 MB per text chunk)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>" + "history " * 400_000 + "</x:xmpmeta>", zip=zip_text)
    return encode(make_photo(4, size=(64, 48)), "PNG", pnginfo=info)
