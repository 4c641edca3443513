"""Decoding image files into model-ready uint8 tensors. The only module that opens images.

A file that cannot become an image raises :class:`ImageSkipped` with a reason and the option that
changes the outcome; the batch loader drops it and reports it, and the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from struct import error as struct_error
from typing import NamedTuple

import numpy as np
import pillow_heif
from PIL import Image, ImageCms, ImageOps

from imgembed.config import ReaderCfg
from imgembed.errors import ImageSkipped
from imgembed.ingest.metadata import PhotoMeta, photo_meta
from imgembed.ingest.preprocess import Preprocess

_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

# HEIF/HEIC through pillow-heif's Pillow plugin (libheif applies the file's rotation and mirroring
# and resets the EXIF orientation to 1, so the EXIF step below leaves it upright). Only the primary
# image is read: no thumbnails, depth maps or auxiliary images. Deeper than 8 bits (10-bit HDR
# photos) is scaled to 8 bits by the plugin.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
_SRGB = ImageCms.createProfile("sRGB")


class Decoded(NamedTuple):
    pixels: torch.Tensor  # uint8 (3, size, size)
    width: int  # upright size of the original photo
    height: int
    digest: str  # content hash of the file's bytes
    meta: PhotoMeta = PhotoMeta()  # capture time, camera, GPS from the file's EXIF


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _open_regular(path: str | bytes):
    """Open a regular file for reading. A FIFO or device swapped in after the scan would block or
    never end, so the file is opened non-blocking and checked before any read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageSkipped("not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def hash_file(path: str | bytes, cfg: ReaderCfg) -> str:
    """Content hash of a file, streamed. Raises ImageSkipped when it cannot be read."""
    h = hashlib.blake2b(digest_size=16)
    try:
        f, _ = _open_regular(path)
        with f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise ImageSkipped(f"cannot read: {e.strerror or e}") from e
    return h.hexdigest()


def read_bytes(path: str | bytes, cfg: ReaderCfg) -> bytes:
    try:
        f, size = _open_regular(path)
        with f:
            if size == 0:
                raise ImageSkipped("empty file (0 bytes)")
            if size > cfg.max_bytes:
                raise ImageSkipped(
                    f"file is {size / 2**20:.0f} MiB, above the {cfg.max_bytes / 2**20:.0f} MiB limit (--max-bytes)")
            return f.read(cfg.max_bytes + 1)  # bounded even if the file grows meanwhile
    except OSError as e:
        raise ImageSkipped(f"cannot read: {e.strerror or e}") from e


def open_image(data: bytes, cfg: ReaderCfg, draft_to: int | None) -> Image.Image:
    """Decode bytes into an upright RGB image, refusing bombs and broken files.

    Raises ImageSkipped and nothing else for any input bytes (the fuzz test holds it to that).
    """
    if Image.MAX_IMAGE_PIXELS is not None and cfg.max_pixels > Image.MAX_IMAGE_PIXELS:
        # The user raised --max-pixels above Pillow's own bomb limit: let our check decide.
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb and corrupt-EXIF warnings: the checks here decide
            try:
                im = Image.open(io.BytesIO(data), formats=cfg.formats)  # no other plugin ever runs
            except Image.DecompressionBombError:  # Pillow's own limit; say it in our terms
                im = _by_plugin(data, cfg.formats)
                if not isinstance(im, Image.Image):
                    raise
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
            icc = im.info.get("icc_profile")
            im = ImageOps.exif_transpose(im)
            return to_srgb(to_rgb(im), icc)
    except ImageSkipped:
        raise
    except Image.DecompressionBombError as e:
        raise ImageSkipped(f"{e} (--max-pixels)") from e
    except Image.UnidentifiedImageError as e:
        why = _by_plugin(data, cfg.formats)
        if isinstance(why, Exception):  # a known signature whose decoder refused the file
            raise ImageSkipped(f"broken image: {why}") from e
        raise ImageSkipped("not an image (format not recognised)") from e
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct_error) as e:
        raise ImageSkipped(f"broken image: {e}") from e
    except MemoryError as e:
        raise ImageSkipped("broken image: decoding ran out of memory (--max-pixels)") from e
    except Exception as e:  # Pillow's plugins raise many types on hostile bytes; one file never stops a run
        raise ImageSkipped(f"broken image: {type(e).__name__}: {e}") from e


