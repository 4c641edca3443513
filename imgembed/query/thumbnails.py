"""Small previews of indexed photos, decoded through the reader's guards (size, pixels, format)."""

from __future__ import annotations

import io

from PIL import Image

from imgembed.config import ReaderCfg
from imgembed.ingest.reader import open_image, read_bytes

BACKGROUND = (240, 242, 246)  # light grey behind letterboxed previews


def thumbnail(path: str | bytes, size: int, cfg: ReaderCfg | None = None, square: bool = True) -> Image.Image:
    """The photo at ``path`` shrunk to fit ``size x size`` (padded to a square when ``square``).

    Raises ImageSkipped when the file is gone, too large, or not a readable image.
    """
    cfg = cfg or ReaderCfg()
    im = open_image(read_bytes(path, cfg), cfg, draft_to=size)
    return fit(im, size, square)


def fit(im: Image.Image, size: int, square: bool = True) -> Image.Image:
    im = im.copy()
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    if not square:
        return im
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return canvas


def jpeg_bytes(im: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def contact_map(tiles: list[Image.Image], cells: list[tuple[int, int]], cols: int, rows: int,
                cell: int, gap: int = 4) -> Image.Image:
    """Draw ``tiles`` (each ``cell`` px square) at grid ``cells (col, row)`` on one canvas."""
    step = cell + gap
    canvas = Image.new("RGB", (cols * step + gap, rows * step + gap), (255, 255, 255))
    for tile, (c, r) in zip(tiles, cells):
        canvas.paste(tile, (gap + c * step, gap + r * step))
    return canvas
