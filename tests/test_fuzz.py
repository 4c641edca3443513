"""Fuzzing the decoder: nothing but ImageSkipped escapes any image-loading entry point."""

from __future__ import annotations

import os
import tempfile

import numpy as np
from helpers import SRGB_PRIMARIES, encode, icc_profile, make_photo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgembed.config import ReaderCfg
from imgembed.ingest import reader
from imgembed.ingest.preprocess import Preprocess

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
        # The formats and features of the hostile-files issue: float and 16-bit TIFF, an ICC profile,
        # PNG text chunks, lossless WebP with alpha, a PostScript file, and an image large enough to
        # be reduced before it is converted.
        encode(Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255, "F"), "TIFF"),
        encode(Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257), "TIFF"),
        encode(base, "JPEG", icc_profile=icc_profile(SRGB_PRIMARIES[::-1], "fuzz profile")),
        encode(base, "PNG", pnginfo=_text_chunks()),
        encode(base.convert("RGBA"), "WEBP", lossless=True),
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        encode(make_photo(23, size=(256, 200)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        encode(base, "HEIF", quality=80, exif=exif.tobytes()),
        encode(base, "AVIF", quality=80, exif=exif.tobytes()),
    ]


def _text_chunks():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>" * 20, zip=True)
    info.add_text("Comment", "fuzz", zip=True)
    return info


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


def _thumbnail(path: str) -> Image.Image:
    from imgembed.query.thumbnails import thumbnail

    return thumbnail(path, 32, ReaderCfg(max_pixels=4_000_000))


def _decode_or_skip(data: bytes, tmp: str) -> None:
    """The image-loading entry points: bytes (uploads), files (indexing) and thumbnails."""
    with open(tmp, "wb") as f:
        f.write(data)
    # Metadata is best effort: whatever the bytes, a PhotoMeta comes back and nothing is raised.
    assert isinstance(reader.metadata_of(data, ReaderCfg()), reader.PhotoMeta)
    assert isinstance(reader.read_metadata(tmp, ReaderCfg()), reader.PhotoMeta)
    for call in (lambda: reader.decode_query(data, PRE, ReaderCfg(max_pixels=4_000_000)),
                 lambda: reader.decode_file(tmp, PRE, ReaderCfg(max_pixels=4_000_000)),
                 lambda: _thumbnail(tmp)):
        try:
            out = call()
        except reader.ImageSkipped as e:
            msg = str(e)
            assert msg and "\n" not in msg
            continue
        if isinstance(out, Image.Image):
            assert out.mode == "RGB" and out.size == (32, 32)
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
                      st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF", b"BM", b"II*\0",
                                       b"\0\0\0\x18ftypheic", b"\0\0\0\x1cftypavif"])
                      .flatmap(lambda magic: st.binary(max_size=1024).map(lambda rest: magic + rest))))
def test_fuzz_random_bytes_only_raise_image_skipped(data):
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        _decode_or_skip(data, f.name)
