"""Does the whole shared part of two photos agree, or only its background? A dense check of a keypoint match.

Two different things photographed on one tiled floor, printed laminate or bedspread share the
floor's keypoints: one similarity transform explains 15-50 of them, within a degree of no rotation,
and most descriptor matches agree, which is all that :mod:`imgembed.query.keypoint_match` asks of a
copy. What such a pair lacks is the subject. Once the transform is known, a copy shows the same
picture wherever it overlaps its original (apart from an overlay such as a banner), while photos
of two different things disagree wherever the things are.

So: reduce both grey renderings (:mod:`imgembed.ingest.copy_data`) to a longer side of
:data:`SIDE` pixels, which also makes a copy downscaled to 30% and its sharp original look alike,
warp one onto the other with the match's transform, cut the overlap into :data:`TILES` x
:data:`TILES` tiles and keep those textured on both sides (flat tiles say nothing: a white wall
matches any white wall). The agreement is the share of them whose normalised cross-correlation is
above :data:`MIN_NCC` (insensitive to brightness, contrast and greyscale edits), the lower of the
two directions. Measured on the duplicate benchmark and the whole of clothing-small (README,
"Duplicates"): every edit's 1st percentile is at least 0.70 on both dev sets, while the pairs of
different garments on one background reach 0.49-0.62.

Pure compute on the renderings; reading them is the caller's (query time, only for the pairs
that pass the keypoints: about 5 ms to decode and render a photo, 1.3 ms to compare a pair).
"""

from __future__ import annotations

import numpy as np

from imgembed.ingest.copy_data import SIDE as RENDERING_SIDE

SIDE = 128  # longer side at which the renderings are compared, pixels
TILES = 8  # the overlap is cut into TILES x TILES tiles
MIN_STD = 3.0  # grey levels (of the reduced rendering): a flatter tile has no texture to compare
MIN_NCC = 0.5  # a tile agrees when the normalised cross-correlation of its pixels is above this
MIN_VALID = 0.9  # share of a tile that the warped photo must cover for the tile to count
MIN_TILES = 4  # fewer tiles textured on both sides than this: no verdict (NaN)
_SCALE = SIDE / RENDERING_SIDE


def reduce(grey: np.ndarray) -> np.ndarray:
    """``uint8``: a grey rendering of longer side :data:`imgembed.ingest.copy_data.SIDE` reduced
    to :data:`SIDE` (what :func:`agreement` compares; 12 KB a photo)."""
    import cv2

    size = (max(1, round(grey.shape[1] * _SCALE)), max(1, round(grey.shape[0] * _SCALE)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def _one_way(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> tuple[int, int]:
    """(agreeing, textured) tiles of ``b`` with ``a`` warped onto it by ``m`` (reduced pixels)."""
    import cv2

    h, w = b.shape
    th, tw = h // TILES, w // TILES
    if th < 2 or tw < 2:
        return 0, 0
    # replicated edges: a border blended with black would make the edge tiles of the overlap look textured
    warped = cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    valid = cv2.warpAffine(np.ones_like(a), m, (w, h), flags=cv2.INTER_NEAREST)

    def tiles(x: np.ndarray) -> np.ndarray:  # (TILES * TILES, th * tw)
        x = x[: th * TILES, : tw * TILES].reshape(TILES, th, TILES, tw)
        return x.transpose(0, 2, 1, 3).reshape(TILES * TILES, th * tw)

    v = tiles(valid) > 0.5
    ta, tb = tiles(warped), tiles(b)
    n = v.sum(1)
    inside = n >= MIN_VALID * th * tw
    n = np.maximum(n, 1)
    da = (ta - (ta * v).sum(1, keepdims=True) / n[:, None]) * v
    db = (tb - (tb * v).sum(1, keepdims=True) / n[:, None]) * v
    sa = np.sqrt((da ** 2).sum(1) / n)
    sb = np.sqrt((db ** 2).sum(1) / n)
    ncc = (da * db).sum(1) / n / np.maximum(sa * sb, 1e-6)
    textured = inside & (sa > MIN_STD) & (sb > MIN_STD)
    return int((textured & (ncc > MIN_NCC)).sum()), int(textured.sum())


def agreement(small_a: np.ndarray, small_b: np.ndarray, m: np.ndarray) -> float:
    """Share of the textured overlap tiles where photo A warped by ``m`` (a ``(2, 3)`` map from A's
    rendering pixels to B's, as :class:`imgembed.query.keypoint_match.Match` gives it) agrees with
    photo B, the lower of both directions. ``small_a``, ``small_b``: :func:`reduce`'d renderings.
    NaN when either direction has fewer than :data:`MIN_TILES` textured tiles (nothing to judge by)."""
    import cv2

    a, b = small_a.astype(np.float32), small_b.astype(np.float32)
    m = np.asarray(m, np.float64).copy()
    m[:, 2] *= _SCALE  # both renderings are reduced by the same factor: only the shift changes
    shares = []
    for x, y, t in ((a, b, m), (b, a, cv2.invertAffineTransform(m))):
        ok, textured = _one_way(x, y, t)
        if textured < MIN_TILES:
            return float("nan")
        shares.append(ok / textured)
    return min(shares)
