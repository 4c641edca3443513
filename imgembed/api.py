"""The Python API: ``imgembed.open_index(path)`` for programs (the CLI and the HTTP API use it too).

    import imgembed

    ix = imgembed.open_index("demo-index")
    for hit in ix.search("photo.jpg", k=5, filters={"after": "2023-06", "ext": ["jpg", "heic"]}):
        print(hit.score, hit.path, hit.taken, hit.camera)

An :class:`Index` answers queries by image (a path, bytes or a PIL image), by text (CLIP
backbones), by a photo of the index, with or without filters; it finds near-duplicates and says
what it holds. It reads one published generation at a time and follows a writer's new ones, so a
long-lived program sees photos indexed meanwhile. :func:`open_folder` keeps an index of a folder
in the user's cache, as ``imgembed similar`` does.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from imgembed.config import DEFAULT_BACKBONE, IMAGE_FORMATS, BackboneCfg, IndexJobCfg, cache_dir, default_index
from imgembed.index.filters import Filters
from imgembed.index.format import Meta, Row, StoreError
from imgembed.indexer import IndexSummary, index_folder
from imgembed.query import batch
from imgembed.query.copies import find_duplicates
from imgembed.query.search import Hit, IndexInfo, Searcher

__all__ = ["Index", "open_index", "open_folder", "folder_index_dir", "Filters", "Hit", "Photo", "Group"]


class Photo(NamedTuple):
    """A photo of the index: its file row and metadata."""

    id: int
    path: str
    row: Row
    meta: Meta | None = None

    @property
    def taken(self) -> str | None:
        return self.meta.taken if self.meta else None

    @property
    def camera(self) -> str | None:
        return self.meta.camera if self.meta else None


class Group(NamedTuple):
    """Copies of one photo (see ``imgembed duplicates``): the suggested keeper first."""

    score: float  # the lowest cosine similarity of a member's embedding to the keeper's
    photos: list[Photo]
    keeper: int  # id of the suggested one to keep
    reason: str  # why (largest resolution, then largest file, then oldest)
    kind: str  # the loosest match in the group: identical bytes, same pixels, copy or similar


class Index:
    """An open index: search, neighbours, duplicates, info. Use as a context manager, or close()."""

    def __init__(self, path: str | Path | None = None, device: str = "auto", mmap: bool = False) -> None:
        self.searcher = Searcher(path if path is not None else default_index(), device=device, mmap=mmap)

    @property
    def path(self) -> Path:
        return self.searcher.dir

    # -- queries

    def search(self, query: Any, k: int = 10, filters: Filters | dict | None = None, qe: bool = False) -> list[Hit]:
        """The ``k`` photos most similar to ``query``, best first, among those ``filters`` keep.

        ``query``: a path of an image file (str or Path), image bytes, a PIL image, a photo of the
        index (its id, or a Hit or Photo), or a text (a str that is not an existing file; needs a
        CLIP backbone). ``qe``: alpha query expansion (imgembed.query.rerank). Raises ImageSkipped for an unusable image, ValueError for bad filters or a
        text on an image-only backbone.
        """
        if isinstance(query, (Hit, Photo)):
            query = query.id
        if isinstance(query, int) and not isinstance(query, bool):
            return self.searcher.search_vectors(self._stored(query)[None], k, filters=filters, qe=qe)[0]
        if isinstance(query, (bytes, bytearray)):
            return self.searcher.search_image_bytes(bytes(query), k, filters, qe)
        if hasattr(query, "save") and hasattr(query, "size"):  # a PIL image: through the reader's guards too
            buf = io.BytesIO()
            query.save(buf, format="PNG")
            return self.searcher.search_image_bytes(buf.getvalue(), k, filters, qe)
        if isinstance(query, (str, Path)):
            if os.path.isdir(query):
                raise ValueError(f"{query} is a folder: pass its images to search_many, or one image")
            if os.path.exists(query):  # a file (a pipe or a device too: the reader says why it is no image)
                return self.searcher.search_image_file(query, k, filters, qe)
            if isinstance(query, Path) or os.path.splitext(query)[1].lower() in IMAGE_FORMATS:
                raise FileNotFoundError(f"no such image file: {query}")
            return self.text(str(query), k, filters, qe)
        raise ValueError(f"cannot search for a {type(query).__name__}; pass a path, bytes, a PIL image, an id or a text")

    def text(self, text: str, k: int = 10, filters: Filters | dict | None = None, qe: bool = False) -> list[Hit]:
        """Photos matching a description (CLIP backbones only)."""
        if not self.searcher.embedder.has_text:
            raise ValueError(f"backbone {self.searcher.snapshot.manifest['backbone']} has no text encoder; "
                             "text search needs an index built with a CLIP backbone (open_clip:...)")
        return self.searcher.search_text(text, k, filters, qe)

    def search_many(self, queries: Iterable[str], k: int = 10, filters: Filters | dict | None = None,
                    text: bool = False, exclude_self: bool = False, qe: bool = False) -> Iterator[batch.Answer]:
        """Answers to many image paths (or texts), embedded and searched a batch at a time."""
        if text and not self.searcher.embedder.has_text:
            self.text("", 1)  # raises the same error as a single text query
        return batch.answer(self.searcher, list(queries), k, filters, text, exclude_self, qe)

    def similar(self, path: str | Path, k: int = 10, filters: Filters | dict | None = None,
                qe: bool = False) -> list[Hit]:
        """The photos most like the image file at ``path``, itself left out when it is in the index.

        An indexed, unchanged file is searched by its stored vector, as :meth:`neighbours` (no model is
        loaded; with DBA on, that is its augmented vector); any other file is decoded and embedded.
        """
        row = self._unchanged_row(path)
        if row is not None:
            return self.searcher.search_id(row.id, k, filters, qe)
        return next(iter(batch.answer(self.searcher, [str(path)], k, filters, exclude_self=True, qe=qe))).hits_or_raise()

    def neighbours(self, photo: Any, k: int = 10, filters: Filters | dict | None = None,
                   qe: bool = False) -> list[Hit]:
        """The ``k`` photos nearest to a photo of the index (itself left out): an id, path, Hit or Photo."""
        return self.searcher.search_id(self.photo(photo).id, k, filters, qe)

    def duplicates(self, preset: str = "copies", threshold: float | None = None) -> list[Group]:
        """Groups of copies by ``preset`` (exact, copies, similar), or with ``threshold`` the photos at
        least that similar (cosine) whatever the edit; the same groups as ``imgembed duplicates``."""
        snap = self.searcher.snapshot
        report = find_duplicates(snap, preset=preset, threshold=threshold)
        with snap.read():
            metas = snap.meta([m.row.id for g in report.groups for m in g.members])
        return [Group(min(m.score for m in g.members), [_photo(m.row, metas.get(m.row.id)) for m in g.members],
                      g.keeper.row.id, g.reason, g.kind) for g in report.groups]

    # -- what the index holds

    def photo(self, photo: Any) -> Photo:
        """A photo of the index by id, path, Hit or Photo. Raises StoreError when it is not in the index."""
        if isinstance(photo, (Hit, Photo)):
            photo = photo.id
        snap = self.searcher.snapshot
        with snap.read():
            if isinstance(photo, int) and not isinstance(photo, bool):
                row = snap.rows([photo]).get(photo)
            else:
                row = snap.row_by_path(os.fsencode(os.path.realpath(os.fspath(photo))))
            if row is None:
                raise StoreError(f"{photo!r} is not a photo of the index {self.path}")
            return _photo(row, snap.meta([row.id]).get(row.id))

    def photos(self) -> Iterator[Photo]:
        """Every photo of the index, in id order (one published generation)."""
        snap = self.searcher.snapshot
        with snap.read():
            rows = list(snap.iter_rows())
            metas = snap.meta(r.id for r in rows)
        return iter([_photo(r, metas.get(r.id)) for r in rows])

    def info(self) -> IndexInfo:
        return self.searcher.info()

    def filter_choices(self) -> dict:
        """Folders, cameras, suffixes and the date range the filters can choose from."""
        with self.searcher.snapshot.read():
            return self.searcher.snapshot.filter_choices()

    def export(self, out: str | Path, progress: Callable[[int, int], None] | None = None):
        """Write every photo's metadata (and vector) to ``out``: .parquet, .csv or .npy (see imgembed.query.export)."""
        from imgembed.query.export import export

        return export(self.searcher.snapshot, out, progress)

    def close(self) -> None:
        self.searcher.snapshot.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers

    def _stored(self, file_id: int):
        vec = self.searcher.snapshot.vectors([file_id]).get(file_id)
        if vec is None:
            raise StoreError(f"no photo with id {file_id} in {self.path}")
        return vec

    def _unchanged_row(self, path: str | Path) -> Row | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        with self.searcher.snapshot.read():
            row = self.searcher.snapshot.row_by_path(os.fsencode(os.path.realpath(path)))
        return row if row is not None and (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns) else None


