"""One writer at a time, and readers that always see one whole published generation."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, TINY, write_photos
from helpers import tiny_cfg as cfg

from imgembed.index import faiss_index
from imgembed.index.verify import verify
from imgembed.indexer import index_folder
from imgembed.query.search import Searcher

CLI = [sys.executable, "-m", "imgembed.cli"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


HOLD_LOCK = """
import sys
from imgembed.index.store import StoreWriter
from imgembed.query.search import Searcher
from imgembed.config import IndexCfg
ix = sys.argv[1]
ident = Searcher(ix).embedder.identity()
with StoreWriter(ix, ident, IndexCfg()):
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
"""


def _blocked_on_lock(pid: int) -> bool:
    """Whether ``pid`` waits for a file lock (``->`` lines of /proc/locks are blocked requests)."""
    with open("/proc/locks") as f:
        return any("->" in line and f" {pid} " in line for line in f)


@pytest.mark.slow
def test_second_writer_fails_clearly_or_waits(photos, tmp_path):
    if not os.path.exists("/proc/locks"):
        pytest.skip("needs /proc/locks to see a process waiting for the lock")
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    write_photos(photos / "more", 3, start=50)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(ix)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env())
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["index", str(photos), "--index", str(ix), "--backbone", TINY, "--workers", "0", "--no-progress"]
        r = subprocess.run(CLI + args, capture_output=True, text=True, env=_env(), timeout=120)
        assert r.returncode == 1 and f"is being written by pid {holder.pid}" in r.stderr and "--wait" in r.stderr
        waiter = subprocess.Popen(CLI + args + ["--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=_env())
        deadline = time.monotonic() + 120
        while not _blocked_on_lock(waiter.pid):
            assert waiter.poll() is None, waiter.communicate()
            assert time.monotonic() < deadline, "the waiting writer never queued for the lock"
            time.sleep(0.1)
        assert Searcher(ix).snapshot.count == 12  # nothing written while the first writer holds the lock
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert "3 new, 12 unchanged;" in out and "15 images in the index" in out


WRITER = """
import os, shutil, sys
sys.path.insert(0, sys.argv[3])
from helpers import write_photos
from imgembed import cli
folder, ix = sys.argv[1], sys.argv[2]
args = ["index", folder, "--index", ix, "--backbone", "test-tiny", "--workers", "0", "--batch-size", "2",
        "--commit-every", "2", "--no-progress"]
for run in range(4):
    write_photos(__import__("pathlib").Path(folder) / f"run{run}", 4, start=1000 + 10 * run)
    if run % 2:  # removals too: they purge rows and vectors
        shutil.rmtree(os.path.join(folder, f"run{run - 1}"))
    assert cli.main(args + (["--index-type", "hnsw"] if run == 2 else [])) == 0
print("done", flush=True)
"""


@pytest.mark.slow
def test_readers_see_one_generation_during_writes(photos, tmp_path):
    """A reader looping searches while another process indexes, adds, removes and rebuilds:
    every read sees a FAISS index and metadata rows of one generation, never a mix; verify run
    meanwhile passes."""
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(photos), str(ix), str(REPO / "tests")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    s = Searcher(ix)
    query = s.snapshot.vectors([next(s.snapshot.iter_rows()).id])
    q = next(iter(query.values()))[None]
    seen, reads, verified = set(), 0, 0
    try:
        while writer.poll() is None:
            with s.snapshot.read():
                snap = s.snapshot
                ids = np.sort(faiss_index.ids_of(snap.index))
                visible = snap.visible_ids()
                assert snap.count == len(visible) and np.array_equal(ids, visible), (snap.generation, len(visible))
                hits = s.search_vectors(q, k=5)[0]  # nested: the same pinned generation
                assert len(hits) == 5 and all(h.row.id in set(visible.tolist()) for h in hits)
                seen.add(snap.generation)
            reads += 1
            if reads % 10 == 0:  # verify, too, is safe while a writer runs
                report = verify(ix, check_files=False)
                assert report.ok, report.lines()
                verified += 1
            time.sleep(0.02)  # leave the (shared) cores to the writer
    finally:
        out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0 and "done" in out, err
    assert len(seen) >= 3, f"the reader saw only generations {seen} in {reads} reads"
    assert verified >= 1
    assert verify(ix).ok
