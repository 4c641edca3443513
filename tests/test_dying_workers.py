"""A decode worker killed mid-run (the OOM killer) costs at most the file that killed it."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import tiny_cfg, write_photos

from imgembed.config import ReaderCfg
from imgembed.indexer import index_folder
from imgembed.ingest import loader
from imgembed.ingest.preprocess import Preprocess

PRE = Preprocess(size=32, resize=32, interpolation="bilinear")


@pytest.fixture
def deadly(monkeypatch, tmp_path):
    """Decoding a file whose name contains "killer" kills the decode worker (SIGKILL, as the OOM
    killer does); one containing "flaky" kills it only the first time. Workers are forked, so they
    inherit the patch."""
    real = loader.decode_file
    marker = tmp_path / "flaky-seen"

    def decode(path, pre, cfg, *view):
        name = os.fsencode(path)
        if b"killer" in name or (b"flaky" in name and not marker.exists()):
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, pre, cfg, *view)

    monkeypatch.setattr(loader, "decode_file", decode)


def _items(folder, names):
    out = []
    for i, name in enumerate(names):
        p = write_photos(folder, 1, start=i)[0].rename(folder / name)
        out.append((name, os.fsencode(p)))
    return out


def test_the_file_that_kills_its_worker_is_skipped_and_the_rest_decoded(tmp_path, deadly):
    names = [f"ok{i:02d}.jpg" for i in range(12)]
    names[7] = "killer.jpg"
    items = _items(tmp_path / "p", names)
    keys, failures = [], []
    for b in loader.iter_batches(items, PRE, ReaderCfg(), batch_size=2, workers=2):
        keys += b.keys
        failures += b.failures
    assert keys == [n for n in names if n != "killer.jpg"]  # every other file, in order
    assert failures == [("killer.jpg", loader.KILLED)]


def test_a_worker_killed_once_costs_nothing(tmp_path, deadly):
    names = [f"ok{i:02d}.jpg" for i in range(8)]
    names[3] = "flaky.jpg"
    items = _items(tmp_path / "p", names)
    batches = list(loader.iter_batches(items, PRE, ReaderCfg(), batch_size=2, workers=2))
    assert [k for b in batches for k in b.keys] == names and not any(b.failures for b in batches)


def test_an_index_run_goes_on_past_a_killed_worker(tmp_path, deadly):
    folder = tmp_path / "photos"
    write_photos(folder, 9)
    (folder / "img0004.jpg").rename(folder / "killer.jpg")
    cfg = tiny_cfg()
    cfg.embed.workers = 2
    s = index_folder(folder, tmp_path / "ix", cfg)
    assert s.total == 8 and s.skipped == [("killer.jpg", loader.KILLED)]


def test_a_dead_worker_is_reported_by_the_loader_not_by_a_signal_anywhere(tmp_path, deadly):
    """Torch's SIGCHLD handler would raise wherever the main thread is when a worker dies (in the
    code consuming the batches, which cannot take it); the loader takes it out."""
    items = _items(tmp_path / "p", [f"ok{i:02d}.jpg" for i in range(4)] + ["killer.jpg"])
    got = []
    for b in loader.iter_batches(items, PRE, ReaderCfg(), batch_size=1, workers=2):
        assert not callable(signal.getsignal(signal.SIGCHLD))  # while the batches are consumed
        got += b.keys
    assert got == [f"ok{i:02d}.jpg" for i in range(4)]
