"""The indexing job: scan a folder, work out what changed, embed only that, publish.

Unchanged files (same size and mtime) cost one ``stat``. New or changed files are hashed first
when the index already holds vectors, so renamed and copied photos reuse them; only content the
index has never seen is decoded and embedded. The model is built only when something needs
embedding, so re-indexing an unchanged folder costs the scan and nothing more.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from imgembed.config import IndexJobCfg, resolve_workers
from imgembed.index.format import MANIFEST, NewFile, read_manifest
from imgembed.index.store import PublishStats, StoreWriter
from imgembed.ingest import fs
from imgembed.ingest.copy_data import VERSION as COPY_DATA_VERSION
from imgembed.ingest.copy_data import copy_data_of_file
from imgembed.ingest.metadata import PhotoMeta, with_fallback
from imgembed.ingest.reader import ImageSkipped, hash_file, read_metadata
from imgembed.model.source import EmbedderSource
from imgembed.text import printable

if TYPE_CHECKING:  # the model code (and torch) is imported only when something is embedded
    from imgembed.model.embedder import Embedder

logger = logging.getLogger(__name__)

NON_FINITE = "the model gave a vector that is not finite (NaN or infinity); check the backbone and the head"

# progress(stage, done, total): stage is "hash", "embed" or "copies"
Progress = Callable[[str, int, int], None]


@dataclass
class IndexSummary:
    root: str
    scanned: int = 0
    indexed: int = 0  # decoded and embedded in this run
    reused: int = 0  # new paths whose content the index already had (renames, copies)
    unchanged: int = 0
    removed: int = 0  # deleted or changed files whose old entry was dropped
    metadata: int = 0  # photos indexed before metadata was recorded whose metadata was read now
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unread: str | None = None  # what the folder holds besides images (fs.ScanResult.unread_line)
    taken_in: list[tuple[str, int]] = field(default_factory=list)  # (folder inside the root indexed before, entries)
    moved: list[tuple[str, int]] = field(default_factory=list)  # (vanished folder, entries whose photos are here)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    total: int = 0  # entries in the index after the run
    compiled: bool = False  # the model ran through torch.compile (see BackboneCfg.compile)
    copy_data: int = 0  # contents given copy-detection data in this run (imgembed.ingest.copy_data)
    publish: PublishStats | None = None

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [
            f"indexed {self.indexed}, reused {self.reused} (renamed/copied), unchanged {self.unchanged}, "
            f"removed {self.removed}, skipped {len(self.skipped)}; {self.total} images in the index",
            *([self.unread] if self.unread else []),
            *(f"took in the {n} entries of {path}, indexed before as a folder of its own (none embedded again)"
              for path, n in self.taken_in),
            *(f"dropped {n} entries of {path}: that folder is gone and the same photos are in this one"
              for path, n in self.moved),
            f"{self.seconds:.1f} s in all, {self.images_per_second:.1f} images/s embedding"
            + (" (model compiled with torch.compile, once: --compile off skips it)" if self.compiled else ""),
        ]
        if self.copy_data:
            out.append(f"copy-detection data for {self.copy_data} photos (imgembed duplicates)")
        if self.metadata:
            out.append(f"metadata (capture time, camera, GPS) read for {self.metadata} photos indexed before; "
                       "nothing re-embedded")
        if self.publish is not None:
            out.append(self.publish.describe())
        return out


def index_folder(root: str | Path, index_dir: str | Path, cfg: IndexJobCfg,
                 embedder: Embedder | None = None, progress: Progress | None = None,
                 wait: bool = False) -> IndexSummary:
    """Bring the index at ``index_dir`` up to date with the images under ``root``.

    Raises:
        StoreError: the index is locked by another writer, or was built with another embedder.
        FileNotFoundError / NotADirectoryError: ``root`` is not a folder.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    t0 = time.perf_counter()
    summary = IndexSummary(str(root))
    recorded = read_manifest(index_dir) if (Path(index_dir) / MANIFEST).is_file() else None
    source = EmbedderSource(cfg.backbone, cfg.head, index_dir, recorded, embedder)
    if cfg.head:
        from imgembed.model.head import head_paths

        heads = head_paths(cfg.head)
    else:
        heads = ()
    index_cfg = replace(cfg.index, projection=projection_mode(cfg, recorded, source))
    with StoreWriter(index_dir, source.identity, index_cfg, head_files=heads, wait=wait) as store:
        if not store.stored_dim_ok():  # a manifest edited by hand: the real model's identity speaks
            source.get()
        root_id = store.root_id(root)  # refused when inside a folder the index holds
        summary.taken_in = [(fs.display(p), n) for p, n in store.take_in_roots_below(root_id)]
        scan = fs.scan(root, cfg.reader)
        summary.scanned = len(scan.files)
        summary.skipped += [(fs.display(p), why) for p, why in scan.skipped]
        summary.unread = scan.unread_line()
        todo = _drop_changed(store, root_id, scan.files, summary)
        _fill_metadata(store, root, root_id, cfg, summary, progress)
        if todo and store.has_vectors():
            todo = _reuse_by_hash(store, root, root_id, todo, cfg, summary, progress)
        if todo:
            _embed(store, root, root_id, todo, source.get(), cfg, summary, progress)
        _add_copy_data(store, root, root_id, cfg, summary, progress)
        summary.moved = [(fs.display(p), n) for p, n in store.drop_moved(root_id)]
        summary.publish = store.publish()
        summary.total = summary.publish.total
    summary.seconds = time.perf_counter() - t0
    return summary


