"""Decoded pixels of any mode and colour space -> 8-bit sRGB RGB, shrunk before anything is copied.

Memory: a file's pixels are decoded once at full size (JPEG draft aside); every later step works on
a copy, so a 100 MP image would cost several times its decoded size if converted first (+1.9 GB for
a 215 KiB 16-bit PNG of 9999x9999, ``scripts/bench_decode_memory.py``). :func:`reduce_for` shrinks
it by an integer factor first (box filter, as ``Image.resize``'s ``reducing_gap`` would), and only
the small result is converted.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageCms

# Reduce until the shorter side is at most this many times the size asked for: the final resize
# (``reducing_gap=3.0`` in the reader) would take the same box-filter step, so the result matches.
REDUCING_GAP = 3
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Modes whose pixel values are palette indices or bits: converted before averaging.
_CONVERT_FIRST = {"P": "RGB", "PA": "RGBA", "1": "L"}
# Bytes per pixel of Pillow's storage (multi-band modes take 4 bytes a pixel).
_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Bytes per pixel a decoder holds beyond the image while it decodes: libwebp's canvas and the frame
# it hands to Pillow (a 100 MP lossless WebP peaked at 1.55 GB, 15.5 bytes a pixel).
_DECODER_BYTES = {"WEBP": 12}

# EXIF orientation -> the transpose that shows the photo upright (as ImageOps.exif_transpose does).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def decode_bytes(im: Image.Image) -> int:
    """About the most memory decoding ``im`` takes (at its current size: after a JPEG draft)."""
    return im.size[0] * im.size[1] * (_BYTES.get(im.mode, 4) + _DECODER_BYTES.get(im.format or "", 0))


def reduce_factor(size: tuple[int, int], target: int | None) -> int:
    """The integer shrink factor that keeps the shorter side at least ``REDUCING_GAP * target``."""
    if not target:
        return 1
    return max(1, min(size) // (REDUCING_GAP * target))


def reduce_for(im: Image.Image, target: int | None) -> Image.Image:
    """``im`` shrunk by an integer factor while its shorter side stays >= ``REDUCING_GAP * target``.

    Palette and bilevel images are converted first (averaging palette indices means nothing);
    16-bit greyscale, which Pillow cannot reduce, is averaged in numpy. The mode is kept otherwise.
    """
    factor = reduce_factor(im.size, target)
    if factor == 1:
        return im
    if im.mode in _CONVERT_FIRST:
        mode = "RGBA" if im.mode == "P" and "transparency" in im.info else _CONVERT_FIRST[im.mode]
        im = im.convert(mode)
    if im.mode.startswith("I;16"):
        return _block_mean_16(im, factor)
    return im.reduce(factor)  # a partial block at an edge is averaged over the pixels it has


def _block_mean_16(im: Image.Image, factor: int) -> Image.Image:
    """``Image.reduce`` for 16-bit greyscale: each factor x factor block (partial at the edges) averaged.
    A strip of rows at a time: a whole-image numpy copy would double the decode's memory."""
    w, h = im.size
    xs = np.arange(0, w, factor)
    widths = np.diff(np.append(xs, w)).astype(np.float32)
    out = np.empty((len(range(0, h, factor)), len(xs)), np.float32)
    for row, y in enumerate(range(0, h, factor)):
        strip = np.asarray(im.crop((0, y, w, min(h, y + factor))), dtype=np.float32)  # (<= factor, w)
        out[row] = np.add.reduceat(strip.sum(axis=0), xs) / (widths * len(strip))
    return Image.fromarray(np.clip(out + 0.5, 0, 65535).astype(np.uint16))


def extent(size: tuple[int, int], target: int | None) -> tuple[float, float] | None:
    """The size, in pixels of the reduced image, of what the original covers (the last row and column
    of a reduced image stand for partial blocks); None when :func:`reduce_for` would not reduce."""
    factor = reduce_factor(size, target)
    return None if factor == 1 else (size[0] / factor, size[1] / factor)


def orientation(im: Image.Image) -> int:
    """The EXIF orientation tag of ``im`` (1 when absent or unreadable)."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # corrupt EXIF: show the pixels as stored
        return 1
    return value if value in _TRANSPOSE else 1


def upright(im: Image.Image, orient: int) -> Image.Image:
    """Apply an EXIF orientation (read with :func:`orientation` before the image was reduced)."""
    return im.transpose(_TRANSPOSE[orient]) if orient in _TRANSPOSE else im


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if im.mode == "RGB":
        return im
    if im.mode in HIGH_BIT_MODES:
        return Image.fromarray(_to_8bit(im)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info or im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _to_8bit(im: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer or float pixels -> uint8, scaled by the range the values live in.

    16-bit modes use 0..65535. Integers use 0..255 when they fit it, else 0..65535. Floats use
    0..1 when they fit it (the usual float TIFF), else 0..255, 0..65535, or their own range.
    """
    arr = np.asarray(im, dtype=np.float32)
    if im.mode == "F":
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(arr.max()) if arr.size else 0.0
    lo = 0.0
    if im.mode.startswith("I;16"):
        hi = 65535.0
    elif im.mode == "I":
        hi = 65535.0 if top > 255 else 255.0
    elif top <= 1.0:
        hi = 1.0
    elif top <= 255.0:
        hi = 255.0
    elif top <= 65535.0:
        hi = 65535.0
    else:
        lo, hi = float(arr.min()), top
    return np.clip((arr - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """An RGB image whose pixels are in the colour space of the ICC profile ``icc``, in sRGB.

    Phone and camera photos in Display P3 or Adobe RGB look washed out when their values are read
    as sRGB. A profile that is sRGB already, not an RGB profile, or unreadable leaves ``im`` as is.
    """
    if not icc or im.mode != "RGB":
        return im
    transform = _transform(bytes(icc))
    if transform is None:
        return im
    try:
        return ImageCms.applyTransform(im, transform)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im


def has_colour_profile(icc: bytes | None) -> bool:
    """Whether :func:`to_srgb` would convert an RGB image carrying the profile ``icc``."""
    return bool(icc) and _transform(bytes(icc)) is not None


@functools.lru_cache(maxsize=16)
def _transform(icc: bytes) -> ImageCms.ImageCmsTransform | None:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space.strip() != "RGB":
            return None
        if (profile.profile.profile_description or "").startswith("sRGB"):
            return None  # the usual case: nothing to convert
        return ImageCms.buildTransform(profile, _srgb(), "RGB", "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError, AttributeError):
        return None  # a broken profile: the pixels are shown as stored


@functools.lru_cache(maxsize=1)
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
