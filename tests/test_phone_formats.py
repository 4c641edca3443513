"""Phone formats: HEIC/HEIF (pillow-heif) and AVIF go through the one reader with the same guards as
JPEG: restricted plugins, pixel and byte limits, EXIF orientation, ICC to sRGB, more than 8 bits."""

import io
import struct

import numpy as np
import pillow_heif
import pytest
from helpers import encode, make_photo, tiny_cfg, write_photos
from PIL import Image

from imgembed.config import IMAGE_FORMATS, ReaderCfg
from imgembed.indexer import index_folder
from imgembed.ingest.preprocess import Preprocess
from imgembed.ingest.reader import ImageSkipped, decode_file, decode_query, open_image
from imgembed.query.search import Searcher

PRE = Preprocess(size=32, resize=32, interpolation="bilinear")
PHONE = ["HEIF", "AVIF"]


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def rgb_profile(red, green, blue, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB display profile with the given (D50) primaries and one gamma curve."""
    name = b"imgembed test wide RGB"

    def xyz(v):
        return b"XYZ " + b"\0" * 4 + b"".join(_s15(c) for c in v)

    curv = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(name) + 1) + name + b"\0" + b"\0" * 78
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(red)), (b"gXYZ", xyz(green)),
            (b"bXYZ", xyz(blue)), (b"rTRC", curv), (b"gTRC", curv), (b"bTRC", curv)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    header = struct.pack(">I", offset + len(data)) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
    header += b"\0" * 12 + b"acsp" + b"\0" * 28 + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data


# Adobe RGB (1998) primaries adapted to D50: a wider gamut than sRGB, as many cameras write.
WIDE = rgb_profile((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))


def phone_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    return encode(im, fmt, quality=kw.pop("quality", 95), **kw)


def diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def test_heic_heif_and_avif_are_listed_and_accepted():
    for ext in (".heic", ".heif", ".avif"):
        assert ext in ReaderCfg().extensions
    assert {"HEIF", "AVIF"} <= set(ReaderCfg().formats)
    assert IMAGE_FORMATS[".heic"] == "HEIF"


@pytest.mark.parametrize("fmt", PHONE)
def test_phone_formats_decode_like_their_jpeg_twin(fmt):
    im = make_photo(4, size=(120, 90))
    phone = open_image(phone_bytes(im, fmt), ReaderCfg(), None)
    jpeg = open_image(phone_bytes(im, "JPEG"), ReaderCfg(), None)
    assert phone.mode == "RGB" and phone.size == (120, 90)
    assert diff(phone, jpeg) < 6  # both lossy at high quality


@pytest.mark.parametrize("fmt", PHONE)
def test_exif_orientation_is_applied(fmt):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = open_image(phone_bytes(im, fmt, exif=exif.tobytes()), ReaderCfg(), None)
    assert out.size == (20, 40)
    arr = np.asarray(out).astype(int)
    assert arr[5, 10, 2] > 200 and arr[35, 10, 0] > 200  # blue on top after rotation


@pytest.mark.parametrize("fmt", PHONE)
def test_shown_size_is_upright(tmp_path, fmt):
    im = make_photo(2, size=(64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.img"
    p.write_bytes(phone_bytes(im, fmt, exif=exif.tobytes()))
    d = decode_file(str(p), PRE, ReaderCfg())
    assert (d.width, d.height) == (32, 64)


@pytest.mark.parametrize("fmt", ["JPEG", *PHONE])
def test_an_embedded_profile_is_converted_to_srgb(fmt):
    im = Image.new("RGB", (32, 32), (200, 30, 30))
    tagged = open_image(phone_bytes(im, fmt, icc_profile=WIDE), ReaderCfg(), None)
    plain = open_image(phone_bytes(im, fmt), ReaderCfg(), None)
    red = np.asarray(tagged)[16, 16].astype(int)
    assert red[0] > np.asarray(plain)[16, 16][0] + 15  # Adobe RGB red is redder than sRGB red


def test_ten_bit_heic_is_scaled_not_clipped():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65535, (24, 32, 3)).astype(np.uint16)
    heif = pillow_heif.from_bytes(mode="RGB;16", size=(32, 24), data=arr.tobytes())
    buf = io.BytesIO()
    heif.save(buf, quality=-1)  # lossless, stored at 10 bits
    out = open_image(buf.getvalue(), ReaderCfg(), None)
    assert out.mode == "RGB"
    assert abs(np.asarray(out).astype(float).mean() - (arr >> 8).mean()) < 3


@pytest.mark.parametrize("fmt", PHONE)
def test_pixel_and_byte_limits_hold(fmt):
    data = phone_bytes(make_photo(1, size=(300, 200)), fmt)
    with pytest.raises(ImageSkipped, match="--max-pixels"):
        open_image(data, ReaderCfg(max_pixels=10_000), None)
    with pytest.raises(ImageSkipped, match="above the"):
        decode_query(data, PRE, ReaderCfg(max_bytes=100))


@pytest.mark.parametrize("fmt", PHONE)
def test_truncated_phone_files_are_skipped(fmt):
    data = phone_bytes(make_photo(1, size=(300, 200)), fmt)
    with pytest.raises(ImageSkipped):
        open_image(data[: len(data) // 2], ReaderCfg(), None)


def test_a_phone_file_is_opened_only_when_its_format_is_accepted():
    data = phone_bytes(make_photo(1), "HEIF")
    jpeg_only = ReaderCfg(extensions=(".jpg",))
    with pytest.raises(ImageSkipped, match="not an image"):
        open_image(data, jpeg_only, None)


def test_a_folder_of_phone_photos_is_indexed(tmp_path):
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "IMG_0001.HEIC").write_bytes(phone_bytes(make_photo(0, size=(80, 60)), "HEIF"))
    (folder / "IMG_0002.heif").write_bytes(phone_bytes(make_photo(1, size=(80, 60)), "HEIF"))
    (folder / "IMG_0003.avif").write_bytes(phone_bytes(make_photo(2, size=(60, 80)), "AVIF"))
    s = index_folder(folder, tmp_path / "ix", tiny_cfg())
    assert (s.indexed, s.skipped, s.total) == (3, [], 3)
    searcher = Searcher(tmp_path / "ix")
    with searcher.snapshot.read():
        sizes = {r.relpath: (r.width, r.height) for r in searcher.snapshot.iter_rows()}
    assert sizes == {b"IMG_0001.HEIC": (80, 60), b"IMG_0002.heif": (80, 60), b"IMG_0003.avif": (60, 80)}


@pytest.mark.parametrize("fmt", PHONE)
def test_a_phone_photo_finds_its_jpeg_twin(tmp_path, fmt):
    """The HEIC (or AVIF) copy of a photo, as a query, finds the JPEG of the same photo first."""
    gallery = tmp_path / "gallery"
    paths = write_photos(gallery, 24)
    index_folder(gallery, tmp_path / "ix", tiny_cfg())
    searcher = Searcher(tmp_path / "ix")
    for i in (3, 10, 17):
        twin = phone_bytes(Image.open(paths[i]).convert("RGB"), fmt)
        hits = searcher.search_image_bytes(twin, k=3)
        assert hits[0].path == str(paths[i].resolve()), (i, [h.path for h in hits])
        assert hits[0].score > 0.98


def test_a_heic_photo_is_found_by_its_jpeg_twin(tmp_path):
    """A gallery of HEIC photos (generated here); the JPEG of one of them finds its HEIC first."""
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    jpegs = write_photos(tmp_path / "jpegs", 24)
    for p in jpegs:
        (gallery / p.with_suffix(".HEIC").name).write_bytes(phone_bytes(Image.open(p).convert("RGB"), "HEIF"))
    s = index_folder(gallery, tmp_path / "ix", tiny_cfg())
    assert (s.indexed, s.skipped) == (24, [])
    searcher = Searcher(tmp_path / "ix")
    for i in range(24):
        hits = searcher.search_image_file(jpegs[i], k=3)
        assert hits[0].path == str((gallery / jpegs[i].with_suffix(".HEIC").name).resolve()), i
        assert hits[0].score > 0.98
