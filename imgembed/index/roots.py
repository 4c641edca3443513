"""The folders an index holds, kept so that every photo has one entry.

A folder inside one the index already holds is refused (its photos would be listed twice); a folder
around indexed ones takes their entries in (same absolute paths, so nothing is embedded again); and
when a folder has vanished and its photos reappear under the folder being indexed (a moved or
renamed folder), its entries are dropped. Paths are compared as real paths. The writer
(:class:`imgembed.index.store.StoreWriter`) calls these with its connection and transactions.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Callable, ContextManager

from imgembed.errors import StoreError
from imgembed.index.format import path_meta

Tx = Callable[[], ContextManager]


def live_roots(con: sqlite3.Connection) -> list[tuple[int, bytes]]:
    """``(id, path)`` of the folders that have entries not removed."""
    return con.execute("SELECT r.id, r.path FROM roots r WHERE EXISTS (SELECT 1 FROM files f "
                       "WHERE f.root_id = r.id AND f.removed_gen IS NULL)").fetchall()


def _inside(path: bytes, folder: bytes) -> bool:
    return path.startswith(folder.rstrip(b"/") + b"/")


def check_not_inside(con: sqlite3.Connection, path: bytes) -> None:
    """Refuse ``path`` when it lies inside a folder the index holds. Raises StoreError."""
    real = os.path.realpath(path)
    for _, other in live_roots(con):
        outer = os.path.realpath(other)
        if real != outer and _inside(real, outer):
            raise StoreError(
                f"{os.fsdecode(path)} is inside {os.fsdecode(other)}, which this index already holds; "
                f"index {os.fsdecode(other)} instead (it takes in every change below it), or use another --index")


def take_in_below(con: sqlite3.Connection, tx: Tx, root_id: int, gen: int) -> list[tuple[bytes, int]]:
    """Move the entries of indexed folders inside ``root_id`` under it (each photo keeps its entry and
    vector). An entry the root already has is removed in generation ``gen`` instead (an index made
    before overlaps were refused). ``[(folder, entries)]`` for each folder taken in."""
    root = con.execute("SELECT path FROM roots WHERE id=?", (root_id,)).fetchone()[0]
    real = os.path.realpath(root)
    out = []
    for other_id, other in live_roots(con):
        inner = os.path.realpath(other)
        if other_id == root_id or not (inner == real or _inside(inner, real)):
            continue
        prefix = inner[len(real):].strip(b"/")
        taken = {r[0] for r in con.execute(
            "SELECT relpath FROM files WHERE root_id=? AND removed_gen IS NULL", (root_id,))}
        moves, dups = [], []
        for i, rel in con.execute(
                "SELECT id, relpath FROM files WHERE root_id=? AND removed_gen IS NULL", (other_id,)).fetchall():
            new = prefix + b"/" + rel if prefix else rel
            (dups if new in taken else moves).append((new, i))
        with tx():
            con.executemany("UPDATE files SET root_id=?, relpath=? WHERE id=?", [(root_id, new, i) for new, i in moves])
            # photo metadata records each photo's folder relative to its root
            con.executemany("UPDATE photo_meta SET folder=? WHERE file_id=?",
                            [(path_meta(new)[1], i) for new, i in moves])
            con.executemany("UPDATE files SET removed_gen=? WHERE id=?", [(gen, i) for _, i in dups])
        out.append((other, len(moves) + len(dups)))
    return out


def drop_moved(con: sqlite3.Connection, tx: Tx, root_id: int, gen: int) -> list[tuple[bytes, list[str]]]:
    """Remove, in generation ``gen``, the entries of vanished folders whose content is now under
    ``root_id`` (the same photos indexed again under a new path). ``[(vanished folder, their hashes)]``."""
    out = []
    for other_id, other in live_roots(con):
        if other_id == root_id or os.path.isdir(other):
            continue
        where = ("root_id=? AND removed_gen IS NULL AND hash IN "
                 "(SELECT hash FROM files WHERE root_id=? AND removed_gen IS NULL)")
        with tx():
            hashes = [r[0] for r in con.execute(f"SELECT hash FROM files WHERE {where}", (other_id, root_id))]
            con.execute(f"UPDATE files SET removed_gen=? WHERE {where}", (gen, other_id, root_id))
        if hashes:
            out.append((other, hashes))
    return out
