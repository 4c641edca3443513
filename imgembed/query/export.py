"""Exports: every photo's metadata and vector as Parquet, CSV (metadata only) or .npy + CSV; search
results as CSV. The format follows the output's suffix.

- ``OUT.parquet``: one row per photo, the metadata columns plus ``vector`` (fixed-size list of
  float32), written in row groups so memory stays bounded (needs pyarrow: ``imgembed[export]``).
- ``OUT.csv``: the metadata columns.
- ``OUT.npy``: the vectors as one ``float32 (n, dim)`` array, and ``OUT.csv`` beside it with the
  metadata, row ``i`` describing vector ``i``.

All of it comes from one published generation of the index (a writer may run meanwhile).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from imgembed.index.format import Meta, Row
from imgembed.index.snapshot import Snapshot

FORMATS = (".parquet", ".csv", ".npy")
COLUMNS = ["id", "path", "root", "relpath", "folder", "ext", "size", "mtime_ns", "width", "height", "taken",
           "taken_from", "make", "model", "camera", "lat", "lon", "hash", "indexed_at"]
HIT_COLUMNS = ["query", "rank", "score", "path", "taken", "taken_from", "camera", "width", "height", "size",
               "lat", "lon", "id"]
CHUNK = 10_000  # photos per read (and Parquet row group)


@dataclass
class ExportSummary:
    photos: int
    dim: int
    files: list[Path]
    seconds: float

    def lines(self) -> list[str]:
        what = ", ".join(str(p) for p in self.files)
        return [f"exported {self.photos} photos ({self.dim}-d vectors) to {what} in {self.seconds:.1f} s"]


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def record(row: Row, meta: Meta | None) -> dict:
    """One photo's metadata as plain values (paths as text, undecodable bytes as U+FFFD)."""
    m = meta
    return {"id": row.id, "path": _text(row.path), "root": _text(row.root), "relpath": _text(row.relpath),
            "folder": _text(m.folder) if m else _text(row.relpath.rpartition(b"/")[0]),
            "ext": m.ext if m else None, "size": row.size, "mtime_ns": row.mtime_ns, "width": row.width,
            "height": row.height, "taken": m.taken if m else None, "taken_from": m.taken_from if m else None,
            "make": m.make if m else None, "model": m.model if m else None, "camera": m.camera if m else None,
            "lat": m.lat if m else None, "lon": m.lon if m else None, "hash": row.hash,
            "indexed_at": row.indexed_at}


def _chunks(snapshot: Snapshot) -> Iterator[tuple[list[dict], np.ndarray]]:
    """``(records, vectors (n, dim))`` of the visible photos, a chunk at a time, in id order."""
    rows: list[Row] = []
    for row in snapshot.iter_rows():
        rows.append(row)
        if len(rows) == CHUNK:
            yield _chunk(snapshot, rows)
            rows = []
    if rows:
        yield _chunk(snapshot, rows)


def _chunk(snapshot: Snapshot, rows: list[Row]) -> tuple[list[dict], np.ndarray]:
    ids = [r.id for r in rows]
    meta = snapshot.meta(ids)
    vecs = snapshot.vectors(ids)
    dim = snapshot.manifest["dim"]
    kept = [r for r in rows if r.id in vecs]  # a repair may have dropped a vector meanwhile
    out = np.stack([vecs[r.id] for r in kept]) if kept else np.zeros((0, dim), np.float32)
    return [record(r, meta.get(r.id)) for r in kept], out


def export(snapshot: Snapshot, out: str | Path, progress: Callable[[int, int], None] | None = None) -> ExportSummary:
    """Write every photo of ``snapshot`` to ``out`` in the format its suffix names (:data:`FORMATS`)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot export to {out}: name it .parquet (metadata and vectors), .csv (metadata) "
                         "or .npy (vectors, with the metadata in a .csv beside it)")
    if suffix == ".parquet":
        _require_pyarrow()
    t0 = time.perf_counter()
    dim = int(snapshot.manifest["dim"])
    with snapshot.read():
        total = len(snapshot.visible_ids())
        chunks = _counted(_chunks(snapshot), total, progress)
        if suffix == ".parquet":
            n, files = _parquet(out, chunks, dim), [out]
        elif suffix == ".csv":
            n, files = _csv(out, (recs for recs, _ in chunks)), [out]
        else:
            n, files = _npy(out, chunks, dim, total)
    return ExportSummary(n, dim, files, time.perf_counter() - t0)


def _counted(chunks, total: int, progress) -> Iterator[tuple[list[dict], np.ndarray]]:
    done = 0
    for recs, vecs in chunks:
        done += len(recs)
        yield recs, vecs
        if progress:
            progress(done, total)


def _csv(out: Path, chunks: Iterable[list[dict]]) -> int:
    n = 0
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for recs in chunks:
            w.writerows(recs)
            n += len(recs)
    return n


def _npy(out: Path, chunks, dim: int, total: int) -> tuple[int, list[Path]]:
    meta_path = out.with_suffix(".csv")
    arr = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(total, dim))
    n = 0

    def records():
        nonlocal n
        for recs, vecs in chunks:
            arr[n:n + len(vecs)] = vecs
            n += len(vecs)
            yield recs

    _csv(meta_path, records())
    arr.flush()
    del arr
    if n < total:  # rows a repair dropped meanwhile: rewrite the array at its true length
        np.save(out, np.load(out, mmap_mode="r")[:n].copy())
    return n, [out, meta_path]


def _require_pyarrow():
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise ValueError("Parquet export needs pyarrow: pip install 'imgembed[export]' "
                         "(or export to .csv or .npy)") from e


def _parquet(out: Path, chunks, dim: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [pa.field(c, t) for c, t in (
        ("id", pa.int64()), ("path", pa.string()), ("root", pa.string()), ("relpath", pa.string()),
        ("folder", pa.string()), ("ext", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
        ("width", pa.int32()), ("height", pa.int32()), ("taken", pa.string()), ("taken_from", pa.string()),
        ("make", pa.string()), ("model", pa.string()), ("camera", pa.string()), ("lat", pa.float64()),
        ("lon", pa.float64()), ("hash", pa.string()), ("indexed_at", pa.float64()))]
    schema = pa.schema(fields + [pa.field("vector", pa.list_(pa.float32(), dim))],
                       metadata={b"imgembed.dim": str(dim).encode()})
    n = 0
    tmp = out.with_name(f".{out.name}.tmp")
    with pq.ParquetWriter(tmp, schema) as w:
        for recs, vecs in chunks:
            cols = {c: [r[c] for r in recs] for c in COLUMNS}
            flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1), type=pa.float32())
            cols["vector"] = pa.FixedSizeListArray.from_arrays(flat, dim)
            w.write_table(pa.table(cols, schema=schema))
            n += len(recs)
    tmp.replace(out)
    return n


def write_hits_csv(out: str | Path, answers: Iterable) -> int:
    """Search results as CSV, one row per hit: the query, its rank, score, path and metadata.
    ``answers``: :class:`imgembed.query.batch.Answer` values. Returns the number of rows."""
    n = 0
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, HIT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for a in answers:
            for rank, h in enumerate(a.hits, 1):
                w.writerow({"query": a.query, "rank": rank, **h.as_dict()})
                n += 1
    return n
