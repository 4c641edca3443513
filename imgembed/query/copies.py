"""The duplicate finder: groups of files that hold the same photo, each with a suggested keeper.

Evidence, cheapest first, for each pair of photos (presets in :data:`PRESETS`):

1. **identical bytes**: the same content hash (the index already knows it).
2. **same pixels**: the same size and a near-identical perceptual hash, confirmed by decoding both
   files in full and comparing every pixel (a JPEG re-saved as PNG).
3. **copy by hash**: the perceptual hashes (imgembed.ingest.copy_data) of the two photos, one of
   them flipped or rotated by 90 degrees if that is closer, differ in at most ``hash_distance`` of
   256 bits: resized, re-encoded, recoloured, greyscale, flipped and rotated copies.
4. **copy by keypoints**: at least ``inliers`` ORB keypoints of the two photos map onto each other
   under one similarity transform (:mod:`imgembed.query.keypoint_match`): crops, padding, overlaid
   text, which move or hide part of the photo and so change its hash; and, once the transform is
   known, the two photos agree pixel by pixel over at least ``agreement`` of the textured part
   they share, so that two different things photographed on one patterned floor, which match on
   the floor alone, are not a copy; and at the finest detail both files hold, the shared part
   correlates at least ``correlation`` (median over its tiles), so that the same thing shot again
   from a shifted or zoomed camera, which the transform explains as it would a crop, is not a copy
   either (:mod:`imgembed.query.pixel_check`). Only the pairs that pass the keypoints are checked,
   from their files (decoded again at query time).

Pairs are proposed, never decided, by the embedding: each photo's :data:`NEIGHBOURS` nearest
photos in the index (whatever the backbone or head, so no embedding threshold needs calibrating),
plus every pair of photos whose hashes are within ``verify_distance``. Only the hash distance, the
keypoints and the pixels decide, and none of them depends on the model. The thresholds were
chosen on the duplicate benchmark (``scripts/bench_duplicates.py``, README "Duplicates") for the
precision recorded with each preset. Work and memory grow with the number of photos times NEIGHBOURS.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from imgembed.config import DUPLICATE_PRESETS, ReaderCfg, check_choice
from imgembed.index.format import Row
from imgembed.index.snapshot import Snapshot
from imgembed.ingest.copy_data import HASH_BYTES, SIDE, Rendering, rendering_of_file, unpack_keypoints
from imgembed.ingest.reader import ImageSkipped, open_image, read_bytes
from imgembed.query import hash_search, pixel_check
from imgembed.query.collection import neighbour_graph_of
from imgembed.query.duplicates import duplicate_groups, keeper_of
from imgembed.query.keypoint_match import NO_MATCH, ROTATION_TOLERANCE, Match, match

logger = logging.getLogger(__name__)

# progress(stage, done, total)
Progress = Callable[[str, int, int], None]

# Kinds of match, strongest first. A member's kind is that of its strongest link into the group.
KINDS = ("identical bytes", "same pixels", "copy", "similar")

NEIGHBOURS = 8  # embedding neighbours proposed per photo (the app's neighbour graph uses the same)
PIXELS_DISTANCE = 4  # plain hash distance up to which two photos of one size are decoded and compared
VERIFY_CHUNK = 2000  # candidate pairs whose keypoints are loaded at once (bounds memory)
# Of the textured tiles two photos share, the share that must agree (imgembed.query.pixel_check).
# Measured (README "Duplicates"): each edit's 1st percentile is 0.70-1.00 on both dev sets; different
# garments on one tiled floor, laminate or bedspread 0.49-0.62; a second shot of one thing 0.71-0.85.
MIN_AGREEMENT = 0.66
# Median NCC of those tiles at the finest detail both files hold (imgembed.query.pixel_check).
# Measured (README "Duplicates"): the benchmark's original-copy pairs have a 1st percentile of
# 0.935-0.939 on both dev sets and a lowest pair of 0.83; the same box or bottle shot again from a
# shifted or zoomed camera 0.70, a pair of sandals photographed twice 0.64.
MIN_CORRELATION = 0.75
PIXEL_CHUNK = 256  # pairs whose files' renderings are held at once (up to 2 x 196 KB a pair)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    hash_distance: int  # copies by hash: at most this many of 256 bits differ (-1: no hash matches)
    inliers: int  # copies by keypoints: at least this many inliers (0: no keypoint matches)
    verify_distance: int  # pairs this close in hash are verified by keypoints even if not neighbours
    rotation: float  # degrees a keypoint match may turn away from a multiple of 90 (keypoint_match)
    agreement: float  # keypoint matches need this share of the overlap to agree pixel by pixel (0: unchecked)
    correlation: float  # ... and its median correlation at the finer detail to be at least this (0: unchecked)
    kind: str  # the kind given to matches by hash or keypoints
    precision: str  # what the thresholds were calibrated to


PRESETS = {
    "exact": Preset("exact", "the same pixels: byte copies and lossless re-saves", -1, 0, -1, 0.0, 0.0, 0.0,
                     "same pixels", "precision 1.0: pixels are compared"),
    "copies": Preset("copies", "edited copies of one photo: resized, re-encoded, cropped, flipped, rotated, "
                     "recoloured, overlaid, padded", 40, 15, 64, ROTATION_TOLERANCE, MIN_AGREEMENT, MIN_CORRELATION,
                     "copy", "pair precision >= 0.99"),
    "similar": Preset("similar", "copies and near-identical scenes (burst shots)", 64, 8, 80, 20.0, 0.0, 0.0, "similar",
                      "not calibrated on copies: groups near-identical photos too"),
}
assert tuple(PRESETS) == DUPLICATE_PRESETS


@dataclass
class Member:
    row: Row
    kind: str  # one of KINDS; the keeper's is that of its strongest link
    score: float  # cosine similarity of its embedding to the keeper's (1.0 for the keeper)
    evidence: str  # e.g. "hash distance 12/256", "143 matching keypoints"


@dataclass
class Group:
    members: list[Member]  # the suggested keeper first
    reason: str  # why the keeper was suggested

    @property
    def keeper(self) -> Member:
        return self.members[0]

    @property
    def kind(self) -> str:
        """The loosest kind of match in the group ("identical bytes" only when every file is the same)."""
        return max((m.kind for m in self.members), key=KINDS.index)


@dataclass
class Report:
    preset: str  # a preset name, or "threshold"
    description: str
    groups: list[Group]
    photos: int  # photos in the index
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)  # pairs proposed, verified, missing copy data...

    def summary(self) -> str:
        dup = sum(len(g.members) - 1 for g in self.groups)
        dup_bytes = sum(m.row.size for g in self.groups for m in g.members[1:])
        return (f"{len(self.groups)} groups, {sum(len(g.members) for g in self.groups)} photos, {dup} could go "
                f"({dup_bytes / 2**20:.1f} MiB) of {self.photos} photos; preset {self.preset} "
                f"({self.description}); {self.seconds:.1f} s")


def find_duplicates(snapshot: Snapshot, preset: str = "copies", threshold: float | None = None,
                    progress: Progress | None = None, reader_cfg: ReaderCfg | None = None) -> Report:
    """Duplicate groups of one published generation of an index, by ``preset`` or, with ``threshold``,
    by embedding cosine alone (the photos at least that similar, whatever the edit)."""
    t0 = time.perf_counter()
    cfg = reader_cfg or ReaderCfg()
    step = progress or (lambda *a: None)
    with snapshot.read():
        ids = snapshot.visible_ids()
        rows = snapshot.rows(ids.tolist())
        if threshold is not None:
            report = _by_threshold(snapshot, ids, rows, threshold, step)
        else:
            report = _by_preset(snapshot, ids, rows, PRESETS[check_choice("preset", preset, DUPLICATE_PRESETS)],
                                cfg, step)
        report.groups = [_finish(snapshot, g, reason) for g, reason in report.groups]
    report.groups.sort(key=lambda g: (g.kind != "identical bytes", -len(g.members), g.keeper.row.path))
    report.seconds = time.perf_counter() - t0
    return report


# ---------------------------------------------------------------- edges


class _Edges:
    """Accepted links between photos (by row position), each with a kind and its evidence."""

    def __init__(self) -> None:
        self.best: dict[tuple[int, int], tuple[int, str]] = {}  # (a, b) a < b -> (kind index, evidence)

    def add(self, a: int, b: int, kind: str, evidence: str) -> None:
        key = (min(a, b), max(a, b))
        k = KINDS.index(kind)
        if key not in self.best or k < self.best[key][0]:
            self.best[key] = (k, evidence)

    def groups(self, n: int) -> list[dict[int, tuple[int, str]]]:
        """Connected groups: ``{position: (kind index, evidence)}`` of each member's strongest link."""
        parent = list(range(n))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for a, b in self.best:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[rb] = ra
        link: dict[int, tuple[int, str]] = {}
        for (a, b), v in self.best.items():
            for p in (a, b):
                if p not in link or v[0] < link[p][0]:
                    link[p] = v
        out: dict[int, dict[int, tuple[int, str]]] = {}
        for p, v in link.items():
            out.setdefault(find(p), {})[p] = v
        return [g for g in out.values() if len(g) > 1]