def _by_plugin(data: bytes, formats: tuple[str, ...]) -> Image.Image | Exception | None:
    """Open ``data`` with the plugin, among ``formats``, whose signature it carries, without Pillow's
    generic wrapping: the image (header read only), the plugin's own error, or None for no signature."""
    Image.init()
    for fmt in formats:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None:
            continue
        try:
            if accept is not None and not accept(data[:16]):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return factory(io.BytesIO(data), "")
        except Exception as e:
            return ValueError(f"{fmt}: {e}")
    return None


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


def to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """An RGB image with an embedded ICC profile (Display P3 and Adobe RGB phone photos) converted to
    sRGB, the space the backbones were trained on. A profile that cannot be used is ignored."""
    if not icc:
        return im
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in (ImageCms.getProfileDescription(src) or "").lower().replace(" ", ""):
            return im
        return ImageCms.profileToProfile(im, src, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im


# Beyond this aspect ratio the full resize would be far larger than the crop kept from it.
_MAX_RESIZE_RATIO = 4


def to_tensor(im: Image.Image, pre: Preprocess) -> torch.Tensor:
    """Resize the shorter side to ``pre.resize``, centre-crop ``pre.size``: uint8 (3, size, size)."""
    import torch  # here, not at the top: reading headers and metadata needs no torch

    w, h = im.size
    scale = pre.resize / min(w, h)
    nw, nh = max(pre.size, round(w * scale)), max(pre.size, round(h * scale))
    left, top = (nw - pre.size) // 2, (nh - pre.size) // 2
    if max(nw, nh) > _MAX_RESIZE_RATIO * max(pre.size, pre.resize):
        # A 1 x 60000 strip would resize to 64 x 3.8M pixels first: resample only the kept box.
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + pre.size) * sx, (top + pre.size) * sy)
        im = im.resize((pre.size, pre.size), _INTERP[pre.interpolation], box=box, reducing_gap=3.0)
    else:
        im = im.resize((nw, nh), _INTERP[pre.interpolation], reducing_gap=3.0)
        im = im.crop((left, top, left + pre.size, top + pre.size))
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def decode_file(path: str | bytes, pre: Preprocess, cfg: ReaderCfg) -> Decoded:
    """Read, hash and decode one file. Raises ImageSkipped with the reason, and nothing else."""
    data = read_bytes(path, cfg)
    im = open_image(data, cfg, draft_to=pre.resize)
    w, h = _original_size(data, im, cfg)
    return Decoded(_tensor(im, pre), w, h, content_hash(data), metadata_of(data, cfg))


def metadata_of(data: bytes, cfg: ReaderCfg) -> PhotoMeta:
    """The EXIF metadata of an image's bytes (header only, no decoding). Never raises."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=cfg.formats) as im:
                return photo_meta(im)
    except Exception:  # metadata is best effort; the pixels decide whether a file is usable
        return PhotoMeta()


def read_metadata(path: str | bytes, cfg: ReaderCfg) -> PhotoMeta:
    """The EXIF metadata of a file, reading its header only: for photos indexed before metadata was
    recorded, and for renamed or copied ones. Never raises (an unreadable file: empty metadata)."""
    try:
        f, size = _open_regular(path)
        with f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not 0 < size <= cfg.max_bytes:
                return PhotoMeta()
            with Image.open(f, formats=cfg.formats) as im:
                return photo_meta(im)
    except Exception:
        return PhotoMeta()


def _tensor(im: Image.Image, pre: Preprocess) -> torch.Tensor:
    try:
        return to_tensor(im, pre)
    except (MemoryError, ValueError, OSError) as e:
        raise ImageSkipped(f"cannot resize {im.size[0]}x{im.size[1]} image: {type(e).__name__}: {e}") from e


def _original_size(data: bytes, upright: Image.Image, cfg: ReaderCfg) -> tuple[int, int]:
    """Width and height of the photo as shown (after EXIF rotation, before any draft scaling)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=cfg.formats) as raw:
                w, h = raw.size
                orientation = raw.getexif().get(0x0112, 1) if hasattr(raw, "getexif") else 1
    except Exception:  # the image decoded once already; its metadata is only used for display sizes
        return upright.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def decode_query(data: bytes, pre: Preprocess, cfg: ReaderCfg) -> torch.Tensor:
    """Decode an uploaded image (bytes) into ``uint8 (1, 3, size, size)``. Raises ImageSkipped."""
    if not data:
        raise ImageSkipped("empty file (0 bytes)")
    if len(data) > cfg.max_bytes:
        raise ImageSkipped(f"file is {len(data) / 2**20:.0f} MiB, above the {cfg.max_bytes / 2**20:.0f} MiB limit")
    return _tensor(open_image(data, cfg, draft_to=pre.resize), pre)[None]
