"""The indexing job: scan a folder, work out what changed, embed only that, publish.

Unchanged files (same size and mtime) cost one ``stat``. New or changed files are hashed first
when the index already holds vectors, so renamed and copied photos reuse them; only content the
index has never seen is decoded and embedded. The model is built only when something needs
embedding, so re-indexing an unchanged folder costs the scan and nothing more.

Every image found falls in exactly one class of the summary (:class:`IndexSummary`): new, changed
(same path, other content), renamed or moved (a path the index did not have, content of an entry
whose file is gone), copied (content the index still has at another path), unchanged (same path
and content: a ``touch`` only updates the recorded mtime) or skipped; deleted counts the entries
whose file is gone and whose content went nowhere.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from imgembed.config import IMAGE_FORMATS, IndexJobCfg, resolve_workers
from imgembed.index.format import MANIFEST, LiveFile, NewFile, read_manifest
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


class NothingToIndex(ValueError):
    """The folder holds no image at all: nothing was changed (its entries, if any, are kept)."""


@dataclass
class IndexSummary:
    root: str
    scanned: int = 0  # image files found (the scan's skips are in ``skipped``)
    new: int = 0  # paths the index did not have, with content it did not have
    changed: int = 0  # paths the index had, with other content now
    renamed: int = 0  # paths the index did not have, with the content of an entry whose file is gone
    copied: int = 0  # paths the index did not have, with content it still has at another path
    unchanged: int = 0  # same path, same content (a touched file included)
    deleted: int = 0  # entries whose file is gone and whose content no new path took
    metadata: int = 0  # photos indexed before metadata was recorded whose metadata was read now
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    indexed: int = 0  # decoded and embedded in this run (new content)
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

    @property
    def found(self) -> int:
        """Image files in the folder: the classes of the summary add up to this."""
        return self.new + self.changed + self.renamed + self.copied + self.unchanged + len(self.skipped)

    @property
    def ok(self) -> bool:
        """False when the folder's images were found but none of them could be read."""
        return not self.found or len(self.skipped) < self.found

    def lines(self) -> list[str]:
        classes = [(self.new, "new"), (self.changed, "changed"), (self.renamed, "renamed or moved"),
                   (self.copied, "copied"), (self.unchanged, "unchanged"), (len(self.skipped), "skipped")]
        parts = ", ".join(f"{n} {what}" for n, what in classes if n) or "none"
        gone = f"; {self.deleted} deleted" if self.deleted else ""
        out = [
            f"found {self.found} image{'s' if self.found != 1 else ''}: {parts}{gone}; "
            f"{self.total} images in the index",
            *([] if self.ok else [f"none of the {self.found} images could be read (reasons above); imgembed reads "
                                  f"{', '.join(IMAGE_FORMATS)}"]),
            *([self.unread] if self.unread else []),
            *(f"took in the {n} entries of {path}, indexed before as a folder of its own (none embedded again)"
              for path, n in self.taken_in),
            *(f"dropped {n} entries of {path}: that folder is gone and the same photos are in this one"
              for path, n in self.moved),
            (f"embedded {self.indexed} in {self.embed_seconds:.1f} s ({self.images_per_second:.1f} images/s"
             + ("; model compiled with torch.compile, once: --compile off skips it" if self.compiled else "")
             + f"), {self.seconds:.1f} s in all") if self.indexed else f"nothing to embed, {self.seconds:.1f} s in all",
        ]
        if self.copy_data:
            out.append(f"copy-detection data for {self.copy_data} photos (imgembed duplicates)")
        if self.metadata:
            out.append(f"metadata (capture time, camera, GPS) read for {self.metadata} photos indexed before; "
                       "nothing re-embedded")
        if self.publish is not None:
            out.append(self.publish.describe())
        return out


class _Plan:
    """What one run found out about the files that need more than a ``stat``."""

    def __init__(self, live: dict[bytes, LiveFile], on_disk: set[bytes]) -> None:
        self.live = live
        self.gone = {rel: v for rel, v in live.items() if rel not in on_disk}
        self.gone_hashes = Counter(v.hash for v in self.gone.values())  # content a new path may take over
        self.changed: set[bytes] = set()  # paths the index had whose content is new now
        self.copied_hashes: Counter = Counter()  # content of the files counted as copied

    def claim(self, digest: str) -> bool:
        """A new path holds ``digest``: True when it takes over a gone entry's content (a rename)."""
        if self.gone_hashes[digest] > 0:
            self.gone_hashes[digest] -= 1
            return True
        return False


