"""Bad input, hostile files, full disks, read-only folders, concurrent writers and readers.

The bad-input corpus is generated here. Each kind is either indexed (a valid if unusual image) or
skipped with one line naming the file and the reason; the run completes and the summary counts it.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_photo, write_photos
from PIL import Image

from imgembed import cli, indexer
from imgembed.config import BackboneCfg, IndexCfg, IndexJobCfg
from imgembed.index import faiss_index, store
from imgembed.index import format as index_format
from imgembed.index.format import StoreError
from imgembed.index.verify import verify
from imgembed.indexer import index_folder
from imgembed.ingest import fs, reader
from imgembed.model.head import HeadError, load_head
from imgembed.query.search import Searcher

REPO = Path(__file__).resolve().parent.parent
ROOT = os.geteuid() == 0


def cfg(**kw) -> IndexJobCfg:
    c = IndexJobCfg(backbone=BackboneCfg(name=TINY), **kw)
    c.embed.workers = 0  # in-process decoding: the monkeypatched races below happen in this process
    c.embed.batch_size = 4
    return c


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(w: int, h: int) -> bytes:
    """A PNG header declaring ``w x h`` grey pixels, with almost no pixel data: a bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


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
    assert f"indexed {n_indexed}, " in out and f"skipped {len(want_skipped)};" in out
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


# ---------------------------------------------------------------- fuzzing the decoder

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from imgembed.config import ReaderCfg  # noqa: E402
from imgembed.ingest.preprocess import Preprocess  # noqa: E402

PRE = Preprocess(size=32, resize=32, interpolation="bilinear")
FUZZ_EXAMPLES = int(os.environ.get("IMGEMBED_FUZZ_EXAMPLES", "300"))


def _seeds() -> list[bytes]:
    base = make_photo(21, size=(48, 40))
    exif = Image.Exif()
    exif[0x0112] = 8
    return [
        encode(base, "JPEG", quality=80, exif=exif.tobytes()),
        encode(base.convert("CMYK"), "JPEG"),
        encode(base, "JPEG", progressive=True),
        encode(base, "PNG"),
        encode(base.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG", transparency=1),
        encode(Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 200), "PNG"),
        encode(base.convert("P"), "GIF", save_all=True, append_images=[make_photo(22, size=(48, 40)).convert("P")]),
        encode(base, "WEBP"),
        encode(base, "BMP"),
        encode(base, "TIFF"),
    ]


SEEDS = _seeds()


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif len(data) < 100_000:
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 512))]
    return bytes(data)


def _decode_or_skip(data: bytes, tmp: str) -> None:
    """The two image-loading entry points: bytes (uploads) and files (indexing)."""
    with open(tmp, "wb") as f:
        f.write(data)
    for call in (lambda: reader.decode_query(data, PRE, ReaderCfg(max_pixels=4_000_000)),
                 lambda: reader.decode_file(tmp, PRE, ReaderCfg(max_pixels=4_000_000))):
        try:
            out = call()
        except reader.ImageSkipped as e:
            msg = str(e)
            assert msg and "\n" not in msg
            continue
        pixels = out.pixels if isinstance(out, reader.Decoded) else out
        assert tuple(pixels.shape[-3:]) == (3, 32, 32) and str(pixels.dtype) == "torch.uint8"


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=mutated_images())
def test_fuzz_mutated_images_only_raise_image_skipped(data):
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        _decode_or_skip(data, f.name)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True)
@given(data=st.one_of(st.binary(max_size=2048),
                      st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF", b"BM", b"II*\0"])
                      .flatmap(lambda magic: st.binary(max_size=1024).map(lambda rest: magic + rest))))
def test_fuzz_random_bytes_only_raise_image_skipped(data):
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        _decode_or_skip(data, f.name)