def _by_preset(snapshot: Snapshot, ids: np.ndarray, rows: dict[int, Row], preset: Preset, cfg: ReaderCfg,
               step: Progress) -> Report:
    n = len(ids)
    edges = _Edges()
    by_hash: dict[str, int] = {}
    for p, i in enumerate(ids.tolist()):
        first = by_hash.setdefault(rows[i].hash, p)
        if first != p:
            edges.add(first, p, "identical bytes", "identical bytes")
    data = snapshot.copy_data(ids.tolist())
    have = np.array([int(i) in data for i in ids.tolist()], dtype=bool)
    codes = np.zeros((n, 8, HASH_BYTES), np.uint8)
    for p, i in enumerate(ids.tolist()):
        if have[p]:
            codes[p] = np.frombuffer(data[i], np.uint8).reshape(8, HASH_BYTES)
    del data  # keypoints are loaded per chunk of pairs (bounded memory)
    stats = {"missing copy data": int(n - have.sum())}
    if stats["missing copy data"]:
        logger.warning("%d photos have no copy-detection data yet (indexed before it was stored, or by "
                       "build-index); run imgembed index on their folders to add it", stats["missing copy data"])
    radius = max(PIXELS_DISTANCE, preset.verify_distance)
    step("hashes", 0, n)
    near = hash_search.near_pairs(codes, have, radius)  # (a, b) -> (min dihedral distance, plain distance)
    step("hashes", n, n)
    candidates: dict[tuple[int, int], int] = {}  # pairs to verify by keypoints -> hash distance
    digests: dict[int, str | None] = {}  # pixel digests, each file decoded once
    for (a, b), (d, plain) in near.items():
        ra, rb = rows[int(ids[a])], rows[int(ids[b])]
        if ra.hash == rb.hash:
            continue
        if plain <= PIXELS_DISTANCE and (ra.width, ra.height) == (rb.width, rb.height) \
                and _pixel_digest(ra, cfg, digests) is not None \
                and _pixel_digest(ra, cfg, digests) == _pixel_digest(rb, cfg, digests):
            edges.add(a, b, "same pixels", "same pixels")
        elif 0 <= d <= preset.hash_distance:
            edges.add(a, b, preset.kind, f"hash distance {d}/256")
        elif d <= preset.verify_distance:
            candidates[(a, b)] = d
    if preset.inliers:  # (proposed by the model's own features: a projection blurs crops into look-alikes)
        graph = neighbour_graph_of(snapshot, k=NEIGHBOURS, model_features=True)
        pos = {int(i): p for p, i in enumerate(ids.tolist())}
        for r, i in enumerate(graph.ids.tolist()):
            a = pos.get(i)
            for j in graph.nbr[r].tolist():
                b = pos.get(int(j))
                if a is None or b is None or a == b:
                    continue
                key = (min(a, b), max(a, b))
                if key not in edges.best and have[a] and have[b]:
                    candidates.setdefault(key, -1)
        stats["pairs verified"] = len(candidates)
        passed = [(a, b, m) for (a, b), m in _verify(snapshot, ids, list(candidates), preset, step)
                  if m.inliers >= preset.inliers]
        stats["pairs passing keypoints"] = len(passed)
        for a, b, evidence in _check_pixels(passed, [rows[int(i)] for i in ids.tolist()], preset, cfg, step, stats):
            edges.add(a, b, preset.kind, evidence)
    groups = []
    for g in edges.groups(n):
        members = [rows[int(ids[p])] for p in g]
        keeper, reason = keeper_of(members)
        groups.append(({int(ids[p]): (KINDS[v[0]], v[1]) for p, v in g.items()} | {"keeper": keeper}, reason))
    return Report(preset.name, preset.description, groups, n, stats=stats)


