"""Bad input: a generated corpus of unusual and broken files. Each kind is either indexed (a valid if
unusual image) or skipped with one line naming the file and the reason; the run completes and the
summary counts it."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    EPS,
    ROOT,
    SRGB_PRIMARIES,
    TINY,
    declared_png,
    encode,
    icc_profile,
    lying_jpeg,
    make_photo,
    write_photos,
    xmp_png,
)
from helpers import tiny_cfg as cfg
from PIL import Image

from imgembed import cli, indexer
from imgembed.index.verify import verify
from imgembed.indexer import index_folder
from imgembed.ingest import fs, reader
from imgembed.query.search import Searcher


def exif_rotated(upright: Image.Image, fmt: str) -> bytes:
    """``upright`` stored turned 90 degrees counter-clockwise, with EXIF orientation 6 to undo it."""
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    return encode(stored, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


# name -> (expected outcome, reason pattern); outcome "indexed" or "skipped".
INDEXED, SKIPPED = "indexed", "skipped"
LONG_NAME = "L" * 240 + ".jpg"


def build_corpus(root: Path, outside: Path) -> dict[bytes, tuple[str, str]]:
    """Every bad-input kind of the reliability issue, written under ``root``."""
    root.mkdir(parents=True)
    good = encode(make_photo(1, size=(120, 90)), "JPEG", quality=90)
    expect: dict[bytes, tuple[str, str]] = {}

    def put(name: str | bytes, data: bytes, outcome: str, reason: str = "") -> None:
        p = os.path.join(os.fsencode(root), os.fsencode(name))
        with open(p, "wb") as f:
            f.write(data)
        expect[os.fsencode(name)] = (outcome, reason)

    put("good.jpg", good, INDEXED)
    put("empty.jpg", b"", SKIPPED, r"empty file \(0 bytes\)")
    put("truncated.jpg", good[: len(good) // 2], SKIPPED, r"broken image: .*truncated")
    png = bytearray(encode(make_photo(2, size=(40, 30)), "PNG"))
    png[29] ^= 0xFF  # the IHDR chunk's CRC (bytes 29-32) no longer matches its data
    put("bad_crc.png", bytes(png), SKIPPED, r"broken image: .*checksum")
    put("text.jpg", b"these are my holiday notes, not a photo\n" * 20, SKIPPED, r"not an image")
    put("bomb.png", declared_png(30_000, 30_000), SKIPPED, r"declares 30000x30000 = 900 MP.*--max-pixels")
    put("one_pixel.png", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), INDEXED)
    gray16 = (np.asarray(make_photo(3).convert("L"), dtype=np.uint16) * 257)
    put("sixteen_bit.png", encode(Image.fromarray(gray16), "PNG"), INDEXED)
    put("cmyk.jpg", encode(make_photo(4).convert("CMYK"), "JPEG"), INDEXED)
    pal = make_photo(5).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    put("palette_transparent.png", encode(pal, "PNG", transparency=0), INDEXED)
    frames = [make_photo(6 + i).convert("P") for i in range(3)]
    put("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100), INDEXED)
    upright = make_photo(9, size=(96, 64))
    put("upright.png", encode(upright, "PNG"), INDEXED)
    put("exif_rotated.png", exif_rotated(upright, "PNG"), INDEXED)
    put("strip.png", encode(Image.new("RGB", (1, 20_000), (10, 200, 10)), "PNG"), INDEXED)  # aspect bomb
    put("too_big.jpg", good + b"\0" * (2 << 20), SKIPPED, r"above the 1 MiB limit \(--max-bytes\)")
    put("unreadable.jpg", good, SKIPPED, r"cannot read: Permission denied")
    put("deleted_after_scan.jpg", good, SKIPPED, r"cannot read: No such file")
    put("replaced_by_text.jpg", good, SKIPPED, r"not an image")
    put("replaced_by_fifo.jpg", good, SKIPPED, r"not a regular file")
    put("replaced_by_photo.jpg", good, INDEXED)
    put(b"caf\xe9-latin1.jpg", good, INDEXED)  # not valid UTF-8
    # Hostile and unusual files of the second reliability round.
    put("holiday.jpg", EPS, SKIPPED, r"^not an image \(format not recognised\)$")  # never reaches Ghostscript
    put("one_byte.jpg", b"\xff", SKIPPED, r"^not an image \(format not recognised\)$")
    put("lying_header.jpg", lying_jpeg(4000, 3000), SKIPPED,
        r"^broken image: declares 4000x3000 but its \d+ bytes cannot hold that many pixels .*ends early$")
    put("float_0_to_1.tif", encode(Image.new("F", (64, 48), 0.8), "TIFF"), INDEXED)
    put("xmp_metadata.png", xmp_png(), INDEXED)
    swapped = icc_profile(SRGB_PRIMARIES[::-1], "wide gamut")
    put("wide_gamut.jpg", encode(make_photo(8), "JPEG", icc_profile=swapped), INDEXED)
    for name in ("clip.MOV", "IMG_0001.cr2", "IMG_0002.CR2", "pic.dng"):  # counted, not read (camera RAW)
        (root / name).write_bytes(b"\0" * 16)
    (root / ".trip").mkdir()  # a hidden folder: counted, not entered
    (root / ".trip" / "beach.jpg").write_bytes(good)
    put(LONG_NAME, good, INDEXED)
    os.symlink("loop.jpg", root / "loop.jpg")
    expect[b"loop.jpg"] = (SKIPPED, r"cannot stat: Too many levels of symbolic links")
    (root / "sub").mkdir()
    os.symlink("..", root / "sub" / "up")  # a folder loop
    expect[b"sub/up"] = (SKIPPED, r"symlink to a folder, not followed")
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.jpg").write_bytes(good)
    os.symlink(outside / "secret.jpg", root / "outside.jpg")
    expect[b"outside.jpg"] = (SKIPPED, r"symlink points outside the indexed folder")
    # A path longer than the OS allows (PATH_MAX 4096): 18 nested folders of 250 bytes.
    fd = os.open(root, os.O_RDONLY)
    deep = []
    for i in range(18):
        name = f"{i:02d}" + "d" * 248
        os.mkdir(name, dir_fd=fd)
        nfd = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
        deep.append(name)
    with open(os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
        f.write(good)
    os.close(fd)
    # The folder whose path is too long to list is reported; which one depends on the OS limit.
    expect["deep".encode()] = (SKIPPED, r"cannot (list folder|stat): File name too long")
    return expect


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """The corpus, plus the races and permission failures injected into this process's run."""
    root = tmp_path / "photos"
    expect = build_corpus(root, tmp_path / "elsewhere")
    real_scan = indexer.fs.scan

    def scan_then_change(r, c):  # the folder changes between the scan and the reads
        result = real_scan(r, c)
        (root / "deleted_after_scan.jpg").unlink()
        (root / "replaced_by_text.jpg").write_bytes(b"not a photo any more")
        (root / "replaced_by_fifo.jpg").unlink()
        os.mkfifo(root / "replaced_by_fifo.jpg")
        make_photo(77, size=(80, 80)).save(root / "replaced_by_photo.jpg", quality=90)
        return result

    monkeypatch.setattr(indexer.fs, "scan", scan_then_change)
    if ROOT:
        # Permissions do not stop root: simulate the failing open() a chmod 000 file gives others.
        real_open = reader._open_regular

        def deny(path):
            if os.fsencode(path).endswith(b"unreadable.jpg"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real_open(path)

        monkeypatch.setattr(reader, "_open_regular", deny)
    else:
        (root / "unreadable.jpg").chmod(0)
    return root, expect


def _match(expect: dict, path: str) -> bytes | None:
    for name in expect:
        shown = fs.display(name)
        if path == shown or (name == b"deep" and path.startswith("00d")):
            return name
    return None


def test_bad_input_corpus_is_indexed_or_skipped_with_a_reason(corpus, tmp_path, capsys):
    root, expect = corpus
    rc = cli.main(["index", str(root), "--index", str(tmp_path / "ix"), "--backbone", TINY, "--workers", "0",
                   "--batch-size", "4", "--max-bytes", str(1 << 20), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    skip_lines = [line for line in err.splitlines() if line.startswith("skipped ")]
    reasons = {}
    for line in skip_lines:
        path, reason = re.match(r"skipped (.*?): (.*)$", line).groups()
        name = _match(expect, path)
        assert name is not None, f"unexpected skip: {line}"
        assert name not in reasons, f"skipped twice: {line}"
        reasons[name] = reason
    want_skipped = {n for n, (o, _) in expect.items() if o == SKIPPED}
    assert set(reasons) == want_skipped
    for name, reason in reasons.items():
        assert re.search(expect[name][1], reason), (name, reason)
    n_indexed = sum(o == INDEXED for o, _ in expect.values())
    assert f"embedded {n_indexed} in " in out and f", {len(want_skipped)} skipped;" in out
    assert "not read: 2 .cr2, 1 .dng, 1 .mov, 1 hidden folder (.trip)" in out.splitlines()
    assert f"{n_indexed} images in the index" in out

    snap = Searcher(tmp_path / "ix").snapshot
    rows = {r.relpath: r for r in snap.iter_rows()}
    assert set(rows) == {n for n, (o, _) in expect.items() if o == INDEXED}
    vec = snap.vectors([r.id for r in rows.values()])
    v = {name: vec[r.id] for name, r in rows.items()}
    # EXIF-rotated: embedded upright, i.e. exactly like the photo stored upright (both lossless).
    np.testing.assert_allclose(v[b"exif_rotated.png"], v[b"upright.png"], atol=1e-5)
    # Replaced between scan and read by another photo: the new photo's content is what is stored.
    assert rows[b"replaced_by_photo.jpg"].hash == reader.hash_file(str(root / "replaced_by_photo.jpg"), None)
    assert (rows[b"one_pixel.png"].width, rows[b"one_pixel.png"].height) == (1, 1)
    assert (rows[b"strip.png"].width, rows[b"strip.png"].height) == (1, 20_000)
    assert verify(tmp_path / "ix", check_files=False).ok


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_rotated_photo_is_embedded_upright(tmp_path, fmt):
    upright = make_photo(11, size=(96, 64))
    folder = tmp_path / "p"
    folder.mkdir()
    ext = fmt.lower()
    (folder / f"upright.{ext}").write_bytes(encode(upright, fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    (folder / f"rotated.{ext}").write_bytes(exif_rotated(upright, fmt))
    no_exif = upright.transpose(Image.Transpose.ROTATE_90)
    (folder / f"sideways.{ext}").write_bytes(encode(no_exif, fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    index_folder(folder, tmp_path / "ix", cfg())
    snap = Searcher(tmp_path / "ix").snapshot
    rows = {r.relpath.decode(): r.id for r in snap.iter_rows()}
    v = snap.vectors(rows.values())
    up, rot, side = (v[rows[f"{n}.{ext}"]] for n in ("upright", "rotated", "sideways"))
    if fmt == "PNG":  # lossless: the very same pixels reach the model
        np.testing.assert_allclose(rot, up, atol=1e-5)
    # JPEG re-encodes the turned pixels, so only close; the photo read sideways is far further off.
    assert 1 - float(rot @ up) < 0.1 * (1 - float(side @ up))


def test_unreadable_file_with_real_permissions(tmp_path):
    if ROOT:
        pytest.skip("running as root: permissions do not stop root's reads (the corpus test simulates it)")
    folder = tmp_path / "p"
    write_photos(folder, 3)
    (folder / "img0001.jpg").chmod(0)
    s = index_folder(folder, tmp_path / "ix", cfg())
    assert s.total == 2 and s.skipped == [("img0001.jpg", "cannot read: Permission denied")]


def _fill(folder: Path, n: int) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        for i in range(n):
            os.close(os.open(f"note{i:06d}.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def test_scan_of_a_folder_with_100k_entries(tmp_path):
    """Names that are not images cost no stat: the scan stays fast (scripts/bench_scan.py times it)."""
    # Creating 100,000 files is the slow part: on tmpfs when there is one (and it has room).
    big = tmp_path / "big"
    try:
        if os.path.isdir("/dev/shm"):
            big = Path(tempfile.mkdtemp(dir="/dev/shm"))
    except OSError:
        pass
    big.mkdir(exist_ok=True)
    try:
        try:
            _fill(big, 100_000)
        except OSError:
            shutil.rmtree(big)
            big = tmp_path / "big"
            big.mkdir()
            _fill(big, 100_000)
        write_photos(big, 3)
        result = fs.scan(big, cfg().reader)
        assert [f.relpath for f in result.files] == [b"img0000.jpg", b"img0001.jpg", b"img0002.jpg"]
        assert result.skipped == []
    finally:
        shutil.rmtree(big)