def _photo(row: Row, meta: Meta | None) -> Photo:
    return Photo(row.id, row.path.decode("utf-8", "replace"), row, meta)


def open_index(path: str | Path | None = None, device: str = "auto", mmap: bool = False) -> Index:
    """Open the index folder at ``path`` (default ``$IMGEMBED_INDEX``, else ``./imgembed-index``).

    The model is loaded on the first query that needs it (not for info, neighbours or duplicates).
    Raises StoreError when there is no index there or it cannot be read.
    """
    return Index(path, device=device, mmap=mmap)


def folder_index_dir(folder: str | Path, backbone: str = DEFAULT_BACKBONE) -> Path:
    """Where :func:`open_folder` keeps the index of ``folder`` for ``backbone``, in the user's cache."""
    real = os.path.realpath(folder)
    key = hashlib.blake2b(f"{real}\0{backbone}".encode(), digest_size=8).hexdigest()
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(real) or "root")[:40]
    return cache_dir() / "folders" / f"{name}-{key}"


def open_folder(folder: str | Path = ".", backbone: str = DEFAULT_BACKBONE, device: str = "auto",
                progress: Callable[[str, int, int], None] | None = None) -> tuple[Index, IndexSummary]:
    """Bring the cached index of ``folder`` up to date (only what changed) and open it.

    The index lives in the user's cache (:func:`folder_index_dir`); the second call on an unchanged
    folder costs a scan. Returns the open index and the update's summary.
    """
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"not a folder: {folder}")
    target = folder_index_dir(folder, backbone)
    cfg = IndexJobCfg(backbone=BackboneCfg(name=backbone, device=device))
    summary = index_folder(folder, target, cfg, progress=progress, wait=True)
    return Index(target, device=device), summary
