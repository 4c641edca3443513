"""JPEG decoding on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``), CPU for the rest.

On a GPU the model is rarely the limit; decoding is. Decode workers then only read, hash and
probe each file (header only, no pixels): plain RGB or greyscale JPEGs travel to the GPU as bytes
and are decoded there in one batched call, everything else (PNG, WebP, CMYK JPEGs, anything the
probe or nvJPEG rejects) is decoded on the CPU by :mod:`imgembed.ingest.reader` as usual. EXIF
orientation, resize of the shorter side and the centre crop happen on the GPU too, so the batch
that reaches the model has the same geometry as the CPU path's. A photo nvJPEG fails on is
decoded again on the CPU, never lost.

The compute here is pure (tensors in, tensors out) and takes the decoder as an argument, so the
logic is tested on the CPU with torchvision's CPU decoder and with decoders that fail on purpose.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from imgembed.config import ReaderCfg
from imgembed.ingest import pixels
from imgembed.ingest.preprocess import Preprocess
from imgembed.ingest.reader import ImageSkipped, check_declared, decode_query

logger = logging.getLogger(__name__)

# EXIF orientation -> (transpose, rotate by k*90 deg counter-clockwise, flip left-right)
_ORIENT = {1: (False, 0, False), 2: (False, 0, True), 3: (False, 2, False), 4: (False, 2, True),
           5: (True, 0, False), 6: (False, 3, False), 7: (True, 2, False), 8: (False, 1, False)}


# Photos more elongated than this go to the CPU, whose resize touches only the kept crop.
MAX_ASPECT = 4


class JpegInfo(NamedTuple):
    width: int  # stored size (before EXIF rotation)
    height: int
    orientation: int  # EXIF orientation tag, 1 when absent


class Pending(NamedTuple):
    """A JPEG read by a worker, to be decoded on the GPU."""

    data: torch.Tensor  # uint8 (nbytes,) the file's bytes
    info: JpegInfo


def gpu_decode_available(device: torch.device) -> bool:
    """True when ``device`` is CUDA and this torchvision can decode JPEGs there."""
    if device.type != "cuda":
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def probe(data: bytes, cfg: ReaderCfg) -> JpegInfo | None:
    """Header-only check: a JpegInfo when the GPU can decode ``data``, None for the CPU path.

    Raises ImageSkipped for a file declaring more pixels than ``cfg.max_pixels``.
    """
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
                w, h = im.size
                check_declared(data, im, cfg)  # too many pixels, or too few bytes for them
                if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                    return None  # CMYK/YCCK and other oddities: PIL handles them
                if pixels.has_colour_profile(im.info.get("icc_profile")):
                    return None  # Display P3, Adobe RGB: the CPU path converts it to sRGB
                if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
                    return None  # a strip: the CPU path resamples only the crop it keeps
                orientation = im.getexif().get(0x0112, 1)
    except ImageSkipped:
        raise
    except Exception:  # a broken header: let the CPU path give the precise reason
        return None
    return JpegInfo(w, h, orientation if orientation in _ORIENT else 1)


def shown_size(info: JpegInfo) -> tuple[int, int]:
    """(width, height) as the photo is shown, after EXIF rotation."""
    return (info.height, info.width) if info.orientation in (5, 6, 7, 8) else (info.width, info.height)


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to ``(C, H, W)`` (as PIL's ``ImageOps.exif_transpose`` does)."""
    transpose, k, flip = _ORIENT.get(orientation, (False, 0, False))
    if transpose:
        img = img.transpose(-1, -2)
    if k:
        img = torch.rot90(img, k, dims=(-2, -1))
    if flip:
        img = img.flip(-1)
    return img


def resize_crop(img: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """``uint8 (3, H, W)`` -> ``uint8 (3, size, size)``: shorter side to ``pre.resize``, centre crop.

    Antialiased, so a 12 MP photo shrinks like PIL's resize does rather than aliasing.
    """
    _, h, w = img.shape
    scale = pre.resize / min(w, h)
    nw, nh = max(pre.size, round(w * scale)), max(pre.size, round(h * scale))
    mode = "bicubic" if pre.interpolation == "bicubic" else "bilinear"
    x = F.interpolate(img[None].float(), size=(nh, nw), mode=mode, antialias=True, align_corners=False)
    top, left = (nh - pre.size) // 2, (nw - pre.size) // 2
    x = x[0, :, top:top + pre.size, left:left + pre.size]
    return x.round_().clamp_(0, 255).to(torch.uint8)


Decoder = Callable[..., Any]


def _default_decoder() -> Decoder:
    from torchvision.io import ImageReadMode, decode_jpeg

    return lambda datas, device: decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)


def decode_many(datas: Sequence[torch.Tensor], device: torch.device,
                decoder: Decoder | None = None) -> list[torch.Tensor | None]:
    """Decode JPEG byte tensors on ``device``; None where the decoder failed on that image.

    One batched call first (nvJPEG decodes a batch far faster than one by one); when it fails,
    each image is tried alone so one bad file does not send the whole batch to the CPU.
    """
    if not datas:
        return []
    decoder = decoder or _default_decoder()
    try:
        out = decoder(list(datas), device)
        if len(out) == len(datas):
            return list(out)
    except Exception as e:  # nvJPEG raises RuntimeError for what it cannot handle
        logger.debug("batched GPU decode failed (%s); decoding one by one", e)
    result: list[torch.Tensor | None] = []
    for d in datas:
        try:
            result.append(decoder([d], device)[0])
        except Exception as e:
            logger.debug("GPU decode failed (%s); falling back to the CPU", e)
            result.append(None)
    return result


def cpu_decode(data: bytes, pre: Preprocess, cfg: ReaderCfg) -> torch.Tensor:
    """The CPU path for bytes the GPU did not take: ``uint8 (3, size, size)``. Raises ImageSkipped."""
    return decode_query(data, pre, cfg)[0]


def finish(items: Sequence[Any], device: torch.device, pre: Preprocess, cfg: ReaderCfg,
           decoder: Decoder | None = None) -> tuple[list[int], torch.Tensor, list[tuple[int, str]]]:
    """Turn a worker batch into model input on ``device``.

    Each item is a CPU-decoded ``uint8 (3, s, s)`` tensor or a :class:`Pending` JPEG. Returns
    ``(positions kept, pixels uint8 (B, 3, s, s) on device, (position, reason) of failures)``;
    positions index ``items`` and keep their order.
    """
    pending = [(i, it) for i, it in enumerate(items) if isinstance(it, Pending)]
    decoded = decode_many([p.data for _, p in pending], device, decoder)
    out: dict[int, torch.Tensor] = {}
    failures: list[tuple[int, str]] = []
    for (i, p), img in zip(pending, decoded):
        if img is not None and img.dim() == 3 and img.shape[0] == 3 \
                and tuple(img.shape[1:]) == (p.info.height, p.info.width):
            out[i] = resize_crop(orient(img, p.info.orientation), pre)
            continue
        try:  # nvJPEG could not: the CPU decodes it (and names the reason if it cannot either)
            out[i] = cpu_decode(p.data.cpu().numpy().tobytes(), pre, cfg).to(device)
        except ImageSkipped as e:
            failures.append((i, str(e)))
    for i, it in enumerate(items):
        if not isinstance(it, Pending):
            out[i] = it.to(device, non_blocking=True)
    kept = sorted(out)
    pixels = torch.stack([out[i] for i in kept]) if kept else torch.empty(
        0, 3, pre.size, pre.size, dtype=torch.uint8, device=device)
    return kept, pixels, failures
