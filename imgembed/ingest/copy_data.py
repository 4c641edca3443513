"""What the duplicate finder keeps of each photo: a perceptual hash and a few hundred local features.

Both are computed from one grey rendering of the photo, upright, without uniform borders (black
padding, letterboxing), scaled to a longer side of :data:`SIDE` pixels (small photos are scaled up,
so a resized copy and its original are compared at the same scale):

- **Perceptual hash** (256 bits): the 16x16 lowest frequencies of the 2-D DCT of the photo scaled to
  64x64, each bit telling whether its coefficient is above their median (the construction of PDQ and
  pHash). A flip or a 90-degree rotation of the photo permutes the DCT coefficients and flips the
  signs of some of them, so the hashes of all eight flips and rotations come from the same
  coefficients (:func:`dihedral_hashes`); two photos are compared by the distance between one's
  hash and the nearest of the other's eight.
- **Local features**: up to :data:`KEYPOINTS` ORB keypoints (position and 256-bit descriptor,
  OpenCV), for telling a cropped, padded or overlaid copy of a photo from another photo of the same
  kind of thing (:mod:`imgembed.query.keypoint_match`).

Pure compute on decoded pixels; :func:`copy_data_of_file` reads a file through the reader's guards.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from imgembed.config import ReaderCfg
from imgembed.ingest.reader import content_hash, open_image, read_bytes

# Bumped whenever the data below is computed differently: an index holding another version's data
# recomputes it on its next index run (imgembed.index.store.StoreWriter.keep_copy_data_version).
VERSION = 3
SIDE = 512  # longer side of the grey rendering, pixels
HASH_SIZE = 64  # the photo is scaled to HASH_SIZE x HASH_SIZE for the DCT
HASH_FREQS = 16  # the HASH_FREQS x HASH_FREQS lowest frequencies give the 256 bits
HASH_BYTES = HASH_FREQS * HASH_FREQS // 8
# Measured on the duplicate benchmark (README, "Duplicates"): 256 keypoints found 60% crops that
# 128 missed; each costs 36 bytes in the index.
KEYPOINTS = 256
# Keypoints are spread over a GRID x GRID grid of the photo, KEYPOINTS / GRID**2 per cell first, so
# that an overlay dense in corners (a line of text) cannot take them all (:mod:`imgembed.query.keypoint_match`).
GRID = 4
_DETECTED = 4 * KEYPOINTS  # ORB keypoints detected, to choose from
_COORD_SCALE = 64  # keypoint coordinates are stored as uint16 in 1/64 pixel (SIDE * 64 < 65536)


class CopyData(NamedTuple):
    hashes: bytes  # 8 x HASH_BYTES: the perceptual hash of the photo and of its 7 flips and rotations
    keypoints: bytes  # packed ORB keypoints (see pack_keypoints)


def _dct_matrix(n: int, m: int) -> np.ndarray:
    """The first ``m`` orthonormal DCT-II basis vectors of length ``n``: ``(m, n)``."""
    k = np.arange(m)[:, None]
    x = np.arange(n)[None, :]
    scale = np.where(k == 0, np.sqrt(1.0 / n), np.sqrt(2.0 / n))
    return scale * np.cos(np.pi * (2 * x + 1) * k / (2 * n))


_DCT = _dct_matrix(HASH_SIZE, HASH_FREQS)


# Borders: edge rows and columns within BORDER_RANGE grey levels of one another are trimmed, at most
# BORDER_MAX of each side, so that a letterboxed or padded copy is the photo again and two different
# padded photos do not match on their borders' corners.
BORDER_RANGE = 24
BORDER_MAX = 0.4


def trim_borders(grey: np.ndarray) -> np.ndarray:
    """``grey`` without its uniform borders (each edge row or column nearly one colour, the colour of
    the edge it starts from), at most :data:`BORDER_MAX` of each side."""
    top, left, h, w = border_box(grey)
    return grey[top:top + h, left:left + w]


def border_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of ``grey`` inside its uniform borders (:func:`trim_borders`)."""
    h, w = grey.shape
    g = grey.astype(np.int16)

    def uniform(line: np.ndarray, ref: float) -> bool:
        return int(line.max()) - int(line.min()) <= BORDER_RANGE and abs(float(line.mean()) - ref) <= BORDER_RANGE / 2

    def cut(lines, n: int) -> int:
        first = next(iter(lines), None)
        if first is None:
            return 0
        ref = float(first.mean())
        k = 0
        for line in lines:
            if k >= int(BORDER_MAX * n) or not uniform(line, ref):
                break
            k += 1
        return k

    top = cut(g, h)
    bottom = cut(g[::-1], h)
    left = cut(g.T, w)
    right = cut(g.T[::-1], w)
    inner = grey[top:h - bottom, left:w - right]
    if inner.size == 0 or int(inner.max()) - int(inner.min()) <= BORDER_RANGE:
        return 0, 0, h, w  # one colour all over: nothing to trim to
    return top, left, h - bottom - top, w - right - left


class Rendering(NamedTuple):
    grey: np.ndarray  # uint8 (h, w): the photo in grey without uniform borders, longer side SIDE
    # Decoded pixels per rendering pixel along a side, at most 1: under 1 for a photo (or the part
    # of it inside its borders) smaller than SIDE, whose rendering is scaled up and holds no finer detail.
    detail: float


def rendering(im: Image.Image) -> Rendering:
    """The photo in grey without uniform borders, scaled so that its longer side is :data:`SIDE`."""
    scale = SIDE / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    grey = trim_borders(np.asarray(im.convert("L").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)))
    detail = min(1.0, max(grey.shape) / scale / SIDE)
    if max(grey.shape) == SIDE:
        return Rendering(np.ascontiguousarray(grey), detail)
    scale = SIDE / max(grey.shape)
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    return Rendering(np.asarray(Image.fromarray(np.ascontiguousarray(grey)).resize(size, Image.Resampling.BILINEAR)),
                     detail)


