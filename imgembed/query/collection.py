"""The collection as a whole: a 2-D map of it, and each photo's nearest neighbours.

The map is a PCA of the embeddings, snapped onto a grid of cells. PCA keeps the two directions
along which the vectors vary most, so photos that are close in the embedding space land close on
the map (the converse need not hold). :func:`snap_to_grid` then moves each point to a free cell of
a ``cols x rows`` grid, nearest first, so thumbnails can be drawn without overlapping while
neighbours stay neighbours. The geometry is pure numpy; the functions at the end apply it to one
published generation of an index.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from imgembed.config import ReaderCfg
from imgembed.index import faiss_index
from imgembed.index.snapshot import Snapshot
from imgembed.ingest.reader import ImageSkipped
from imgembed.query.duplicates import NeighbourGraph, neighbour_graph, neighbour_graph_chunked
from imgembed.query.thumbnails import contact_map, thumbnail

MISSING_TILE = (210, 210, 210)  # the map's tile for a photo that cannot be previewed


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """``(n, dim) -> (n, 2)`` coordinates on the first two principal axes (deterministic signs)."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected vectors of shape (n, dim), got {x.shape}")
    out = np.zeros((len(x), 2))
    if len(x) < 2:
        return out
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)  # rows of vt: principal axes, by variance
    axes = vt[:2]
    # An axis and its negation are equally valid: pick the one whose largest loading is positive.
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    coords = x @ (axes * signs[:, None]).T
    out[:, :coords.shape[1]] = coords
    return out


def grid_shape(n: int, aspect: float = 1.6) -> tuple[int, int]:
    """``(cols, rows)`` of a grid about ``aspect`` times wider than tall, with some free cells."""
    if n <= 0:
        return 0, 0
    cells = n * 1.3
    rows = max(1, round(math.sqrt(cells / aspect)))
    cols = max(1, math.ceil(cells / rows))
    while cols * rows < n:
        cols += 1
    return cols, rows


def snap_to_grid(coords: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """Move each of ``coords (n, 2)`` to its own cell of a ``cols x rows`` grid: ``(n, 2)`` int (col, row).

    Points are scaled onto the grid; then, those nearest to a cell centre first, each takes the
    free cell closest to where it would ideally sit. Raises ValueError when the points do not fit.
    """
    coords = np.asarray(coords, dtype=np.float64)
    n = len(coords)
    if n > cols * rows:
        raise ValueError(f"{n} points do not fit in a {cols}x{rows} grid")
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    ideal = (coords - lo) / span * np.array([cols - 1, rows - 1])  # (n, 2) in cell units
    cc, rr = np.meshgrid(np.arange(cols), np.arange(rows), indexing="xy")
    cells = np.stack([cc.ravel(), rr.ravel()], axis=1).astype(np.float64)  # (cols*rows, 2)
    free = np.ones(len(cells), dtype=bool)
    out = np.zeros((n, 2), dtype=np.int64)
    # Points nearest to a cell centre first: they have the clearest claim to it.
    order = np.argsort(np.abs(ideal - np.round(ideal)).sum(axis=1), kind="stable")
    for i in order:
        d = ((cells - ideal[i]) ** 2).sum(axis=1)
        d[~free] = np.inf
        j = int(d.argmin())
        free[j] = False
        out[i] = cells[j]
    return out


# ---------------------------------------------------------------- over an index snapshot

# Up to this many photos the neighbour graph is exact (all vectors in memory); beyond, it is asked
# of the index's own (possibly approximate) search, chunk by chunk.
EXACT_GRAPH_MAX = 50_000
GRAPH_CHUNK = 10_000


def neighbour_graph_of(snapshot: Snapshot, k: int = 8, model_features: bool = False) -> NeighbourGraph:
    """Each photo's ``k`` nearest other photos in one published generation of an index.

    ``model_features``: of an index that projects its features (imgembed.index.reproject), judged on
    the model's own features, up to :data:`EXACT_GRAPH_MAX` photos. A copy detector asks for them:
    a projection fitted to gather photos of one kind of subject draws a crop of a photo no
    closer to it than to its look-alikes.
    """
    with snapshot.read():  # the ids, vectors and FAISS index of one generation
        ids = snapshot.visible_ids()
        raw = snapshot.raw_vectors_array(ids) if model_features and len(ids) <= EXACT_GRAPH_MAX else None
        if raw is not None and len(raw[0]) == len(ids):
            return neighbour_graph(*raw, k=k)
        if len(ids) <= EXACT_GRAPH_MAX or snapshot.index is None:
            return neighbour_graph(*snapshot.vectors_array(ids), k=k)
        index = snapshot.index
        chunks = (snapshot.vectors_array(part) for part in np.array_split(ids, len(ids) // GRAPH_CHUNK + 1))
        return neighbour_graph_chunked(chunks, lambda q, kk: faiss_index.search(index, q, kk), k=k)


def map_sample(snapshot: Snapshot, max_photos: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)`` of the photos drawn on the map: all, or a fixed random sample of ``max_photos``."""
    with snapshot.read():
        ids = snapshot.visible_ids()
        if len(ids) > max_photos:
            ids = np.sort(np.random.default_rng(seed).choice(ids, max_photos, replace=False))
        return snapshot.vectors_array(ids)


def tiles_of(ids: np.ndarray, rows: dict, cell: int) -> list[Image.Image]:
    """A ``cell`` px square thumbnail of each photo of ``ids``; a grey tile for one that cannot be previewed."""
    tiles = []
    for i in ids.tolist():
        row = rows.get(i)
        im = None
        if row is not None:
            try:
                im = thumbnail(row.path, cell, ReaderCfg())
            except ImageSkipped:
                pass
        tiles.append(im if im is not None else Image.new("RGB", (cell, cell), MISSING_TILE))
    return tiles


def collection_map(snapshot: Snapshot, max_photos: int, cell: int) -> tuple[Image.Image | None, int]:
    """A picture of up to ``max_photos`` thumbnails placed by a PCA of their embeddings, and how many.

    Photos that cannot be previewed get a grey tile; an empty index gives ``(None, 0)``.
    """
    ids, vecs = map_sample(snapshot, max_photos)
    if len(ids) == 0:
        return None, 0
    cols, rows = grid_shape(len(ids))
    cells = snap_to_grid(pca_2d(vecs), cols, rows)
    tiles = tiles_of(ids, snapshot.rows(ids.tolist()), cell)
    return contact_map(tiles, [tuple(c) for c in cells.tolist()], cols, rows, cell), len(ids)
