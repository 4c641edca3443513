"""Embedding shards on disk: their layout, writing them as rows arrive, reading them back.

A distributed job (:mod:`imgembed.distributed.ray_job`) writes a shards folder;
:mod:`imgembed.distributed.build_index` turns it into the same index store the local path writes,
so search, the app and verify work unchanged.

Layout of a shards folder::

    shards.json          format version, the photo root, what made the vectors (identity), shard size
    listing.parquet      the file listing the job was planned from (id, path, size, mtime_ns)
    shard-00000.parquet  one per ``shard_size`` listing entries, in listing order:
                         id, path, size, mtime_ns, hash, width, height, error, vector
    head.safetensors/.json  the projection head, when the vectors went through one

``id`` is the position in the listing; ``path`` is relative to the root, as bytes (names that are
not UTF-8 survive). A file that could not be decoded has a null ``vector`` and its reason in
``error``, so a finished shard accounts for every file in its range. A shard file exists only once
complete (written to a temporary name, fsynced, renamed), so a resumed job redoes exactly the
shards that are missing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from imgembed.atomic import atomic_write_json, replace_synced
from imgembed.identity import identity_diffs
from imgembed.index.format import NewFile, StoreError
from imgembed.ingest import fs

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "shards.json"
LISTING = "listing.parquet"


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow comes with the ray extra
        raise StoreError("embedding shards need pyarrow: pip install 'imgembed[ray]'") from e
    return pa, pq


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def shard_count(n_files: int, shard_size: int) -> int:
    return (n_files + shard_size - 1) // shard_size


# ---------------------------------------------------------------- manifest and listing


def new_manifest(root: str | Path, identity: dict, shard_size: int, n_files: int, head: bool,
                 job_cfg: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "created_at": time.time(),
        "root": os.fsdecode(os.path.abspath(root)),
        "identity": json.loads(json.dumps(identity)),
        "head": "head.safetensors" if head else None,
        "shard_size": shard_size,
        "files": n_files,
        "shards": shard_count(n_files, shard_size),
        "job_cfg": job_cfg,
    }


def read_manifest(shards_dir: str | Path) -> dict:
    """The manifest of a shards folder. Raises StoreError naming the problem."""
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise StoreError(f"no embedding shards at {shards_dir} (no {MANIFEST}); write them with: "
                         f"imgembed index FOLDER --engine ray --shards-out {shards_dir}")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"{path} is not valid JSON ({e}); write the shards again into a new folder") from e
    if not isinstance(m, dict) or m.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{path}: shards format {m.get('format_version') if isinstance(m, dict) else '?'}, "
                         f"this imgembed reads {FORMAT_VERSION}")
    missing = [k for k in ("root", "identity", "shard_size", "files", "shards") if k not in m]
    if missing:
        raise StoreError(f"{path} lacks {', '.join(missing)}; write the shards again into a new folder")
    return m


def write_manifest(shards_dir: str | Path, manifest: dict) -> None:
    atomic_write_json(Path(shards_dir) / MANIFEST, manifest)


def check_same_job(manifest: dict, root: str | Path, identity: dict, shards_dir: str | Path) -> None:
    """A resumed job must embed the same folder with the same embedder."""
    diffs = identity_diffs(manifest["identity"], identity)
    if diffs:
        raise StoreError(
            f"the shards in {shards_dir} were made with backbone {manifest['identity'].get('backbone')} "
            f"(dim {manifest['identity'].get('dim')}); this run uses {identity.get('backbone')} (dim "
            f"{identity.get('dim')}), differing in {', '.join(diffs)}. Use the same --backbone/--head to "
            "resume, or another --shards-out")
    root = os.fsdecode(os.path.abspath(root))
    if manifest["root"] != root:
        raise StoreError(f"the shards in {shards_dir} are of {manifest['root']}, not {root}; "
                         "use another --shards-out")


def write_listing(shards_dir: str | Path, files: list[fs.FileEntry]) -> None:
    pa, pq = _pa()
    table = pa.table({
        "id": pa.array(np.arange(len(files), dtype=np.int64)),
        "path": pa.array([f.relpath for f in files], pa.binary()),
        "size": pa.array([f.size for f in files], pa.int64()),
        "mtime_ns": pa.array([f.mtime_ns for f in files], pa.int64()),
    })
    _atomic_parquet(table, Path(shards_dir) / LISTING)


def read_listing(shards_dir: str | Path):
    """The job's listing as a pyarrow Table (id, path, size, mtime_ns), in id order."""
    _, pq = _pa()
    return pq.read_table(Path(shards_dir) / LISTING)


def finished_shards(shards_dir: str | Path, n_shards: int) -> set[int]:
    d = Path(shards_dir)
    return {i for i in range(n_shards) if (d / shard_name(i)).is_file()}


def _atomic_parquet(table, path: Path) -> None:
    _, pq = _pa()
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    replace_synced(tmp, path)


# ---------------------------------------------------------------- assembling shards from rows


