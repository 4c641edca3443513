"""A full disk or a read-only index folder: a clear error, and the last published index stays searchable."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import REPO, ROOT, TINY, write_photos
from helpers import tiny_cfg as cfg

from imgembed import cli
from imgembed.index import store
from imgembed.index.format import StoreError
from imgembed.index.verify import verify
from imgembed.indexer import index_folder
from imgembed.query.search import Searcher


def test_disk_full_while_writing_metadata_keeps_the_previous_index(photos, tmp_path, monkeypatch, capsys):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    write_photos(photos / "more", 40, start=100)
    real_connect = store.connect

    def full_disk(index_dir, readonly=False):  # SQLite's own "database or disk is full" path
        con = real_connect(index_dir, readonly)
        if not readonly:
            pages = con.execute("PRAGMA page_count").fetchone()[0]
            con.execute(f"PRAGMA max_page_count={pages}")
        return con

    monkeypatch.setattr(store, "connect", full_disk)  # the writer's
    rc = cli.main(["index", str(photos), "--index", str(ix), "--backbone", TINY, "--workers", "0",
                   "--commit-every", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "database or disk is full" in err and "Free disk space" in err and "Traceback" not in err
    monkeypatch.undo()
    assert Searcher(ix).snapshot.count == 12 and verify(ix).ok
    assert index_folder(photos, ix, cfg()).total == 52


def test_disk_full_while_writing_vectors_keeps_the_previous_index(photos, tmp_path, monkeypatch):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    write_photos(photos / "more", 5, start=100)
    real_fsync = os.fsync

    def enospc(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".faiss.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(store.os, "fsync", enospc)
    with pytest.raises(StoreError, match="No space left on device; the previous index is unchanged"):
        index_folder(photos, ix, cfg())
    monkeypatch.undo()
    assert Searcher(ix).snapshot.count == 12
    report = verify(ix)
    assert report.ok and not list(ix.glob(".*.tmp"))
    assert any("5 entries committed by an unfinished run" in f.what for f in report.findings)
    s = index_folder(photos, ix, cfg())
    assert (s.indexed, s.total) == (0, 17)  # the committed vectors were kept


def _as_other_user() -> list[str]:
    """A command prefix that drops root, so folder permissions apply; [] when not root."""
    if not ROOT:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder read-only for this process")
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    probe = subprocess.run(prefix + [sys.executable, "-c", "import imgembed.cli"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, cwd="/", timeout=120)
    if probe.returncode != 0:
        pytest.skip("the interpreter or the checkout is not readable by an unprivileged user "
                    f"(put the venv and the clone outside private folders): {probe.stderr.strip()[-200:]}")
    return prefix


@pytest.mark.slow
def test_read_only_index_folder(tmp_path):
    """Writing is refused with a clear error; searching the existing index still works."""
    prefix = _as_other_user()
    base = Path(tempfile.mkdtemp(prefix="imgembed-ro-"))  # outside pytest's private (0700) tmp
    try:
        base.chmod(0o755)
        folder, ix = base / "photos", base / "ix"
        write_photos(folder, 4)
        index_folder(folder, ix, cfg())
        write_photos(folder, 2, start=10)
        for p in [base, folder, *folder.iterdir(), ix, *ix.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        ix.chmod(0o555)
        (base / "cache").mkdir(mode=0o777)
        (base / "cache").chmod(0o777)
        env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(base), "IMGEMBED_CACHE_DIR": str(base / "cache")}
        script = ("import sys; from imgembed import cli\n"
                  f"for argv in {[['index', str(folder), '--backbone', TINY, '--workers', '0', '--no-progress'], ['info'], ['verify']]!r}:\n"
                  f"    print('rc', cli.main(argv + ['--index', {str(ix)!r}]), flush=True)\n")
        r = subprocess.run(prefix + [sys.executable, "-c", script], capture_output=True, text=True, env=env,
                           cwd=base, timeout=300)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r
        assert re.findall(r"^rc (\d+)$", r.stdout, re.M) == ["1", "0", "0"], r  # index refused; info, verify work
        assert "cannot write to index folder" in r.stderr and "make it writable" in r.stderr, r
        assert re.search(r"images\s+4\b", r.stdout) and re.search(r"^ok$", r.stdout, re.M), r
    finally:
        for p in base.rglob("*"):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        base.chmod(0o755)
        shutil.rmtree(base)
