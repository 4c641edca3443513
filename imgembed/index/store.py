"""The writer of an index directory (layout and consistency rules: :mod:`imgembed.index.format`).

One process at a time holds the write lock. It records files and vectors in small SQLite
transactions that readers do not see, then publishes: a new FAISS file written atomically and the
generation flipped in one transaction. Readers are :class:`imgembed.index.snapshot.Snapshot`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import faiss
import numpy as np

from imgembed.atomic import atomic_write_bytes, create_new, fsync_dir
from imgembed.config import DBA_MODES, PROJECTION_MODES, IndexCfg, check_choice, from_dict
from imgembed.identity import IDENTITY_KEYS, check_identity, raw_identity
from imgembed.index import dba, faiss_index, reproject, roots, scratch
from imgembed.index.augment import NO_KTH
from imgembed.index.format import (
    DB,
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    LiveFile,
    NewFile,
    StoreError,
    check_entries,
    check_is_index,
    connect,
    damaged,
    faiss_name,
    has_table,
    is_damage,
    migrate,
    path_meta,
    read_manifest,
    read_meta,
    select_in,
    visible,
)

logger = logging.getLogger(__name__)

# Stored vectors, plain vectors, raw features and copy-detection data that no live entry uses any more.
_PURGE_ORPHANS = tuple(f"DELETE FROM {table} WHERE hash NOT IN (SELECT hash FROM files WHERE removed_gen IS NULL)"
                       for table in ("vectors", "plain", "raw", "copy_data"))


def _purge_orphans(con: sqlite3.Connection) -> int:
    """Delete the stored vectors (plain vectors, copy-detection data) that no live entry uses; how many vectors."""
    vectors, *others = _PURGE_ORPHANS
    n = con.execute(vectors).rowcount
    for sql in others:
        con.execute(sql)
    return n


@dataclass
class PublishStats:
    generation: int
    index_type: str
    added: int
    removed: int
    total: int
    rebuilt: bool
    calibration: faiss_index.Calibration | None = None  # when IVF lists were trained afresh
    projection: str = ""  # what became of the index's own projection in this publish, if anything

    def describe(self) -> str:
        out = f"index type {self.index_type}, generation {self.generation}"
        out += f"; {self.calibration.describe()}" if self.calibration else ""
        return out + (f"; {self.projection}" if self.projection else "")


@contextmanager
def _writing(path: Path):
    """SQLite failures while writing as a StoreError: a damaged database, or a full disk, a
    read-only folder, an I/O error."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        if is_damage(e):
            raise damaged(path, e) from e
        if isinstance(e, sqlite3.OperationalError) and ("no such table" in str(e) or "already exists" in str(e)):
            raise StoreError(
                f"{path} does not have the tables its schema version says ({e}): it was written by another "
                "version of imgembed. Index into a new --index folder (or use that version)") from e
        raise StoreError(
            f"cannot write {path}: {e}. Free disk space or make the folder writable, then run again; "
            "the last published index is unchanged and the work committed so far is kept") from e


