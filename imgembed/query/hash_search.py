"""Pairs of photos whose perceptual hashes are close, one of them flipped or rotated if that is closer.

Each photo has 8 hashes (imgembed.ingest.copy_data: as stored, then its 7 flips and rotations). The
plain hashes go into a FAISS binary index; every photo asks it for everything within a radius with
all 8 of its hashes, so a rotated copy finds its original through the rotated hash. Exhaustive Hamming search up to
:data:`EXACT_MAX` photos; beyond, an inverted-file binary index (approximate: a near-identical hash
almost always lands in the cell of its original, and :data:`NPROBE` neighbouring cells are searched
too). Pure compute on arrays.
"""

from __future__ import annotations

import faiss
import numpy as np

BITS = 256
EXACT_MAX = 200_000
NPROBE = 32
CHUNK = 20_000  # photos whose 8 hashes are searched at once


def _index(base: np.ndarray) -> faiss.IndexBinary:
    n = len(base)
    if n <= EXACT_MAX:
        index = faiss.IndexBinaryFlat(BITS)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(BITS), BITS, nlist)
        sample = base[np.random.default_rng(0).choice(n, min(n, 50 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = NPROBE
    index.add(base)
    return index


def popcount_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between rows of ``uint8 (m, 32)`` arrays."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


def near_pairs(codes: np.ndarray, have: np.ndarray, radius: int) -> dict[tuple[int, int], tuple[int, int]]:
    """``(a, b) -> (distance, plain distance)`` for rows ``a < b`` of ``codes (n, 8, 32)`` within ``radius``.

    ``distance`` is the smallest over the 8 hashes of either photo against the other's plain hash;
    ``plain`` compares the two plain hashes (same orientation). Rows where ``have`` is False are
    left out (photos without copy data).
    """
    pos = np.nonzero(np.asarray(have, dtype=bool))[0]
    if len(pos) < 2 or radius < 0:
        return {}
    index = _index(np.ascontiguousarray(codes[pos, 0]))
    found: dict[tuple[int, int], int] = {}
    for start in range(0, len(pos), CHUNK):
        sel = pos[start:start + CHUNK]
        q = np.ascontiguousarray(codes[sel].reshape(-1, codes.shape[-1]))
        lims, dist, nbr = index.range_search(q, radius + 1)  # binary range search: distance < radius + 1
        query = np.repeat(np.arange(len(q)), np.diff(lims).astype(np.int64))
        a = sel[query // 8]
        b = pos[nbr]
        keep = a != b
        for x, y, z in zip(a[keep].tolist(), b[keep].tolist(), dist[keep].astype(np.int64).tolist()):
            key = (x, y) if x < y else (y, x)
            if z < found.get(key, BITS + 1):
                found[key] = z
    if not found:
        return {}
    keys = np.array(list(found), dtype=np.int64)
    plain = popcount_distance(codes[keys[:, 0], 0], codes[keys[:, 1], 0])
    return {(int(a), int(b)): (found[(int(a), int(b))], int(p)) for (a, b), p in zip(keys, plain)}
