"""Two different things photographed on one patterned floor match by keypoints, on the floor, and a
second shot of one thing from a shifted camera matches as a crop would; the pixel check tells both
from copies. Synthetic scenes: a busy, non-repeating floor with a subject over the middle 60% of
each side (as a garment photographed from above fills the frame)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imgembed.config import BackboneCfg, IndexJobCfg
from imgembed.index.snapshot import Snapshot
from imgembed.indexer import index_folder
from imgembed.ingest.copy_data import SIDE, Rendering, copy_data_of_image, grey_rendering, rendering, unpack_keypoints
from imgembed.ingest.edits import make_copy
from imgembed.query import pixel_check
from imgembed.query.copies import MIN_AGREEMENT, MIN_CORRELATION, PRESETS, find_duplicates
from imgembed.query.keypoint_match import match

TINY = "test-tiny"
OTHER = dict(subject_seed=3, level=190, box=(0.15, 0.3, 0.75, 0.85))  # another thing, elsewhere on the floor


def scene(subject_seed: int, level: int, box=(0.2, 0.2, 0.8, 0.8), floor_seed: int = 1, size=(400, 533)) -> Image.Image:
    """One floor (``floor_seed``) with a subject of grey ``level`` and texture ``subject_seed`` on it,
    over ``box`` (left, top, right, bottom, as shares of the width and height)."""
    w, h = size
    rng = np.random.default_rng(floor_seed)
    im = Image.new("RGB", size, (150, 140, 130))
    d = ImageDraw.Draw(im)
    for _ in range(400):
        x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(4, 30)
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x - r, y - r, x + r, y + r),
                                                           fill=tuple(int(v) for v in rng.integers(40, 230, 3)))
    rng = np.random.default_rng(subject_seed)
    box = (box[0] * w, box[1] * h, box[2] * w, box[3] * h)
    d.rectangle(box, fill=(level,) * 3)
    for _ in range(108):
        x, y, r = rng.uniform(box[0], box[2]), rng.uniform(box[1], box[3]), rng.integers(3, 12)
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(np.clip(level + v, 0, 255)) for v in rng.integers(-50, 50, 3)))
    return im


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _data(im: Image.Image):
    """(keypoints, reduced rendering) of a photo, as the index and the finder make them."""
    return unpack_keypoints(copy_data_of_image(im).keypoints), pixel_check.reduce(grey_rendering(im))


def _copy(im: Image.Image, edit: str, seed: int = 0) -> Image.Image:
    data, _ = make_copy(edit, im, _jpeg(im), np.random.default_rng(seed))
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_two_things_on_one_floor_match_by_keypoints_but_not_by_pixels():
    (ka, sa), (kb, sb) = _data(scene(2, 60)), _data(scene(**OTHER))
    m = match(ka, kb, SIDE)
    assert m.inliers >= PRESETS["copies"].inliers  # the floor alone passes every keypoint test
    assert pixel_check.agreement(sa, sb, m.transform) < MIN_AGREEMENT


@pytest.mark.parametrize("edit", ["crop80", "crop60", "banner", "colour", "grey", "resize", "pad", "rot90"])
def test_copies_of_a_photo_on_that_floor_agree(edit):
    a = scene(2, 60)
    m, agree, corr = _pixels(a, _copy(a, edit))
    assert m.inliers >= PRESETS["copies"].inliers
    assert agree >= MIN_AGREEMENT
    assert corr >= MIN_CORRELATION


def textured_scene(size=(1600, 2132)) -> Image.Image:
    """:func:`scene` at 4x the size, with a fine grain over everything (cloth, paper, wood), which a
    camera resolves but which moves with the slightest change of viewpoint."""
    grain = np.random.default_rng(9).normal(0, 40, (size[1], size[0])).astype(np.float32)
    import cv2

    grain = cv2.GaussianBlur(grain, (0, 0), 2.0)[..., None]
    return Image.fromarray(np.clip(np.asarray(scene(2, 60, size=size), np.float32) + grain, 0, 255).astype(np.uint8))


def shot(world: Image.Image, zoom: float, keystone: float, light: float, seed: int, size=(400, 533)) -> Image.Image:
    """A camera's JPEG of ``world``: zoomed in by ``zoom`` about the centre, tilted (the top edge
    ``keystone`` of the width narrower), light falling off by ``light`` across the frame, sensor noise."""
    w, h = world.width / zoom, world.height / zoom
    x0, y0, k = (world.width - w) / 2, (world.height - h) / 2, keystone * w
    im = world.transform(size, Image.Transform.QUAD, (x0 + k, y0, x0, y0 + h, x0 + w, y0 + h, x0 + w - k, y0),
                         Image.Resampling.BICUBIC)
    px = np.asarray(im, np.float32) * np.linspace(1 - light, 1 + light, size[0])[None, :, None]
    px += np.random.default_rng(seed).normal(0, 4, px.shape)
    return Image.open(io.BytesIO(_jpeg(Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))))).convert("RGB")


def _pixels(a: Image.Image, b: Image.Image):
    """(keypoint match, coarse agreement, fine correlation) of two photos, as the finder judges them."""
    ka, kb = (unpack_keypoints(copy_data_of_image(x).keypoints) for x in (a, b))
    m = match(ka, kb, SIDE)
    ra, rb = rendering(a), rendering(b)
    return m, pixel_check.agreement(pixel_check.reduce(ra.grey), pixel_check.reduce(rb.grey), m.transform), \
        pixel_check.correlation(ra, rb, m.transform)


@pytest.fixture(scope="module")
def world():
    return textured_scene()


def test_a_second_shot_from_a_shifted_camera_passes_the_keypoints_and_the_coarse_check_but_not_the_fine_one(world):
    first = shot(world, 1.0, 0.0, 0.0, seed=1)
    second = shot(world, 1.2, 0.03, 0.1, seed=2)  # closer, tilted, other light
    m, agree, corr = _pixels(first, second)
    assert m.inliers >= PRESETS["copies"].inliers
    assert agree >= MIN_AGREEMENT  # what the coarse check alone would take for a crop
    assert corr < MIN_CORRELATION


@pytest.mark.parametrize("edit", ["crop80", "banner", "colour", "grey", "resize", "pad", "rot90", "upscaled crop"])
def test_copies_of_a_finely_grained_photo_correlate_at_full_detail(world, edit):
    photo = shot(world, 1.0, 0.0, 0.0, seed=1)
    if edit == "upscaled crop":  # a crop blown back up to the photo's size: more pixels, no more detail
        c = photo.crop((40, 53, 360, 480)).resize(photo.size, Image.Resampling.BICUBIC)
        copy = Image.open(io.BytesIO(_jpeg(c))).convert("RGB")
    else:
        copy = _copy(photo, edit)
    m, agree, corr = _pixels(photo, copy)
    assert m.inliers >= PRESETS["copies"].inliers
    assert agree >= MIN_AGREEMENT
    assert corr >= MIN_CORRELATION, corr


def test_the_correlation_is_taken_at_the_detail_of_the_smaller_file():
    """A 30% copy compared at its own detail correlates as well as the original with itself would at
    that detail; compared at the original's, it would lose the grain it never had."""
    photo = shot(textured_scene(), 1.0, 0.0, 0.0, seed=1)
    small = Image.open(io.BytesIO(_jpeg(photo.resize((120, 160), Image.Resampling.LANCZOS)))).convert("RGB")
    ra, rs = rendering(photo), rendering(small)
    assert rs.detail == pytest.approx(160 / SIDE, abs=0.01) and ra.detail == 1.0  # 533 pixels: capped at the rendering
    same = np.array([[1.0, 0, 0], [0, 1.0, 0]])  # one rendering size: the copy maps onto the photo as it is
    assert pixel_check.correlation(ra, rs, same) >= MIN_CORRELATION
    blind = rs._replace(detail=1.0)  # as if the copy's file held the original's detail
    assert pixel_check.correlation(ra._replace(detail=1.0), blind, same) < pixel_check.correlation(ra, rs, same)