def _by_threshold(snapshot: Snapshot, ids: np.ndarray, rows: dict[int, Row], threshold: float,
                  step: Progress) -> Report:
    step("neighbours", 0, len(ids))
    graph = neighbour_graph_of(snapshot, k=NEIGHBOURS)
    step("neighbours", len(ids), len(ids))
    groups = []
    for g in duplicate_groups(graph, threshold):
        members = [rows[i] for i in g.ids if i in rows]
        if len(members) < 2:
            continue
        keeper, reason = keeper_of(members)
        same = len({m.hash for m in members}) == 1
        kind = "identical bytes" if same else "similar"
        groups.append(({m.id: (kind, f"cosine >= {threshold:.3f}") for m in members} | {"keeper": keeper}, reason))
    return Report("threshold", f"embedding cosine >= {threshold:.3f}", groups, len(ids))


def _verify(snapshot: Snapshot, ids: np.ndarray, pairs: list[tuple[int, int]], preset: Preset, step: Progress):
    """``((a, b), Match)`` for each candidate pair, a chunk of pairs' keypoints in memory at a time."""
    pairs.sort()
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(pairs), VERIFY_CHUNK):
            chunk = pairs[start:start + VERIFY_CHUNK]
            need = {int(ids[p]) for ab in chunk for p in ab}
            kp = {i: unpack_keypoints(v) for i, v in snapshot.copy_data(need, "keypoints").items()}

            def one(ab: tuple[int, int]) -> Match:
                a, b = int(ids[ab[0]]), int(ids[ab[1]])
                if a not in kp or b not in kp:
                    return NO_MATCH
                return match(kp[a], kp[b], SIDE, preset.rotation, preset.inliers)

            yield from zip(chunk, pool.map(one, chunk))
            step("verify", min(start + VERIFY_CHUNK, len(pairs)), len(pairs))


