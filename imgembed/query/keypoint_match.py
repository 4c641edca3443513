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
inliers between unrelated photos). Pure compute on unpacked keypoints.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

RATIO = 0.8  # Lowe's ratio test: best match distance below this share of the second best
REPROJECTION = 0.015  # RANSAC inlier threshold, as a share of the longer side (7.7 px at 512)
SCALE_RANGE = (1 / 3, 3.0)
ROTATION_TOLERANCE = 20.0  # degrees from a multiple of 90
MIN_MATCHES = 4  # fewer matches than this are no evidence at all


class Match(NamedTuple):
    inliers: int  # matches explained by one similarity transform that looks like an edit
    scale: float  # of that transform (0 when none was found)
    rotation: float  # degrees, in (-180, 180]
    transform: np.ndarray | None = None  # (2, 3): points of A to points of B, in rendering pixels


NO_MATCH = Match(0, 0.0, 0.0)


def match(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], side: int) -> Match:
    """How well keypoints ``a`` = (points (n, 2), descriptors (n, 32)) map onto ``b`` (renderings of
    longer side ``side``)."""
    import cv2

    (pa, da), (pb, db) = a, b
    if len(da) < MIN_MATCHES or len(db) < 2:
        return NO_MATCH
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < MIN_MATCHES:
        return NO_MATCH
    src = pa[[g.queryIdx for g in good]]
    dst = pb[[g.trainIdx for g in good]]
    m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION * side,
                                         maxIters=2000, confidence=0.99)
    if m is None or inl is None:
        return NO_MATCH
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    rotation = float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
    off = rotation % 90.0
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] or min(off, 90.0 - off) > ROTATION_TOLERANCE:
        return Match(0, scale, rotation, m)
    return Match(int(inl.sum()), scale, rotation, m)
