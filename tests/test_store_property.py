"""Property-based test of the index: random add / modify / rename / delete / index / interrupted
index / reopen sequences, checked after every step against a plain in-memory model.

The model is two dicts, ``name -> content seed``: what is on disk, and what the index must show
(the disk as of the last completed index run). Every entry's stored vector must equal the vector
of its content embedded on its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, make_photo
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from imgembed.config import BackboneCfg, IndexJobCfg, ReaderCfg
from imgembed.index import format as index_format
from imgembed.index import store
from imgembed.index.snapshot import Snapshot
from imgembed.indexer import NothingToIndex, index_folder
from imgembed.ingest.reader import decode_file
from imgembed.model.embedder import Embedder

NAMES = st.sampled_from(["a.jpg", "b.jpg", "c.png", "sub/d.jpg", "sub/e.png", "sub/deeper/f.jpg"])
SEEDS = st.integers(0, 4)  # few contents, so copies and renames share vectors

EMBEDDER = Embedder.from_cfg(BackboneCfg(name=TINY))
_REF: dict[tuple[int, str], np.ndarray] = {}


def reference(seed: int, ext: str, path: Path) -> np.ndarray:
    """The vector of one photo embedded alone: what the index must hold for that content."""
    key = (seed, ext)
    if key not in _REF:
        d = decode_file(str(path), EMBEDDER.preprocess, ReaderCfg())
        _REF[key] = EMBEDDER.embed(d.pixels[None])[0]
    return _REF[key]


class IndexMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="imgembed-prop-"))
        self.folder, self.ix = self.base / "photos", self.base / "ix"
        self.folder.mkdir()
        self.disk: dict[str, int] = {}
        self.published: dict[str, int] = {}
        self.built = False
        self.snap: Snapshot | None = None
        self.clock = 1_600_000_000 * 10**9  # explicit, strictly increasing mtimes (see _write)
        self.cfg = IndexJobCfg(backbone=BackboneCfg(name=TINY))
        self.cfg.embed.workers = 0
        self.cfg.embed.batch_size = 2
        self.cfg.commit_every = 2

    def teardown(self) -> None:
        if getattr(self, "snap", None) is not None:
            self.snap.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def _write(self, name: str, seed: int) -> None:
        p = self.folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        make_photo(seed, size=(40, 32)).save(p, "PNG" if name.endswith(".png") else "JPEG", quality=90)
        # Change detection is by size and mtime, like every incremental indexer: a rewrite with the
        # same size inside one timestamp tick would be invisible, so the model's writes move the clock.
        self.clock += 10**9
        os.utime(p, ns=(self.clock, self.clock))
        self.disk[name] = seed

    @rule(name=NAMES, seed=SEEDS)
    def add_or_modify(self, name: str, seed: int) -> None:
        self._write(name, seed)

    @precondition(lambda self: self.disk)
    @rule(data=st.data(), dst=NAMES)
    def rename(self, data, dst: str) -> None:
        src = data.draw(st.sampled_from(sorted(self.disk)))
        if src == dst or os.path.splitext(src)[1] != os.path.splitext(dst)[1]:
            return
        (self.folder / dst).parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.folder / src, self.folder / dst)
        self.disk[dst] = self.disk.pop(src)

    @precondition(lambda self: self.disk)
    @rule(data=st.data())
    def delete(self, data) -> None:
        name = data.draw(st.sampled_from(sorted(self.disk)))
        (self.folder / name).unlink()
        del self.disk[name]

    @rule()
    def index(self) -> None:
        if not self.disk:  # an empty folder is refused and the index left as it is (test_summary.py)
            with pytest.raises(NothingToIndex):
                index_folder(self.folder, self.ix, self.cfg, embedder=EMBEDDER)
            return
        s = index_folder(self.folder, self.ix, self.cfg, embedder=EMBEDDER)
        self.published = dict(self.disk)
        self.built = True
        assert s.total == len(self.disk) and not s.skipped

    @rule()
    def interrupted_index(self) -> None:
        """A run that dies before publishing: readers keep the last published state."""
        real = store.StoreWriter.publish

        def die(self, *a, **kw):
            raise KeyboardInterrupt

        if not self.disk:
            return
        store.StoreWriter.publish = die
        try:
            index_folder(self.folder, self.ix, self.cfg, embedder=EMBEDDER)
        except KeyboardInterrupt:
            self.built = self.built or (self.ix / index_format.MANIFEST).exists()
        else:
            raise AssertionError("publish was not reached")
        finally:
            store.StoreWriter.publish = real

    @precondition(lambda self: self.built)
    @rule()
    def reopen(self) -> None:
        if self.snap is not None:
            self.snap.close()
        self.snap = Snapshot(self.ix)

    @invariant()
    def index_matches_model(self) -> None:
        if not getattr(self, "built", False):
            return
        if self.snap is None:
            self.snap = Snapshot(self.ix)
        with self.snap.read():
            rows = {r.relpath.decode(): r for r in self.snap.iter_rows()}
            assert set(rows) == set(self.published)
            assert self.snap.count == len(rows)
            if rows:
                from imgembed.index.faiss_index import ids_of
                assert sorted(ids_of(self.snap.index)) == sorted(r.id for r in rows.values())
            vecs = self.snap.vectors([r.id for r in rows.values()])
        for name, row in rows.items():
            seed = self.published[name]
            ext = os.path.splitext(name)[1]
            ref_path = self.folder / name if self.disk.get(name) == seed else None
            if ref_path is None:  # the file changed since: rebuild its content to embed it alone
                ref_path = self.base / f"ref{ext}"
                make_photo(seed, size=(40, 32)).save(ref_path, "PNG" if ext == ".png" else "JPEG", quality=90)
            np.testing.assert_allclose(vecs[row.id], reference(seed, ext, ref_path), atol=1e-5)


IndexMachine.TestCase.settings = settings(max_examples=int(os.environ.get("IMGEMBED_PROP_EXAMPLES", "25")),
                                          stateful_step_count=15, deadline=None)
TestIndexMachine = IndexMachine.TestCase
