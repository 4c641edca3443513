"""``imgembed build-index``: an index folder from embedding shards (:mod:`imgembed.distributed.shards`).

The shards are applied to the index like an incremental run: files the index already holds with the
same size, mtime and content are left alone, changed ones replaced, and files of the same root
that the shards no longer hold are dropped; then the store publishes (training an IVF quantizer on a
sample of the vectors when the index type needs one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from imgembed.config import IndexCfg
from imgembed.distributed.shards import iter_shards, read_manifest, shard_name
from imgembed.errors import StoreError
from imgembed.index.store import PublishStats, StoreWriter


@dataclass
class BuildSummary:
    shards: int = 0
    added: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: int = 0  # files the job could not decode (listed in the shards with their reason)
    seconds: float = 0.0
    publish: PublishStats | None = None

    def lines(self) -> list[str]:
        out = [f"{self.shards} shards: added {self.added}, unchanged {self.unchanged}, removed {self.removed}, "
               f"not embedded {self.failed}; {self.publish.total if self.publish else 0} images in the index",
               f"{self.seconds:.1f} s"]
        if self.publish is not None:
            out.append(self.publish.describe())
        return out


def build_index(shards_dir: str | Path, index_dir: str | Path, index_cfg: IndexCfg | None = None,
                progress: Callable[[str, int, int], None] | None = None, wait: bool = False) -> BuildSummary:
    """Bring the index at ``index_dir`` in line with the shards: add every embedded file, drop files
    of the same root that the shards do not hold, then publish (an IVF-PQ quantizer is trained on a
    sample of the vectors by the store).

    Raises:
        StoreError: shards missing or unreadable, the index locked, or made with another embedder.
    """
    t0 = time.perf_counter()
    m = read_manifest(shards_dir)
    d = Path(shards_dir)
    heads = [d / "head.safetensors", d / "head.json"] if m.get("head") else []
    identity = m["identity"]
    summary = BuildSummary()
    with StoreWriter(index_dir, identity, index_cfg or IndexCfg(), head_files=heads, wait=wait) as store:
        root_id = store.root_id(m["root"])  # refused when inside a folder the index holds
        store.take_in_roots_below(root_id)
        live = store.live_files(root_id)
        seen: set[bytes] | None = set() if live else None  # only needed to find files that went away
        for i, chunk in iter_shards(d):
            if chunk.vectors.shape[1:] != (store.dim,):
                raise StoreError(f"{shard_name(i)} holds {chunk.vectors.shape[1]}-d vectors, the index {store.dim}-d")
            summary.failed += len(chunk.failures)
            keep, vecs, drop = [], [], []
            for f, v in zip(chunk.files, chunk.vectors):
                if not np.isfinite(v).all():  # a broken model: counted with the files not embedded
                    summary.failed += 1
                    continue
                old = live.get(f.relpath)
                if seen is not None:
                    seen.add(f.relpath)
                if old is not None and (old.size, old.mtime_ns, old.hash) == (f.size, f.mtime_ns, f.hash):
                    summary.unchanged += 1
                    continue
                if old is not None:
                    drop.append(old.id)
                keep.append(f)
                vecs.append(v)
            store.remove(drop)
            if keep:
                store.add(root_id, keep, np.stack(vecs))
            summary.added += len(keep)
            summary.shards += 1
            if progress:
                progress("shards", i + 1, m["shards"])
        gone = [v.id for rel, v in live.items() if rel not in seen] if seen is not None else []
        store.remove(gone)
        summary.removed = len(gone)
        summary.publish = store.publish()
    summary.seconds = time.perf_counter() - t0
    return summary
