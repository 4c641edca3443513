"""Two different things photographed on one patterned floor match by keypoints, on the floor; the pixel
check tells them from copies. Synthetic scenes: a busy, non-repeating floor with a subject over the
middle 60% of each side (as a garment photographed from above fills the frame)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imgembed.config import BackboneCfg, IndexJobCfg
from imgembed.index.snapshot import Snapshot
from imgembed.indexer import index_folder
from imgembed.ingest.copy_data import SIDE, copy_data_of_image, grey_rendering, unpack_keypoints
from imgembed.ingest.edits import make_copy
from imgembed.query import pixel_check
from imgembed.query.copies import MIN_AGREEMENT, PRESETS, find_duplicates
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
    (ka, sa), (kc, sc) = _data(a), _data(_copy(a, edit))
    m = match(ka, kc, SIDE)
    assert m.inliers >= PRESETS["copies"].inliers
    assert pixel_check.agreement(sa, sc, m.transform) >= MIN_AGREEMENT


def test_flat_photos_give_no_verdict():
    flat = np.full((384, 512), 200, np.uint8)
    small = pixel_check.reduce(flat)
    assert small.shape == (96, 128)
    assert np.isnan(pixel_check.agreement(small, small, np.array([[1.0, 0, 0], [0, 1.0, 0]])))


@pytest.fixture(scope="module")
def floor_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("floor")
    a = scene(2, 60)
    (folder / "a.jpg").write_bytes(_jpeg(a))
    (folder / "b.jpg").write_bytes(_jpeg(scene(**OTHER)))  # another thing on the same floor
    for edit in ("crop80", "banner"):
        (folder / f"a-{edit}.jpg").write_bytes(make_copy(edit, a, _jpeg(a), np.random.default_rng(0))[0])
    cfg = IndexJobCfg(backbone=BackboneCfg(name=TINY))
    cfg.embed.workers = 0
    ix = tmp_path_factory.mktemp("ix") / "ix"
    index_folder(folder, ix, cfg)
    return folder, ix


def test_copies_preset_groups_the_copies_and_not_the_other_thing_on_the_floor(floor_index):
    folder, ix = floor_index
    report = find_duplicates(Snapshot(ix), "copies")
    groups = [{m.row.relpath.decode() for m in g.members} for g in report.groups]
    assert groups == [{"a.jpg", "a-crop80.jpg", "a-banner.jpg"}]
    assert report.stats["pairs rejected by pixels"] >= 1  # a ~ b passed the keypoints
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
