"""imgembed build-index from shards written without Ray (pyarrow only): every index type, ivf included."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyarrow.parquet")

from imgembed.cli import main  # noqa: E402
from imgembed.config import INDEX_TYPES  # noqa: E402
from imgembed.distributed import shards  # noqa: E402
from imgembed.ingest.fs import FileEntry  # noqa: E402
from imgembed.query.search import Searcher  # noqa: E402


def write_shards(folder, n: int = 3000, dim: int = 16, size: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    files = [FileEntry(f"{i:05d}.jpg".encode(), 100 + i, 1_700_000_000 + i) for i in range(n)]
    ident = {"backbone": "synthetic", "backbone_fingerprint": "x", "pool": None, "head_fingerprint": None,
             "dim": dim, "preprocess": {}}
    folder.mkdir()
    shards.write_listing(folder, files)
    shards.write_manifest(folder, shards.new_manifest(folder.parent / "photos", ident, size, n, False, {}))
    asm = shards.ShardAssembler(folder, size, n, dim)
    j = np.arange(n)
    asm.add(shards.ShardRows(j, [f.relpath for f in files], np.array([f.size for f in files]),
                             np.array([f.mtime_ns for f in files]), [f"{i:032x}" for i in j],
                             np.full(n, 8), np.full(n, 8), [""] * n, x))
    assert asm.written == [0, 1, 2]
    return x


@pytest.mark.parametrize("kind", INDEX_TYPES)
def test_build_index_takes_every_index_type(tmp_path, capsys, kind):
    x = write_shards(tmp_path / "shards")
    ix = tmp_path / "ix"
    assert main(["build-index", "--from-shards", str(tmp_path / "shards"), "--index", str(ix),
                 "--index-type", kind, "--no-progress"]) == 0
    assert "3 shards: added 3000" in capsys.readouterr().out
    s = Searcher(ix)
    assert s.info().index_type == kind and s.info().count == 3000
    by_rel = {r.relpath: r.id for r in s.snapshot.iter_rows()}
    hit = s.search_vectors(x[7:8], k=1)[0][0]
    assert hit.id == by_rel[b"00007.jpg"]  # a stored vector finds itself
