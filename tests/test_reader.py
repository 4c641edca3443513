"""Decoding: modes, orientation, draft decoding, and bad files skipped with a reason."""

import io

import numpy as np
import pytest
from helpers import make_photo
from PIL import Image

from imgembed.config import ReaderCfg
from imgembed.ingest.preprocess import Preprocess
from imgembed.ingest.reader import ImageSkipped, decode_file, decode_query, open_image, to_array, to_rgb

PRE = Preprocess(size=32, resize=32, interpolation="bilinear")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_every_mode_becomes_rgb(mode):
    im = make_photo(1).convert("RGB")
    if mode == "I;16":
        arr = (np.asarray(im.convert("L"), dtype=np.uint16) * 257)
        im = Image.fromarray(arr)
        assert im.mode.startswith("I;16")
    else:
        im = im.convert(mode)
    out = to_rgb(im)
    assert out.mode == "RGB" and out.size == im.size
    assert np.asarray(out).mean() > 10  # not black: 16-bit was scaled, not clipped


def test_transparency_composites_on_white():
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert np.asarray(to_rgb(im))[0, 0].tolist() == [255, 255, 255]


def test_exif_rotation_is_applied():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = open_image(encode(im, "JPEG", exif=exif.tobytes(), quality=95), ReaderCfg(), None)
    assert out.size == (20, 40)
    arr = np.asarray(out).astype(int)
    assert arr[5, 10, 2] > 200 and arr[35, 10, 0] > 200  # blue on top after rotation


def test_jpeg_draft_decodes_large_photos_smaller(tmp_path):
    big = make_photo(3, size=(2000, 1500))
    data = encode(big, "JPEG", quality=90)
    small = open_image(data, ReaderCfg(jpeg_draft=True), draft_to=256)
    full = open_image(data, ReaderCfg(jpeg_draft=False), draft_to=256)
    assert full.size == (2000, 1500) and small.size[1] >= 256 and small.size[0] < 1000
    p = tmp_path / "big.jpg"
    p.write_bytes(data)
    d = decode_file(str(p), PRE, ReaderCfg())
    assert (d.width, d.height) == (2000, 1500) and d.pixels.shape == (3, 32, 32)


@pytest.mark.parametrize("size", [(640, 480), (400, 533), (300, 300), (225, 1000)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_centre_crop_is_the_crop_of_the_resized_photo(size, interpolation):
    # to_array resamples only the box the crop keeps; it must be the centre of the whole resize
    pre = Preprocess(size=224, resize=256, interpolation=interpolation)
    im = make_photo(7, size=size)
    w, h = size
    scale = 256 / min(w, h)
    nw, nh = max(224, round(w * scale)), max(224, round(h * scale))
    left, top = (nw - 224) // 2, (nh - 224) // 2
    whole = im.resize((nw, nh), getattr(Image.Resampling, interpolation.upper()))
    want = np.asarray(whole.crop((left, top, left + 224, top + 224)), dtype=np.int16).transpose(2, 0, 1)
    got = to_array(im, pre).astype(np.int16)
    assert got.shape == (3, 224, 224)
    diff = np.abs(got - want)
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 2  # rounding, not a shifted or scaled crop
    shifted = np.abs(got[:, :, 1:] - want[:, :, :-1]).mean()
    assert shifted > 5 * max(diff.mean(), 0.1)  # one pixel off would show (the photo is noisy)


def test_gif_first_frame():
    frames = [Image.new("P", (10, 10), i) for i in (1, 2)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_query(data, PRE, ReaderCfg()).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"hello, not an image", "not an image"),
    (None, "broken image"),  # truncated JPEG
])
def test_bad_input_is_skipped_with_reason(data, reason):
    if data is None:
        data = encode(make_photo(2, size=(200, 200)), "JPEG")[:400]
    with pytest.raises(ImageSkipped, match=reason):
        decode_query(data, PRE, ReaderCfg())


def test_decompression_bomb_refused_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageSkipped, match="above the 1 MP limit"):
        decode_query(data, PRE, ReaderCfg(max_pixels=1_000_000))
