"""Decoding image files into model-ready uint8 tensors. The only module that opens images.

A file that cannot become an image raises :class:`ImageSkipped` with a reason and the option that
changes the outcome; the batch loader drops it and reports it, and the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import threading
import warnings
from contextlib import contextmanager
from dataclasses import replace
from struct import error as struct_error
from typing import TYPE_CHECKING, Iterator, NamedTuple

import numpy as np
import pillow_heif
from PIL import Image, PngImagePlugin

from imgembed.config import ReaderCfg, ViewCfg
from imgembed.errors import ImageSkipped
from imgembed.ingest import pixels, views
from imgembed.ingest.metadata import PhotoMeta, photo_meta
from imgembed.ingest.pixels import to_rgb  # noqa: F401  (part of this module's interface)
from imgembed.ingest.preprocess import Preprocess

if TYPE_CHECKING:  # imported where a tensor is made: reading headers and metadata needs no torch
    import torch

_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}  # each filter's reach in source pixels at scale 1 (Pillow's)

# HEIF/HEIC through pillow-heif's Pillow plugin (libheif applies the file's rotation and mirroring
# and resets the EXIF orientation to 1, so the orientation step leaves it upright). Only the primary
# image is read: no thumbnails, depth maps or auxiliary images. Deeper than 8 bits (10-bit HDR
# photos) is scaled to 8 bits by the plugin.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# Pillow fails a PNG whose text chunk (XMP metadata in an iTXt or zTXt chunk, say) decompresses to
# more than PngImagePlugin.MAX_TEXT_CHUNK (1 MB). imgembed reads no text: a chunk may use Pillow's
# budget for all the text of a file (MAX_TEXT_MEMORY, 64 MB), which still bounds a zlib bomb.
TEXT_CHUNK_BYTES = PngImagePlugin.MAX_TEXT_MEMORY
# Decodes that take more memory than this (a 64 MP RGB PNG, a 16 MP WebP, 100 MP 16-bit greyscale) run
# one at a time: in a process (several app users uploading at once) and across the decode workers
# of an index run, so that N of them never hold N times the largest image. Smaller ones run freely.
LARGE_DECODE_BYTES = 256 << 20
# The longest a large decode waits for its turn before going ahead anyway.
LARGE_DECODE_WAIT_S = 300
_large_decodes = threading.Lock()  # decode workers share one multiprocessing lock instead


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
        if stat.S_ISDIR(st.st_mode):
            raise ImageSkipped("a folder, not a file")
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


def read_bytes(path: str | bytes, cfg: ReaderCfg, limit: str = " (--max-bytes)") -> bytes:
    """The bytes of a regular file, refused before reading when above ``cfg.max_bytes``; never blocks
    on a pipe or reads a device. ``limit``: how the size message ends. Raises ImageSkipped."""
    try:
        f, size = _open_regular(path)
        with f:
            if size == 0:
                raise ImageSkipped("empty file (0 bytes)")
            if size > cfg.max_bytes:
                raise ImageSkipped(
                    f"file is {size / 2**20:.0f} MiB, above the {cfg.max_bytes / 2**20:.0f} MiB limit{limit}")
            return f.read(cfg.max_bytes + 1)  # bounded even if the file grows meanwhile
    except OSError as e:
        raise ImageSkipped(f"cannot read: {e.strerror or e}") from e


def open_image(data: bytes, cfg: ReaderCfg, draft_to: int | None) -> Image.Image:
    """Decode bytes into an upright 8-bit sRGB image, refusing bombs and broken files.

    ``draft_to``: the size the image will be shrunk to; the decode may then come out smaller (JPEG
    DCT scaling, then an integer reduction that keeps at least 3x that size). Raises ImageSkipped
    and nothing else for any input bytes (the fuzz test holds it to that).
    """
    return _decode(data, cfg, draft_to)[0]


def _decode(data: bytes, cfg: ReaderCfg, draft_to: int | None,
            option: str = "--max-pixels") -> tuple[Image.Image, tuple[int, int], tuple[float, float] | None]:
    """The image as :func:`open_image` returns it; the photo's size as shown (upright, full size); and
    what of the image the photo covers when it was reduced (:func:`imgembed.ingest.pixels.extent`).
    ``option``: what the pixel-limit message names as the way around it."""
    _pillow_limits(cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb and corrupt-EXIF warnings: the checks here decide
            im = _open(data, cfg)
            check_declared(data, im, cfg, option)
            w, h = im.size
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            if draft_to and cfg.jpeg_draft and im.format == "JPEG":
                im.draft("RGB", (draft_to, draft_to))  # DCT-domain downscale: several times faster
            with _decode_slot(im):
                im.load()
                orient = pixels.orientation(im)
                icc = im.info.get("icc_profile")
                if orient != 1 and pixels.reduce_factor(im.size, draft_to) > 1:
                    im = pixels.upright(im, orient)  # first, so that the reduced edges stay at the right and bottom
                    turned = orient
                    orient = 1
                else:
                    turned = orient
                covered = pixels.extent(im.size, draft_to)
                im = pixels.reduce_for(im, draft_to)  # before any copy of the full-size pixels
            im = pixels.to_srgb(pixels.to_rgb(pixels.upright(im, orient)), icc)
            return im, ((h, w) if turned in (5, 6, 7, 8) else (w, h)), covered
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


def _pillow_limits(cfg: ReaderCfg) -> None:
    if Image.MAX_IMAGE_PIXELS is not None and cfg.max_pixels > Image.MAX_IMAGE_PIXELS:
        # The user raised --max-pixels above Pillow's own bomb limit: let our check decide.
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels
    if PngImagePlugin.MAX_TEXT_CHUNK < TEXT_CHUNK_BYTES:
        PngImagePlugin.MAX_TEXT_CHUNK = TEXT_CHUNK_BYTES


def _open(data: bytes, cfg: ReaderCfg) -> Image.Image:
    """The header of ``data`` read by the plugin of an accepted format (no other plugin ever runs)."""
    try:
        return Image.open(io.BytesIO(data), formats=cfg.formats)
    except Image.DecompressionBombError:  # Pillow's own limit; say it in our terms
        im = _by_plugin(data, cfg.formats)
        if not isinstance(im, Image.Image):
            raise
        return im


def check_declared(data: bytes, im: Image.Image, cfg: ReaderCfg, option: str = "--max-pixels") -> None:
    """Refuse, from the header alone, an image that declares more pixels than ``cfg.max_pixels``, or
    a JPEG whose file is too short to hold the pixels it declares. Raises ImageSkipped."""
    w, h = im.size
    if w * h > cfg.max_pixels:
        raise ImageSkipped(
            f"declares {w}x{h} = {w * h / 1e6:.0f} MP, above the {cfg.max_pixels / 1e6:.0f} MP limit ({option})")
    if im.format in ("JPEG", "MPO") and len(data) < (need := _jpeg_min_bytes(data, im)):
        # libjpeg would fill the missing blocks with grey and only warn: garbage of a false size.
        raise ImageSkipped(f"broken image: declares {w}x{h} but its {len(data)} bytes cannot hold that many "
                           f"pixels (at least {need} needed): the JPEG data ends early")


# Fewest bits one 8x8 block can take in the entropy-coded data, by SOF marker. Sequential Huffman:
# a DC code and an end-of-block code, each at least 1 bit. Progressive Huffman: the first DC scan
# codes every block (1 bit at least); later scans can skip runs of blocks. Arithmetic coding and
# lossless JPEG have no such floor and are not checked.
_MIN_BLOCK_BITS = {0xC0: 2, 0xC1: 2, 0xC2: 1}


def _jpeg_min_bytes(data: bytes, im: Image.Image) -> int:
    """A lower bound on the bytes of a valid JPEG of ``im``'s declared size and sampling (0: none)."""
    bits = _MIN_BLOCK_BITS.get(_jpeg_sof(data))
    layers = getattr(im, "layer", None)  # [(component id, h sampling, v sampling, quant table)]
    if not bits or not layers:
        return 0
    w, h = im.size
    hmax, vmax = max(c[1] for c in layers), max(c[2] for c in layers)
    blocks = sum(math.ceil(math.ceil(w * c[1] / hmax) / 8) * math.ceil(math.ceil(h * c[2] / vmax) / 8)
                 for c in layers)
    return blocks * bits // 8


