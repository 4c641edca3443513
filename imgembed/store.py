"""The index store: a directory holding a FAISS index, SQLite metadata and a manifest.

Layout of an index directory::

    manifest.json        format version, what made the vectors (backbone, weights, head), dim, metric
    meta.sqlite          files, their vectors (by content hash), and the published generation
    vectors.<gen>.faiss  the searchable index of generation <gen>
    head.safetensors/.json  the projection head, when the index was built with one
    write.lock           held by the one process that may write

Consistency. SQLite (WAL mode) is the source of truth; a FAISS file is derived from it. Rows carry
the generation that added them and the one that removed them, so a writer's progress is committed
in small transactions that readers do not see. Publishing writes ``vectors.<gen+1>.faiss``
atomically, then flips the generation in one transaction. A reader holds one generation: the
FAISS file of that generation and the rows visible in it, never a mix. A crash at any point
leaves the last published generation intact; the next run reuses the committed vectors.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import faiss
import numpy as np

from imgembed import vector_index
from imgembed.atomic import atomic_write_json, replace_synced
from imgembed.config import IndexCfg, from_dict

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DB = "meta.sqlite"
LOCK = "write.lock"
IDENTITY_KEYS = ("backbone", "backbone_fingerprint", "pool", "head_fingerprint", "dim", "preprocess")

# Numbered schema migrations; the user_version pragma records how many have run.
MIGRATIONS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE roots (id INTEGER PRIMARY KEY, path BLOB NOT NULL UNIQUE);
    CREATE TABLE files (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a FAISS id names one row forever
        root_id INTEGER NOT NULL REFERENCES roots(id),
        relpath BLOB NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        hash TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        indexed_at REAL NOT NULL,
        added_gen INTEGER NOT NULL,
        removed_gen INTEGER
    );
    CREATE UNIQUE INDEX files_live ON files(root_id, relpath) WHERE removed_gen IS NULL;
    CREATE INDEX files_hash ON files(hash);
    CREATE INDEX files_added ON files(added_gen);
    CREATE INDEX files_removed ON files(removed_gen);
    CREATE TABLE vectors (hash TEXT PRIMARY KEY, vec BLOB NOT NULL);
    INSERT INTO meta VALUES ('generation', '0');
    INSERT INTO meta VALUES ('index_type', '');
    """,
]


class StoreError(RuntimeError):
    """The index cannot be opened or written as asked; the message says what to do."""


class Row(NamedTuple):
    id: int
    root: bytes
    relpath: bytes
    size: int
    mtime_ns: int
    hash: str
    width: int
    height: int
    indexed_at: float

    @property
    def path(self) -> bytes:
        return os.path.join(self.root, self.relpath)


class NewFile(NamedTuple):
    relpath: bytes
    size: int
    mtime_ns: int
    hash: str
    width: int
    height: int


@dataclass
class PublishStats:
    generation: int
    index_type: str
    added: int
    removed: int
    total: int
    rebuilt: bool


# ---------------------------------------------------------------- manifest