# ---------------------------------------------------------------- security: heads and manifests


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_in_place_of_a_head_is_refused(tmp_path, photos, capsys):
    marker = tmp_path / "pwned"
    head = tmp_path / "evil.safetensors"
    head.write_bytes(pickle.dumps(_Evil(str(marker))))
    (tmp_path / "evil.json").write_text(json.dumps({"format": 1, "cfg": {"in_dim": 32, "out_dim": 8}}))
    with pytest.raises(HeadError, match="not a safetensors file"):
        load_head(head)
    import torch  # a torch.save checkpoint (a zip of pickles) is refused the same way

    torch.save({"proj.weight": torch.zeros(8, 32), "evil": _Evil(str(marker))}, head)
    with pytest.raises(HeadError, match="not a safetensors file"):
        load_head(head)
    rc = cli.main(["index", str(photos), "--index", str(tmp_path / "ix"), "--backbone", TINY,
                   "--head", str(head), "--workers", "0", "--no-progress"])
    assert rc == 1 and "not a safetensors file" in capsys.readouterr().err
    assert not marker.exists()


HOSTILE = [
    ("[1, 2, 3]", "expected a JSON object"),
    ('{"format_version": 1, "dim": true, "backbone": "test-tiny", "metric": "cosine", "preprocess": {}}', "dim must"),
    ('{"format_version": 1, "dim": -5, "backbone": "test-tiny", "metric": "cosine", "preprocess": {}}', "dim must"),
    ('{"format_version": 1, "dim": 1e999, "backbone": "x", "metric": "cosine", "preprocess": {}}', "dim must"),
    ('{"format_version": "1", "dim": 32}', "format_version"),
    ("PATCH", "head must be null"),
    ("CFG", "index_cfg has unknown or mistyped keys"),
    ("DIM", "holds 32-d vectors but the manifest says 16|differs in: dim"),  # verify: not repairable
    ('{"format_version": 1, "x": ' + "[" * 100_000, "not valid JSON"),  # nesting beyond recursion
    ("\udcff", "not valid JSON"),
]


