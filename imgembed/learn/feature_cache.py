"""Raw backbone features for a list of files, with an on-disk cache.

Evaluation and head training look at the same photos many times; the cache keys each file's
features by (path, size, mtime) and the backbone's identity, so they are computed once. The
features of an augmented view (:class:`imgembed.config.ViewCfg`) are kept apart, keyed by the view too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from imgembed.config import EmbedCfg, ReaderCfg, ViewCfg, cache_dir, to_dict
from imgembed.model.embedder import Embedder
from imgembed.model.pipeline import embed_files

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    return cache_dir()


@dataclass
class FeatureSet:
    feats: np.ndarray  # float32 (N, D) raw backbone features; zeros where ok is False
    ok: np.ndarray  # bool (N,)
    failures: list[tuple[bytes, str]]  # (path, reason)
    computed: int  # how many were computed now (the rest came from the cache)


class FeatureCache:
    """SQLite file of raw features for one backbone identity (and one augmented view, if any)."""

    def __init__(self, embedder: Embedder, root: Path | None = None, view: ViewCfg | None = None) -> None:
        ident = {k: v for k, v in embedder.identity().items() if k not in ("head_fingerprint", "dim")}
        if view is not None:
            ident["view"] = to_dict(view)
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        folder = (root or cache_root()) / "features"
        folder.mkdir(parents=True, exist_ok=True)
        self.dim = embedder.backbone.dim
        self.con = sqlite3.connect(folder / f"{key}.sqlite", timeout=30, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("CREATE TABLE IF NOT EXISTS feats (path BLOB PRIMARY KEY, size INTEGER, "
                         "mtime_ns INTEGER, vec BLOB)")

    def get(self, paths: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        out = {}
        for i in range(0, len(paths), 500):
            chunk = list(paths[i:i + 500])
            q = f"SELECT path, size, mtime_ns, vec FROM feats WHERE path IN ({','.join('?' * len(chunk))})"
            for p, size, mtime, vec in self.con.execute(q, chunk):
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                if st.st_size == size and st.st_mtime_ns == mtime:
                    out[p] = np.frombuffer(vec, dtype=np.float32)
        return out

    def put(self, items: list[tuple[bytes, np.ndarray]]) -> None:
        rows = []
        for p, v in items:
            try:
                st = os.stat(p)
            except OSError:
                continue
            rows.append((p, st.st_size, st.st_mtime_ns, np.ascontiguousarray(v, np.float32).tobytes()))
        self.con.execute("BEGIN")
        self.con.executemany("INSERT OR REPLACE INTO feats VALUES (?, ?, ?, ?)", rows)
        self.con.execute("COMMIT")

    def close(self) -> None:
        self.con.close()


def extract_features(paths: Sequence[bytes], embedder: Embedder, reader_cfg: ReaderCfg, embed_cfg: EmbedCfg,
                     use_cache: bool = True, progress: Callable[[int, int], None] | None = None,
                     view: ViewCfg | None = None) -> FeatureSet:
    """Raw backbone features of ``paths`` (absolute, bytes), computing only what is not cached.

    ``view``: the features of that augmented view of each photo instead.
    """
    dim = embedder.backbone.dim
    feats = np.zeros((len(paths), dim), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    cache = FeatureCache(embedder, view=view) if use_cache else None
    cached = cache.get(paths) if cache else {}
    todo = []
    for i, p in enumerate(paths):
        if p in cached:
            feats[i], ok[i] = cached[p], True
        else:
            todo.append((i, p))
    failures: list[tuple[bytes, str]] = []
    done = len(paths) - len(todo)
    if progress:
        progress(done, len(paths))
    for batch in embed_files(todo, embedder, reader_cfg, embed_cfg, raw=True, view=view):
        failures += [(paths[i], why) for i, why in batch.failures]
        if batch.keys:
            feats[batch.keys], ok[batch.keys] = batch.vectors, True
            if cache:
                cache.put([(paths[i], v) for i, v in zip(batch.keys, batch.vectors)])
        done += len(batch.keys) + len(batch.failures)
        if progress:
            progress(done, len(paths))
    if cache:
        cache.close()
    return FeatureSet(feats, ok, failures, len(todo))