@dataclass
class ShardRows:
    """Columns of rows coming back from the workers, in any order (``vectors`` is ``(n, dim)``)."""

    id: np.ndarray
    path: list[bytes]
    size: np.ndarray
    mtime_ns: np.ndarray
    hash: list[str]
    width: np.ndarray
    height: np.ndarray
    error: list[str]  # "" when the file was embedded
    vectors: np.ndarray


@dataclass
class _Pending:
    first: int  # listing id of the shard's first file
    n: int
    filled: np.ndarray  # bool (n,)
    cols: dict = field(default_factory=dict)


class ShardAssembler:
    """Collects rows by shard and writes each shard the moment its last row arrives.

    Rows may come in any order and a retried batch may deliver a row twice; each listing id fills
    one slot, so a shard holds every one of its files exactly once.
    """

    def __init__(self, shards_dir: str | Path, shard_size: int, n_files: int, dim: int,
                 on_written: Callable[[int], None] | None = None) -> None:
        self.dir, self.shard_size, self.n_files, self.dim = Path(shards_dir), shard_size, n_files, dim
        self.pending: dict[int, _Pending] = {}
        self.on_written = on_written
        self.duplicates = 0
        self.written: list[int] = []

    def _shard(self, s: int) -> _Pending:
        p = self.pending.get(s)
        if p is None:
            first = s * self.shard_size
            n = min(self.shard_size, self.n_files - first)
            p = self.pending[s] = _Pending(first, n, np.zeros(n, bool), {
                "path": [b""] * n, "size": np.zeros(n, np.int64), "mtime_ns": np.zeros(n, np.int64),
                "hash": [""] * n, "width": np.zeros(n, np.int32), "height": np.zeros(n, np.int32),
                "error": [""] * n, "vectors": np.zeros((n, self.dim), np.float32)})
        return p

    def add(self, rows: ShardRows) -> None:
        for j, gid in enumerate(rows.id.tolist()):
            s = gid // self.shard_size
            p = self._shard(s)
            k = gid - p.first
            if p.filled[k]:
                self.duplicates += 1
            p.filled[k] = True
            c = p.cols
            c["path"][k], c["size"][k], c["mtime_ns"][k] = rows.path[j], rows.size[j], rows.mtime_ns[j]
            c["hash"][k], c["width"][k], c["height"][k] = rows.hash[j], rows.width[j], rows.height[j]
            c["error"][k] = rows.error[j]
            c["vectors"][k] = rows.vectors[j]
            if p.filled.all():
                self._write(s, self.pending.pop(s))

    def _write(self, s: int, p: _Pending) -> None:
        pa, _ = _pa()
        c = p.cols
        ok = np.array([not e for e in c["error"]])
        flat = pa.array(c["vectors"].reshape(-1), pa.float32())
        vectors = pa.FixedSizeListArray.from_arrays(flat, self.dim, mask=pa.array(~ok))
        table = pa.table({
            "id": pa.array(np.arange(p.first, p.first + p.n, dtype=np.int64)),
            "path": pa.array(c["path"], pa.binary()),
            "size": pa.array(c["size"]), "mtime_ns": pa.array(c["mtime_ns"]),
            "hash": pa.array(c["hash"], pa.string()),
            "width": pa.array(c["width"]), "height": pa.array(c["height"]),
            "error": pa.array([e or None for e in c["error"]], pa.string()),
            "vector": vectors,
        })
        _atomic_parquet(table, self.dir / shard_name(s))
        self.written.append(s)
        if self.on_written:
            self.on_written(s)

    @property
    def incomplete(self) -> list[int]:
        return sorted(self.pending)


# ---------------------------------------------------------------- reading shards


class ShardChunk:
    """The embedded files of one shard, and the files it could not embed."""

    def __init__(self, table) -> None:
        errors = table.column("error").to_pylist()
        paths = table.column("path").to_pylist()
        ok = np.array([e is None for e in errors], bool)
        self.failures = [(p, e) for p, e, good in zip(paths, errors, ok) if not good]
        cols = {k: table.column(k).to_numpy(zero_copy_only=False) for k in ("size", "mtime_ns", "width", "height")}
        hashes = table.column("hash").to_pylist()
        self.files = [NewFile(paths[i], int(cols["size"][i]), int(cols["mtime_ns"][i]), hashes[i],
                              int(cols["width"][i]), int(cols["height"][i])) for i in np.flatnonzero(ok)]
        vec = table.column("vector").combine_chunks().filter(ok)
        dim = vec.type.list_size
        self.vectors = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)


def iter_shards(shards_dir: str | Path) -> Iterator[tuple[int, ShardChunk]]:
    """``(shard number, chunk)`` for every shard, in order. Raises StoreError if one is missing."""
    _, pq = _pa()
    m = read_manifest(shards_dir)
    d = Path(shards_dir)
    missing = sorted(set(range(m["shards"])) - finished_shards(d, m["shards"]))
    if missing:
        raise StoreError(
            f"{len(missing)} of {m['shards']} shards in {shards_dir} are not written yet "
            f"(first: {shard_name(missing[0])}); finish the job by running the same "
            "imgembed index ... --engine ray --shards-out command again")
    for i in range(m["shards"]):
        yield i, ShardChunk(pq.read_table(d / shard_name(i)))
