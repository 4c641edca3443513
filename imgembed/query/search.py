"""Answering queries against an index: by image, by stored photo, by vector, or by text (CLIP)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from imgembed.config import ReaderCfg, query_reader_cfg
from imgembed.identity import check_identity
from imgembed.index import faiss_index, filtered_search, reproject
from imgembed.index.filters import Filters
from imgembed.index.format import Meta, Row, StoreError
from imgembed.index.snapshot import Snapshot
from imgembed.ingest.reader import ImageSkipped, content_hash, decode_query, read_bytes
from imgembed.model.source import embedder_for

if TYPE_CHECKING:  # the model (and torch, unless it runs on ONNX Runtime) is loaded by the first query needing it
    from imgembed.model.embedder import Embedder
    from imgembed.model.onnx_embedder import OnnxEmbedder


class Query(NamedTuple):
    """What to search for: the bytes of an image (``image``), a photo of the index (``id``), or a text."""

    kind: str  # "image", "id" or "text"
    image: bytes = b""
    id: int = -1
    text: str = ""
    name: str = ""  # an image's file name, as shown


class Hit(NamedTuple):
    id: int
    path: str  # absolute path (undecodable bytes shown as U+FFFD)
    score: float  # cosine similarity
    row: Row
    meta: Meta | None = None  # capture time, camera, ...; None until the index has read it

    @property
    def taken(self) -> str | None:
        """Capture time ``YYYY-MM-DDTHH:MM:SS`` (from EXIF, else the file's modification time)."""
        return self.meta.taken if self.meta else None

    @property
    def camera(self) -> str | None:
        return self.meta.camera if self.meta else None

    def as_dict(self) -> dict:
        """The hit as JSON-ready values (the CLI's --json, the HTTP API, exports)."""
        m = self.meta
        return {"id": self.id, "path": self.path, "score": round(self.score, 6), "width": self.row.width,
                "height": self.row.height, "size": self.row.size, "taken": m.taken if m else None,
                "taken_from": m.taken_from if m else None, "camera": m.camera if m else None,
                "lat": m.lat if m else None, "lon": m.lon if m else None}


class Answer(NamedTuple):
    """The hits of a query, and the query photo's own entries, which the hits never include: the
    photo of an ``id`` query and every indexed file with the same bytes as the query image."""

    hits: list[Hit]
    itself: list[Row]

    def above(self, min_score: float) -> list[Hit]:
        """The hits scoring at least ``min_score`` (all of them at 0)."""
        return [h for h in self.hits if h.score >= min_score] if min_score > 0 else list(self.hits)


@dataclass
class IndexInfo:
    path: str
    count: int
    dim: int
    backbone: str
    head: str | None
    index_type: str
    generation: int
    disk_bytes: int
    metric: str
    nprobe: int | None = None  # IVF lists probed per query (calibrated when the lists were trained)
    dba: str = "off"  # database-side augmentation of the stored vectors (imgembed.index.dba)
    projection: str = "off"  # the projection fitted on the collection (imgembed.index.reproject)


class Searcher:
    """An open index plus the embedder that made it. Reloads when a writer publishes."""

    def __init__(self, index_dir: str | Path, embedder: Embedder | None = None, device: str = "auto",
                 mmap: bool = False, reader_cfg: ReaderCfg | None = None) -> None:
        self.dir = Path(index_dir)
        self.snapshot = Snapshot(self.dir, mmap=mmap)
        self.reader_cfg = reader_cfg or query_reader_cfg()  # query images: the lower pixel limit
        self._embedder = embedder
        self._own = embedder is None  # built here from the manifest (and rebuilt when it changes)
        self._built_for: str | None = None
        self._device = device
        if embedder is not None:
            check_identity(self.snapshot.manifest, embedder.identity(), self.dir)

    @property
    def embedder(self) -> Embedder | OnnxEmbedder:
        m = self.snapshot.manifest
        if self._own and self._embedder is not None and self._built_for != m.get("head_fingerprint"):
            self._embedder = None  # the index fitted its projection anew (imgembed.index.reproject)
        if self._embedder is None:  # loaded lazily: info and vector search need no model
            self._embedder = embedder_for(m, self.dir, self._device)
            self._built_for = m.get("head_fingerprint")
        return self._embedder

    def warm_up(self) -> None:
        """Build the model now (raising here if it does not match the index) and run it once: the
        first call of a model is several times slower than the next."""
        pre = self.embedder.preprocess
        self.embedder.embed(np.zeros((1, 3, pre.size, pre.size), dtype=np.uint8))

    def info(self) -> IndexInfo:
        self.snapshot.refresh()
        m = self.snapshot.manifest
        return IndexInfo(str(self.dir), self.snapshot.count, m["dim"], m["backbone"], m.get("head_fingerprint"),
                         self.snapshot.index_type, self.snapshot.generation, self.snapshot.disk_bytes(), m["metric"],
                         faiss_index.nprobe_of(self.snapshot.index), m.get("index_cfg", {}).get("dba") or "off",
                         reproject.describe(m))

    def require_photos(self) -> None:
        """Raise StoreError when the index holds no photo: every search would come back empty."""
        self.snapshot.refresh()
        if self.snapshot.count == 0:
            raise StoreError(f"the index at {self.dir} is empty: it holds no photos. Index a folder into it "
                             f"first: imgembed index YOUR_PHOTOS --index {self.dir}")

    def search_vectors(self, queries: np.ndarray, k: int = 10, exclude: set[int] | None = None,
                       filters: Filters | dict | None = None, qe: bool = False) -> list[list[Hit]]:
        """Top-``k`` hits for each row of ``queries (q, dim)``, best first, among the photos that
        ``filters`` keep (the k best of those, not the top k filtered afterwards).

        ``qe``: alpha query expansion (:mod:`imgembed.query.rerank`): each query is searched once,
        its 10 best hits (excluded ids left out) are folded into it, and the expanded query is
        searched; the scores are then cosines to the expanded query. With filters, both searches
        keep to the matching photos.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.snapshot.manifest["dim"]:
            raise ValueError(f"queries are {queries.shape[1]}-d, the index holds {self.snapshot.manifest['dim']}-d")
        if k < 1:
            raise ValueError("k must be at least 1")
        filters = Filters.of(filters)
        with self.snapshot.read():  # the FAISS ids and the rows they name: one generation
            if self.snapshot.index is None or self.snapshot.count == 0:
                return [[] for _ in queries]
            extra = len(exclude) if exclude else 0
            if filters:
                subset = self.snapshot.matching(filters)

                def base(q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
                    return filtered_search.search(self.snapshot.index, q, kk, subset)
            else:
                def base(q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
                    return faiss_index.search(self.snapshot.index, q, kk)
            if qe:
                queries = self._expand(queries, exclude or set(), base)
            scores, ids = base(queries, k + extra)
            found = ids[ids >= 0].tolist()
            rows = self.snapshot.rows(found)
            metas = self.snapshot.meta(found)
        out = []
        for srow, irow in zip(scores, ids):
            hits = [Hit(int(i), _show(rows[int(i)].path), float(s), rows[int(i)], metas.get(int(i)))
                    for s, i in zip(srow, irow) if i >= 0 and int(i) in rows and not (exclude and int(i) in exclude)]
            out.append(hits[:k])
        return out

    def _expand(self, queries: np.ndarray, exclude: set[int], base) -> np.ndarray:
        """alpha-QE of ``queries`` in the pinned generation (its hits' stored vectors); ``base(q, k)``
        is the search to expand from (the filtered one when filters are given)."""
        from imgembed.query.rerank import QE_K, expand_with

        def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            sims, ids = base(q, k + len(exclude))
            keep = ~np.isin(ids, list(exclude)) if exclude else np.ones(ids.shape, bool)
            out_s, out_i = np.zeros((len(q), k), np.float32), np.full((len(q), k), -1, np.int64)
            for r in range(len(q)):
                s_r, i_r = sims[r][keep[r]][:k], ids[r][keep[r]][:k]
                out_s[r, :len(s_r)], out_i[r, :len(i_r)] = s_r, i_r
            return out_s, out_i

        def vectors_of(ids: np.ndarray) -> np.ndarray:
            found = self.snapshot.vectors(ids.tolist())
            return np.stack([found.get(int(i), np.zeros(queries.shape[1], np.float32)) for i in ids])

        return expand_with(queries, search, vectors_of, QE_K)

    def embed_image_bytes(self, data: bytes) -> np.ndarray:
        """``(1, dim)`` query vector for an uploaded image. Raises ImageSkipped for bad input."""
        pixels = decode_query(data, self.embedder.preprocess, self.reader_cfg, array=True)
        return self.embedder.embed(pixels)

    def embed_images(self, images: list[bytes], batch_size: int = 32) -> tuple[np.ndarray, list[str | None]]:
        """``(vectors (n_ok, dim), errors)`` for many query images at once: ``errors[i]`` is None when
        image ``i`` was embedded (its vector is the next row), else why it could not be."""
        pre = self.embedder.preprocess
        pixels, errors = [], []
        for data in images:
            try:
                pixels.append(decode_query(data, pre, self.reader_cfg, array=True))
                errors.append(None)
            except ImageSkipped as e:
                errors.append(str(e))
        dim = self.snapshot.manifest["dim"]
        vecs = [self.embedder.embed(np.concatenate(pixels[i:i + batch_size]))
                for i in range(0, len(pixels), batch_size)]
        return (np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)), errors

    def search_image_bytes(self, data: bytes, k: int = 10, filters: Filters | dict | None = None,
                           qe: bool = False) -> list[Hit]:
        return self.search_vectors(self.embed_image_bytes(data), k, filters=filters, qe=qe)[0]

    def search_image_file(self, path: str | Path, k: int = 10, filters: Filters | dict | None = None,
                          qe: bool = False) -> list[Hit]:
        """Neighbours of the image in a file. Raises ImageSkipped naming the file when it is not a
        usable image (a folder, a pipe, a device, too large: read through the reader's bounded read)."""
        try:
            data = read_bytes(os.fspath(path), self.reader_cfg, limit=" for a query image")
        except ImageSkipped as e:
            raise ImageSkipped(f"{path}: {e}") from e
        return self.search_image_bytes(data, k, filters, qe)

    def search_id(self, file_id: int, k: int = 10, filters: Filters | dict | None = None,
                  qe: bool = False) -> list[Hit]:
        """Neighbours of a photo already in the index (itself excluded), from its stored vector."""
        vec = self.snapshot.vectors([file_id]).get(file_id)
        if vec is None:
            raise StoreError(f"no photo with id {file_id} in {self.dir}")
        return self.search_vectors(vec[None], k, exclude={file_id}, filters=filters, qe=qe)[0]

    def search_text(self, text: str, k: int = 10, filters: Filters | dict | None = None,
                    qe: bool = False) -> list[Hit]:
        return self.search_vectors(self.embedder.embed_text([text]), k, filters=filters, qe=qe)[0]

    def answer(self, query: Query, k: int = 10, filters: Filters | dict | None = None,
               qe: bool = False) -> Answer:
        """The ``k`` best hits of ``query`` among the photos ``filters`` keep, the query photo itself
        left out, however it was asked: an image whose bytes the index holds (an upload of an indexed
        photo) finds the same as a search from that photo. Raises as :meth:`search`."""
        if query.kind == "text":
            return Answer(self.search_text(query.text, k, filters, qe), [])
        with self.snapshot.read():
            if query.kind == "id":
                row = self.snapshot.rows([query.id]).get(query.id)
                if row is None:
                    raise StoreError(f"no photo with id {query.id} in {self.dir}")
                itself = self.snapshot.rows_with_hash(row.hash)
            elif query.kind == "image":
                itself = self.snapshot.rows_with_hash(content_hash(query.image))
            else:
                raise ValueError(f"unknown query kind {query.kind!r}; use image, id or text")
        exclude = {r.id for r in itself} | ({query.id} if query.kind == "id" else set())
        if query.kind == "id":
            vec = self.snapshot.vectors([query.id]).get(query.id)
            if vec is None:
                raise StoreError(f"no photo with id {query.id} in {self.dir}")
            vec = vec[None]
        else:
            vec = self.embed_image_bytes(query.image)
        return Answer(self.search_vectors(vec, k, exclude=exclude, filters=filters, qe=qe)[0], itself)

    def search(self, query: Query, k: int = 10, filters: Filters | dict | None = None,
               qe: bool = False) -> list[Hit]:
        """Answer any :class:`Query` among the photos ``filters`` keep (``qe``: with query expansion).
        Raises ImageSkipped for a bad image, StoreError for an id that left the index, BackboneError
        for text without a text encoder."""
        if query.kind == "image":
            return self.search_image_bytes(query.image, k, filters, qe)
        if query.kind == "id":
            return self.search_id(query.id, k, filters, qe)
        if query.kind == "text":
            return self.search_text(query.text, k, filters, qe)
        raise ValueError(f"unknown query kind {query.kind!r}; use image, id or text")


def _show(path: bytes) -> str:
    return path.decode("utf-8", errors="replace")
