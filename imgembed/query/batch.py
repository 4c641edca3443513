"""Many queries in one process: image files, folders of them, or a list file, answered in batches.

Starting the CLI costs seconds (Python, torch, the model); a batch pays that once. The query
images are read through the reader's guards, decoded and embedded a batch at a time, and each
batch is one FAISS search. A query that cannot be used (not an image, unreadable) is answered
with its reason and the others go on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from imgembed.config import ReaderCfg
from imgembed.index.filters import Filters
from imgembed.ingest import fs
from imgembed.ingest.reader import ImageSkipped, read_bytes
from imgembed.query.search import Hit, Searcher

# Query images decoded and embedded together (a model batch), then searched in one call.
BATCH = 32


class Answer(NamedTuple):
    query: str  # the image path or the text, as given
    hits: list[Hit]  # best first; empty when error is set
    error: str | None = None  # why the query could not be answered

    def hits_or_raise(self) -> list[Hit]:
        """The hits, or ImageSkipped with the reason the query could not be answered."""
        if self.error is not None:
            raise ImageSkipped(self.error)
        return self.hits


def expand(items: Iterable[str], from_list: str | None = None, text: bool = False,
           exclude_folders: bool = False) -> list[str]:
    """The queries named by command-line ``items`` and a ``from_list`` file (one per line, ``-``: stdin).

    Images: a folder stands for every image under it (sorted). With ``text`` every item is a text.
    """
    raw = list(items)
    if from_list is not None:
        import sys

        lines = sys.stdin.read().splitlines() if from_list == "-" else Path(from_list).read_text().splitlines()
        raw += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if text:
        return raw
    out = []
    for item in raw:
        if os.path.isdir(item) and not exclude_folders:
            scan = fs.scan(item, ReaderCfg())
            out += [os.fsdecode(fs.abspath(item, f.relpath)) for f in scan.files]
        else:
            out.append(item)
    return out


def answer(searcher: Searcher, queries: list[str], k: int = 10, filters: Filters | dict | None = None,
           text: bool = False, exclude_self: bool = False, qe: bool = False) -> Iterator[Answer]:
    """Answers to ``queries`` (image paths, or texts with ``text``) in order, a batch at a time.

    ``exclude_self``: leave a query image out of its own results when it is in the index; ``qe``:
    alpha query expansion.
    """
    filters = Filters.of(filters)
    for start in range(0, len(queries), BATCH):
        chunk = queries[start:start + BATCH]
        if text:
            vectors = searcher.embedder.embed_text(chunk)
            for q, hits in zip(chunk, searcher.search_vectors(vectors, k, filters=filters, qe=qe)):
                yield Answer(q, hits)
            continue
        datas, errors = [], {}
        for i, q in enumerate(chunk):
            try:
                datas.append(read_bytes(q, searcher.reader_cfg))
            except ImageSkipped as e:
                errors[i] = str(e)
                datas.append(b"")
        ok = [i for i in range(len(chunk)) if i not in errors]
        vectors, why = searcher.embed_images([datas[i] for i in ok])
        embedded = []
        for i, reason in zip(ok, why):
            if reason is None:
                embedded.append(i)
            else:
                errors[i] = reason
        if exclude_self:  # each query leaves out its own entry
            found = [searcher.search_vectors(v[None], k, exclude=_self_ids(searcher, chunk[i]), filters=filters, qe=qe)[0]
                     for i, v in zip(embedded, vectors)]
        else:  # one search for the batch
            found = searcher.search_vectors(vectors, k, filters=filters, qe=qe) if embedded else []
        results = dict(zip(embedded, found))
        for i, q in enumerate(chunk):
            yield Answer(q, [], errors[i]) if i in errors else Answer(q, results[i])


def _self_ids(searcher: Searcher, path: str) -> set[int] | None:
    with searcher.snapshot.read():
        row = searcher.snapshot.row_by_path(os.fsencode(os.path.realpath(path)))
    return {row.id} if row is not None else None