def read_manifest(index_dir: str | Path) -> dict:
    """The validated manifest of an index. Raises StoreError naming the problem."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise StoreError(f"no index at {index_dir} (no {MANIFEST}); build one with: imgembed index FOLDER --index {index_dir}")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise StoreError(f"{path} is not valid JSON ({e}); rebuild the index") from e
    problems = []
    if not isinstance(m, dict):
        raise StoreError(f"{path}: expected a JSON object")
    if m.get("format_version") != FORMAT_VERSION:
        problems.append(f"format_version is {m.get('format_version')!r}, this imgembed reads {FORMAT_VERSION}")
    if type(m.get("dim")) is not int or not 0 < m["dim"] <= 65536:
        problems.append(f"dim must be a positive integer, got {m.get('dim')!r}")
    if not isinstance(m.get("backbone"), str) or not m.get("backbone"):
        problems.append("backbone must be a non-empty string")
    if m.get("metric") != "cosine":
        problems.append(f"metric must be 'cosine', got {m.get('metric')!r}")
    if not isinstance(m.get("preprocess"), dict):
        problems.append("preprocess must be an object")
    cfg = m.get("index_cfg", {})
    if not isinstance(cfg, dict):
        problems.append("index_cfg must be an object")
    else:
        known = {f.name: type(f.default) for f in fields(IndexCfg)}
        bad = [k for k, v in cfg.items() if k not in known or type(v) is not known[k]]
        if bad:
            problems.append(f"index_cfg has unknown or mistyped keys: {', '.join(map(str, bad))}")
    if m.get("head") not in (None, "head.safetensors"):
        # The head is loaded from the index folder only; a manifest never names another path.
        problems.append(f"head must be null or 'head.safetensors', got {m.get('head')!r}")
    if not isinstance(m.get("head_fingerprint"), (str, type(None))):
        problems.append("head_fingerprint must be a string or null")
    if problems:
        raise StoreError(f"{path} is not a valid imgembed manifest: " + "; ".join(problems))
    return m


def check_identity(manifest: dict, identity: dict, index_dir: str | Path) -> None:
    """Refuse to mix vectors from different embedders in one index."""
    identity = json.loads(json.dumps(identity))  # tuples -> lists, as stored
    diffs = [k for k in IDENTITY_KEYS if manifest.get(k) != identity.get(k)]
    if diffs:
        used = f"backbone {manifest.get('backbone')} (weights {manifest.get('backbone_fingerprint')}, " \
               f"pool {manifest.get('pool')}), head {manifest.get('head_fingerprint') or 'none'}, dim {manifest.get('dim')}"
        asked = f"backbone {identity.get('backbone')} (weights {identity.get('backbone_fingerprint')}, " \
                f"pool {identity.get('pool')}), head {identity.get('head_fingerprint') or 'none'}, dim {identity.get('dim')}"
        raise StoreError(
            f"index {index_dir} was built with {used}; this run uses {asked} (differs in: "
            f"{', '.join(diffs)}). Use the same --backbone/--head, or another --index."
        )


# ---------------------------------------------------------------- database


def _connect(index_dir: Path, readonly: bool = False) -> sqlite3.Connection:
    path = index_dir / DB
    if readonly:
        con = _connect_ro(path)
    else:
        con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    return con


def _connect_ro(path: Path) -> sqlite3.Connection:
    uri = f"file:{_uri_path(path)}?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.DatabaseError as e:
        con.close()
        # A WAL database in a folder nobody may write to: SQLite cannot create its shared-memory
        # file. No writer can exist there either, so the file is immutable as far as we can tell.
        if path.is_file() and not os.access(path.parent, os.W_OK):
            con = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
            try:
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return con
            except sqlite3.DatabaseError:
                con.close()
        raise StoreError(f"cannot open {path}: {e}; run imgembed verify, or rebuild the index") from e


def _uri_path(path: Path) -> str:
    from urllib.parse import quote

    return quote(str(path.absolute()), safe="/")


@contextmanager
def _writing(path: Path):
    """SQLite failures while writing (disk full, read-only folder, I/O error) as a StoreError."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        raise StoreError(
            f"cannot write {path}: {e}. Free disk space or make the folder writable, then run again; "
            "the last published index is unchanged and the work committed so far is kept") from e


def _migrate(con: sqlite3.Connection) -> None:
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(f"index schema version {version} is newer than this imgembed ({len(MIGRATIONS)}); upgrade imgembed")
    for i in range(version, len(MIGRATIONS)):
        con.executescript("BEGIN;" + MIGRATIONS[i] + f"PRAGMA user_version={i + 1}; COMMIT;")


def _meta(con: sqlite3.Connection, key: str) -> str:
    row = con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else ""


def faiss_name(gen: int) -> str:
    return f"vectors.{gen}.faiss"


def _visible(gen_param: str = "?") -> str:
    return f"added_gen <= {gen_param} AND (removed_gen IS NULL OR removed_gen > {gen_param})"


