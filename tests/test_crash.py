"""Crash safety: ``imgembed index`` killed with SIGKILL at random moments loses nothing.

Each trial changes the folder (new, modified, renamed and deleted photos), starts the real CLI in a
subprocess with one photo per batch and per commit, and kills it at a random moment of its work.
After every kill the index must open and pass ``verify``. At the end one uninterrupted run must
leave exactly one entry per file, with the vectors of a clean build, and no orphans.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, make_photo, write_photos

from imgembed import cli
from imgembed.config import BackboneCfg, IndexJobCfg
from imgembed.index.format import DB, LOCK, connect, faiss_name
from imgembed.index.verify import verify
from imgembed.indexer import index_folder
from imgembed.ingest import fs
from imgembed.query.search import Searcher

REPO = Path(__file__).resolve().parent.parent
KILLS = int(os.environ.get("IMGEMBED_KILLS", "20"))


def _index_cmd(folder: Path, ix: Path) -> list[str]:
    return [sys.executable, "-m", "imgembed.cli", "index", str(folder), "--index", str(ix), "--backbone", TINY,
            "--workers", "0", "--batch-size", "1", "--commit-every", "1", "--no-progress"]


def _mutate(folder: Path, rng: random.Random, trial: int) -> None:
    """New photos, one modified in place, one renamed, one deleted."""
    write_photos(folder / f"t{trial:02d}", 4, start=1000 + 10 * trial)
    existing = sorted(folder.rglob("*.jpg"))
    victim, renamed, modified = rng.sample(existing, 3)
    victim.unlink()
    renamed.rename(renamed.with_name(f"r{trial:02d}-{renamed.name}"))
    make_photo(5000 + trial).save(modified, quality=90)
    os.utime(modified, ns=(time.time_ns(), time.time_ns() + 1000 * trial))  # a new mtime, always


def _wait_for_lock(proc: subprocess.Popen, ix: Path, timeout: float = 120.0) -> bool:
    """Until the child holds the write lock (its store work starts); False when it exited first."""
    lock = ix / LOCK
    deadline = time.monotonic() + timeout
    want = f"pid {proc.pid}".encode()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if lock.read_bytes().strip() == want:
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise AssertionError("the index run never took the write lock")


@pytest.mark.crash
def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    rng = random.Random(1234)
    folder, ix = tmp_path / "photos", tmp_path / "ix"
    write_photos(folder, 24, classes=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    first = subprocess.Popen(_index_cmd(folder, ix), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    assert _wait_for_lock(first, ix)
    t0 = time.monotonic()
    assert first.wait(timeout=300) == 0, first.stderr.read()
    work = time.monotonic() - t0  # how long a run works on the store, from taking the lock to the end

    kills, completed, trials = 0, 0, 0
    while kills < KILLS:
        trials += 1
        assert trials <= 3 * KILLS, f"only {kills} of {trials} runs could be killed before they finished"
        _mutate(folder, rng, trials)
        proc = subprocess.Popen(_index_cmd(folder, ix), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        locked_at = None
        if rng.random() < 0.1:  # sometimes during start-up, before the store is touched
            time.sleep(rng.uniform(0, 1.0))
        elif _wait_for_lock(proc, ix):
            locked_at = time.monotonic()
            time.sleep(rng.uniform(0, work))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert proc.returncode == 0, err
            completed += 1
            if locked_at is not None:  # it finished before the kill: aim within its real length
                work = max(0.05, time.monotonic() - locked_at)
        # After every kill the index opens and is consistent.
        snap = Searcher(ix).snapshot
        assert snap.count == len(snap.visible_ids())
        snap.close()
        report = verify(ix)
        assert report.ok, report.lines()
        assert cli.main(["verify", "--index", str(ix)]) == 0
    print(f"\n{trials} runs: {kills} killed with SIGKILL, {completed} finished first")

    final = subprocess.run(_index_cmd(folder, ix), env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert verify(ix).ok

    on_disk = sorted(f.relpath for f in fs.scan(folder, IndexJobCfg().reader).files)
    snap = Searcher(ix).snapshot
    rows = list(snap.iter_rows())
    assert sorted(r.relpath for r in rows) == on_disk  # one entry per file: no duplicates, no losses
    assert snap.count == len(rows)

    clean_cfg = IndexJobCfg(backbone=BackboneCfg(name=TINY))
    clean_cfg.embed.workers = 0
    index_folder(folder, tmp_path / "clean", clean_cfg)
    clean = Searcher(tmp_path / "clean").snapshot
    crow = {r.relpath: r.id for r in clean.iter_rows()}
    got, want = snap.vectors([r.id for r in rows]), clean.vectors(crow.values())
    for r in rows:
        np.testing.assert_allclose(got[r.id], want[crow[r.relpath]], atol=1e-5)

    # No orphans: every stored vector belongs to an entry, no files but the published ones.
    con = connect(ix, readonly=True)
    orphans = con.execute("SELECT count(*) FROM vectors WHERE hash NOT IN "
                          "(SELECT hash FROM files WHERE removed_gen IS NULL)").fetchone()[0]
    con.close()
    assert orphans == 0
    names = {p.name for p in ix.iterdir()} - {DB + "-wal", DB + "-shm"}
    assert names == {"manifest.json", DB, LOCK, faiss_name(snap.generation)}, names
