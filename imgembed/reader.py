"""Decoding image files into model-ready uint8 tensors. The only module that opens images.

A file that cannot become an image raises :class:`ImageSkipped` with a reason and the option that
changes the outcome; the batch loader drops it and reports it, and the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from struct import error as struct_error
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from imgembed.backbones import Preprocess
from imgembed.config import ReaderCfg

_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class ImageSkipped(Exception):
    """The file is not a usable image. ``str(e)`` is one line: the reason (and the option)."""


class Decoded(NamedTuple):
    pixels: torch.Tensor  # uint8 (3, size, size)
    width: int  # upright size of the original photo
    height: int
    digest: str  # content hash of the file's bytes


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def hash_file(path: str | bytes, cfg: ReaderCfg) -> str:
    """Content hash of a file, streamed. Raises ImageSkipped when it cannot be read."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise ImageSkipped(f"cannot read: {e.strerror or e}") from e
    return h.hexdigest()


def read_bytes(path: str | bytes, cfg: ReaderCfg) -> bytes:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ImageSkipped("empty file (0 bytes)")
            if size > cfg.max_bytes:
                raise ImageSkipped(
                    f"file is {size / 2**20:.0f} MiB, above the {cfg.max_bytes / 2**20:.0f} MiB limit (--max-bytes)")
            return f.read()
    except OSError as e:
        raise ImageSkipped(f"cannot read: {e.strerror or e}") from e


def open_image(data: bytes, cfg: ReaderCfg, draft_to: int | None) -> Image.Image:
    """Decode bytes into an upright RGB image, refusing bombs and broken files."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > cfg.max_pixels:
                raise ImageSkipped(
                    f"declares {w}x{h} = {w * h / 1e6:.0f} MP, above the {cfg.max_pixels / 1e6:.0f} MP "
                    "limit (--max-pixels)")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            if draft_to and cfg.jpeg_draft and im.format == "JPEG":
                im.draft("RGB", (draft_to, draft_to))  # DCT-domain downscale: several times faster
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except ImageSkipped:
        raise
    except Image.DecompressionBombError as e:
        raise ImageSkipped(f"{e} (--max-pixels)") from e
    except Image.UnidentifiedImageError as e:
        raise ImageSkipped("not an image (format not recognised)") from e
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct_error) as e:
        raise ImageSkipped(f"broken image: {e}") from e


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if im.mode == "P" and "transparency" in im.info or im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def to_tensor(im: Image.Image, pre: Preprocess) -> torch.Tensor:
    """Resize the shorter side to ``pre.resize``, centre-crop ``pre.size``: uint8 (3, size, size)."""
    w, h = im.size
    scale = pre.resize / min(w, h)
    nw, nh = max(pre.size, round(w * scale)), max(pre.size, round(h * scale))
    im = im.resize((nw, nh), _INTERP[pre.interpolation], reducing_gap=3.0)
    left, top = (nw - pre.size) // 2, (nh - pre.size) // 2
    im = im.crop((left, top, left + pre.size, top + pre.size))
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def decode_file(path: str | bytes, pre: Preprocess, cfg: ReaderCfg) -> Decoded:
    """Read, hash and decode one file. Raises ImageSkipped with the reason."""
    data = read_bytes(path, cfg)
    im = open_image(data, cfg, draft_to=pre.resize)
    w, h = _original_size(data, im)
    return Decoded(to_tensor(im, pre), w, h, content_hash(data))


def _original_size(data: bytes, upright: Image.Image) -> tuple[int, int]:
    """Width and height of the photo as shown (after EXIF rotation, before any draft scaling)."""
    with Image.open(io.BytesIO(data)) as raw:
        w, h = raw.size
        orientation = raw.getexif().get(0x0112, 1) if hasattr(raw, "getexif") else 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def decode_query(data: bytes, pre: Preprocess, cfg: ReaderCfg) -> torch.Tensor:
    """Decode an uploaded image (bytes) into ``uint8 (1, 3, size, size)``. Raises ImageSkipped."""
    if not data:
        raise ImageSkipped("empty file (0 bytes)")
    if len(data) > cfg.max_bytes:
        raise ImageSkipped(f"file is {len(data) / 2**20:.0f} MiB, above the {cfg.max_bytes / 2**20:.0f} MiB limit")
    return to_tensor(open_image(data, cfg, draft_to=pre.resize), pre)[None]