@pytest.mark.parametrize("text,message", HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_hostile_manifest_gives_a_clear_error_in_every_command(photos, tmp_path, capsys, text, message):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    good = json.loads((ix / "manifest.json").read_text())
    if text == "PATCH":
        text = json.dumps({**good, "head": "../../../etc/passwd"})
    elif text == "CFG":
        text = json.dumps({**good, "index_cfg": {"hnsw_m": "many", "__class__": 1}})
    elif text == "DIM":
        text = json.dumps({**good, "dim": 16})
    (ix / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    capsys.readouterr()
    query = str(next(photos.rglob("*.jpg")))
    for argv in (["info"], ["search", query], ["verify"],
                 ["index", str(photos), "--backbone", TINY, "--workers", "0", "--no-progress"]):
        rc = cli.main(argv + ["--index", str(ix)])
        out, err = capsys.readouterr()
        assert rc == 1, (argv, out, err)
        assert re.search(message, out + err) and "Traceback" not in err, (argv, out, err)


# ---------------------------------------------------------------- full disk, read-only folder


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


# ---------------------------------------------------------------- concurrency

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
    assert "indexed 3," in out and "15 images in the index" in out


WRITER = """
import os, shutil, sys
sys.path.insert(0, sys.argv[3])
from conftest import write_photos
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


# ---------------------------------------------------------------- verify and repair


def _db(ix: Path):
    import sqlite3

    return sqlite3.connect(ix / index_format.DB, isolation_level=None)


def _search_ok(ix: Path, n: int) -> None:
    s = Searcher(ix)
    assert s.snapshot.count == n and len(s.snapshot.visible_ids()) == n
    q = s.snapshot.vectors(s.snapshot.visible_ids()[:1].tolist())
    assert len(s.search_vectors(next(iter(q.values()))[None], k=3)[0]) == 3


@pytest.mark.parametrize("damage", ["delete", "garbage", "wrong_ids", "fewer"])
def test_verify_finds_a_damaged_vectors_file_and_repair_rebuilds_it(photos, tmp_path, capsys, damage):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    f = ix / store.faiss_name(1)
    if damage == "delete":
        f.unlink()
    elif damage == "garbage":
        f.write_bytes(b"\0garbage" * 100)
    else:
        snap = Searcher(ix).snapshot
        ids = snap.visible_ids()
        vecs = snap.vectors(ids.tolist())
        keep = ids if damage == "wrong_ids" else ids[:-3]
        X = np.stack([vecs[int(i)] for i in keep])
        new_ids = keep + 1000 if damage == "wrong_ids" else keep
        import faiss

        faiss.write_index(faiss_index.build("flat", 32, IndexCfg(), iter([(new_ids, X)])), str(f))
    assert cli.main(["verify", "--index", str(ix)]) == 1
    out = capsys.readouterr().out
    expected = {"delete": "is missing", "garbage": "cannot be read",
                "wrong_ids": "12 ids without an entry, 12 entries without a vector",
                "fewer": "holds 9 vectors but 12 entries are visible"}[damage]
    assert expected in out and "--repair fixes it" in out and out.strip().endswith("FAILED")
    assert cli.main(["verify", "--index", str(ix), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "rebuilt vectors.2.faiss from the stored vectors (12 vectors, was generation 1)" in out
    assert verify(ix).ok and not list(ix.glob("vectors.1.faiss"))
    _search_ok(ix, 12)


def test_repair_drops_entries_without_vectors_and_the_next_run_embeds_them(photos, tmp_path):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    with _db(ix) as con:
        con.execute("DELETE FROM vectors WHERE hash IN (SELECT hash FROM files ORDER BY id LIMIT 2)")
    report = verify(ix)
    assert not report.ok and any("2 entries have no stored vector" in f.what for f in report.findings)
    from imgembed.index.verify import repair

    fixed = repair(ix)
    assert fixed.ok and fixed.rows == 10
    assert any("dropped 2 entries without a vector" in r for r in fixed.repaired)
    s = index_folder(photos, ix, cfg())
    assert (s.indexed, s.total) == (2, 12) and verify(ix).ok


def test_vanished_files_are_a_warning_and_repair_drops_them_on_request(photos, tmp_path, capsys):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    for p in sorted(photos.rglob("*.jpg"))[:3]:
        p.unlink()
    (ix / ".vectors.7.faiss.tmp").write_bytes(b"x")  # what a killed publish leaves
    assert cli.main(["verify", "--index", str(ix)]) == 0
    out = capsys.readouterr().out
    assert "warning: 3 recorded files no longer exist" in out and "note: files left by an interrupted run" in out
    assert cli.main(["verify", "--index", str(ix), "--repair"]) == 0
    assert "nothing needed repair" in capsys.readouterr().out and not (ix / ".vectors.7.faiss.tmp").exists()
    assert cli.main(["verify", "--index", str(ix), "--repair", "--drop-missing"]) == 0
    out = capsys.readouterr().out
    assert "dropped 3 entries of files that no longer exist" in out and "warning" not in out
    _search_ok(ix, 9)


def test_repair_refuses_while_another_process_writes_and_what_it_cannot_fix(photos, tmp_path, capsys):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    ident = Searcher(ix).embedder.identity()
    with store.StoreWriter(ix, ident, IndexCfg()):
        assert cli.main(["verify", "--index", str(ix), "--repair"]) == 1
        assert "is being written by pid" in capsys.readouterr().err
    m = json.loads((ix / "manifest.json").read_text())
    (ix / "manifest.json").write_text(json.dumps({**m, "dim": 16}))
    assert cli.main(["verify", "--index", str(ix), "--repair"]) == 1
    err = capsys.readouterr().err
    assert "cannot repair" in err and "manifest says 16" in err
    with _db(ix) as con:  # nothing was deleted by the refused repair
        assert con.execute("SELECT count(*) FROM vectors").fetchone()[0] == 12
