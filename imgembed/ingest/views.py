"""Augmented views of a photo: what the label-free head learns to be indifferent to.

A view is a random crop of the photo (a share of its area, a range of aspect ratios), resized to
the model's square input, maybe mirrored, with its brightness, contrast, saturation and hue moved
and maybe turned grey, after the views of SimCLR (Chen et al. 2020). Pure PIL and numpy.

Each view is drawn from a generator seeded by the view's seed and the file's content hash, so the
same file gives the same view in any order, in any decode worker, and its features can be cached.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

from imgembed.config import ViewCfg


def view_rng(cfg: ViewCfg, digest: str) -> np.random.Generator:
    """The generator of one file's view: from the view's seed and the file's content hash."""
    return np.random.default_rng([cfg.seed, int(digest[:16], 16)])


def crop_box(w: int, h: int, cfg: ViewCfg, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random box ``(left, top, right, bottom)`` inside ``w x h``: ``cfg.scale`` of the area at an
    aspect ratio within ``cfg.ratio`` (ten tries, then the largest centred box within the ratios)."""
    lo, hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    for _ in range(10):
        area = w * h * rng.uniform(*cfg.scale)
        ratio = math.exp(rng.uniform(lo, hi))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return left, top, left + cw, top + ch
    ratio = min(max(w / h, cfg.ratio[0]), cfg.ratio[1])
    cw, ch = (w, min(h, round(w / ratio))) if w / h < ratio else (min(w, round(h * ratio)), h)
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def _shift_hue(im: Image.Image, shift: float) -> Image.Image:
    hsv = np.array(im.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(shift * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _jitter(im: Image.Image, cfg: ViewCfg, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast, saturation and hue, each by a random amount, in a random order."""
    steps = [
        lambda x, f: ImageEnhance.Brightness(x).enhance(f),
        lambda x, f: ImageEnhance.Contrast(x).enhance(f),
        lambda x, f: ImageEnhance.Color(x).enhance(f),
        _shift_hue,
    ]
    amounts = [rng.uniform(1 - cfg.brightness, 1 + cfg.brightness), rng.uniform(1 - cfg.contrast, 1 + cfg.contrast),
               rng.uniform(1 - cfg.saturation, 1 + cfg.saturation), rng.uniform(-cfg.hue, cfg.hue)]
    for i in rng.permutation(len(steps)):
        im = steps[i](im, amounts[i])
    return im


def augment(im: Image.Image, size: int, cfg: ViewCfg, rng: np.random.Generator,
            resample: Image.Resampling = Image.Resampling.BICUBIC,
            covered: tuple[float, float] | None = None) -> Image.Image:
    """One view of an RGB image: ``size x size`` RGB, the crop resized with ``resample``.

    ``covered``: the part of ``im`` (from its top-left corner) that the photo covers, when the
    decoder reduced it (:func:`imgembed.ingest.pixels.extent`); the crop stays inside it.
    """
    w, h = (int(covered[0]), int(covered[1])) if covered else im.size
    box = crop_box(max(1, w), max(1, h), cfg, rng)
    out = im.resize((size, size), resample, box=box)
    if rng.random() < cfg.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < cfg.jitter:
        out = _jitter(out, cfg, rng)
    if rng.random() < cfg.grey:
        out = out.convert("L").convert("RGB")
    return out