_INSERT_FILE = ("INSERT INTO files(root_id, relpath, size, mtime_ns, hash, width, height, indexed_at, added_gen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_META = ("INSERT INTO photo_meta(file_id, taken, taken_from, make, model, lat, lon, ext, folder) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _meta_row(file_id: int, f: NewFile) -> tuple:
    ext, folder = path_meta(f.relpath)
    return (file_id, f.taken, f.taken_from, f.make, f.model, f.lat, f.lon, ext, folder)


# ---------------------------------------------------------------- writer


class StoreWriter:
    """The one process allowed to change an index. Use as a context manager (releases the lock)."""

    def __init__(self, index_dir: str | Path, identity: dict | None, index_cfg: IndexCfg,
                 head_files: Iterable[Path] = (), wait: bool = False) -> None:
        """``identity=None`` opens an existing index for maintenance (verify --repair) whatever made it."""
        self.dir = Path(index_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create index folder {self.dir}: {e.strerror}") from e
        check_entries(self.dir)  # no links among the files written below
        check_is_index(self.dir)  # never an index inside a folder of other things
        self._lock_fd = self._take_lock(wait)
        try:
            exists = (self.dir / MANIFEST).exists()
            if exists:
                self.manifest = read_manifest(self.dir)
                if identity is not None:
                    check_identity(self.manifest, identity, self.dir)
            elif identity is None:
                raise StoreError(f"no index at {self.dir} (no {MANIFEST})")
            with _writing(self.dir / DB):
                # The database exists before the manifest that announces the index, so a crash
                # between the two never leaves a manifest without metadata.
                self.con = connect(self.dir)
                existing = self.con.execute("PRAGMA user_version").fetchone()[0] > 0
                had_scratch = has_table(self.con, "scratch")
                migrate(self.con)
                self.published = int(read_meta(self.con, "generation"))
                if existing and not had_scratch:  # an index from before the scratch table
                    scratch.adopt_leftovers(self.con, self._tx, self.dir, faiss_name(self.published))
                self.gen = self.published + 1  # the generation this writer is preparing
                self._cleanup()
            if not exists:
                self.manifest = self._create(identity, index_cfg, list(head_files))
            self.index_cfg = from_dict(IndexCfg, self.manifest.get("index_cfg", {}))
            explicit = {}  # an explicit choice sticks
            if index_cfg.index_type != "auto" and index_cfg.index_type != self.index_cfg.index_type:
                explicit["index_type"] = index_cfg.index_type
            if index_cfg.dba and index_cfg.dba != self.index_cfg.dba:
                explicit["dba"] = check_choice("DBA mode", index_cfg.dba, DBA_MODES)
            if index_cfg.projection and index_cfg.projection != self.index_cfg.projection:
                explicit["projection"] = check_choice("projection", index_cfg.projection, PROJECTION_MODES)
            if explicit:
                for key, value in explicit.items():
                    setattr(self.index_cfg, key, value)
                self.manifest["index_cfg"] = asdict(self.index_cfg)
                self._write_manifest(self.manifest)
            self.dba_on = self.index_cfg.dba == "on"
            self._open_projection()
        except BaseException:
            self.close()
            raise

    # -- lifecycle

    def _take_lock(self, wait: bool) -> int:
        path = self.dir / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                         0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:  # a link planted after the check
                check_entries(self.dir)
            raise StoreError(f"cannot write to index folder {self.dir}: {e.strerror}; make it writable "
                             "or use another --index (searching the existing index still works)") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(
                f"index {self.dir} is being written by {holder}; wait for it to finish "
                "(or pass --wait), or use another --index") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        return fd

    def _create(self, identity: dict, index_cfg: IndexCfg, head_files: list[Path]) -> dict:
        try:
            for src in head_files:
                self._write_file(self.dir / ("head" + src.suffix), src.read_bytes())
        except OSError as e:
            raise StoreError(f"cannot copy the head into {self.dir}: {e.strerror or e}") from e
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_at": time.time(),
            "metric": "cosine",
            "index_cfg": {**asdict(index_cfg), "dba": check_choice("DBA mode", index_cfg.dba or "off", DBA_MODES),
                          "projection": check_choice("projection", index_cfg.projection or "off", PROJECTION_MODES)},
            "head": "head.safetensors" if head_files else None,
            **{k: identity[k] for k in IDENTITY_KEYS},
        }
        self._write_manifest(manifest)
        return manifest

    def _open_projection(self) -> None:
        """The space of the stored vectors: the manifest's, or the database's when a publish that
        changed the projection ended before it rewrote the manifest."""
        state = reproject.recorded_state(self.con)
        if state is not None and state != reproject.state_of(self.manifest):
            self.manifest.update(state)
            self._write_manifest(self.manifest)
        self.dim = int(self.manifest["dim"])
        self.projection = self.manifest.get("projection")
        self.raw_dim = int(raw_identity(self.manifest)["dim"])
        # (turning it off needs only the raw features: a projection file that cannot be read is no obstacle)
        self._proj = reproject.load(self.dir, self.manifest) if self.index_cfg.projection != "off" else None

    def _write_manifest(self, manifest: dict) -> None:
        try:
            self._write_file(self.dir / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        except OSError as e:
            raise StoreError(f"cannot write {self.dir / MANIFEST}: {e.strerror}") from e

    def _write_file(self, path: Path, data: bytes) -> None:
        """Replace ``path`` atomically through a temporary file recorded in ``scratch`` first."""
        tmp = f".{path.name}.tmp"
        self._record(tmp)
        atomic_write_bytes(path, data, tmp_name=tmp)
        self._forget(tmp)

    def _record(self, *names: str) -> None:
        scratch.record(self.con, self._tx, *names)

    def _forget(self, *names: str) -> None:
        scratch.forget(self.con, self._tx, *names)

    def _cleanup(self) -> None:
        """Delete what interrupted earlier writers left (the files listed in ``scratch``, and nothing
        else), and forget rows that every reader has moved past. Committed vectors stay."""
        scratch.cleanup(self.con, self.dir, faiss_name(self.published))
        # Rows removed in generations every reader has moved past can go for good.
        self.con.execute("DELETE FROM files WHERE removed_gen IS NOT NULL AND removed_gen <= ?",
                         (self.published,))

    def close(self) -> None:
        con = getattr(self, "con", None)
        if con is not None:
            con.close()
            self.con = None
        if getattr(self, "_lock_fd", None) is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reads used while planning a run

    def root_id(self, root: str | Path) -> int:
        """The id of an indexed folder (added when new). Raises StoreError for a folder inside one
        that the index already holds: its photos would be listed twice."""
        path = os.fsencode(os.path.abspath(root))
        roots.check_not_inside(self.con, path)
        with _writing(self.dir / DB):
            self.con.execute("INSERT OR IGNORE INTO roots(path) VALUES (?)", (path,))
        return self.con.execute("SELECT id FROM roots WHERE path=?", (path,)).fetchone()[0]

    def take_in_roots_below(self, root_id: int) -> list[tuple[bytes, int]]:
        """Entries of indexed folders inside this root move under it: ``[(folder, entries)]``."""
        return roots.take_in_below(self.con, self._tx, root_id, self.gen)

    def drop_moved(self, root_id: int) -> list[tuple[bytes, list[str]]]:
        """Entries of vanished folders whose photos are now under this root go: ``[(folder, hashes)]``."""
        return roots.drop_moved(self.con, self._tx, root_id, self.gen)

    def live_files(self, root_id: int) -> dict[bytes, LiveFile]:
        """``relpath -> LiveFile`` of the files not removed (published or pending)."""
        cur = self.con.execute(
            "SELECT relpath, id, size, mtime_ns, hash FROM files WHERE root_id=? AND removed_gen IS NULL",
            (root_id,))
        return {r[0]: LiveFile(*r[1:]) for r in cur}

    def known_hashes(self, hashes: Iterable[str]) -> set[str]:
        return {r[0] for r in select_in(self.con, "SELECT hash FROM vectors WHERE hash IN ({marks})", hashes)}

    def dims_of(self, hashes: Iterable[str]) -> dict[str, tuple[int, int]]:
        """``hash -> (width, height)`` recorded for content the index already holds."""
        rows = select_in(self.con, "SELECT hash, width, height FROM files WHERE hash IN ({marks})", hashes)
        return {r[0]: (r[1], r[2]) for r in rows}

    def has_vectors(self) -> bool:
        return self.con.execute("SELECT 1 FROM vectors LIMIT 1").fetchone() is not None

    def stored_dim_ok(self) -> bool:
        """The stored vectors have the manifest's dimension (cheap: one row; a hand-edited manifest fails)."""
        row = self.con.execute("SELECT length(vec) FROM vectors LIMIT 1").fetchone()
        return row is None or row[0] == 4 * self.dim

    def keep_copy_data_version(self, version: int) -> None:
        """Drop copy-detection data computed by another version of its code (the next pass recomputes it)."""
        if read_meta(self.con, "copy_data_version") != str(version):
            with self._tx():
                self.con.execute("DELETE FROM copy_data")
                self.con.execute("INSERT OR REPLACE INTO meta VALUES ('copy_data_version', ?)", (str(version),))

    def lacking_copy_data(self, root_id: int) -> list[tuple[str, bytes]]:
        """``(content hash, relpath)`` of one live file of this root per content without copy-detection data."""
        return self.con.execute(
            "SELECT f.hash, min(f.relpath) FROM files f WHERE f.root_id=? AND f.removed_gen IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM copy_data c WHERE c.hash = f.hash) GROUP BY f.hash", (root_id,)).fetchall()

    # -- changes (committed at once, visible to readers only after publish)

    def add_copy_data(self, rows: list[tuple[str, bytes, bytes]]) -> None:
        """Record ``(content hash, perceptual hashes, packed keypoints)`` (see imgembed.ingest.copy_data)."""
        with self._tx():
            self.con.executemany("INSERT OR REPLACE INTO copy_data(hash, hashes, keypoints) VALUES (?, ?, ?)", rows)

    def remove(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        with self._tx():
            self.con.executemany("UPDATE files SET removed_gen=? WHERE id=? AND removed_gen IS NULL",
                                 [(self.gen, i) for i in ids])

    def touch(self, entries: Iterable[tuple[int, int, int]]) -> None:
        """Record a new ``(id, size, mtime_ns)`` for entries whose content did not change (a ``touch``):
        vector and id stay, so no search sees a difference and the next run costs one ``stat``."""
        with self._tx():
            self.con.executemany("UPDATE files SET size=?, mtime_ns=? WHERE id=?",
                                 [(size, mtime, i) for i, size, mtime in entries])

    def add(self, root_id: int, files: list[NewFile], vectors: np.ndarray | None = None) -> None:
        """Record files; ``vectors (n, raw_dim)`` (the model's) for those whose hash has none yet
        (None: all known). An index that projects its features stores them and their projection."""
        now = time.time()
        with self._tx():
            if vectors is not None:
                if vectors.shape != (len(files), self.raw_dim):
                    raise ValueError(f"expected vectors of shape {(len(files), self.raw_dim)}, got {vectors.shape}")
                if not np.isfinite(vectors).all():  # NaN would make every search come back empty
                    raise StoreError(f"refusing {int((~np.isfinite(vectors).all(axis=1)).sum())} vectors that are "
                                     "not finite (NaN or infinity): the model or its head is broken")
                if self.projection is not None:  # (with the projection being turned off: the raw features)
                    raw, vectors = reproject.project(vectors, self._proj)
                    self.con.executemany("INSERT OR IGNORE INTO raw(hash, vec) VALUES (?, ?)",
                                         [(f.hash, r.tobytes()) for f, r in zip(files, raw)])
                rows = [(f.hash, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for f, v in zip(files, vectors)]
                self.con.executemany("INSERT OR IGNORE INTO vectors(hash, vec) VALUES (?, ?)", rows)
                if self.dba_on:  # augmented at publish (imgembed.index.dba)
                    self.con.executemany("INSERT OR IGNORE INTO plain(hash, vec, kth) VALUES (?, ?, ?)",
                                         [(h, v, NO_KTH) for h, v in rows])
            rows = [(root_id, f.relpath, f.size, f.mtime_ns, f.hash, f.width, f.height, now, self.gen) for f in files]
            if not any(f.taken_from is not None for f in files):  # no metadata yet (build-index): one statement
                self.con.executemany(_INSERT_FILE, rows)
                return
            meta = []
            for f, row in zip(files, rows):  # each file's new id keys its metadata
                file_id = self.con.execute(_INSERT_FILE, row).lastrowid
                if f.taken_from is not None:
                    meta.append(_meta_row(file_id, f))
            self.con.executemany(_INSERT_META, meta)

    # -- photo metadata of entries recorded before it was (schema version 4), or by build-index

    def missing_meta(self, root_id: int) -> list[tuple[int, bytes, int]]:
        """``(id, relpath, mtime_ns)`` of the live entries of a root that have no metadata yet."""
        return self.con.execute(
            "SELECT f.id, f.relpath, f.mtime_ns FROM files f WHERE f.root_id=? AND f.removed_gen IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM photo_meta m WHERE m.file_id = f.id) ORDER BY f.id",
            (root_id,)).fetchall()

    def set_meta(self, items: list[tuple[int, NewFile]]) -> None:
        """Record the metadata of existing entries: ``(id, NewFile with its metadata fields)``.
        Visible at once (the vectors and the published generation do not change)."""
        with self._tx():
            self.con.executemany(_INSERT_META.replace("INSERT", "INSERT OR REPLACE", 1),
                                 [_meta_row(i, f) for i, f in items if f.taken_from is not None])
            # Readers keep the photos a filter matched per generation and this counter.
            self.con.execute("INSERT INTO meta(key, value) VALUES ('meta_changes', '1') ON CONFLICT(key) "
                             "DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    # -- maintenance (verify --repair): each is one committed change, visible after publish

    def drop_wrong_size_vectors(self) -> int:
        """Delete stored vectors whose size is not the manifest's dimension; how many."""
        with self._tx():
            return self.con.execute("DELETE FROM vectors WHERE length(vec) != ?", (4 * self.dim,)).rowcount

    def drop_non_finite_vectors(self) -> int:
        """Delete stored vectors holding NaN or infinity; how many."""
        bad = []
        for h, vec in self.con.execute("SELECT hash, vec FROM vectors WHERE length(vec) = ?", (4 * self.dim,)):
            if not np.isfinite(np.frombuffer(vec, dtype=np.float32)).all():
                bad.append((h,))
        with self._tx():
            self.con.executemany("DELETE FROM vectors WHERE hash=?", bad)
        return len(bad)

    def drop_rows_without_vectors(self) -> int:
        """Remove the entries whose content has no stored vector (the next index run embeds them)."""
        with self._tx():
            return self.con.execute(
                "UPDATE files SET removed_gen=? WHERE removed_gen IS NULL AND NOT EXISTS "
                "(SELECT 1 FROM vectors v WHERE v.hash = files.hash)", (self.gen,)).rowcount

    def drop_missing_files(self) -> int:
        """Remove the entries whose file no longer exists on disk; how many."""
        gone = [(self.gen, i) for i, root, rel in self.con.execute(
            "SELECT f.id, r.path, f.relpath FROM files f JOIN roots r ON r.id = f.root_id "
            "WHERE f.removed_gen IS NULL").fetchall() if not os.path.exists(os.path.join(root, rel))]
        with self._tx():
            self.con.executemany("UPDATE files SET removed_gen=? WHERE id=? AND removed_gen IS NULL", gone)
        return len(gone)

    def purge_orphans(self) -> int:
        """Delete stored vectors that no live entry uses; how many."""
        with self._tx():
            return _purge_orphans(self.con)

    def _tx(self):
        con = self.con

        db = self.dir / DB

        @contextmanager
        def tx():
            with _writing(db):
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")

        return tx()

    # -- publishing

    def _pending(self) -> tuple[np.ndarray, np.ndarray]:
        removed = np.array([r[0] for r in self.con.execute(
            "SELECT id FROM files WHERE removed_gen=? AND added_gen<?", (self.gen, self.gen))], dtype=np.int64)
        added = np.array([r[0] for r in self.con.execute(
            "SELECT id FROM files WHERE added_gen=? AND removed_gen IS NULL", (self.gen,))], dtype=np.int64)
        return removed, added

    def vectors_for(self, ids: np.ndarray, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, len(ids), chunk):
            rows = list(select_in(self.con, "SELECT f.id, v.vec, f.hash FROM files f JOIN vectors v ON v.hash=f.hash "
                                            "WHERE f.id IN ({marks})", (int(x) for x in ids[i:i + chunk])))
            yield self._unpack(rows)

    def _unpack(self, rows: list) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of ``(id, vec, hash)`` rows; a vector this publish replaces comes from it."""
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        new = self._overlay
        vecs = np.frombuffer(b"".join(new[r[2]] if r[2] in new else r[1] for r in rows),
                             dtype=np.float32).reshape(len(rows), self.dim)
        return ids, vecs

    def _all_vectors(self, gen: int, chunk: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        cur = self.con.execute(
            f"SELECT f.id, v.vec, f.hash FROM files f JOIN vectors v ON v.hash=f.hash WHERE {visible()} ORDER BY f.id",
            (gen, gen))
        while rows := cur.fetchmany(chunk):
            yield self._unpack(rows)

    def _sample(self, gen: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of ``n`` random visible entries, in random order."""
        rows = self.con.execute(
            f"SELECT f.id, v.vec, f.hash FROM files f JOIN vectors v ON v.hash=f.hash WHERE {visible()} "
            "ORDER BY random() LIMIT ?", (gen, gen, n)).fetchall()
        return self._unpack(rows)

    _overlay: dict[str, bytes] = {}  # hash -> the vector this publish gives it (DBA), until committed

    def count(self, gen: int) -> int:
        return self.con.execute(f"SELECT count(*) FROM files WHERE {visible()}", (gen, gen)).fetchone()[0]

    def publish(self, rebuild: bool = False) -> PublishStats:
        """Make everything recorded since the last publish searchable, atomically.

        ``rebuild`` builds the FAISS index afresh from the vectors in SQLite (verify --repair).
        When the index's own projection is due (:mod:`imgembed.index.reproject`), it is fitted and
        published as a generation of its own first.
        """
        stats = self._publish_projection()
        if stats is not None and not self.dba_on:
            return stats
        removed, added = self._pending()
        with _writing(self.dir / DB):
            changes, dba_off = dba.prepare(self.con, self._tx, self.dba_on, self.published, self.gen, self.dim)
        self._overlay = {h: np.ascontiguousarray(v, np.float32).tobytes() for h, (v, _) in changes.items()}
        try:
            later = self._publish(rebuild or dba_off, removed, added, changes, dba_off)
        finally:
            self._overlay = {}
        if stats is None:
            return later
        return replace(stats, generation=later.generation, index_type=later.index_type)

    def _publish_projection(self) -> PublishStats | None:
        """Fit, refit or drop the index's own projection when due, as a generation of its own."""
        mode = self.index_cfg.projection or "off"
        with _writing(self.dir / DB):
            live = reproject.due(self.con, self.gen, mode, self.raw_dim, self.projection)
            if live is None:
                return None
            plan = reproject.plan(self.con, self._tx, self.gen, mode, live, raw_identity(self.manifest),
                                  self.projection)
        old = self.manifest.get("head") if self.projection else None  # the projection's files this replaces
        old_files = [old, old.replace(".safetensors", ".json")] if old else []
        self._record(*plan.files)
        for name, data in plan.files.items():
            self._write_file(self.dir / name, data)
        self._overlay, self.dim = plan.vectors, int(plan.state["dim"])
        removed, added = self._pending()
        try:
            stats = self._publish(True, removed, added, {}, False, plan, old_files)
        finally:
            self._overlay = {}
        self.manifest.update(plan.state)
        self._write_manifest(self.manifest)
        for name in old_files:
            (self.dir / name).unlink(missing_ok=True)
        self._forget(*old_files)
        self.projection, self._proj = plan.state["projection"], reproject.load(self.dir, plan.state)
        self.raw_dim = int(raw_identity(self.manifest)["dim"])
        p = self.projection
        method = "distilled" if p and p["method"] == "distil" else "PCA"
        what = (f"projection {method} {self.raw_dim} -> {p['dim']} fitted on {p['fitted_on']:,} photos "
                "(--projection off keeps the model's features)" if p else
                f"projection off: back to the model's {self.raw_dim}-d features")
        return replace(stats, projection=what)

    def _publish(self, rebuild: bool, removed: np.ndarray, added: np.ndarray,
                 changes: dict[str, tuple[np.ndarray, float]], dba_off: bool,
                 plan: reproject.Plan | None = None, old_files: list[str] = ()) -> PublishStats:
        # entries whose vector DBA changed are replaced in the FAISS index like removed + added ones
        moved = np.array([r[0] for r in select_in(
            self.con, f"SELECT id FROM files WHERE hash IN ({{marks}}) AND added_gen < {self.gen} "
            "AND removed_gen IS NULL", changes)], dtype=np.int64) if changes else np.zeros(0, np.int64)
        total = self.count(self.gen)
        kind = faiss_index.choose_type(self.index_cfg, total, self.dim)
        old_path = self.dir / faiss_name(self.published)
        old_kind = read_meta(self.con, "index_type")
        rebuild = (rebuild or not old_path.exists() or kind != old_kind
                   or ((len(removed) or len(moved)) and not faiss_index.supports_remove(kind)))
        if not rebuild and not len(removed) and not len(added) and not changes:
            return PublishStats(self.published, kind, 0, 0, total, False)
        if not rebuild:
            try:
                index = faiss.read_index(str(old_path))
            except RuntimeError as e:
                raise StoreError(f"cannot read {old_path} ({e}); run imgembed verify --repair") from e
            rebuild = faiss_index.outgrown(index, total)  # IVF lists trained for far fewer vectors
        calibration = None
        if rebuild:
            sample_ids, train = self._sample(self.gen, 262_144) if faiss_index.needs_training(kind) else (None, None)
            index = faiss_index.build(kind, self.dim, self.index_cfg, self._all_vectors(self.gen), train, total)
            if train is not None and self.index_cfg.target_recall > 0:
                q = faiss_index.CALIBRATION_QUERIES  # the sample is in random order
                calibration = faiss_index.calibrate(index, sample_ids[:q], train[:q], self.index_cfg.target_recall)
        else:
            faiss_index.remove(index, np.concatenate([removed, moved]))
            for ids, vecs in self.vectors_for(np.concatenate([added, moved])):
                faiss_index.add(index, ids, vecs)
        if index.ntotal != total:
            raise StoreError(f"internal error: index holds {index.ntotal} vectors, metadata {total}; "
                             "run imgembed verify --repair")
        new_path = self.dir / faiss_name(self.gen)
        tmp_name = f".{new_path.name}.tmp"
        for p in (new_path, self.dir / tmp_name):
            if os.path.lexists(p):  # not ours: every file a writer made and left is gone by now
                raise StoreError(f"{p} is in the way (imgembed did not make it); move it out of the index "
                                 "folder, then run again")
        self._record(new_path.name, tmp_name)
        self._write_index(index, new_path)
        with self._tx():
            self.con.execute("UPDATE meta SET value=? WHERE key='generation'", (str(self.gen),))
            self.con.execute("UPDATE meta SET value=? WHERE key='index_type'", (kind,))
            if self._overlay:
                self.con.executemany("UPDATE vectors SET vec=? WHERE hash=?",
                                     [(v, h) for h, v in self._overlay.items()])
            if changes:
                self.con.executemany("UPDATE plain SET kth=? WHERE hash=?", [(t, h) for h, (_, t) in changes.items()])
            if dba_off:
                self.con.execute("DELETE FROM plain")
            self.con.execute("UPDATE meta SET value=? WHERE key='dba'", ("1" if self.dba_on else "",))
            if plan is not None:  # the projection's files become part of the index; the old ones leave
                reproject.commit(self.con, plan)
                self.con.executemany("DELETE FROM scratch WHERE name=?", [(n,) for n in plan.files])
                self.con.executemany("INSERT OR IGNORE INTO scratch(name) VALUES (?)", [(n,) for n in old_files])
            self.con.execute("DELETE FROM scratch WHERE name IN (?, ?)", (new_path.name, tmp_name))
            if self.published:  # the file readers leave now: deleted below, or by the next writer
                self.con.execute("INSERT OR IGNORE INTO scratch(name) VALUES (?)", (old_path.name,))
            if self.con.execute("SELECT 1 FROM files WHERE removed_gen=? LIMIT 1", (self.gen,)).fetchone():
                # Also entries added and dropped within this generation (by an interrupted run).
                _purge_orphans(self.con)
        old_path.unlink(missing_ok=True)
        self._forget(old_path.name)
        stats = PublishStats(self.gen, kind, len(added), len(removed), total, bool(rebuild), calibration)
        self.published, self.gen = self.gen, self.gen + 1
        return stats

    def _write_index(self, index: faiss.Index, path: Path) -> None:
        """Write ``index`` to ``path`` atomically, through a new file of our own (never a link)."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with os.fdopen(create_new(tmp), "wb") as f:
                faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(self.dir)
        except (OSError, RuntimeError) as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {path}: {e}; the previous index is unchanged") from e
