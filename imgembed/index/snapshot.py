"""The reader of an index directory: one published generation, loaded for search."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import faiss
import numpy as np

from imgembed.index import faiss_index
from imgembed.index.filtered_search import Subset, exact_fits
from imgembed.index.filters import Filters, where
from imgembed.index.format import (
    DB,
    META_SQL,
    META_VERSION,
    ROW_SQL,
    Meta,
    Row,
    StoreError,
    camera_name,
    connect,
    faiss_name,
    has_table,
    read_manifest,
    read_meta,
    select_in,
    visible,
)
from imgembed.index.reproject import recorded_state, state_of

# Filtered subsets kept per snapshot (each a bitmap of max id / 8 bytes plus its ids).
_SUBSETS_KEPT = 8


class Snapshot:
    """One published generation of an index, loaded for search. Thread-safe for reads.

    Every search should run inside :meth:`read`, which pins one generation: the FAISS index and the
    rows it names come from the same published state even while a writer publishes and purges.
    """

    def __init__(self, index_dir: str | Path, mmap: bool = False) -> None:
        self.dir = Path(index_dir)
        self.manifest = read_manifest(self.dir)
        if not (self.dir / DB).is_file():
            raise StoreError(f"{self.dir} has a manifest but no {DB}; rebuild the index")
        self.con = connect(self.dir, readonly=True)
        self.mmap = mmap
        self.generation = -1
        self.index: faiss.Index | None = None
        self.index_type = ""
        self._lock = threading.RLock()
        self._pinned = 0
        self._subsets: dict[tuple, Subset] = {}
        self.refresh()

    def current_generation(self) -> int:
        try:
            return int(read_meta(self.con, "generation") or 0)
        except (sqlite3.DatabaseError, ValueError) as e:
            raise StoreError(f"cannot read {self.dir / DB}: {e}; run imgembed verify") from e

    def refresh(self) -> bool:
        """Load the newest published generation if it changed. Returns True when it did."""
        with self._lock:
            for _ in range(20):
                gen = self.current_generation()
                if gen == self.generation:
                    return False
                if self._load(gen):
                    return True
                time.sleep(0.05)  # a writer published a newer generation meanwhile
            raise StoreError(f"index {self.dir} keeps changing; try again")

    @contextmanager
    def read(self) -> Iterator["Snapshot"]:
        """Pin the newest generation for a consistent set of reads (one SQLite read transaction).

        Keep the block short: while it is open the writer's log cannot be folded back.
        """
        with self._lock:
            if self._pinned:  # nested: already pinned
                yield self
                return
            for _ in range(20):
                self.con.execute("BEGIN")
                try:
                    gen = self.current_generation()
                    if gen == self.generation or self._load(gen):
                        self._pinned += 1
                        try:
                            yield self
                        finally:
                            self._pinned -= 1
                        return
                finally:
                    self.con.execute("COMMIT")
                time.sleep(0.05)
            raise StoreError(f"index {self.dir} keeps changing; try again")

    def _load(self, gen: int) -> bool:
        """Load generation ``gen``; False when its file is gone (a newer one replaced it)."""
        if gen == 0:
            self.generation, self.index, self.index_type = 0, None, ""
            return True
        path = self.dir / faiss_name(gen)
        try:
            index = faiss_index.read(str(path), mmap=self.mmap)
        except RuntimeError as e:
            if not path.exists():
                return False
            raise StoreError(f"cannot read {path} ({e}); run imgembed verify --repair") from e
        manifest = self.manifest
        state = recorded_state(self.con)  # the space of the vectors, as the generation was published
        if state is not None and state != state_of(manifest):  # the index's projection changed
            manifest = read_manifest(self.dir)
            if state != state_of(manifest):  # the writer has not rewritten the manifest yet
                manifest.update(state)
        if index.d != manifest["dim"]:
            raise StoreError(f"{path} holds {index.d}-d vectors but the manifest says {manifest['dim']}; "
                             "run imgembed verify --repair")
        if manifest is not self.manifest:
            self.manifest = manifest
            self._subsets.clear()
        self.generation, self.index = gen, index
        self.index_type = read_meta(self.con, "index_type")
        return True

    def visible_ids(self) -> np.ndarray:
        """Ids of the rows visible in this snapshot's generation (int64, sorted)."""
        cur = self.con.execute(f"SELECT id FROM files WHERE {visible(str(self.generation))} ORDER BY id")
        return np.fromiter((r[0] for r in cur), dtype=np.int64)

    @property
    def count(self) -> int:
        return int(self.index.ntotal) if self.index is not None else 0

    def rows(self, ids: Iterable[int]) -> dict[int, Row]:
        """Rows visible in this snapshot's generation, by id."""
        sql = f"{ROW_SQL} WHERE f.id IN ({{marks}}) AND {visible(str(self.generation))}"
        return {r[0]: Row(*r) for r in select_in(self.con, sql, (int(i) for i in ids if i >= 0))}

    def row_by_path(self, path: bytes) -> Row | None:
        """The visible row of an absolute path, or None when the path is not in the index."""
        for root_id, root in self.con.execute("SELECT id, path FROM roots"):
            prefix = root.rstrip(b"/") + b"/"
            if path.startswith(prefix):
                r = self.con.execute(
                    f"{ROW_SQL} WHERE f.root_id=? AND f.relpath=? AND {visible(str(self.generation))}",
                    (root_id, path[len(prefix):])).fetchone()
                if r:
                    return Row(*r)
        return None

    def rows_with_hash(self, digest: str) -> list[Row]:
        """The visible rows whose file has this content hash (a photo and its byte-identical copies)."""
        sql = f"{ROW_SQL} WHERE f.hash=? AND {visible(str(self.generation))} ORDER BY f.id"
        return [Row(*r) for r in self.con.execute(sql, (digest,))]

    def iter_rows(self, chunk: int = 10_000) -> Iterator[Row]:
        cur = self.con.execute(f"{ROW_SQL} WHERE {visible(str(self.generation))} ORDER BY f.id")
        while rows := cur.fetchmany(chunk):
            yield from (Row(*r) for r in rows)

    def vectors(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Full-precision stored vectors by id (from the metadata, whatever the index type)."""
        dim = self.manifest["dim"]
        rows = select_in(self.con, "SELECT f.id, v.vec FROM files f JOIN vectors v ON v.hash=f.hash "
                                   "WHERE f.id IN ({marks})", (int(i) for i in ids))
        # (a vector of another size is one a writer has just projected anew: not this generation's)
        return {r[0]: np.frombuffer(r[1], dtype=np.float32).reshape(dim) for r in rows if len(r[1]) == 4 * dim}

    def raw_vectors_array(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids, the model's own unit features (n, raw dim))`` of an index that projects them
        (imgembed.index.reproject); None for any other index."""
        projection = self.manifest.get("projection")
        if not projection:
            return None
        dim = int(projection["raw"]["dim"])
        rows = [r for r in select_in(self.con, "SELECT f.id, r.vec FROM files f JOIN raw r ON r.hash=f.hash "
                                               "WHERE f.id IN ({marks})", (int(i) for i in ids)) if len(r[1]) == 2 * dim]
        x = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float16).reshape(len(rows), dim).astype(np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.array([r[0] for r in rows], dtype=np.int64), x

    def vectors_array(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors (n, dim))`` of those ``ids`` whose vectors are stored (a writer may purge some)."""
        found = self.vectors(np.asarray(ids).tolist())
        kept = np.array([i for i in np.asarray(ids).tolist() if i in found], dtype=np.int64)
        if not len(kept):
            return kept, np.zeros((0, self.manifest["dim"]), np.float32)
        return kept, np.stack([found[i] for i in kept.tolist()])

    def copy_data(self, ids: Iterable[int], column: str = "hashes") -> dict[int, bytes]:
        """``id -> perceptual hashes`` (or ``column="keypoints"``: packed keypoints) of those ``ids`` whose
        content has copy-detection data (an index older than its migration has none until its next index run)."""
        if column not in ("hashes", "keypoints"):
            raise ValueError(f"no copy-data column {column!r}")
        if not has_table(self.con, "copy_data"):
            return {}
        rows = select_in(self.con, f"SELECT f.id, c.{column} FROM files f JOIN copy_data c ON c.hash=f.hash "
                                   "WHERE f.id IN ({marks})", (int(i) for i in ids))
        return {r[0]: r[1] for r in rows}

    # -- photo metadata and filters

    @property
    def has_meta(self) -> bool:
        """Whether the index's schema records photo metadata (an older index gets it on its next run)."""
        return self.con.execute("PRAGMA user_version").fetchone()[0] >= META_VERSION

    def meta(self, ids: Iterable[int]) -> dict[int, Meta]:
        """Photo metadata by id; photos without any (not read yet) are left out."""
        if not self.has_meta:
            return {}
        return {r[0]: Meta(*r[1:]) for r in select_in(self.con, f"{META_SQL} WHERE file_id IN ({{marks}})",
                                                          (int(i) for i in ids if i >= 0))}

    def roots(self) -> list[tuple[int, bytes]]:
        return self.con.execute("SELECT id, path FROM roots ORDER BY id").fetchall()

    def matching(self, filters: Filters) -> Subset:
        """The visible photos that ``filters`` keep, as a :class:`Subset` for the vector search.

        Kept for the generation (a few filters at a time), so repeated queries with the same
        filters pay for the SQL once. Raises StoreError when a filter needs metadata the index
        does not record yet, ValueError for a bad filter.
        """
        if filters.needs_meta and not self.has_meta:
            raise StoreError(f"index {self.dir} was made before imgembed recorded photo metadata; run "
                             f"imgembed index FOLDER --index {self.dir} once to read it (nothing is re-embedded)")
        key = (filters, self.generation, read_meta(self.con, "meta_changes") if self.has_meta else "")
        with self._lock:
            subset = self._subsets.get(key)
            if subset is None:
                sql, params = where(filters, self.roots())
                join = "LEFT JOIN photo_meta m ON m.file_id = f.id" if self.has_meta else ""
                cur = self.con.execute(f"SELECT f.id FROM files f {join} WHERE {visible(str(self.generation))} "
                                       f"AND {sql}", params)
                ids = np.sort(np.fromiter((r[0] for r in cur), dtype=np.int64))
                if exact_fits(len(ids), self.manifest["dim"]):  # few enough: searched exactly, in memory
                    subset = Subset(*self.vectors_array(ids))
                else:
                    subset = Subset(ids)
                if len(self._subsets) >= _SUBSETS_KEPT:
                    self._subsets.pop(next(iter(self._subsets)))
                self._subsets[key] = subset
            return subset

    def filter_choices(self) -> dict:
        """What the filters can choose from: folders (relative to their roots), cameras, suffixes, date range."""
        if not self.has_meta:
            return {"folders": [], "cameras": [], "exts": [], "first": None, "last": None}
        gen = str(self.generation)
        folders = sorted({r[0].decode("utf-8", "replace") for r in self.con.execute(
            f"SELECT DISTINCT m.folder FROM photo_meta m JOIN files f ON f.id = m.file_id WHERE {visible(gen)}")})
        cameras = sorted({camera_name(make, model) for make, model in self.con.execute(
            "SELECT DISTINCT m.make, m.model FROM photo_meta m JOIN files f ON f.id = m.file_id "
            f"WHERE {visible(gen)} AND (m.make IS NOT NULL OR m.model IS NOT NULL)")} - {None})
        exts = [r[0] for r in self.con.execute(
            "SELECT DISTINCT m.ext FROM photo_meta m JOIN files f ON f.id = m.file_id "
            f"WHERE {visible(gen)} ORDER BY m.ext")]
        first, last = self.con.execute(
            f"SELECT min(m.taken), max(m.taken) FROM photo_meta m JOIN files f ON f.id = m.file_id WHERE {visible(gen)}"
        ).fetchone()
        return {"folders": folders, "cameras": cameras, "exts": exts, "first": first, "last": last}

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())

    def close(self) -> None:
        self.con.close()