def index_folder(root: str | Path, index_dir: str | Path, cfg: IndexJobCfg,
                 embedder: Embedder | None = None, progress: Progress | None = None,
                 wait: bool = False) -> IndexSummary:
    """Bring the index at ``index_dir`` up to date with the images under ``root``.

    Raises:
        StoreError: the index is locked by another writer, or was built with another embedder.
        FileNotFoundError / NotADirectoryError: ``root`` is not a folder.
    """
    root = Path(root).resolve()
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file, not a folder; pass the folder that holds your photos")
    exists = (Path(index_dir) / MANIFEST).is_file()
    recorded = read_manifest(index_dir) if exists else None
    if recorded is None or recorded.get("backbone") != cfg.backbone.name:  # a typo is reported before the scan
        from imgembed.model.backbones import check_name  # (imports torch: not for an index's own backbone)

        check_name(cfg.backbone.name)
    t0 = time.perf_counter()
    summary = IndexSummary(str(root))
    scan = fs.scan(root, cfg.reader)  # before the index is opened: a folder with no images changes nothing
    if not scan.files and not scan.skipped:
        unread = scan.unread_line()
        raise NothingToIndex(
            f"no images found in {root}; imgembed reads {', '.join(cfg.reader.extensions)}"
            + (f" ({unread})" if unread else "")
            + ("; the index is unchanged (it keeps the entries of a folder that is empty or not mounted: "
               "imgembed verify --repair --drop-missing drops the entries of files that are gone)" if exists else ""))
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
        summary.scanned = len(scan.files)
        summary.skipped += [(fs.display(p), why) for p, why in scan.skipped]
        summary.unread = scan.unread_line()
        plan = _Plan(store.live_files(root_id), {f.relpath for f in scan.files})
        todo = _stat_unchanged(scan.files, plan, summary)
        if todo and store.has_vectors():
            todo = _reuse_by_hash(store, root, root_id, todo, plan, cfg, summary, progress)
        else:
            plan.changed = {f.relpath for f in todo if f.relpath in plan.live}
            store.remove(plan.live[rel].id for rel in plan.changed)
        store.remove(v.id for v in plan.gone.values())
        _fill_metadata(store, root, root_id, cfg, summary, progress)
        if todo:
            _embed(store, root, root_id, todo, source.get(), cfg, plan, summary, progress)
        _add_copy_data(store, root, root_id, cfg, summary, progress)
        moved = store.drop_moved(root_id)
        summary.moved = [(fs.display(p), len(hashes)) for p, hashes in moved]
        for _, hashes in moved:  # copies of a vanished folder's photos were moves
            for h in hashes:
                if plan.copied_hashes[h] > 0:
                    plan.copied_hashes[h] -= 1
                    summary.copied -= 1
                    summary.renamed += 1
        summary.deleted = sum(plan.gone_hashes.values())
        summary.publish = store.publish()
        summary.total = summary.publish.total
    if source.built:  # later queries on this machine need no torch (on a CPU the embedder exported it already)
        from imgembed.model.onnx_export import exported_model

        exported_model(source.get().backbone)
    summary.seconds = time.perf_counter() - t0
    return summary


def _stat_unchanged(files: list[fs.FileEntry], plan: _Plan, summary: IndexSummary) -> list[fs.FileEntry]:
    """Count the files whose size and mtime are the recorded ones; return the others."""
    todo = []
    for f in files:
        old = plan.live.get(f.relpath)
        if old is not None and old.size == f.size and old.mtime_ns == f.mtime_ns:
            summary.unchanged += 1
        else:
            todo.append(f)
    return todo


def _reuse_by_hash(store: StoreWriter, root: Path, root_id: int, todo: list[fs.FileEntry], plan: _Plan,
                   cfg: IndexJobCfg, summary: IndexSummary, progress: Progress | None) -> list[fs.FileEntry]:
    """Classify the files by their content: touched (unchanged, their new mtime recorded), changed,
    renamed or copied content the index already has (recorded with its vector); return the files
    whose content is new, to embed."""

    def one(f: fs.FileEntry):
        path = fs.abspath(root, f.relpath)
        try:
            return f, hash_file(path, cfg.reader), None, read_metadata(path, cfg.reader)
        except ImageSkipped as e:
            return f, None, str(e), None

    hashed = []
    touched = []  # (id, size, mtime_ns)
    stale = []  # entries of paths whose file is no longer their content, or cannot be read
    with ThreadPoolExecutor(max_workers=4) as pool:
        for n, (f, digest, err, meta) in enumerate(pool.map(one, todo), 1):
            old = plan.live.get(f.relpath)
            if err:
                summary.skipped.append((fs.display(f.relpath), err))
                if old is not None:
                    stale.append(old.id)
            elif old is not None and old.hash == digest:  # touched: same content
                touched.append((old.id, f.size, f.mtime_ns))
                summary.unchanged += 1
            else:
                if old is not None:
                    stale.append(old.id)
                    plan.changed.add(f.relpath)
                hashed.append((f, digest, meta))
            if progress:
                progress("hash", n, len(todo))
    store.touch(touched)
    store.remove(stale)
    known = store.known_hashes(d for _, d, _ in hashed)
    dims = store.dims_of(known)
    reuse = []
    for f, d, m in hashed:
        if d not in known:
            continue
        reuse.append(_new_file(f, d, dims[d], m))
        if f.relpath in plan.changed:
            summary.changed += 1
        elif plan.claim(d):
            summary.renamed += 1
        else:
            summary.copied += 1
            plan.copied_hashes[d] += 1
    store.add(root_id, reuse)
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
           cfg: IndexJobCfg, plan: _Plan, summary: IndexSummary, progress: Progress | None) -> None:
    from imgembed.model.pipeline import embed_files

    by_rel = {f.relpath: f for f in todo}
    items = [(f.relpath, fs.abspath(root, f.relpath)) for f in todo]
    pending: list[NewFile] = []
    vecs = []
    seen: set[str] = set()  # content embedded in this run: a second file with it is a copy
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
                    _count_embedded(rel, digest, plan, summary, seen)
        done += len(batch.keys) + len(batch.failures)
        if len(pending) >= cfg.commit_every:
            _flush(store, root_id, pending, vecs, summary)
        if progress:
            progress("embed", done, len(todo))
    _flush(store, root_id, pending, vecs, summary)
    summary.embed_seconds = time.perf_counter() - t0
    summary.compiled = embedder.compiled  # false again if compiling failed and it fell back


def _count_embedded(rel: bytes, digest: str, plan: _Plan, summary: IndexSummary, seen: set[str]) -> None:
    if rel in plan.changed:
        summary.changed += 1
    elif digest in seen:
        summary.copied += 1
        plan.copied_hashes[digest] += 1
    else:
        summary.new += 1
    seen.add(digest)


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