_ROW_SQL = ("SELECT f.id, r.path, f.relpath, f.size, f.mtime_ns, f.hash, f.width, f.height, f.indexed_at "
            "FROM files f JOIN roots r ON r.id = f.root_id")


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
                self.con = _connect(self.dir)
                _migrate(self.con)
                self.published = int(_meta(self.con, "generation"))
                self.gen = self.published + 1  # the generation this writer is preparing
                self._cleanup()
            if not exists:
                self.manifest = self._create(identity, index_cfg, list(head_files))
            self.index_cfg = from_dict(IndexCfg, self.manifest.get("index_cfg", {}))
            if index_cfg.index_type != "auto" and index_cfg.index_type != self.index_cfg.index_type:
                self.index_cfg.index_type = index_cfg.index_type  # an explicit choice sticks
                self.manifest["index_cfg"] = asdict(self.index_cfg)
                self._write_manifest(self.manifest)
            self.dim = int(self.manifest["dim"])
        except BaseException:
            self.close()
            raise

    # -- lifecycle

    def _take_lock(self, wait: bool) -> int:
        path = self.dir / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
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
                shutil.copyfile(src, self.dir / ("head" + src.suffix))
        except OSError as e:
            raise StoreError(f"cannot copy the head into {self.dir}: {e.strerror or e}") from e
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_at": time.time(),
            "metric": "cosine",
            "index_cfg": asdict(index_cfg),
            "head": "head.safetensors" if head_files else None,
            **{k: identity[k] for k in IDENTITY_KEYS},
        }
        self._write_manifest(manifest)
        return manifest

    def _write_manifest(self, manifest: dict) -> None:
        try:
            atomic_write_json(self.dir / MANIFEST, manifest)
        except OSError as e:
            raise StoreError(f"cannot write {self.dir / MANIFEST}: {e.strerror}") from e

    def _cleanup(self) -> None:
        """Forget what an interrupted earlier writer left unpublished beyond committed vectors."""
        keep = faiss_name(self.published)
        for p in self.dir.glob("vectors.*.faiss"):
            if p.name != keep:
                p.unlink(missing_ok=True)
        for p in self.dir.glob(".*.tmp"):
            p.unlink(missing_ok=True)
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
        path = os.fsencode(os.path.abspath(root))
        with _writing(self.dir / DB):
            self.con.execute("INSERT OR IGNORE INTO roots(path) VALUES (?)", (path,))
        return self.con.execute("SELECT id FROM roots WHERE path=?", (path,)).fetchone()[0]

    def live_files(self, root_id: int) -> dict[bytes, tuple[int, int, int, str]]:
        """``relpath -> (id, size, mtime_ns, hash)`` of the files not removed (published or pending)."""
        cur = self.con.execute(
            "SELECT relpath, id, size, mtime_ns, hash FROM files WHERE root_id=? AND removed_gen IS NULL",
            (root_id,))
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in cur}

    def known_hashes(self, hashes: Iterable[str]) -> set[str]:
        hashes = list(hashes)
        found: set[str] = set()
        for i in range(0, len(hashes), 500):
            chunk = hashes[i:i + 500]
            q = f"SELECT hash FROM vectors WHERE hash IN ({','.join('?' * len(chunk))})"
            found.update(r[0] for r in self.con.execute(q, chunk))
        return found

    def dims_of(self, hashes: Iterable[str]) -> dict[str, tuple[int, int]]:
        """``hash -> (width, height)`` recorded for content the index already holds."""
        hashes = list(hashes)
        out: dict[str, tuple[int, int]] = {}
        for i in range(0, len(hashes), 500):
            chunk = hashes[i:i + 500]
            q = f"SELECT hash, width, height FROM files WHERE hash IN ({','.join('?' * len(chunk))})"
            out.update((r[0], (r[1], r[2])) for r in self.con.execute(q, chunk))
        return out

    def has_vectors(self) -> bool:
        return self.con.execute("SELECT 1 FROM vectors LIMIT 1").fetchone() is not None

    # -- changes (committed at once, visible to readers only after publish)

    def remove(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        with self._tx():
            self.con.executemany("UPDATE files SET removed_gen=? WHERE id=? AND removed_gen IS NULL",
                                 [(self.gen, i) for i in ids])

    def add(self, root_id: int, files: list[NewFile], vectors: np.ndarray | None = None) -> None:
        """Record files; ``vectors (n, dim)`` for those whose hash has none yet (None: all known)."""
        now = time.time()
        with self._tx():
            if vectors is not None:
                if vectors.shape != (len(files), self.dim):
                    raise ValueError(f"expected vectors of shape {(len(files), self.dim)}, got {vectors.shape}")
                self.con.executemany(
                    "INSERT OR IGNORE INTO vectors(hash, vec) VALUES (?, ?)",
                    [(f.hash, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for f, v in zip(files, vectors)])
            self.con.executemany(
                "INSERT INTO files(root_id, relpath, size, mtime_ns, hash, width, height, indexed_at, added_gen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(root_id, f.relpath, f.size, f.mtime_ns, f.hash, f.width, f.height, now, self.gen) for f in files])

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
            part = [int(x) for x in ids[i:i + chunk]]
            rows = self.con.execute(
                f"SELECT f.id, v.vec FROM files f JOIN vectors v ON v.hash=f.hash "
                f"WHERE f.id IN ({','.join('?' * len(part))})", part).fetchall()
            yield self._unpack(rows)

    def _unpack(self, rows: list) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        return ids, vecs

    def _all_vectors(self, gen: int, chunk: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        cur = self.con.execute(
            f"SELECT f.id, v.vec FROM files f JOIN vectors v ON v.hash=f.hash WHERE {_visible()} ORDER BY f.id",
            (gen, gen))
        while rows := cur.fetchmany(chunk):
            yield self._unpack(rows)

    def _sample(self, gen: int, n: int) -> np.ndarray:
        rows = self.con.execute(
            f"SELECT f.id, v.vec FROM files f JOIN vectors v ON v.hash=f.hash WHERE {_visible()} "
            "ORDER BY random() LIMIT ?", (gen, gen, n)).fetchall()
        return self._unpack(rows)[1]

    def count(self, gen: int) -> int:
        return self.con.execute(f"SELECT count(*) FROM files WHERE {_visible()}", (gen, gen)).fetchone()[0]

    def publish(self, rebuild: bool = False) -> PublishStats:
        """Make everything recorded since the last publish searchable, atomically.

        ``rebuild`` builds the FAISS index afresh from the vectors in SQLite (verify --repair).
        """
        removed, added = self._pending()
        total = self.count(self.gen)
        kind = vector_index.choose_type(self.index_cfg, total, self.dim)
        old_path = self.dir / faiss_name(self.published)
        old_kind = _meta(self.con, "index_type")
        rebuild = (rebuild or not old_path.exists() or kind != old_kind
                   or (len(removed) and not vector_index.supports_remove(kind)))
        if not rebuild and not len(removed) and not len(added):
            return PublishStats(self.published, kind, 0, 0, total, False)
        if not rebuild:
            try:
                index = faiss.read_index(str(old_path))
            except RuntimeError as e:
                raise StoreError(f"cannot read {old_path} ({e}); run imgembed verify --repair") from e
            rebuild = vector_index.outgrown(index, total)  # IVF lists trained for far fewer vectors
        if rebuild:
            train = self._sample(self.gen, 262_144) if vector_index.needs_training(kind) else None
            index = vector_index.build(kind, self.dim, self.index_cfg, self._all_vectors(self.gen), train, total)
        else:
            vector_index.remove(index, removed)
            for ids, vecs in self.vectors_for(added):
                vector_index.add(index, ids, vecs)
        if index.ntotal != total:
            raise StoreError(f"internal error: index holds {index.ntotal} vectors, metadata {total}; "
                             "run imgembed verify --repair")
        new_path = self.dir / faiss_name(self.gen)
        self._write_index(index, new_path)
        with self._tx():
            self.con.execute("UPDATE meta SET value=? WHERE key='generation'", (str(self.gen),))
            self.con.execute("UPDATE meta SET value=? WHERE key='index_type'", (kind,))
            if self.con.execute("SELECT 1 FROM files WHERE removed_gen=? LIMIT 1", (self.gen,)).fetchone():
                # Also entries added and dropped within this generation (by an interrupted run).
                self.con.execute("DELETE FROM vectors WHERE hash NOT IN (SELECT hash FROM files WHERE removed_gen IS NULL)")
        old_path.unlink(missing_ok=True)
        stats = PublishStats(self.gen, kind, len(added), len(removed), total, bool(rebuild))
        self.published, self.gen = self.gen, self.gen + 1
        return stats

    def _write_index(self, index: faiss.Index, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            faiss.write_index(index, str(tmp))
            replace_synced(tmp, path)
        except (OSError, RuntimeError) as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {path}: {e}; the previous index is unchanged") from e


# ---------------------------------------------------------------- reader


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
        self.con = _connect(self.dir, readonly=True)
        self.mmap = mmap
        self.generation = -1
        self.index: faiss.Index | None = None
        self.index_type = ""
        self._lock = threading.RLock()
        self._pinned = 0
        self.refresh()

    def current_generation(self) -> int:
        try:
            return int(_meta(self.con, "generation") or 0)
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
            index = vector_index.read(str(path), mmap=self.mmap)
        except RuntimeError as e:
            if not path.exists():
                return False
            raise StoreError(f"cannot read {path} ({e}); run imgembed verify --repair") from e
        if index.d != self.manifest["dim"]:
            raise StoreError(f"{path} holds {index.d}-d vectors but the manifest says {self.manifest['dim']}; "
                             "run imgembed verify --repair")
        self.generation, self.index = gen, index
        self.index_type = _meta(self.con, "index_type")
        return True

    def visible_ids(self) -> np.ndarray:
        """Ids of the rows visible in this snapshot's generation (int64, sorted)."""
        cur = self.con.execute(f"SELECT id FROM files WHERE {_visible(str(self.generation))} ORDER BY id")
        return np.fromiter((r[0] for r in cur), dtype=np.int64)

    @property
    def count(self) -> int:
        return int(self.index.ntotal) if self.index is not None else 0

    def rows(self, ids: Iterable[int]) -> dict[int, Row]:
        """Rows visible in this snapshot's generation, by id."""
        ids = [int(i) for i in ids if i >= 0]
        out: dict[int, Row] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            q = f"{_ROW_SQL} WHERE f.id IN ({','.join('?' * len(chunk))}) AND {_visible(str(self.generation))}"
            out.update((r[0], Row(*r)) for r in self.con.execute(q, chunk))
        return out

    def row_by_path(self, path: bytes) -> Row | None:
        """The visible row of an absolute path, or None when the path is not in the index."""
        for root_id, root in self.con.execute("SELECT id, path FROM roots"):
            prefix = root.rstrip(b"/") + b"/"
            if path.startswith(prefix):
                r = self.con.execute(
                    f"{_ROW_SQL} WHERE f.root_id=? AND f.relpath=? AND {_visible(str(self.generation))}",
                    (root_id, path[len(prefix):])).fetchone()
                if r:
                    return Row(*r)
        return None

    def iter_rows(self, chunk: int = 10_000) -> Iterator[Row]:
        cur = self.con.execute(f"{_ROW_SQL} WHERE {_visible(str(self.generation))} ORDER BY f.id")
        while rows := cur.fetchmany(chunk):
            yield from (Row(*r) for r in rows)

    def vectors(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Full-precision stored vectors by id (from the metadata, whatever the index type)."""
        ids = [int(i) for i in ids]
        out: dict[int, np.ndarray] = {}
        dim = self.manifest["dim"]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            q = (f"SELECT f.id, v.vec FROM files f JOIN vectors v ON v.hash=f.hash "
                 f"WHERE f.id IN ({','.join('?' * len(chunk))})")
            out.update((r[0], np.frombuffer(r[1], dtype=np.float32).reshape(dim)) for r in self.con.execute(q, chunk))
        return out

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())

    def close(self) -> None:
        self.con.close()
