"""The edits that turn a photo into a copy of itself: resized, re-encoded, cropped, flipped, rotated,
colour-edited, overlaid, padded, re-saved.

They make the copies that the duplicate benchmark (``scripts/bench_duplicates.py``), the demo
(``make demo``) and the tests look for. Each edit takes a photo and a random generator and returns
the bytes of the copy and its file suffix, so that re-encoding is part of the edit.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

# edit(upright RGB photo, its file's bytes, rng) -> (bytes of the copy, suffix)
Edit = Callable[[Image.Image, bytes, np.random.Generator], tuple[bytes, str]]


def _jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def resize(im, data, rng):
    """30-50% of the size, JPEG quality 50-75."""
    s = rng.uniform(0.3, 0.5)
    small = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)
    return _jpeg(small, rng.integers(50, 76)), ".jpg"


def crop(fraction: tuple[float, float]) -> Edit:
    """A crop keeping ``fraction`` (a range) of the width and of the height, anywhere in the photo."""

    def edit(im, data, rng):
        f = rng.uniform(*fraction)
        w, h = max(1, round(im.width * f)), max(1, round(im.height * f))
        x, y = rng.integers(0, im.width - w + 1), rng.integers(0, im.height - h + 1)
        return _jpeg(im.crop((x, y, x + w, y + h))), ".jpg"

    edit.__doc__ = f"crop to {fraction[0]:.0%}-{fraction[1]:.0%} of each side"
    return edit


def flip(im, data, rng):
    return _jpeg(ImageOps.mirror(im)), ".jpg"


def rotate(im, data, rng):
    """90 degrees, either way."""
    return _jpeg(im.transpose(Image.Transpose.ROTATE_90 if rng.random() < 0.5 else Image.Transpose.ROTATE_270)), ".jpg"


def colour(im, data, rng):
    """Brightness and contrast each scaled by 0.6-1.4 (at least 0.15 away from 1 for one of them)."""
    b, c = rng.uniform(0.6, 1.4, size=2)
    if max(abs(b - 1), abs(c - 1)) < 0.15:
        b = 1.25 if b >= 1 else 0.75
    return _jpeg(ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(b)).enhance(c)), ".jpg"


def grey(im, data, rng):
    return _jpeg(im.convert("L")), ".jpg"


def banner(im, data, rng):
    """A text banner over 15% of the height, at the top or the bottom."""
    out = im.copy()
    h = max(1, round(0.15 * im.height))
    top = 0 if rng.random() < 0.5 else im.height - h
    draw = ImageDraw.Draw(out)
    fill = (255, 255, 255) if rng.random() < 0.5 else (20, 20, 20)
    draw.rectangle((0, top, im.width, top + h), fill=fill)
    try:
        font = ImageFont.load_default(size=max(8, int(h * 0.6)))
    except TypeError:  # Pillow before 10.1 has one bitmap size
        font = ImageFont.load_default()
    ink = (0, 0, 0) if fill[0] > 128 else (255, 255, 255)
    draw.text((max(2, im.width // 20), top + h // 5), "SALE  -50%  www.example.com", fill=ink, font=font)
    return _jpeg(out), ".jpg"


def pad(im, data, rng):
    """Black borders: padded to a square, plus 5-15% of the longer side around it."""
    side = max(im.size)
    margin = round(side * rng.uniform(0.05, 0.15))
    out = Image.new("RGB", (side + 2 * margin, side + 2 * margin))
    out.paste(im, ((out.width - im.width) // 2, (out.height - im.height) // 2))
    return _jpeg(out), ".jpg"


def png(im, data, rng):
    """Re-saved as PNG: the same pixels, other bytes."""
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue(), ".png"


def byte_copy(im, data, rng):
    return data, None  # the original's own suffix


# name -> edit, in the order the benchmark reports them
EDITS: dict[str, Edit] = {
    "resize": resize,
    "crop80": crop((0.8, 0.8)),
    "crop60": crop((0.6, 0.6)),
    "flip": flip,
    "rot90": rotate,
    "colour": colour,
    "grey": grey,
    "banner": banner,
    "pad": pad,
    "png": png,
    "bytes": byte_copy,
}


def make_copy(name: str, im: Image.Image, data: bytes, rng: np.random.Generator) -> tuple[bytes, str | None]:
    """The bytes of ``im`` edited by :data:`EDITS` ``[name]`` and its suffix (None: the original's)."""
    if name not in EDITS:
        raise ValueError(f"unknown edit '{name}'; use one of {', '.join(EDITS)}")
    return EDITS[name](im, data, rng)