def _check_pixels(passed: list[tuple[int, int, Match]], rows: list[Row], preset: Preset, cfg: ReaderCfg,
                  step: Progress, stats: dict):
    """``(a, b, evidence)`` for each pair that passed the keypoints and whose pixels agree
    (:data:`Preset.agreement`, :data:`Preset.correlation`, each passed when NaN: too little texture
    to judge by). The files are decoded again, each once per chunk of pairs; a pair whose file
    cannot be read keeps its keypoint verdict, and is counted."""
    if not preset.agreement:
        yield from ((a, b, f"{m.inliers} matching keypoints") for a, b, m in passed)
        return
    stats["pairs rejected by pixels"] = stats["pairs not checked by pixels"] = 0

    def rendered(p: int) -> tuple[Rendering, np.ndarray] | None:
        try:
            r = rendering_of_file(rows[p].path, cfg)
        except ImageSkipped:
            return None
        return r, pixel_check.reduce(r.grey)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(passed), PIXEL_CHUNK):
            chunk = passed[start:start + PIXEL_CHUNK]
            need = sorted({p for a, b, _ in chunk for p in (a, b)})
            seen = dict(zip(need, pool.map(rendered, need)))

            def one(pair: tuple[int, int, Match]) -> tuple[float, float] | None:
                a, b, m = pair
                if seen[a] is None or seen[b] is None:
                    return None
                (ra, sa), (rb, sb) = seen[a], seen[b]
                agree = pixel_check.agreement(sa, sb, m.transform)
                if not agree >= preset.agreement or not preset.correlation:  # rejected, NaN, or done
                    return agree, float("nan")
                return agree, pixel_check.correlation(ra, rb, m.transform)

            for (a, b, m), got in zip(chunk, pool.map(one, chunk)):
                evidence = f"{m.inliers} matching keypoints"
                if got is None:
                    stats["pairs not checked by pixels"] += 1
                    yield a, b, evidence
                elif got[0] < preset.agreement or got[1] < preset.correlation:  # NaN passes
                    stats["pairs rejected by pixels"] += 1
                else:
                    agree, corr = got
                    yield a, b, (evidence + (f", {agree:.0%} of the overlap agrees" if agree == agree else "")
                                 + (f", correlation {corr:.2f} at full detail" if corr == corr else ""))
            step("pixels", min(start + PIXEL_CHUNK, len(passed)), len(passed))


def _pixel_digest(row: Row, cfg: ReaderCfg, cache: dict[int, str | None]) -> str | None:
    """A digest of the file's pixels, decoded in full and upright (None when it cannot be read)."""
    if row.id not in cache:
        try:
            px = np.asarray(open_image(read_bytes(row.path, cfg), cfg, draft_to=None))
            cache[row.id] = f"{px.shape}:" + hashlib.blake2b(px.tobytes(), digest_size=16).hexdigest()
        except ImageSkipped:
            cache[row.id] = None
    return cache[row.id]


def _finish(snapshot: Snapshot, g: dict, reason: str) -> Group:
    """Members with their cosine to the keeper, the keeper first, the rest by kind and score."""
    keeper = g.pop("keeper")
    ids = list(g)
    rows = snapshot.rows(ids)
    vecs = snapshot.vectors(ids)
    kv = vecs.get(keeper)
    members = []
    for i, (kind, evidence) in g.items():
        if i not in rows:
            continue
        score = float(np.dot(vecs[i], kv)) if kv is not None and i in vecs else float("nan")
        members.append(Member(rows[i], kind, 1.0 if i == keeper else score, evidence))
    members.sort(key=lambda m: (m.row.id != keeper, KINDS.index(m.kind), -m.score))
    return Group(members, reason)
