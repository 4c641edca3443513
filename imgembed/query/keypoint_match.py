"""Is photo B an edited copy of photo A? Count the local features that one geometric map explains.

Two photos of the same kind of thing (two grey t-shirts) share a look but few exact details; a
copy of a photo, however cropped, padded, resized, recoloured or overlaid, keeps the details of the
part it shows at the same relative positions. So: match the ORB descriptors of the two photos
(nearest neighbour, Lowe's ratio test), fit a similarity transform (scale, rotation, shift) to the
matches with RANSAC, and count the matches it explains (inliers).

The transform must also look like an edit: a scale within [1/3, 3] (the renderings have the same
longer side, so a resized copy has scale 1 and a 60% crop 1.67) and a rotation within
:data:`ROTATION_TOLERANCE` degrees of a multiple of 90. Without these limits RANSAC happily maps a
whole photo onto a few pixels of another, where any matches are "explained" (measured: up to 98
inliers between unrelated photos). And the inliers must not sit in a thin strip of what the two
photos share (:data:`MIN_EXTENT`): two photos with the same caption match on the caption alone;
and most descriptor matches must be inliers (:data:`MIN_INLIER_RATIO`).

None of this tells a copy from two different things photographed on one patterned floor, which
match on the floor alone (15-50 inliers on clothing-small, rotation under a degree, inlier ratio
0.78-0.86). Measured for that, none separates them from the benchmark's copies: ``coverage`` (the
share of the shared part's cells that hold an inlier: such pairs 0.19-0.39, 1st percentile of 60%
crops and colour edits 0.23-0.27), the rotation (0.44-0.93 degrees; copies up to 0.92), the
inliers' residual after a least-squares refit (0.7-2.8 px; copies up to 2.4) and the inliers'
share of the keypoints inside the overlap (0.05-0.10; copies from 0.07). The pixels do, once the
transform is known (:mod:`imgembed.query.pixel_check`).
Pure compute on unpacked keypoints.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

RATIO = 0.8  # Lowe's ratio test: best match distance below this share of the second best
REPROJECTION = 0.015  # RANSAC inlier threshold, as a share of the longer side (7.7 px at 512)
SCALE_RANGE = (1 / 3, 3.0)
# Degrees from a multiple of 90. Edits keep angles: a crop, a pad or a resize of a photo has rotation
# 0 within 0.5 degrees (99% of the 60% crops of the benchmark), while two photos of one background
# taken from about the same spot (the false matches left at 20 degrees) differ by 1-6 degrees.
ROTATION_TOLERANCE = 1.0
# The inliers must spread over at least this share of the part the photos share, along its
# narrower axis: the same line of text on two different photos is a strip under 6% (README).
MIN_EXTENT = 0.1
# Of the descriptor matches, at least this share must be inliers. A copy's matches nearly all agree
# (median 0.94-0.99, 1st percentile 0.66-0.89 for the benchmark's crops, pads and banners); two
# photos of different things on one printed floor or tiled wall match the floor and little else (0.63).
MIN_INLIER_RATIO = 0.7
MIN_MATCHES = 4  # fewer matches than this are no evidence at all
COVERAGE_GRID = 6  # coverage is counted in the cells of a COVERAGE_GRID x COVERAGE_GRID grid


class Match(NamedTuple):
    inliers: int  # matches explained by one similarity transform that looks like an edit
    scale: float  # of that transform (0 when none was found)
    rotation: float  # degrees, in (-180, 180]
    transform: np.ndarray | None = None  # (2, 3): points of A to points of B, in rendering pixels
    coverage: float = 0.0  # share of the shared part's grid cells holding an inlier (the lower of A's and B's)
    extent: float = 0.0  # the inliers' narrower spread as a share of the shared part's (the lower of A's and B's)
    matches: int = 0  # descriptor matches that passed the ratio test


NO_MATCH = Match(0, 0.0, 0.0)

Keypoints = tuple[np.ndarray, np.ndarray, tuple[int, int]]  # points (n, 2), descriptors (n, 32), (width, height)


def _cells(pts: np.ndarray, size: tuple[int, int]) -> set[int]:
    g = COVERAGE_GRID
    col = np.clip((pts[:, 0] * g // max(size[0], 1)).astype(np.int64), 0, g - 1)
    row = np.clip((pts[:, 1] * g // max(size[1], 1)).astype(np.int64), 0, g - 1)
    return set((row * g + col).tolist())


def coverage(pts: np.ndarray, inliers: np.ndarray, size: tuple[int, int], m: np.ndarray,
             other: tuple[int, int]) -> float:
    """Of the grid cells of one photo that hold keypoints which ``m`` maps inside the other photo
    (``other``: its width, height), the share that holds an inlier. A copy matches all over the part
    it shares; two photos that share only a background or an overlay match in a few cells of it."""
    mapped = pts @ m[:, :2].T + m[:, 2]
    inside = (mapped[:, 0] >= 0) & (mapped[:, 0] < other[0]) & (mapped[:, 1] >= 0) & (mapped[:, 1] < other[1])
    shared = _cells(pts[inside], size)
    return len(_cells(pts[inliers & inside], size) & shared) / len(shared) if shared else 0.0


def extent(pts: np.ndarray, inliers: np.ndarray, m: np.ndarray, other: tuple[int, int]) -> float:
    """How far the inliers spread over the part of one photo that the other shows, along its narrower
    axis: the inliers' 5-95% range over the range of all keypoints that ``m`` maps inside the other
    photo. A line of text shared by two different photos is a thin strip of the part they share."""
    mapped = pts @ m[:, :2].T + m[:, 2]
    inside = (mapped[:, 0] >= 0) & (mapped[:, 0] < other[0]) & (mapped[:, 1] >= 0) & (mapped[:, 1] < other[1])
    if inliers.sum() < 2 or inside.sum() < 2:
        return 0.0
    span = np.percentile(pts[inliers & inside], 95, axis=0) - np.percentile(pts[inliers & inside], 5, axis=0)
    whole = np.percentile(pts[inside], 98, axis=0) - np.percentile(pts[inside], 2, axis=0)
    return float(np.min(span / np.maximum(whole, 1.0)))


# RANSAC iterations: at an inlier share of MIN_INLIER_RATIO a random pair of matches (the sample of a
# similarity transform) is all inliers with probability 0.49, so 200 draws all miss with ~1e-58.
RANSAC_ITERATIONS = 200


def match(a: Keypoints, b: Keypoints, side: int, rotation_tolerance: float = ROTATION_TOLERANCE,
          min_inliers: int = MIN_MATCHES) -> Match:
    """How well keypoints ``a`` map onto ``b`` (renderings of longer side ``side``); a transform turning
    more than ``rotation_tolerance`` degrees away from a multiple of 90 counts as no match. Pairs
    with fewer descriptor matches than ``min_inliers`` are not fitted (they cannot reach it)."""
    import cv2

    (pa, da, size_a), (pb, db, size_b) = a, b
    if len(da) < MIN_MATCHES or len(db) < 2:
        return NO_MATCH
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < max(MIN_MATCHES, min_inliers):
        return NO_MATCH._replace(matches=len(good))
    ia = np.array([g.queryIdx for g in good])
    ib = np.array([g.trainIdx for g in good])
    m, inl = cv2.estimateAffinePartial2D(pa[ia], pb[ib], method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION * side,
                                         maxIters=RANSAC_ITERATIONS, confidence=0.999)
    if m is None or inl is None:
        return NO_MATCH
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    rotation = float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
    off = rotation % 90.0
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] or min(off, 90.0 - off) > rotation_tolerance:
        return Match(0, scale, rotation, m)  # no edit does that
    inl = inl.ravel().astype(bool)
    on_a = np.zeros(len(pa), bool)
    on_a[ia[inl]] = True
    on_b = np.zeros(len(pb), bool)
    on_b[ib[inl]] = True
    back = cv2.invertAffineTransform(m)
    cov = min(coverage(pa, on_a, size_a, m, size_b), coverage(pb, on_b, size_b, back, size_a))
    ext = min(extent(pa, on_a, m, size_b), extent(pb, on_b, back, size_a))
    if ext < MIN_EXTENT or inl.sum() < MIN_INLIER_RATIO * len(good):
        return Match(0, scale, rotation, m, cov, ext, len(good))  # a strip (a shared caption), or mostly outliers
    return Match(int(inl.sum()), scale, rotation, m, cov, ext, len(good))
