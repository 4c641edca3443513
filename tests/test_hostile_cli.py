"""The command line against hostile names, queries and situations: every answer is one line, no
traceback; nothing in the folder is left out without a count."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import threading

import pytest
from helpers import TINY, write_photos

import imgembed
from imgembed import cli
from imgembed.ingest import fs
from imgembed.text import printable

FORGED = "  2  0.9999  /home/me/forged.jpg"
SRC = os.path.dirname(os.path.dirname(imgembed.__file__))  # the imgembed under test, for subprocesses


def _index(folder, ix, *extra) -> int:
    return cli.main(["index", str(folder), "--index", str(ix), "--backbone", TINY, "--workers", "0",
                     "--batch-size", "4", "--no-progress", *extra])


@pytest.fixture
def ix(tmp_path):
    folder = tmp_path / "photos"
    write_photos(folder, 6)
    assert _index(folder, tmp_path / "ix") == 0
    return tmp_path / "ix"


# ---------------------------------------------------------------- 13: control characters


def test_printable_escapes_controls_separators_and_bidi():
    assert printable("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert printable("\x1b[2J\x00\x7f\x85") == "\\x1b[2J\\x00\\x7f\\x85"
    assert printable("photo\u202egpj.exe\u2028x") == "photo\\u202egpj.exe\\u2028x"
    assert printable("café – 写真 ✓") == "café – 写真 ✓"  # ordinary text untouched


def test_a_file_name_with_a_newline_cannot_forge_output_lines(tmp_path, capsys):
    folder = tmp_path / "photos"
    write_photos(folder, 4)
    evil = folder / ("evil.jpg\n" + FORGED.strip().replace("/", "_") + "\x1b[2J.jpg")
    (folder / "img0000.jpg").rename(evil)
    (folder / "broken\nskipped fake.jpg: all good.jpg").write_bytes(b"not an image")
    (folder / "notes.\x1b[31mred").write_bytes(b"x")  # a suffix with an escape sequence
    assert _index(folder, tmp_path / "ix") == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err
    skips = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skips) == 1 and "broken\\nskipped fake.jpg" in skips[0]
    assert len(err.splitlines()) == 1
    assert "\\x1b[31mred" in out  # the not-read line, escaped
    assert cli.main(["search", str(evil), "--index", str(tmp_path / "ix"), "-k", "4"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # rank, score, capture date (~: the file's), camera, path: one line per result
    assert len(lines) == 4 and all(re.match(r"^\s+\d  \d\.\d{4}  [ ~]\d{4}-\d\d-\d\d  \S+  /", line)
                                   for line in lines)
    assert "evil.jpg\\n" in out and "\\x1b[2J" in out and "\x1b" not in out
    (evil).unlink()  # verify names the missing file: escaped too
    assert cli.main(["verify", "--index", str(tmp_path / "ix")]) == 0
    out = capsys.readouterr().out
    assert "evil.jpg\\n" in out and "\n" + FORGED.strip() not in out


# ---------------------------------------------------------------- 12, 21: nothing ignored uncounted


def test_files_that_are_not_images_are_counted_by_suffix_once(tmp_path, capsys):
    folder = tmp_path / "photos"
    write_photos(folder, 3)
    for i in range(12):
        (folder / f"clip{i}.MOV").write_bytes(b"x")
    for i in range(3):
        (folder / f"IMG_{i}.cr2").write_bytes(b"x")  # camera RAW: not read
    (folder / "pic.dng").write_bytes(b"x")
    (folder / "README").write_text("x")
    os.symlink("clip0.MOV", folder / "link.mov")
    (folder / ".trip").mkdir()
    write_photos(folder / ".trip", 2)
    (folder / ".thumbnails").mkdir()
    assert _index(folder, tmp_path / "ix") == 0
    out, err = capsys.readouterr()
    assert err == ""  # no line per file
    assert ("not read: 13 .mov, 3 .cr2, 1 .dng, 1 without suffix, 2 hidden folders (.thumbnails, .trip)"
            in out.splitlines())
    assert "found 3 images: 3 new;" in out


def test_scan_counts_every_kind_and_lists_hidden_folders(tmp_path):
    for i in range(20):
        (tmp_path / f"f{i}.ext{i}").write_bytes(b"")
    (tmp_path / ".git").mkdir()
    scan = fs.scan(tmp_path, cli.ReaderCfg())
    assert sum(scan.unread.values()) == 20 and scan.hidden == [b".git"]
    line = scan.unread_line()
    assert line.startswith("not read: 1 .ext") and "12 of 12 other kinds" in line and line.endswith("(.git)")


def test_a_pipe_named_like_an_image_is_reported(tmp_path):
    os.mkfifo(tmp_path / "photo.jpg")
    assert fs.scan(tmp_path, cli.ReaderCfg()).skipped == [(b"photo.jpg", "not a regular file (a pipe, socket or device)")]


# ---------------------------------------------------------------- 16, 17: one line, never a hang


def test_search_with_a_folder_a_pipe_a_device_or_a_huge_file(ix, tmp_path, capsys):
    fifo = tmp_path / "query.jpg"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(300 << 20)  # 300 MB, sparse: nothing is read before the size check
    cases = {str(fifo): "not a regular file",
             "/dev/zero": "not a regular file", str(huge): "file is 300 MiB, above the 200 MiB limit for a query image"}
    for path, why in cases.items():
        result = {}
        t = threading.Thread(target=lambda: result.update(rc=cli.main(["search", path, "--index", str(ix)])))
        t.start()
        t.join(60)
        assert not t.is_alive(), f"search {path} hung"
        assert result["rc"] == 1
        assert capsys.readouterr().err == f"error: {path}: {why}\n"
    empty = tmp_path / "empty"  # a folder stands for the images in it (many queries): here none
    empty.mkdir()
    assert cli.main(["search", str(empty), "--index", str(ix)]) == 1
    assert capsys.readouterr().err == f"error: no query images in {empty}\n"


def test_unusable_devices_are_one_line(ix, capsys):
    query = str(next(ix.parent.joinpath("photos").glob("*.jpg")))
    import torch

    if not torch.cuda.is_available():
        assert cli.main(["search", query, "--index", str(ix), "--device", "cuda"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: --device cuda: no CUDA GPU can be used") and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        cli.main(["search", query, "--index", str(ix), "--device", "nonsense"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device: unknown device 'nonsense'; use auto, cpu, cuda, mps or cuda:N" in err


@pytest.mark.slow
def test_output_piped_into_head_ends_quietly(ix):
    query = str(next(ix.parent.joinpath("photos").glob("*.jpg")))
    # head -n 0 leaves at once, long before the results are written: every write meets a closed pipe.
    cmd = f"{sys.executable} -m imgembed.cli search {query} --index {ix} -k 6 | head -n 0"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": SRC})
    assert r.stderr == "" and r.returncode == 141, r


def test_broken_pipe_is_not_an_error_message(ix, monkeypatch, capsys):
    def gone(*a, **k):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(cli, "say", gone)
    query = str(next(ix.parent.joinpath("photos").glob("*.jpg")))
    assert cli.main(["search", query, "--index", str(ix)]) == 141
    assert "error" not in capsys.readouterr().err


def test_ctrl_c_during_start_up_is_one_line(ix, monkeypatch, capsys):
    """The CLI module imports no heavy library; Ctrl-C while they load is answered like any other."""
    out = subprocess.run([sys.executable, "-c", "import sys, imgembed.cli; print(sorted(m for m in sys.modules "
                          "if m.split('.')[0] in ('torch', 'PIL', 'faiss', 'numpy')))"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert out.stdout.strip() == "[]", out
    import imgembed.query.search as search

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(search.Searcher, "__init__", interrupted)
    query = str(next(ix.parent.joinpath("photos").glob("*.jpg")))
    assert cli.main(["search", query, "--index", str(ix)]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_full_disk_in_train_head_is_one_line(tmp_path, monkeypatch, capsys):
    from imgembed.model import head

    write_photos(tmp_path / "train", 9, classes=True)

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("imgembed.atomic.atomic_write_bytes", full)
    out = tmp_path / "h"
    rc = cli.main(["train-head", str(tmp_path / "train"), "--out", str(out), "--backbone", TINY, "--dim", "4",
                   "--epochs", "1", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (f"error: cannot write the head {head.head_paths(out)[0]}: No space left "
                                           "on device; free disk space or pass another --out, then train again "
                                           "(the cached features make it quick)")


def test_an_unexpected_os_error_is_one_line(ix, monkeypatch, capsys):
    from imgembed.query import search

    def broken(*a, **k):
        raise OSError(errno.EIO, os.strerror(errno.EIO), "meta.sqlite")

    monkeypatch.setattr(search.Searcher, "info", broken)
    assert cli.main(["info", "--index", str(ix)]) == 1
    assert capsys.readouterr().err == "error: [Errno 5] Input/output error: 'meta.sqlite'\n"
