"""How long `imgembed duplicates` takes on a million photos, stage by stage, and how much memory.

    python scripts/bench_duplicates_scale.py [N] [--dim 128] [--index BENCH_INDEX]

The finder's stages on N synthetic photos (default 1,000,000), timed with the library's own code:

1. hash pairs (imgembed.query.hash_search.near_pairs): N x 8 random 256-bit hashes, with 1% of the
   photos given a near copy (a few bits off, some through a rotated hash), at the copies preset's
   verification radius;
2. the embedding neighbour graph through an IVF index as the index's own search answers it
   (imgembed.query.duplicates.neighbour_graph_chunked with imgembed.index.faiss_index.search): N
   random unit vectors of DIM dimensions plus near copies;
3. keypoint verification (imgembed.query.keypoint_match.match): timed on the real keypoints of an
   index built by scripts/bench_duplicates.py (--index), and multiplied by the pairs per photo that
   the copies preset verified there.

Prints seconds per stage, the estimate for the whole run and the peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from imgembed.config import IndexCfg
from imgembed.index import faiss_index
from imgembed.index.snapshot import Snapshot
from imgembed.ingest.copy_data import SIDE, unpack_keypoints
from imgembed.query import hash_search
from imgembed.query.copies import NEIGHBOURS, PRESETS
from imgembed.query.duplicates import neighbour_graph_chunked
from imgembed.query.keypoint_match import match


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_hashes(n: int, rng: np.random.Generator) -> np.ndarray:
    codes = rng.integers(0, 256, (n, 8, 32), dtype=np.uint8)
    src = rng.choice(n, n // 100, replace=False)
    dst = (src + 1) % n
    for a, b in zip(src.tolist(), dst.tolist()):
        bits = np.unpackbits(codes[a, int(rng.integers(0, 8))])
        bits[rng.choice(256, int(rng.integers(0, 30)), replace=False)] ^= 1
        codes[b, 0] = np.packbits(bits)
    return codes


def synthetic_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    src = rng.choice(n, n // 100, replace=False)
    x[(src + 1) % n] = x[src] + 0.3 * rng.standard_normal((len(src), dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def verification_rate(index_dir: Path, sample: int = 3000) -> tuple[float, float]:
    """(seconds per pair on this machine's cores, pairs verified per photo by the copies preset)."""
    from imgembed.query import copies

    snap = Snapshot(index_dir)
    with snap.read():
        ids = snap.visible_ids()
    kp = {i: unpack_keypoints(v) for i, v in snap.copy_data(ids[:2000].tolist(), "keypoints").items()}
    keys = list(kp)
    rng = np.random.default_rng(0)
    # The pairs the copies preset verifies: each photo's embedding neighbours (as in the finder).
    vecs = snap.vectors(keys)
    x = np.stack([vecs[i] for i in keys])
    nbr = np.argsort(-(x @ x.T), axis=1)[:, 1:1 + NEIGHBOURS]
    pairs = [(keys[i], keys[int(j)]) for i in rng.permutation(len(keys))[: sample // NEIGHBOURS] for j in nbr[i]]
    sample = len(pairs)
    t = time.perf_counter()
    with ThreadPoolExecutor() as pool:
        preset = PRESETS["copies"]
        list(pool.map(lambda ab: match(kp[ab[0]], kp[ab[1]], SIDE, preset.rotation, preset.inliers), pairs))
    per_pair = (time.perf_counter() - t) / sample
    report = copies.find_duplicates(snap, "copies")
    return per_pair, report.stats.get("pairs verified", 0) / max(report.photos, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int, nargs="?", default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--index", help="an index made by scripts/bench_duplicates.py (keypoint timing)")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    rows = []

    codes = synthetic_hashes(a.n, rng)
    t = time.perf_counter()
    near = hash_search.near_pairs(codes, np.ones(a.n, bool), PRESETS["copies"].verify_distance)
    rows.append(("hash pairs (8 hashes a photo, radius %d)" % PRESETS["copies"].verify_distance,
                 time.perf_counter() - t, f"{len(near):,} pairs"))
    del codes, near

    x = synthetic_vectors(a.n, a.dim, rng)
    ids = np.arange(a.n, dtype=np.int64)
    t = time.perf_counter()
    sample = x[rng.choice(a.n, min(a.n, 262_144), replace=False)]
    index = faiss_index.build("ivf", a.dim, IndexCfg(), iter([(ids, x)]), sample, a.n)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    chunks = ((ids[s:s + 10_000], x[s:s + 10_000]) for s in range(0, a.n, 10_000))
    graph = neighbour_graph_chunked(chunks, lambda q, k: faiss_index.search(index, q, k), k=NEIGHBOURS)
    rows.append((f"neighbour graph, k={NEIGHBOURS}, {a.dim}-d IVF (nprobe {index.nprobe})",
                 time.perf_counter() - t, f"index built in {build_s:.0f} s (at index time, not here)"))
    del x, index, graph

    if a.index:
        per_pair, per_photo = verification_rate(Path(a.index))
        rows.append((f"keypoint verification, {per_photo:.1f} pairs a photo (estimate)", per_pair * per_photo * a.n,
                     f"{1000 * per_pair:.2f} ms a pair"))
    print(f"| stage, {a.n:,} photos | seconds | note |\n| --- | --- | --- |")
    for name, secs, note in rows:
        print(f"| {name} | {secs:.0f} | {note} |")
    print(f"| total | {sum(r[1] for r in rows):.0f} | peak resident memory {peak_gib():.1f} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