def grey_rendering(im: Image.Image) -> np.ndarray:
    """``uint8 (h, w)``: :func:`rendering`'s pixels."""
    return rendering(im).grey


def dct_coefficients(grey: np.ndarray) -> np.ndarray:
    """``float64 (16, 16)``: the lowest 2-D DCT frequencies of ``grey`` scaled to 64x64 (rows: vertical)."""
    small = Image.fromarray(grey).resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BOX)
    g = np.asarray(small, dtype=np.float64)
    return _DCT @ g @ _DCT.T


def dihedral_hashes(coeffs: np.ndarray) -> np.ndarray:
    """``uint8 (8, 32)``: the hash of the photo, then of its 7 flips and rotations, from its coefficients.

    Mirroring the photo left-right multiplies horizontal frequency ``v`` by ``(-1)^v``; top-bottom,
    vertical frequency ``u`` by ``(-1)^u``; transposing it transposes the coefficients. Each variant
    is thresholded at its own median.
    """
    sign = (-1.0) ** np.arange(coeffs.shape[0])
    out = []
    for c in (coeffs, coeffs.T):
        for flip_v in (False, True):
            for flip_h in (False, True):
                v = c * (sign[:, None] if flip_v else 1.0) * (sign[None, :] if flip_h else 1.0)
                out.append(np.packbits((v > np.median(v)).ravel()))
    return np.stack(out)


def orb_keypoints(grey: np.ndarray, n: int = KEYPOINTS) -> tuple[np.ndarray, np.ndarray]:
    """``(points float32 (k, 2), descriptors uint8 (k, 32))``, ``k <= n``: ORB keypoints of ``grey``,
    the strongest of each grid cell first (:data:`GRID`), then the strongest of the rest."""
    import cv2

    cv2.setNumThreads(1)  # called from several threads at once; one photo gains nothing from more
    orb = cv2.ORB_create(nfeatures=_DETECTED)
    kp, des = orb.detectAndCompute(np.ascontiguousarray(grey), None)
    if des is None or not kp:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    pts = np.array([k.pt for k in kp], dtype=np.float32).reshape(-1, 2)
    strength = np.array([k.response for k in kp], dtype=np.float64)
    h, w = grey.shape
    cell = (np.minimum(pts[:, 1] * GRID // max(h, 1), GRID - 1) * GRID
            + np.minimum(pts[:, 0] * GRID // max(w, 1), GRID - 1)).astype(np.int64)
    order = np.lexsort((-strength, cell))  # by cell, strongest first within a cell
    rank = np.empty(len(kp), np.int64)
    start = np.searchsorted(cell[order], np.arange(GRID * GRID))
    rank[order] = np.arange(len(kp)) - start[cell[order]]
    quota = n // (GRID * GRID)
    first = np.nonzero(rank < quota)[0]
    rest = np.nonzero(rank >= quota)[0]
    rest = rest[np.argsort(-strength[rest], kind="stable")][: max(0, n - len(first))]
    keep = np.sort(np.concatenate([first, rest]))
    return pts[keep], des[keep]


def pack_keypoints(pts: np.ndarray, des: np.ndarray, size: tuple[int, int] = (SIDE, SIDE)) -> bytes:
    """Keypoints as bytes: count, rendering width and height (uint16 each), coordinates (uint16, 1/64 px),
    descriptors (32 bytes each)."""
    k = len(pts)
    coords = np.clip(np.round(pts * _COORD_SCALE), 0, 65535).astype("<u2")
    head = np.array([k, size[0], size[1]], "<u2").tobytes()
    return head + coords.tobytes() + np.ascontiguousarray(des, np.uint8).tobytes()


def unpack_keypoints(blob: bytes) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The inverse of :func:`pack_keypoints`: points, descriptors, rendering (width, height).
    Raises ValueError for a blob of the wrong size."""
    if len(blob) < 6:
        raise ValueError("keypoint data too short")
    k, w, h = (int(x) for x in np.frombuffer(blob[:6], "<u2"))
    if len(blob) != 6 + k * 4 + k * 32:
        raise ValueError(f"keypoint data of {len(blob)} bytes does not hold {k} keypoints")
    pts = np.frombuffer(blob[6:6 + 4 * k], "<u2").reshape(k, 2).astype(np.float32) / _COORD_SCALE
    des = np.frombuffer(blob[6 + 4 * k:], np.uint8).reshape(k, 32)
    return pts, des, (w, h)


def copy_data_of_image(im: Image.Image) -> CopyData:
    grey = grey_rendering(im)
    hashes = dihedral_hashes(dct_coefficients(grey))
    return CopyData(hashes.tobytes(), pack_keypoints(*orb_keypoints(grey), (grey.shape[1], grey.shape[0])))


def copy_data_of_file(path: str | bytes, cfg: ReaderCfg) -> tuple[str, CopyData]:
    """``(content hash, copy data)`` of one file, draft-decoded near :data:`SIDE`. Raises ImageSkipped."""
    data = read_bytes(path, cfg)
    return content_hash(data), copy_data_of_image(open_image(data, cfg, draft_to=SIDE))


def rendering_of_file(path: str | bytes, cfg: ReaderCfg) -> Rendering:
    """The grey rendering of one file, as :func:`copy_data_of_file` makes it (its keypoints' pixels).
    A file decoded at a reduced size still has at least :data:`SIDE` pixels a side, so its detail is
    that of the file. Raises ImageSkipped."""
    return rendering(open_image(read_bytes(path, cfg), cfg, draft_to=SIDE))
