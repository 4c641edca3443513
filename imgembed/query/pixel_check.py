"""Does the whole shared part of two photos agree, or only its background? A dense check of a keypoint match.

Two different things photographed on one tiled floor, printed laminate or bedspread share the
floor's keypoints: one similarity transform explains 15-50 of them, within a degree of no rotation,
and most descriptor matches agree, which is all that :mod:`imgembed.query.keypoint_match` asks of a
copy. What such a pair lacks is the subject. Once the transform is known, a copy shows the same
picture wherever it overlaps its original (apart from an overlay such as a banner), while photos
of two different things disagree wherever the things are.

Two measures, both over the tiles of the overlap textured on both sides (flat tiles say nothing: a
white wall matches any white wall), each the lower of the two directions, and both insensitive to
brightness, contrast and greyscale edits (normalised cross-correlation, NCC):

- :func:`agreement`, coarse: both grey renderings (:mod:`imgembed.ingest.copy_data`) reduced to a
  longer side of :data:`SIDE` pixels, which also makes a copy downscaled to 30% and its sharp
  original look alike; the share of :data:`TILES` x :data:`TILES` tiles whose NCC is above
  :data:`MIN_NCC`. Different garments on one background reach 0.49-0.62, every edit's 1st
  percentile is at least 0.70 (README, "Duplicates").
- :func:`correlation`, fine: the same tiles at the finest detail both photos hold (the coarser of
  the two files' own pixels, at most the renderings'), their median NCC. A copy is the same
  capture, so at that detail it still correlates wherever it is not overlaid (original-copy pairs'
  1st percentile 0.935-0.939, lowest 0.83), while the same thing shot a second time from a shifted
  or zoomed camera, which passes the coarse check as a crop would, differs in parallax, light and
  noise (0.64-0.70).

Pure compute on the renderings; reading them is the caller's (query time, only for the pairs
that pass the keypoints: about 5 ms to decode and render a photo; to compare a pair, under 1 ms
coarsely and 8-13 ms finely at up to 512 pixels, one idle core).
"""

from __future__ import annotations

import numpy as np

from imgembed.ingest.copy_data import SIDE as RENDERING_SIDE
from imgembed.ingest.copy_data import Rendering

SIDE = 128  # longer side at which the renderings are compared coarsely, pixels
TILES = 8  # the overlap is cut into TILES x TILES tiles
MIN_STD = 3.0  # grey levels: a flatter tile has no texture to compare
MIN_NCC = 0.5  # coarse: a tile agrees when the normalised cross-correlation of its pixels is above this
MIN_VALID = 0.9  # share of a tile that the warped photo must cover for the tile to count
MIN_TILES = 4  # fewer tiles textured on both sides than this: no verdict (NaN)
_SCALE = SIDE / RENDERING_SIDE


def reduce(grey: np.ndarray) -> np.ndarray:
    """``uint8``: a grey rendering of longer side :data:`imgembed.ingest.copy_data.SIDE` reduced
    to :data:`SIDE` (what :func:`agreement` compares; 12 KB a photo)."""
    return _resize(grey, _SCALE)


def _resize(grey: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    if factor == 1:
        return grey
    size = (max(1, round(grey.shape[1] * factor)), max(1, round(grey.shape[0] * factor)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def _tile_ncc(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """NCC of each tile of ``b`` inside the overlap and textured on both sides, with ``a`` warped
    onto ``b`` by ``m`` (both float32)."""
    import cv2

    h, w = b.shape
    th, tw = h // TILES, w // TILES
    if th < 2 or tw < 2:
        return np.zeros(0, np.float32)
    # replicated edges: a border blended with black would make the edge tiles of the overlap look textured
    warped = cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    valid = cv2.warpAffine(np.ones_like(a), m, (w, h), flags=cv2.INTER_NEAREST)

    def tiles(x: np.ndarray) -> np.ndarray:  # per-tile sums, (TILES * TILES,)
        return x[: th * TILES, : tw * TILES].reshape(TILES, th, TILES, tw).sum(axis=(1, 3)).ravel()

    v = (valid > 0.5).astype(np.float64)
    x, y = warped * v, b * v  # float64: sums of squares of 10^4 pixels
    n = tiles(v)
    inside = n >= MIN_VALID * th * tw
    n = np.maximum(n, 1)
    mx, my = tiles(x) / n, tiles(y) / n
    sx = np.sqrt(np.maximum(tiles(x * x) / n - mx * mx, 0))
    sy = np.sqrt(np.maximum(tiles(y * y) / n - my * my, 0))
    ncc = (tiles(x * y) / n - mx * my) / np.maximum(sx * sy, 1e-6)
    return ncc[inside & (sx > MIN_STD) & (sy > MIN_STD)]


def _both_ways(a: np.ndarray, b: np.ndarray, m: np.ndarray, statistic) -> float:
    """The lower of ``statistic`` over the tiles of B (A warped by ``m``) and of A (B warped back);
    NaN when either has fewer than :data:`MIN_TILES` tiles."""
    import cv2

    values = []
    for x, y, t in ((a, b, m), (b, a, cv2.invertAffineTransform(m))):
        ncc = _tile_ncc(x, y, t)
        if len(ncc) < MIN_TILES:
            return float("nan")
        values.append(float(statistic(ncc)))
    return min(values)


def agreement(small_a: np.ndarray, small_b: np.ndarray, m: np.ndarray) -> float:
    """Share of the textured overlap tiles where photo A warped by ``m`` (a ``(2, 3)`` map from A's
    rendering pixels to B's, as :class:`imgembed.query.keypoint_match.Match` gives it) agrees with
    photo B, the lower of both directions. ``small_a``, ``small_b``: :func:`reduce`'d renderings.
    NaN when either direction has fewer than :data:`MIN_TILES` textured tiles (nothing to judge by)."""
    m = np.asarray(m, np.float64).copy()
    m[:, 2] *= _SCALE  # both renderings are reduced by the same factor: only the shift changes
    return _both_ways(small_a.astype(np.float32), small_b.astype(np.float32), m, lambda ncc: np.mean(ncc > MIN_NCC))


def correlation(a: Rendering, b: Rendering, m: np.ndarray) -> float:
    """Median NCC of the textured overlap tiles of renderings ``a`` and ``b`` (``m`` as for
    :func:`agreement`), compared at the finer detail both hold: the rendering pixels scaled by the
    lower of B's detail and A's detail over the transform's scale, so that neither side is compared
    above the resolution of its own file. The lower of both directions; NaN as for :func:`agreement`."""
    m = np.asarray(m, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    factor = min(1.0, b.detail, a.detail / scale)  # in B's rendering pixels; A's are `scale` times finer
    # A is reduced first to about the compared detail, so that warping does not alias it
    fa = min(1.0, factor * scale)
    t = m * factor
    t[:, :2] /= fa
    small_a = _resize(a.grey, fa).astype(np.float32)
    small_b = _resize(b.grey, factor).astype(np.float32)
    return _both_ways(small_a, small_b, t, np.median)
