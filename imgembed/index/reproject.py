"""The projection an index fits on its own photos (``IndexCfg.projection == "auto"``): when it is
due, the features it is fitted on, the vectors it gives every photo, and the head files that keep
it. :meth:`imgembed.index.store.StoreWriter.publish` applies a :class:`Plan` as a generation of its
own; the fit itself is :func:`imgembed.index.projection.auto_fit`.

Once an index projects, the ``raw`` table keeps each content's own features (float16) and every
vector, old or new, is the projection of those: photos added later are projected as they are
stored, a refit (at :data:`imgembed.index.projection.REFIT_GROWTH` times the photos of the fit) or
``--projection off`` recomputes all vectors from them, and nothing is embedded again. Queries are
embedded with the projection as head: the manifest names its file, so every reader loads it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from imgembed import head_file
from imgembed.identity import IDENTITY_KEYS
from imgembed.index import projection
from imgembed.index.format import projection_names, read_meta, select_in, visible

# What the manifest says about the vectors' space; the database keeps a copy ('projection' in
# meta, written with the generation), so a crash before the manifest is rewritten is repaired.
STATE_KEYS = ("head", "head_fingerprint", "dim", "projection")
_CHUNK = 50_000


class Plan(NamedTuple):
    state: dict  # the manifest's STATE_KEYS after it
    vectors: dict[str, bytes]  # content hash -> its vector in the new space (float32 bytes)
    files: dict[str, bytes]  # head files to write: name -> bytes
    off: bool  # back to the model's own features


def describe(manifest: dict) -> str:
    """The index's own projection in a few words (imgembed info, the app)."""
    p = manifest.get("projection")
    if p:
        return (f"{'distilled' if p['method'] == 'distil' else 'PCA'} {p['raw']['dim']} -> {p['dim']}, fitted on "
                f"{p['fitted_on']:,} of {p['contents']:,} photos")
    if manifest.get("index_cfg", {}).get("projection") == "auto":
        return f"auto (the model's features until {projection.AUTO_MIN:,} photos)"
    return "off"


def state_of(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in STATE_KEYS}


def recorded_state(con: sqlite3.Connection) -> dict | None:
    text = read_meta(con, "projection")
    return json.loads(text) if text else None


def due(con: sqlite3.Connection, gen: int, mode: str, raw_dim: int, record: dict | None) -> list[str] | None:
    """The distinct contents visible in ``gen`` when the projection must change now, else None."""
    if mode == "auto":
        if record is not None and int(record["fitted_on"]) >= projection.AUTO_FIT_MAX:
            return None  # fitted on as many photos as a fit takes: projected, never fitted again
        n = con.execute(f"SELECT count(DISTINCT hash) FROM files WHERE {visible()}", (gen, gen)).fetchone()[0]
        if not projection.auto_due(n, raw_dim, record):
            return None
    elif record is None:
        return None  # off, and nothing to undo
    return [r[0] for r in con.execute(f"SELECT DISTINCT hash FROM files WHERE {visible()} ORDER BY hash", (gen, gen))]


def _source(con: sqlite3.Connection, record: dict | None) -> str:
    """The table holding each content's own features: ``raw`` once projected; before, the stored
    vectors (or, with DBA, the plain ones)."""
    if record is not None:
        return "raw"
    return "plain" if read_meta(con, "dba") == "1" else "vectors"


def _features(con: sqlite3.Connection, table: str, hashes: list[str], dim: int) -> tuple[list[str], np.ndarray]:
    """``(hashes, float32 (n, dim))`` as float16 holds them (what the raw table keeps)."""
    dtype = np.float16 if table == "raw" else np.float32
    rows = list(select_in(con, f"SELECT hash, vec FROM {table} WHERE hash IN ({{marks}})", hashes))
    x = np.frombuffer(b"".join(r[1] for r in rows), dtype=dtype).reshape(len(rows), dim)
    return [r[0] for r in rows], x.astype(np.float16).astype(np.float32)


