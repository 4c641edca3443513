"""What an index directory holds and how it is opened: manifest, SQLite schema, connections.

Layout of an index directory::

    manifest.json        format version, what made the vectors (backbone, weights, head), dim, metric
    meta.sqlite          files, their vectors and copy-detection data (by content hash), the published generation
    vectors.<gen>.faiss  the searchable index of generation <gen>
    head.safetensors/.json  the projection head, when the index was built with one
    projection-<gen>.safetensors/.json  the projection the index fitted on its own photos, published
                         in generation <gen> (imgembed.index.projection: IndexCfg.projection "auto")
    write.lock           held by the one process that may write
    .<name>.tmp          a file being written (then renamed onto <name>)

Hostile folders. An index is a folder people copy and download, so none of its entries is trusted:
every file imgembed opens for writing in it must be a regular file, never a symbolic link (which
could point at ``~/.bashrc``; :func:`check_entries`), and new files are created exclusively, without
following links. A writer deletes only the files that writers of this index recorded in the
``scratch`` table before creating them (temporary files, unpublished or superseded FAISS files),
and refuses a folder that holds anything but an index (:func:`check_is_index`).

Consistency. SQLite (WAL mode) is the source of truth; a FAISS file is derived from it. Rows carry
the generation that added them and the one that removed them, so a writer's progress is committed
in small transactions that readers do not see. Publishing writes ``vectors.<gen+1>.faiss``
atomically, then flips the generation in one transaction. A reader holds one generation: the
FAISS file of that generation and the rows visible in it, never a mix. A crash at any point
leaves the last published generation intact; the next run reuses the committed vectors.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from dataclasses import fields
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

from imgembed.config import IndexCfg
from imgembed.errors import StoreError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DB = "meta.sqlite"
LOCK = "write.lock"

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
    # Database-side augmentation (imgembed.index.dba): the vector each content had before it was
    # averaged with its neighbours, and the cosine of the last of them; meta 'dba' is '1' while
    # the vectors table holds augmented vectors.
    """
    CREATE TABLE plain (hash TEXT PRIMARY KEY, vec BLOB NOT NULL, kth REAL NOT NULL);
    INSERT OR IGNORE INTO meta VALUES ('dba', '');
    """,
    # Files a writer created in the index folder that are not part of the published index: recorded
    # before each is created, deleted by the next writer if still listed. Nothing else is deleted.
    """
    CREATE TABLE scratch (name TEXT PRIMARY KEY);
    """,
    # 4: photo metadata. Rows of an index made before this have none; the next index run reads it
    # from the files (headers only: nothing is decoded or embedded again).
    """
    CREATE TABLE IF NOT EXISTS photo_meta (
        file_id INTEGER PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
        taken TEXT NOT NULL,  -- capture time, local 'YYYY-MM-DDTHH:MM:SS'
        taken_from TEXT NOT NULL,  -- 'exif', or 'mtime' when the file has no EXIF capture time
        make TEXT,
        model TEXT,
        lat REAL,
        lon REAL,
        ext TEXT NOT NULL,  -- lower-case file suffix without the dot
        folder BLOB NOT NULL  -- the folder relative to its root ('' at the root)
    );
    CREATE INDEX IF NOT EXISTS photo_meta_taken ON photo_meta(taken);
    """,
    # 5: copy-detection data of each content (imgembed.ingest.copy_data): 8 perceptual hashes and the
    # packed ORB keypoints. Content indexed before this migration has none until the next index run
    # of its folder, which computes it from the files without embedding them again.
    """
    CREATE TABLE IF NOT EXISTS copy_data (hash TEXT PRIMARY KEY, hashes BLOB NOT NULL, keypoints BLOB NOT NULL);
    """,
    # 6: the model's own features (float16) of each content, kept once the index projects them
    # (imgembed.index.projection), so the projection can be fitted again or turned off without
    # embedding anything again.
    """
    CREATE TABLE IF NOT EXISTS raw (hash TEXT PRIMARY KEY, vec BLOB NOT NULL);
    """,
]
# The first schema version that records photo metadata.
META_VERSION = 4


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


class LiveFile(NamedTuple):
    """An entry not removed (published or pending), as the writer plans a run."""

    id: int
    size: int
    mtime_ns: int
    hash: str


class NewFile(NamedTuple):
    relpath: bytes
    size: int
    mtime_ns: int
    hash: str
    width: int
    height: int
    # Photo metadata; taken_from None: not read yet (the next index run reads it from the file).
    taken: str | None = None
    taken_from: str | None = None
    make: str | None = None
    model: str | None = None
    lat: float | None = None
    lon: float | None = None


class Meta(NamedTuple):
    """What the index records about a photo besides its file (``photo_meta``)."""

    taken: str  # capture time, local "YYYY-MM-DDTHH:MM:SS"
    taken_from: str  # "exif", or "mtime" (the file's modification time stood in)
    make: str | None
    model: str | None
    lat: float | None
    lon: float | None
    ext: str  # "jpg", "heic", ...
    folder: bytes  # relative to the root; b"" at the root

    @property
    def camera(self) -> str | None:
        return camera_name(self.make, self.model)


def camera_name(make: str | None, model: str | None) -> str | None:
    """Make and model in one name, e.g. ``"Apple iPhone 15"`` (the model alone when it names the maker)."""
    if not model:
        return make or None
    if make and not model.lower().startswith(make.split()[0].lower()):
        return f"{make} {model}"
    return model


def path_meta(relpath: bytes) -> tuple[str, bytes]:
    """``(ext, folder)`` of a path relative to its root: ``b"2023/trip/IMG_1.HEIC"`` -> ``("heic", b"2023/trip")``."""
    folder, _, name = relpath.rpartition(b"/")
    stem, dot, ext = name.rpartition(b".")
    return (ext.decode("utf-8", "replace").lower() if dot and stem else ""), folder


META_SQL = "SELECT file_id, taken, taken_from, make, model, lat, lon, ext, folder FROM photo_meta"


# ---------------------------------------------------------------- manifest


def read_manifest(index_dir: str | Path) -> dict:
    """The validated manifest of an index. Raises StoreError naming the problem."""
    path = Path(index_dir) / MANIFEST
    if path.is_symlink():
        raise link_error(path)
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
    head = m.get("head")
    if head not in (None, "head.safetensors") and not (
            isinstance(head, str) and PROJECTION_FILE.fullmatch(head) and head.endswith(".safetensors")):
        # The head is loaded from the index folder only; a manifest never names another path.
        problems.append(f"head must be null, 'head.safetensors' or 'projection-N.safetensors', got {m.get('head')!r}")
    if m.get("projection") is not None and not (isinstance(m["projection"], dict)
                                                and isinstance(m["projection"].get("raw"), dict)):
        problems.append("projection must be null or an object with the raw features' identity")
    if not isinstance(m.get("head_fingerprint"), (str, type(None))):
        problems.append("head_fingerprint must be a string or null")
    if problems:
        raise StoreError(f"{path} is not a valid imgembed manifest: " + "; ".join(problems))
    return m


# ---------------------------------------------------------------- the folder's entries

HEAD_FILES = ("head.safetensors", "head.json")
PROJECTION_FILE = re.compile(r"projection-\d{1,18}\.(safetensors|json)")
_SQLITE_FILES = (DB, DB + "-wal", DB + "-shm", DB + "-journal")
# What a folder without a manifest may hold and still be taken for an index: what a first run
# interrupted before it wrote the manifest leaves behind.
_FIRST_RUN = {LOCK, *_SQLITE_FILES, *HEAD_FILES, *(f".{n}.tmp" for n in (MANIFEST, *HEAD_FILES))}


def is_own_name(name: str) -> bool:
    """Whether imgembed writes a file of this name in an index folder."""
    return (name in (MANIFEST, LOCK, *_SQLITE_FILES, *HEAD_FILES) or name.endswith(".tmp")
            or name.startswith("vectors.") and name.endswith(".faiss")
            or PROJECTION_FILE.fullmatch(name) is not None)


def check_entries(index_dir: Path) -> None:
    """Refuse an index folder where a file imgembed writes (or SQLite writes for it: the -wal and
    -shm files, also for readers) is a symbolic link or not a regular file. Raises StoreError."""
    try:
        entries = list(os.scandir(index_dir))
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"cannot read index folder {index_dir}: {e.strerror or e}") from e
    for entry in entries:
        if not is_own_name(entry.name):
            continue
        if entry.is_symlink():
            raise link_error(Path(index_dir) / entry.name)
        if not entry.is_file(follow_symlinks=False):
            raise StoreError(f"{Path(index_dir) / entry.name} is not a regular file; remove it, then run again")


def link_error(path: Path) -> StoreError:
    return StoreError(
        f"{path} is a symbolic link; imgembed never writes through a link in an index folder (a copied or "
        "downloaded index could point it at any file). Remove the link, or put the file it points to in its "
        "place, then run again")


def check_is_index(index_dir: Path) -> None:
    """Refuse to make an index in a folder that holds other things (``--index ~/Documents``): a
    folder without a manifest must be empty, or hold only what an interrupted first run left."""
    try:
        names = sorted(os.listdir(index_dir))
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"cannot read index folder {index_dir}: {e.strerror or e}") from e
    if MANIFEST in names:
        return
    others = [n for n in names if n not in _FIRST_RUN or n == LOCK and not _lock_is_ours(index_dir / LOCK)]
    if others:
        shown = ", ".join(repr(n) for n in others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise StoreError(
            f"{index_dir} is not an imgembed index (it has no {MANIFEST}) and is not empty: it holds {shown}. "
            "imgembed writes an index only into a new or empty folder; pass another --index")


def _lock_is_ours(path: Path) -> bool:
    """A write.lock as imgembed leaves it: empty or ``pid N``, and small."""
    try:
        with open(path, "rb") as f:
            return re.fullmatch(rb"(pid \d+)?", f.read(65)) is not None
    except OSError:
        return False


# ---------------------------------------------------------------- database


def connect(index_dir: Path, readonly: bool = False) -> sqlite3.Connection:
    """The index's SQLite database. Raises StoreError when a file of the folder is a link (SQLite
    would write its -wal and -shm files through it, even for a reader)."""
    check_entries(index_dir)
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
        if is_damage(e):
            raise damaged(path, e) from e
        raise StoreError(f"cannot open {path}: {e}; run imgembed verify, or rebuild the index") from e


# SQLite's result codes for a file that is not a database, or one whose pages are corrupt.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def is_damage(e: sqlite3.DatabaseError) -> bool:
    """Whether ``e`` says the database file is damaged (rather than the disk full or read-only)."""
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return any(m in str(e) for m in ("not a database", "malformed", "corrupt"))


def damaged(path: Path, e: Exception) -> StoreError:
    """The error for a damaged database: what happened, and how to rebuild."""
    folder = path.parent
    return StoreError(
        f"{path} is damaged ({e}). Rebuild the index: move {folder} away and run "
        f"imgembed index YOUR_PHOTOS --index {folder} (every photo is embedded again)")


def _uri_path(path: Path) -> str:
    from urllib.parse import quote

    return quote(str(path.absolute()), safe="/")


def migrate(con: sqlite3.Connection) -> None:
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(f"index schema version {version} is newer than this imgembed ({len(MIGRATIONS)}); upgrade imgembed")
    for i in range(version, len(MIGRATIONS)):
        con.executescript("BEGIN;" + MIGRATIONS[i] + f"PRAGMA user_version={i + 1}; COMMIT;")


# SQLite allows at most 999 parameters in one statement on older builds.
IN_CHUNK = 500


def select_in(con: sqlite3.Connection, sql: str, values: Iterable) -> Iterator[tuple]:
    """Rows of ``sql`` whose ``{marks}`` placeholder becomes ``?, ?, ...`` for ``values``, in chunks."""
    values = list(values)
    for i in range(0, len(values), IN_CHUNK):
        chunk: Sequence = values[i:i + IN_CHUNK]
        yield from con.execute(sql.format(marks=",".join("?" * len(chunk))), chunk)


def has_table(con: sqlite3.Connection, name: str) -> bool:
    """Whether the database has table ``name`` (a reader may open an index older than its migrations)."""
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def read_meta(con: sqlite3.Connection, key: str) -> str:
    row = con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else ""


def faiss_name(gen: int) -> str:
    return f"vectors.{gen}.faiss"


def projection_names(gen: int) -> tuple[str, str]:
    """The head files of the projection published in generation ``gen``."""
    return f"projection-{gen}.safetensors", f"projection-{gen}.json"


def visible(gen_param: str = "?") -> str:
    return f"added_gen <= {gen_param} AND (removed_gen IS NULL OR removed_gen > {gen_param})"


ROW_SQL = ("SELECT f.id, r.path, f.relpath, f.size, f.mtime_ns, f.hash, f.width, f.height, f.indexed_at "
            "FROM files f JOIN roots r ON r.id = f.root_id")


