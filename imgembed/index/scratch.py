"""The files a writer creates in an index folder: each name is recorded in the ``scratch`` table
before the file is created, and forgotten once the file is published or deleted. The next writer
deletes the names still listed (what an interrupted run left), and never any other file: an index
folder may hold the user's files too. The writer (:class:`imgembed.index.store.StoreWriter`) calls
these with its connection and transactions.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Callable, ContextManager

Tx = Callable[[], ContextManager]


def record(con: sqlite3.Connection, tx: Tx, *names: str) -> None:
    """List files before creating them (committed at once)."""
    with tx():
        con.executemany("INSERT OR IGNORE INTO scratch(name) VALUES (?)", [(n,) for n in names])


def forget(con: sqlite3.Connection, tx: Tx, *names: str) -> None:
    with tx():
        con.executemany("DELETE FROM scratch WHERE name=?", [(n,) for n in names])


def adopt_leftovers(con: sqlite3.Connection, tx: Tx, index_dir: Path, keep: str) -> None:
    """An index from before ``scratch``: its writers left what they deleted at the next start
    (FAISS files of other generations than ``keep``, temporary files); record those once."""
    record(con, tx, *(p.name for p in index_dir.iterdir()
                      if p.name != keep and p.is_file() and not p.is_symlink()
                      and (p.name.startswith("vectors.") and p.name.endswith(".faiss")
                           or p.name.startswith(".") and p.name.endswith(".tmp"))))


def cleanup(con: sqlite3.Connection, index_dir: Path, keep: str) -> None:
    """Delete the files still listed (never ``keep``, the published FAISS file) and forget them."""
    for (name,) in con.execute("SELECT name FROM scratch").fetchall():
        if name != keep and "/" not in name:
            try:
                os.unlink(index_dir / name)
            except FileNotFoundError:
                pass
    con.execute("DELETE FROM scratch WHERE name != ?", (keep,))