def _drop_changed(store: StoreWriter, root_id: int, files: list[fs.FileEntry],
                  summary: IndexSummary) -> list[fs.FileEntry]:
    """Remove the entries of deleted and changed files; return the files that need a vector."""
    live = store.live_files(root_id)
    on_disk = {f.relpath for f in files}
    todo = []
    for f in files:
        old = live.get(f.relpath)
        if old is not None and old.size == f.size and old.mtime_ns == f.mtime_ns:
            summary.unchanged += 1
        else:
            todo.append(f)
    changed = {f.relpath for f in todo}
    store.remove(v.id for rel, v in live.items() if rel not in on_disk or rel in changed)
    summary.removed = sum(1 for rel in live if rel not in on_disk)
    return todo


def _reuse_by_hash(store: StoreWriter, root: Path, root_id: int, todo: list[fs.FileEntry],
                   cfg: IndexJobCfg, summary: IndexSummary, progress: Progress | None) -> list[fs.FileEntry]:
    """Record files whose content the index already has; return the ones still to embed."""

    def one(f: fs.FileEntry):
        path = fs.abspath(root, f.relpath)
        try:
            return f, hash_file(path, cfg.reader), None, read_metadata(path, cfg.reader)
        except ImageSkipped as e:
            return f, None, str(e), None

    hashed = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for n, (f, digest, err, meta) in enumerate(pool.map(one, todo), 1):
            if err:
                summary.skipped.append((fs.display(f.relpath), err))
            else:
                hashed.append((f, digest, meta))
            if progress:
                progress("hash", n, len(todo))
    known = store.known_hashes(d for _, d, _ in hashed)
    dims = store.dims_of(known)
    reuse = [_new_file(f, d, dims[d], m) for f, d, m in hashed if d in known]
    store.add(root_id, reuse)
    summary.reused = len(reuse)
    return [f for f, d, _ in hashed if d not in known]


def _new_file(f: fs.FileEntry, digest: str, size: tuple[int, int], meta: PhotoMeta) -> NewFile:
    return NewFile(f.relpath, f.size, f.mtime_ns, digest, *size, *with_fallback(meta, f.mtime_ns))


def _fill_metadata(store: StoreWriter, root: Path, root_id: int, cfg: IndexJobCfg, summary: IndexSummary,
                   progress: Progress | None) -> None:
    """Read the metadata of photos indexed before it was recorded (an index made by an older
    imgembed, or by build-index): file headers only, no decoding, no embedding."""
    missing = store.missing_meta(root_id)
    if not missing:
        return

    def one(item: tuple[int, bytes, int]) -> tuple[int, NewFile]:
        file_id, rel, mtime_ns = item
        meta = read_metadata(fs.abspath(root, rel), cfg.reader)
        return file_id, NewFile(rel, 0, mtime_ns, "", 0, 0, *with_fallback(meta, mtime_ns))

    done = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for n, item in enumerate(pool.map(one, missing), 1):
            done.append(item)
            if len(done) >= cfg.commit_every:
                store.set_meta(done)
                summary.metadata += len(done)
                done = []
            if progress:
                progress("metadata", n, len(missing))
    store.set_meta(done)
    summary.metadata += len(done)