def plan(con: sqlite3.Connection, tx: Callable, gen: int, mode: str, live: list[str], raw_id: dict,
         record: dict | None, seed: int = 0) -> Plan:
    """Fit (or drop) the projection of the contents ``live`` and project every one of them.

    The first fit copies the features into the raw table as it goes (committed: readers never
    read it); everything else is returned for the publish to apply. ``raw_id`` is the identity of
    the model's features.
    """
    table, dim = _source(con, record), int(raw_id["dim"])
    if mode != "auto":
        fit = None
        state = {"head": None, "head_fingerprint": None, "dim": dim, "projection": None}
        files = {}
    else:
        rng = np.random.default_rng(seed)
        sample = sorted(rng.choice(live, projection.AUTO_FIT_MAX, replace=False)) \
            if len(live) > projection.AUTO_FIT_MAX else live
        fit, used = projection.auto_fit(_features(con, table, list(sample), dim)[1], seed=seed)
        names = projection_names(gen)
        record = {"method": fit.method, "fitted_on": used, "contents": len(live), "dim": projection.AUTO_DIM,
                  "pca_consistency": round(fit.pca_score, 4), "distil_consistency": round(fit.distil_score, 4),
                  "raw": {k: raw_id.get(k) for k in IDENTITY_KEYS}}
        weights, info, fp = head_file.encode(fit.mean, fit.weight, raw_id["backbone"],
                                             raw_id["backbone_fingerprint"] or "",
                                             {"made_by": "imgembed index (projection auto)", "projection": record})
        state = {"head": names[0], "head_fingerprint": fp, "dim": projection.AUTO_DIM, "projection": record}
        files = {names[0]: weights, names[1]: info}
    moves_raw = table != "raw"
    vectors: dict[str, bytes] = {}
    for i in range(0, len(live), _CHUNK):
        hashes, x = _features(con, table, live[i:i + _CHUNK], dim)
        if moves_raw and fit is not None:
            with tx():
                con.executemany("INSERT OR REPLACE INTO raw(hash, vec) VALUES (?, ?)",
                                [(h, v.astype(np.float16).tobytes()) for h, v in zip(hashes, x)])
        y = projection.apply(x, fit.mean, fit.weight) if fit is not None else x
        vectors.update((h, np.ascontiguousarray(v, np.float32).tobytes()) for h, v in zip(hashes, y))
    return Plan(state, vectors, files, fit is None)


def commit(con: sqlite3.Connection, p: Plan) -> None:
    """The plan's changes to the database, inside the publishing transaction."""
    if p.off:
        con.execute("DELETE FROM raw")
    # DBA is recomputed from the new vectors by the publish that follows.
    con.execute("DELETE FROM plain")
    con.execute("UPDATE meta SET value='' WHERE key='dba'")
    con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('projection', ?)", (json.dumps(p.state),))
    # every live content has its new vector now; what is left in the old space belongs to no one
    con.execute("DELETE FROM vectors WHERE length(vec) != ?", (4 * int(p.state["dim"]),))


def load(index_dir: Path, state: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mean, weight)`` of the projection an index applies, or None."""
    if not state.get("projection"):
        return None
    from imgembed.errors import StoreError

    path = Path(index_dir) / state["head"]
    try:
        return head_file.decode(path.read_bytes())
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read the index's projection {path} ({e}); run imgembed index FOLDER "
                         f"--index {index_dir} --projection off, then --projection auto, to fit it anew "
                         "(nothing is embedded again)") from e


def project(x: np.ndarray, proj: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """``(float16 raw features, the vectors stored)`` of unit features ``x``: their projection, or
    (``proj`` None: the projection is being turned off) the features as float16 holds them."""
    raw = np.asarray(x, np.float32).astype(np.float16)
    return raw, projection.apply(raw.astype(np.float32), *proj) if proj is not None else raw.astype(np.float32)
