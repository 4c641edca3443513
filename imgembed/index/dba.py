"""Database-side augmentation of an index, kept correct as photos come and go (the math:
:mod:`imgembed.index.augment`; the writer that applies it: :class:`imgembed.index.store.StoreWriter`).

With ``IndexCfg.dba == "on"`` the ``vectors`` table and the FAISS file hold the augmented vectors
(what search compares with), and the ``plain`` table keeps, per content hash, the vector the model
gave and ``kth``, the cosine of the last of its DBA neighbours. DBA runs over distinct contents:
copies of one photo share a vector and do not count as each other's neighbours twice.

What is recomputed when a publish adds or removes contents:

- the added contents, from their neighbours in the new collection;
- every kept content with cosine >= its ``kth`` to an added or removed one (only those can gain or
  lose a neighbour: :func:`imgembed.index.augment.affected`), found by one exact pass over the
  plain vectors;
- everything, when the index has no augmented vectors yet (a new index, or DBA just turned on) or
  when more than :data:`FULL_SHARE` of the collection changed.

Nothing else changes, so an index updated in steps holds the vectors a clean build would
(tests/test_dba_index.py). Neighbours come from exact search up to
:data:`imgembed.index.faiss_index.AUTO_FLAT_MAX` contents and from an IVF index of the plain
vectors beyond (scripts/bench_search.py --dba measures the cost).
"""

from __future__ import annotations

import sqlite3

import numpy as np

from imgembed.index import faiss_index
from imgembed.index.augment import NO_KTH, Search, affected, augment_rows, exact_search
from imgembed.index.format import read_meta, select_in, visible

# Beyond this share of changed contents, recompute everything (one pass costs about as much).
FULL_SHARE = 0.25


def plain_rows(con: sqlite3.Connection, gen: int, dim: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(hashes, plain vectors (n, dim), kth (n,))`` of the contents visible in ``gen``."""
    rows = con.execute(f"SELECT p.hash, p.vec, p.kth FROM plain p WHERE p.hash IN "
                       f"(SELECT hash FROM files WHERE {visible()}) ORDER BY p.hash", (gen, gen)).fetchall()
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
    return [r[0] for r in rows], vecs, np.array([r[2] for r in rows], dtype=np.float32)


def _search(base: np.ndarray) -> Search:
    if len(base) <= faiss_index.AUTO_FLAT_MAX:
        return exact_search(base)
    from imgembed.config import IndexCfg

    ids = np.arange(len(base), dtype=np.int64)
    rng = np.random.default_rng(0)
    train = base[rng.choice(len(base), min(len(base), 262_144), replace=False)]
    index = faiss_index.build("ivf", base.shape[1], IndexCfg(), iter([(ids, base)]), train, len(base))
    return lambda q, k: index.search(np.ascontiguousarray(q, np.float32), k)


def updates(con: sqlite3.Connection, published: int, gen: int, dim: int) -> dict[str, tuple[np.ndarray, float]]:
    """``hash -> (augmented vector, kth)`` of every content whose DBA vector must change in ``gen``."""
    hashes, base, kth = plain_rows(con, gen, dim)
    if not hashes:
        return {}
    before = {r[0] for r in con.execute(f"SELECT DISTINCT hash FROM files WHERE {visible()}", (published, published))}
    live = set(hashes)
    new_rows = np.array([i for i, h in enumerate(hashes) if h not in before], dtype=np.int64)
    gone = [h for h in before if h not in live]
    full = read_meta(con, "dba") != "1" or len(new_rows) + len(gone) > FULL_SHARE * len(hashes)
    if full:
        rows = np.arange(len(hashes))
    elif not len(new_rows) and not gone:
        return {}
    else:
        gone_vecs = [np.frombuffer(r[0], dtype=np.float32) for r in
                     select_in(con, "SELECT vec FROM plain WHERE hash IN ({marks})", gone)]
        changed = np.concatenate([base[new_rows], np.array(gone_vecs, np.float32).reshape(-1, dim)])
        old = np.setdiff1d(np.arange(len(hashes)), new_rows)
        hit = affected(base[old], np.where(kth[old] == NO_KTH, -np.inf, kth[old]).astype(np.float32), changed)
        rows = np.union1d(old[hit], new_rows)
    vecs, kths = augment_rows(base, rows, _search(base))
    return {hashes[r]: (v, float(t)) for r, v, t in zip(rows.tolist(), vecs, kths)}


def prepare(con: sqlite3.Connection, tx, on: bool, published: int, gen: int,
            dim: int) -> tuple[dict[str, tuple[np.ndarray, float]], bool]:
    """The vector changes of the generation ``gen`` being published, and whether DBA was just turned
    off (then every vector goes back to its plain one and the FAISS index is rebuilt). ``tx()`` is
    the writer's transaction."""
    if on:
        if read_meta(con, "dba") != "1":  # turned on: the stored vectors are the plain ones
            with tx():
                con.execute("INSERT OR IGNORE INTO plain(hash, vec, kth) SELECT hash, vec, ? FROM vectors", (NO_KTH,))
        return updates(con, published, gen, dim), False
    if read_meta(con, "dba") == "1":
        rows = con.execute("SELECT hash, vec FROM plain").fetchall()
        return {h: (np.frombuffer(v, dtype=np.float32), NO_KTH) for h, v in rows}, True
    return {}, False