def _embed(store: StoreWriter, root: Path, root_id: int, todo: list[fs.FileEntry], embedder: Embedder,
           cfg: IndexJobCfg, summary: IndexSummary, progress: Progress | None) -> None:
    from imgembed.model.pipeline import embed_files

    by_rel = {f.relpath: f for f in todo}
    items = [(f.relpath, fs.abspath(root, f.relpath)) for f in todo]
    pending: list[NewFile] = []
    vecs = []
    done = 0
    t0 = time.perf_counter()
    for batch in embed_files(items, embedder, cfg.reader, cfg.embed):
        for rel, reason in batch.failures:
            summary.skipped.append((fs.display(rel), reason))
            logger.info("skipped %s: %s", printable(fs.display(rel)), printable(reason))  # the summary lists every skip once
        finite = np.isfinite(batch.vectors).all(axis=1) if batch.keys else []
        for rel, ok in zip(batch.keys, finite):
            if not ok:  # stored, it would make every search come back empty
                summary.skipped.append((fs.display(rel), NON_FINITE))
        if batch.keys and finite.any():
            vecs.append(batch.vectors[finite])
            for rel, size, digest, meta, ok in zip(batch.keys, batch.sizes, batch.digests, batch.metas, finite):
                if ok:
                    pending.append(_new_file(by_rel[rel], digest, size, meta))
        done += len(batch.keys) + len(batch.failures)
        if len(pending) >= cfg.commit_every:
            _flush(store, root_id, pending, vecs, summary)
        if progress:
            progress("embed", done, len(todo))
    _flush(store, root_id, pending, vecs, summary)
    summary.embed_seconds = time.perf_counter() - t0
    summary.compiled = embedder.compiled  # false again if compiling failed and it fell back


def projection_mode(cfg: IndexJobCfg, recorded: dict | None, source: EmbedderSource) -> str:
    """The index's own projection (imgembed.index.reproject): what ``cfg`` asks for, else what the
    index has, else for a new index "auto", unless a head projects the features already or the
    backbone embeds text too (a projection fitted on photos alone would cost text search)."""
    asked = cfg.index.projection
    if asked == "auto" and cfg.head:
        raise ValueError("--projection auto fits the index's own projection; it does not go with --head")
    if recorded is not None and not asked:
        return ""  # what the index has
    if asked == "off" or cfg.head:
        return "off"
    if source.get().has_text:  # (a new index has built its model already)
        if asked:
            raise ValueError(f"{cfg.backbone.name} embeds text too: its features stay as they are so text "
                             "search keeps working (--projection auto is for image-only backbones)")
        return "off"
    return "auto"


def _flush(store: StoreWriter, root_id: int, pending: list[NewFile], vecs: list, summary: IndexSummary) -> None:
    if not pending:
        return
    store.add(root_id, list(pending), np.concatenate(vecs))
    summary.indexed += len(pending)
    pending.clear()
    vecs.clear()


def _add_copy_data(store: StoreWriter, root: Path, root_id: int, cfg: IndexJobCfg, summary: IndexSummary,
                   progress: Progress | None) -> None:
    """Perceptual hashes and keypoints of every content of this root that has none yet: the photos just
    embedded or reused, and those indexed before the index stored them. Needs no model."""
    store.keep_copy_data_version(COPY_DATA_VERSION)
    todo = store.lacking_copy_data(root_id)
    if not todo:
        return

    def one(item: tuple[str, bytes]):
        digest, rel = item
        try:
            read, d = copy_data_of_file(fs.abspath(root, rel), cfg.reader)
            if read != digest:
                return digest, rel, None, "the file changed since it was indexed"
            return digest, rel, (digest, d.hashes, d.keypoints), None
        except ImageSkipped as e:
            return digest, rel, None, str(e)
        except Exception as e:  # a decoder or OpenCV bug must not stop the run; the next run retries
            return digest, rel, None, f"{type(e).__name__}: {e}"

    pending = []
    workers = max(1, resolve_workers(cfg.embed.workers) or (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n, (digest, rel, row, err) in enumerate(pool.map(one, todo), 1):
            if row is None:
                logger.warning("no copy-detection data for %s: %s (the next run tries again)", fs.display(rel), err)
            else:
                pending.append(row)
            if len(pending) >= cfg.commit_every:
                store.add_copy_data(pending)
                summary.copy_data += len(pending)
                pending.clear()
            if progress:
                progress("copies", n, len(todo))
    if pending:
        store.add_copy_data(pending)
        summary.copy_data += len(pending)