def _jpeg_sof(data: bytes) -> int | None:
    """The start-of-frame marker of a JPEG (0xC0 baseline, 0xC2 progressive, ...); None if none."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        elif marker == 0xDA:  # a scan before any frame header
            return None
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


@contextmanager
def _decode_slot(im: Image.Image) -> Iterator[None]:
    """Decode large images one at a time (see :data:`LARGE_DECODE_BYTES`)."""
    if pixels.decode_bytes(im) <= LARGE_DECODE_BYTES:
        yield
        return
    # A decode worker killed while holding the lock must not stop the others for good.
    got = _large_decodes.acquire(timeout=LARGE_DECODE_WAIT_S)
    try:
        yield
    finally:
        if got:
            _large_decodes.release()


def share_large_decode_lock(lock) -> None:
    """Make this process take ``lock`` (one that the decode workers of a run share) for large decodes."""
    global _large_decodes
    _large_decodes = lock


# Pillow's plugins recognise a format by the first 16 bytes; no image of an accepted format is shorter.
_SIGNATURE_BYTES = 16


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
        except Exception:  # a signature check that cannot read a file this short: not that format
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return factory(io.BytesIO(data), "")
        except Exception as e:
            if len(data) < _SIGNATURE_BYTES:  # the start of a signature and nothing more
                return None
            return ValueError(f"{fmt}: {e}")
    return None


def to_tensor(im: Image.Image, pre: Preprocess, covered: tuple[float, float] | None = None) -> torch.Tensor:
    """:func:`to_array` as a tensor: uint8 (3, size, size)."""
    import torch  # here, not at the top: reading headers and metadata needs no torch

    return torch.from_numpy(to_array(im, pre, covered))


def to_array(im: Image.Image, pre: Preprocess, covered: tuple[float, float] | None = None) -> np.ndarray:
    """Resize the shorter side to ``pre.resize``, centre-crop ``pre.size``: uint8 (3, size, size).

    ``covered``: the part of ``im`` (from its top-left corner) that the photo covers, when it was
    reduced and its last row and column stand for partial blocks.

    Only the part of the photo that the crop keeps is resampled (the filter still reads the pixels
    around it), so nothing outside the crop is computed: 30-40% of the resize's time for a 4:3
    photo, and a 1 x 60000 strip does not become 64 x 3.8M pixels first. A photo more than
    :data:`imgembed.ingest.pixels.REDUCING_GAP` times the size first goes through the box filter
    that resizing the whole photo takes (Pillow's ``reducing_gap``), on the same blocks from its
    top-left corner, so a photo the decoder reduced already (:func:`imgembed.ingest.pixels.reduce_for`)
    gives the same pixels. The pixels are those of resizing the whole photo and cropping, up to the
    rounding between the filter's two passes (on the dev photos the default backbone's vectors kept
    a cosine of 0.9966 or more, and mAP did not move).
    """
    w, h = covered or im.size
    scale = pre.resize / min(w, h)
    nw, nh = max(pre.size, round(w * scale)), max(pre.size, round(h * scale))
    left, top = (nw - pre.size) // 2, (nh - pre.size) // 2
    sx, sy = w / nw, h / nh
    fx, fy = max(1, int(sx / pixels.REDUCING_GAP)), max(1, int(sy / pixels.REDUCING_GAP))
    if fx > 1 or fy > 1:  # the blocks of the whole photo's box filter step, as Image.resize takes them
        reach = _SUPPORT[pre.interpolation] - 0.5
        im = im.reduce((fx, fy), box=(0, 0, min(im.width, math.ceil(w + reach * sx)),
                                      min(im.height, math.ceil(h + reach * sy))))
        sx, sy = sx / fx, sy / fy
    box = (left * sx, top * sy, (left + pre.size) * sx, (top + pre.size) * sy)
    im = im.resize((pre.size, pre.size), _INTERP[pre.interpolation], box=box)
    return np.ascontiguousarray(np.array(im, dtype=np.uint8).transpose(2, 0, 1))


def decode_file(path: str | bytes, pre: Preprocess, cfg: ReaderCfg, view: ViewCfg | None = None) -> Decoded:
    """Read, hash and decode one file. Raises ImageSkipped with the reason, and nothing else.

    ``view``: the pixels are that augmented view of the photo (:mod:`imgembed.ingest.views`)
    instead of its centre crop.
    """
    data = read_bytes(path, cfg)
    digest = content_hash(data)
    im, (w, h), covered = _decode(data, cfg, draft_to=pre.resize)
    if view is not None:
        im = views.augment(im, pre.size, view, views.view_rng(view, digest), _INTERP[pre.interpolation], covered)
        pre, covered = replace(pre, resize=pre.size), None  # the view is the model's square already
    return Decoded(_tensor(im, pre, covered), w, h, digest, metadata_of(data, cfg))


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


def _tensor(im: Image.Image, pre: Preprocess, covered: tuple[float, float] | None = None,
            array: bool = False) -> torch.Tensor | np.ndarray:
    try:
        return to_array(im, pre, covered) if array else to_tensor(im, pre, covered)
    except (MemoryError, ValueError, OSError) as e:
        raise ImageSkipped(f"cannot resize {im.size[0]}x{im.size[1]} image: {type(e).__name__}: {e}") from e


def decode_query(data: bytes, pre: Preprocess, cfg: ReaderCfg, array: bool = False) -> torch.Tensor | np.ndarray:
    """Decode an uploaded image (bytes) into ``uint8 (1, 3, size, size)``, a tensor (a numpy array
    with ``array``: no torch needed). Raises ImageSkipped.

    ``cfg``: normally :func:`imgembed.config.query_reader_cfg` (a lower pixel limit than indexing)."""
    if not data:
        raise ImageSkipped("empty file (0 bytes)")
    if len(data) > cfg.max_bytes:
        raise ImageSkipped(f"file is {len(data) / 2**20:.0f} MiB, above the {cfg.max_bytes / 2**20:.0f} MiB limit")
    im, _, covered = _decode(data, cfg, draft_to=pre.resize, option="for a query image; shrink it first")
    return _tensor(im, pre, covered, array)[None]