def test_flat_photos_give_no_verdict():
    flat = np.full((384, 512), 200, np.uint8)
    small = pixel_check.reduce(flat)
    assert small.shape == (96, 128)
    same = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    assert np.isnan(pixel_check.agreement(small, small, same))
    assert np.isnan(pixel_check.correlation(Rendering(flat, 1.0), Rendering(flat, 1.0), same))


@pytest.fixture(scope="module")
def floor_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("floor")
    a = scene(2, 60)
    (folder / "a.jpg").write_bytes(_jpeg(a))
    (folder / "b.jpg").write_bytes(_jpeg(scene(**OTHER)))  # another thing on the same floor
    for edit in ("crop80", "banner"):
        (folder / f"a-{edit}.jpg").write_bytes(make_copy(edit, a, _jpeg(a), np.random.default_rng(0))[0])
    world = textured_scene()
    w = shot(world, 1.0, 0.0, 0.0, seed=1)
    (folder / "w.jpg").write_bytes(_jpeg(w))
    (folder / "w-crop80.jpg").write_bytes(make_copy("crop80", w, _jpeg(w), np.random.default_rng(0))[0])
    (folder / "w-second-shot.jpg").write_bytes(_jpeg(shot(world, 1.2, 0.03, 0.1, seed=2)))
    cfg = IndexJobCfg(backbone=BackboneCfg(name=TINY))
    cfg.embed.workers = 0
    ix = tmp_path_factory.mktemp("ix") / "ix"
    index_folder(folder, ix, cfg)
    return folder, ix


def test_copies_preset_groups_the_copies_and_not_the_other_thing_on_the_floor_nor_the_second_shot(floor_index):
    folder, ix = floor_index
    report = find_duplicates(Snapshot(ix), "copies")
    groups = sorted(({m.row.relpath.decode() for m in g.members} for g in report.groups), key=sorted)
    assert groups == [{"a.jpg", "a-crop80.jpg", "a-banner.jpg"}, {"w.jpg", "w-crop80.jpg"}]
    assert report.stats["pairs rejected by pixels"] >= 2  # a ~ b and w ~ w-second-shot passed the keypoints
    evidence = [m.evidence for g in report.groups for m in g.members]
    assert any("of the overlap agrees" in e for e in evidence), evidence


def test_a_file_unreadable_at_query_time_keeps_its_keypoint_verdict(floor_index, tmp_path):
    folder, ix = floor_index
    crop = folder / "a-crop80.jpg"
    data = crop.read_bytes()
    crop.write_bytes(b"")  # still indexed, no longer readable
    try:
        report = find_duplicates(Snapshot(ix), "copies")
    finally:
        crop.write_bytes(data)
    groups = [{m.row.relpath.decode() for m in g.members} for g in report.groups]
    assert {"a.jpg", "a-crop80.jpg"} <= groups[0]
    assert report.stats["pairs not checked by pixels"] >= 1
