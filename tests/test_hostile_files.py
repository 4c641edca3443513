"""Hostile and unusual image files: only the accepted formats' plugins ever run, decode memory stays
bounded, colour and range are read right, and files that lie about themselves are skipped."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from helpers import (
    ASSETS,
    EPS,
    SRGB_PRIMARIES,
    declared_png,
    encode,
    icc_profile,
    lying_jpeg,
    make_photo,
    xmp_png,
)
from PIL import Image, PngImagePlugin

from imgembed.config import IMAGE_FORMATS, QUERY_MAX_PIXELS, ReaderCfg, query_reader_cfg
from imgembed.ingest import gpu_decode, pixels, reader
from imgembed.ingest.preprocess import Preprocess
from imgembed.query.thumbnails import thumbnail

PRE = Preprocess(size=32, resize=32, interpolation="bilinear")
SWAPPED = icc_profile((SRGB_PRIMARIES[2], SRGB_PRIMARIES[1], SRGB_PRIMARIES[0]), "red and blue swapped")


# ---------------------------------------------------------------- 2: only the accepted plugins run


@pytest.fixture
def foreign_plugins(monkeypatch):
    """Every Pillow plugin imgembed does not accept, replaced by one that records being asked."""
    Image.init()
    called = []
    accepted = set(IMAGE_FORMATS.values()) | {"MPO"}  # MPO: multi-picture JPEGs, opened by the JPEG plugin
    for fmt, (factory, accept) in list(Image.OPEN.items()):
        if fmt not in accepted:
            def spy(fp, filename=None, *args, _fmt=fmt):
                called.append(_fmt)
                raise SyntaxError("not run")
            monkeypatch.setitem(Image.OPEN, fmt, (spy, accept))
    return called


def test_a_postscript_file_named_jpg_never_reaches_another_plugin(tmp_path, foreign_plugins):
    path = tmp_path / "holiday.jpg"
    path.write_bytes(EPS)
    entries = [lambda: reader.decode_file(str(path), PRE, ReaderCfg()),  # indexing
               lambda: reader.decode_query(EPS, PRE, query_reader_cfg()),  # search and the app's uploads
               lambda: reader.open_image(EPS, ReaderCfg(), 64),  # the app's preview of an upload
               lambda: thumbnail(str(path), 64)]  # thumbnails of indexed photos
    for call in entries:
        with pytest.raises(reader.ImageSkipped, match=r"not an image \(format not recognised\)"):
            call()
    assert gpu_decode.probe(EPS, ReaderCfg()) is None
    assert foreign_plugins == []


def test_the_accepted_formats_come_from_one_list():
    assert ReaderCfg().extensions == tuple(IMAGE_FORMATS)
    assert set(ReaderCfg().formats) == set(IMAGE_FORMATS.values())
    assert ReaderCfg(extensions=(".png",)).formats == ("PNG",)
    # Every accepted format decodes, through the one list.
    for ext, fmt in IMAGE_FORMATS.items():
        data = encode(make_photo(1, size=(40, 30)), fmt)
        assert reader.decode_query(data, PRE, ReaderCfg(extensions=(ext,))).shape == (1, 3, 32, 32)
    png = encode(make_photo(1, size=(40, 30)), "PNG")
    with pytest.raises(reader.ImageSkipped, match="not an image"):  # PNG bytes, only JPEG accepted
        reader.decode_query(png, PRE, ReaderCfg(extensions=(".jpg",)))


def test_a_one_byte_file_is_not_an_image(tmp_path):
    for data in (b"x", b"\x0c", b"\xff", b"BM", b"II"):
        with pytest.raises(reader.ImageSkipped, match=r"^not an image \(format not recognised\)$"):
            reader.decode_query(data, PRE, ReaderCfg())


# ---------------------------------------------------------------- 5: decode memory


@pytest.mark.parametrize("mode", ["F", "I;16", "RGBA", "P", "L"])
def test_large_images_are_reduced_before_any_conversion(monkeypatch, mode):
    """The conversion to RGB (and every copy it makes) sees the reduced image, never the full one."""
    seen = []
    real = pixels.to_rgb

    def record(im):
        seen.append(im.size)
        return real(im)

    monkeypatch.setattr(pixels, "to_rgb", record)
    if mode == "F":
        im = Image.new("F", (1200, 1000), 0.5)
    elif mode == "I;16":
        im = Image.fromarray(np.full((1000, 1200), 40000, np.uint16))
    else:
        im = make_photo(3, size=(120, 100)).resize((1200, 1000)).convert(mode)
    data = encode(im, "TIFF" if mode == "F" else "PNG", **({"compress_level": 1} if mode != "F" else {}))
    out = reader.decode_query(data, PRE, ReaderCfg())
    assert out.shape == (1, 3, 32, 32)
    assert seen and max(seen[0]) <= 1200 / 10 and min(seen[0]) >= pixels.REDUCING_GAP * PRE.resize


@pytest.mark.parametrize("orientation", [1, 3, 6])
@pytest.mark.parametrize("mode", ["RGB", "I;16"])
def test_reduced_decoding_gives_the_same_pixels_as_before(mode, orientation):
    """Reducing first is the box-filter step the final resize took anyway: the same model input as
    converting and resizing the full-size image (partial blocks at the edges included)."""
    photo = Image.open(sorted(ASSETS.rglob("*.jpg"))[0]).convert("RGB").resize((1201, 901))
    if mode == "I;16":
        photo = Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    turn = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90}[orientation]
    stored = photo.transpose(turn) if turn else photo
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "PNG", exif=exif.tobytes())
    ours = reader.decode_query(data, PRE, ReaderCfg())[0].numpy().astype(int)
    ref = reader.to_tensor(reader.to_rgb(photo), PRE).numpy().astype(int)
    assert np.abs(ours - ref).max() <= 1


def test_large_decodes_run_one_at_a_time(monkeypatch):
    monkeypatch.setattr(reader, "LARGE_DECODE_BYTES", 100_000)  # 160 x 160 RGB and above are large
    running, most = [0], [0]
    real = pixels.reduce_for
    lock = threading.Lock()

    def slow_reduce(im, target):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return real(im, target)

    monkeypatch.setattr(pixels, "reduce_for", slow_reduce)
    big = encode(make_photo(1, size=(400, 300)), "PNG")
    small = encode(make_photo(2, size=(60, 40)), "PNG")

    def decode_all(data):
        threads = [threading.Thread(target=reader.decode_query, args=(data, PRE, ReaderCfg())) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    decode_all(big)
    assert most[0] == 1
    most[0] = 0
    decode_all(small)  # small decodes are not held back
    assert most[0] > 1


def test_query_images_have_a_lower_pixel_limit_than_indexing():
    data = declared_png(8000, 8000)  # 64 MP declared
    assert QUERY_MAX_PIXELS < ReaderCfg().max_pixels
    with pytest.raises(reader.ImageSkipped, match="above the 50 MP limit .for a query image; shrink it first"):
        reader.decode_query(data, PRE, query_reader_cfg())
    with pytest.raises(reader.ImageSkipped, match="broken image"):  # the index limit lets it through to decoding
        reader.decode_query(data, PRE, ReaderCfg())


@pytest.mark.slow
def test_peak_memory_of_a_small_16_bit_png_with_many_pixels(tmp_path):
    """A 16-bit PNG of 64 MP takes 2 bytes a pixel to decode, and the reduction and conversion after
    it almost nothing more (before: about 19 bytes a pixel; scripts/bench_decode_memory.py)."""
    import os
    import subprocess
    import sys

    import imgembed

    side = 8000
    path = tmp_path / "gradient16.png"
    Image.fromarray(np.broadcast_to(np.linspace(0, 65535, side).astype(np.uint16), (side, side))).save(path)
    # torch is imported first: the reader imports it on first use (to make tensors), and its import
    # is no part of what decoding costs
    code = ("import sys\nimport torch\nfrom imgembed.config import ReaderCfg\nfrom imgembed.ingest import reader\n"
            "from imgembed.ingest.preprocess import Preprocess\n"
            "status = lambda k: int(dict(l.split(':', 1) for l in open('/proc/self/status'))[k].split()[0])\n"
            "open('/proc/self/clear_refs', 'w').write('5')\nbefore = status('VmRSS')\n"
            "reader.decode_file(sys.argv[1], Preprocess(), ReaderCfg())\n"
            "print((status('VmHWM') - before) * 1024)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": os.path.dirname(os.path.dirname(imgembed.__file__)), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    rise = int(r.stdout.split()[-1])
    assert rise < 4 * side * side, f"decoding took {rise / 2**20:.0f} MiB for {side * side / 1e6:.0f} MP"


# ---------------------------------------------------------------- 8-11: colour, range, metadata, lies


def test_a_float_tiff_in_0_to_1_is_read_as_such():
    grey = Image.new("F", (64, 48), 0.8)
    out = reader.decode_query(encode(grey, "TIFF"), PRE, ReaderCfg())
    assert abs(out.float().mean().item() - 0.8 * 255) < 2
    bright = Image.new("F", (64, 48), 200.0)  # floats already in 0..255 stay as they are
    assert abs(reader.decode_query(encode(bright, "TIFF"), PRE, ReaderCfg()).float().mean().item() - 200) < 2
    nan = np.full((48, 64), 0.5, np.float32)
    nan[:4] = np.nan
    out = reader.decode_query(encode(Image.fromarray(nan, "F"), "TIFF"), PRE, ReaderCfg())
    assert out.float().mean().item() > 100


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_an_embedded_colour_profile_is_converted_to_srgb(fmt):
    red = Image.new("RGB", (64, 48), (255, 0, 0))
    kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    tagged = reader.decode_query(encode(red, fmt, icc_profile=SWAPPED, **kw), PRE, ReaderCfg())[0]
    plain = reader.decode_query(encode(red, fmt, **kw), PRE, ReaderCfg())[0]
    r, _, b = (tagged[c].float().mean().item() for c in range(3))
    assert b > 200 and r < 60, (r, b)  # "red" under that profile is sRGB blue
    assert plain[0].float().mean().item() > 240  # untagged: read as sRGB, unchanged
    srgb = icc_profile(SRGB_PRIMARIES, "sRGB IEC61966-2.1")  # an sRGB profile: left alone
    same = reader.decode_query(encode(red, fmt, icc_profile=srgb, **kw), PRE, ReaderCfg())[0]
    assert np.array_equal(same.numpy(), plain.numpy())


def test_a_jpeg_with_a_wide_gamut_profile_is_decoded_on_the_cpu():
    data = encode(Image.new("RGB", (64, 48), (255, 0, 0)), "JPEG", icc_profile=SWAPPED)
    assert gpu_decode.probe(data, ReaderCfg()) is None
    assert gpu_decode.probe(encode(Image.new("RGB", (64, 48)), "JPEG"), ReaderCfg()) is not None


def test_a_broken_colour_profile_leaves_the_pixels_as_stored():
    data = encode(Image.new("RGB", (64, 48), (255, 0, 0)), "PNG", icc_profile=b"not a profile" * 20)
    assert reader.decode_query(data, PRE, ReaderCfg())[0][0].float().mean().item() > 240


@pytest.mark.parametrize("chunk", ["iTXt", "iTXt compressed", "zTXt"])
def test_a_png_with_a_large_metadata_chunk_is_decoded(chunk):
    if chunk == "zTXt":
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "history " * 400_000, zip=True)  # 3.2 MB, above Pillow's 1 MB per chunk
        data = encode(make_photo(4, size=(64, 48)), "PNG", pnginfo=info)
    else:
        data = xmp_png(zip_text=chunk.endswith("compressed"))
    assert reader.decode_query(data, PRE, ReaderCfg()).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_declaring_more_pixels_than_its_data_holds_is_skipped(tmp_path, progressive):
    data = lying_jpeg(4000, 3000, progressive)
    with pytest.raises(reader.ImageSkipped, match=r"declares 4000x3000 but its \d+ bytes cannot hold"):
        reader.decode_query(data, PRE, ReaderCfg())
    path = tmp_path / "liar.jpg"
    path.write_bytes(data)
    with pytest.raises(reader.ImageSkipped, match="the JPEG data ends early"):
        reader.decode_file(str(path), PRE, ReaderCfg())
    with pytest.raises(reader.ImageSkipped, match="the JPEG data ends early"):
        gpu_decode.probe(data, ReaderCfg())


@pytest.mark.parametrize("kw", [{"optimize": True}, {"progressive": True}, {"quality": 10}])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_valid_jpegs_near_the_byte_floor_are_kept(kw, mode):
    """Flat images compress to nearly the fewest bytes a JPEG can have; they must still decode."""
    data = encode(Image.new(mode, (2000, 1500), 128), "JPEG", **kw)
    assert reader.decode_query(data, PRE, ReaderCfg()).shape == (1, 3, 32, 32)
    assert len(data) >= reader._jpeg_min_bytes(data, Image.open(io.BytesIO(data)))
