"""Copy-detection data: the perceptual hash against a reference DCT, its flips and rotations, the
keypoint format, keypoint matching on real sample photos, and the hash search against brute force."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import ASSETS
from PIL import Image

from imgembed.config import ReaderCfg
from imgembed.ingest import copy_data as cd
from imgembed.ingest.edits import EDITS, make_copy
from imgembed.ingest.reader import open_image
from imgembed.query import hash_search
from imgembed.query.keypoint_match import match

PHOTOS = sorted(ASSETS.rglob("*.jpg"))


def photo(i: int) -> Image.Image:
    return open_image(PHOTOS[i].read_bytes(), ReaderCfg(), None)


def test_dct_matches_a_plain_loop_and_scipy():
    from scipy.fft import dctn

    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    ours = cd.dct_coefficients(g)  # a 64x64 input is not rescaled
    assert np.allclose(ours, dctn(g.astype(np.float64), norm="ortho")[:16, :16], atol=1e-8)
    x = g.astype(np.float64)
    n = 64
    for u, v in [(0, 0), (1, 0), (0, 3), (7, 11), (15, 15)]:  # the textbook formula, term by term
        cu = np.sqrt(1 / n) if u == 0 else np.sqrt(2 / n)
        cv = np.sqrt(1 / n) if v == 0 else np.sqrt(2 / n)
        total = sum(x[i, j] * np.cos(np.pi * (2 * i + 1) * u / (2 * n)) * np.cos(np.pi * (2 * j + 1) * v / (2 * n))
                    for i in range(n) for j in range(n))
        assert ours[u, v] == pytest.approx(cu * cv * total, abs=1e-8)


def _hashes(im: Image.Image) -> np.ndarray:
    return cd.dihedral_hashes(cd.dct_coefficients(cd.grey_rendering(im)))


def _dist(a: np.ndarray, b: np.ndarray) -> int:
    return int(hash_search.popcount_distance(a[None], b[None])[0])


def test_each_flip_and_rotation_is_one_of_the_eight_hashes():
    im = photo(0).resize((256, 256))  # square: the rendering of every orientation has the same grid
    h = _hashes(im)
    assert h.shape == (8, cd.HASH_BYTES) and len({bytes(x) for x in h}) == 8
    T = Image.Transpose
    for t in (T.FLIP_LEFT_RIGHT, T.FLIP_TOP_BOTTOM, T.ROTATE_90, T.ROTATE_180, T.ROTATE_270, T.TRANSPOSE,
              T.TRANSVERSE):
        plain = _hashes(im.transpose(t))[0]
        assert min(_dist(plain, v) for v in h) <= 4, t  # the same up to resampling noise
        assert _dist(plain, h[0]) > 40, t  # while the unrotated hash is far


def test_hash_survives_resizing_and_reencoding_and_tells_photos_apart():
    a, b = photo(0), photo(20)
    buf = io.BytesIO()
    a.resize((a.width // 3, a.height // 3)).save(buf, "JPEG", quality=50)
    small = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    assert _dist(_hashes(a)[0], _hashes(small)[0]) <= 16
    assert min(_dist(_hashes(a)[0], v) for v in _hashes(b)) > 64


def test_keypoints_pack_and_unpack():
    pts = np.array([[0.0, 0.0], [511.98, 3.5], [12.25, 400.0]], np.float32)
    des = np.arange(96, dtype=np.uint8).reshape(3, 32)
    p2, d2, size = cd.unpack_keypoints(cd.pack_keypoints(pts, des, (512, 384)))
    assert np.allclose(p2, pts, atol=1 / 64) and (d2 == des).all() and size == (512, 384)
    empty = cd.unpack_keypoints(cd.pack_keypoints(np.zeros((0, 2)), np.zeros((0, 32), np.uint8)))
    assert empty[0].shape == (0, 2) and empty[1].shape == (0, 32)
    with pytest.raises(ValueError):
        cd.unpack_keypoints(cd.pack_keypoints(pts, des)[:-1])


def _keypoints(im: Image.Image):
    return cd.unpack_keypoints(cd.copy_data_of_image(im).keypoints)


@pytest.mark.parametrize("edit", ["crop80", "crop60", "pad", "banner", "rot90", "resize"])
def test_keypoints_match_an_edited_copy_not_another_photo(edit):
    rng = np.random.default_rng(1)
    original = photo(3)
    data, _ = make_copy(edit, original, PHOTOS[3].read_bytes(), rng)
    copy = open_image(data, ReaderCfg(), None)
    kp, kc = _keypoints(original), _keypoints(copy)
    m = match(kp, kc, cd.SIDE).inliers
    assert m >= 15, (edit, m)
    others = [match(kp, _keypoints(photo(i)), cd.SIDE).inliers for i in (4, 15, 30, 45)]
    assert max(others) < 15, others


def test_a_transform_that_is_no_edit_is_refused():
    pts = np.random.default_rng(0).uniform(0, 500, (40, 2)).astype(np.float32)
    des = np.random.default_rng(1).integers(0, 256, (40, 32)).astype(np.uint8)
    size = (512, 512)
    assert match((pts, des, size), (pts, des, size), cd.SIDE).inliers == 40  # the same keypoints: identity
    squashed = (pts * 0.1).astype(np.float32)  # everything mapped onto a tenth of the photo
    assert match((pts, des, size), (squashed, des, size), cd.SIDE).inliers == 0
    for degrees in (45, 5):  # no edit turns a photo by that
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        turned = (pts @ np.array([[c, s], [-s, c]], np.float32)).astype(np.float32) + 100
        assert match((pts, des, size), (turned, des, (900, 900)), cd.SIDE).inliers == 0, degrees
        assert match((pts, des, size), (turned, des, (900, 900)), cd.SIDE, rotation_tolerance=50).inliers == 40
    strip = pts.copy()
    strip[:, 1] = strip[:, 1] * 0.05 + 250  # all matches in a thin strip (a shared caption)
    others = np.random.default_rng(3).uniform(0, 500, (40, 2)).astype(np.float32)
    des2 = np.concatenate([des, np.random.default_rng(4).integers(0, 256, (40, 32)).astype(np.uint8)])
    a = (np.concatenate([strip, others]), des2, size)
    moved = np.random.default_rng(5).uniform(0, 500, (40, 2)).astype(np.float32)  # the rest: elsewhere in B
    b = (np.concatenate([strip, moved]), des2, size)
    m = match(a, b, cd.SIDE)
    assert m.inliers == 0 and m.extent < 0.1


def _brute_force(codes, have, radius):
    out = {}
    n = len(codes)
    for a in range(n):
        for b in range(a + 1, n):
            if not (have[a] and have[b]):
                continue
            d = min(min(_dist(codes[a, v], codes[b, 0]) for v in range(8)),
                    min(_dist(codes[b, v], codes[a, 0]) for v in range(8)))
            if d <= radius:
                out[(a, b)] = (d, _dist(codes[a, 0], codes[b, 0]))
    return out


@pytest.mark.parametrize("exact", [True, False])
def test_near_pairs_match_brute_force(monkeypatch, exact):
    if not exact:
        monkeypatch.setattr(hash_search, "EXACT_MAX", 10)  # the inverted-file index
        monkeypatch.setattr(hash_search, "NPROBE", 64)
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, (300, 8, 32)).astype(np.uint8)
    for a in range(0, 60, 3):  # planted copies: a few bits off, some through a rotated hash
        v = int(rng.integers(0, 8))
        bits = np.unpackbits(codes[a, v])
        bits[rng.choice(256, int(rng.integers(0, 20)), replace=False)] ^= 1
        codes[a + 1, 0] = np.packbits(bits)
    have = np.ones(300, bool)
    have[5] = False
    got = hash_search.near_pairs(codes, have, 24)
    want = _brute_force(codes, have, 24)
    assert got == want and len(want) >= 15


def test_every_edit_makes_a_decodable_copy():
    rng = np.random.default_rng(0)
    im, data = photo(1), PHOTOS[1].read_bytes()
    for name in EDITS:
        out, suffix = make_copy(name, im, data, rng)
        copy = open_image(out, ReaderCfg(), None)
        assert copy.width > 0 and (suffix in (".jpg", ".png") or (suffix is None and out == data))
    grey = np.asarray(open_image(make_copy("grey", im, data, rng)[0], ReaderCfg(), None))
    assert (grey[..., 0] == grey[..., 1]).all()  # decoded to RGB, all channels equal
    with pytest.raises(ValueError, match="unknown edit"):
        make_copy("sepia", im, data, rng)


def test_uniform_borders_are_trimmed():
    rng = np.random.default_rng(0)
    content = rng.integers(0, 256, (100, 80)).astype(np.uint8)
    padded = np.zeros((160, 160), np.uint8)
    padded[30:130, 40:120] = content
    assert (cd.trim_borders(padded) == content).all()
    assert (cd.trim_borders(content) == content).all()  # no border: untouched
    flat = np.full((50, 50), 7, np.uint8)
    assert cd.trim_borders(flat).shape == (50, 50)  # one colour all over: kept
    im = photo(2)
    boxed = Image.new("RGB", (im.width + 200, im.height + 60))
    boxed.paste(im, (100, 30))
    assert _dist(_hashes(im)[0], _hashes(boxed)[0]) <= 24  # a padded copy hashes like its original
    assert cd.border_box(padded) == (30, 40, 100, 80)


@pytest.mark.parametrize("size, pad, detail",
                         [((1024, 768), 0, 1.0), ((256, 192), 0, 0.5), ((300, 200), 50, 300 / 512)])
def test_a_rendering_knows_how_much_detail_its_file_holds(size, pad, detail):
    """Detail: the file's own pixels per rendering pixel inside its borders, at most 1 (so a small
    photo or a padded small photo, scaled up to the rendering, says so)."""
    im = photo(0).convert("RGB").resize(size)
    if pad:
        boxed = Image.new("RGB", (size[0] + 2 * pad, size[1] + 2 * pad))
        boxed.paste(im, (pad, pad))
        im = boxed
    r = cd.rendering(im)
    assert max(r.grey.shape) == cd.SIDE
    assert r.detail == pytest.approx(detail, abs=0.01)
    assert np.array_equal(r.grey, cd.grey_rendering(im))  # what the hash and the keypoints are computed from

