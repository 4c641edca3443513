"""Augmented views: deterministic per file, inside the photo, cached apart, and what the fit does with them."""

import numpy as np
import pytest
from helpers import TINY, make_photo
from PIL import Image

from imgembed.config import BackboneCfg, EmbedCfg, ReaderCfg, TrainCfg, ViewCfg
from imgembed.index import projection
from imgembed.ingest import views
from imgembed.ingest.preprocess import Preprocess
from imgembed.ingest.reader import decode_file
from imgembed.learn.feature_cache import extract_features
from imgembed.learn.train import train_head
from imgembed.model.embedder import Embedder


def test_crop_boxes_stay_inside_at_the_asked_area_and_ratio():
    cfg = ViewCfg()
    rng = np.random.default_rng(0)
    for w, h in ((640, 480), (97, 301), (1, 1000), (5000, 3)):
        for _ in range(50):
            left, top, right, bottom = views.crop_box(w, h, cfg, rng)
            assert 0 <= left < right <= w and 0 <= top < bottom <= h
            if (w, h) == (640, 480):  # room for every draw: the area and the ratio are those asked
                share = (right - left) * (bottom - top) / (w * h)
                assert cfg.scale[0] - 0.01 <= share <= cfg.scale[1] + 0.01
                assert cfg.ratio[0] - 0.02 <= (right - left) / (bottom - top) <= cfg.ratio[1] + 0.02


def test_a_view_is_the_same_for_the_same_file_and_seed_only():
    im = make_photo(3, size=(160, 120))
    one = views.augment(im, 64, ViewCfg(), views.view_rng(ViewCfg(), "ab" * 16))
    assert one.size == (64, 64) and one.mode == "RGB"
    same = views.augment(im, 64, ViewCfg(), views.view_rng(ViewCfg(), "ab" * 16))
    assert np.array_equal(np.asarray(one), np.asarray(same))
    others = [views.augment(im, 64, ViewCfg(seed=s), views.view_rng(ViewCfg(seed=s), d))
              for s, d in ((1, "ab" * 16), (0, "cd" * 16))]
    for other in others:
        assert not np.array_equal(np.asarray(one), np.asarray(other))


def test_the_crop_stays_inside_what_a_reduced_decode_covers():
    """A reduced image's last row and column stand for partial blocks: a view never crops past them."""
    im = np.zeros((100, 100, 3), np.uint8)
    im[:, 60:] = 255  # outside what the photo covers
    cfg = ViewCfg(jitter=0.0, grey=0.0, flip=0.0)
    for seed in range(20):
        out = views.augment(Image.fromarray(im), 32, cfg, np.random.default_rng(seed), Image.Resampling.BILINEAR,
                            covered=(50.0, 100.0))
        assert np.asarray(out).max() == 0


def test_decode_file_with_a_view_gives_the_models_square_of_that_view(tmp_path):
    path = tmp_path / "p.jpg"
    make_photo(5, size=(200, 150)).save(path, quality=92)
    pre = Preprocess(size=48, resize=56)
    plain = decode_file(str(path), pre, ReaderCfg())
    view = decode_file(str(path), pre, ReaderCfg(), ViewCfg())
    again = decode_file(str(path), pre, ReaderCfg(), ViewCfg())
    assert view.pixels.shape == plain.pixels.shape == (3, 48, 48)
    assert (view.width, view.height, view.digest) == (plain.width, plain.height, plain.digest)
    assert np.array_equal(view.pixels.numpy(), again.pixels.numpy())
    assert not np.array_equal(view.pixels.numpy(), plain.pixels.numpy())


def test_view_features_are_cached_apart_from_the_photos(photos):
    emb = Embedder.from_cfg(BackboneCfg(name=f"{TINY}:24", device="cpu"))
    paths = sorted(str(p).encode() for p in photos.rglob("*.jpg"))
    cfg = EmbedCfg(workers=0)
    plain = extract_features(paths, emb, ReaderCfg(), cfg)
    view = extract_features(paths, emb, ReaderCfg(), cfg, view=ViewCfg())
    assert plain.computed == view.computed == len(paths) and view.ok.all()
    assert not np.allclose(plain.feats, view.feats)
    again = extract_features(paths, emb, ReaderCfg(), cfg, view=ViewCfg())
    assert again.computed == 0 and np.array_equal(again.feats, view.feats)
    assert extract_features(paths, emb, ReaderCfg(), cfg, view=ViewCfg(seed=1)).computed == len(paths)


def _with_nuisance(n=300, dim=40, seed=0):
    """Photos told apart in a few directions; each view moves a photo along loud nuisance directions."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, dim))
    x[:, :4] *= 3.0
    nuisance = np.zeros(dim)
    nuisance[4:8] = 1.0
    view = x + rng.normal(0, 2.5, (n, 1)) * nuisance + rng.normal(0, 0.1, (n, dim))
    return (x + 8.0).astype(np.float32), (view + 8.0).astype(np.float32)[None]


def test_the_invariance_penalty_maps_photos_and_their_views_together():
    x, v = _with_nuisance()
    basis = projection.pca_basis(x, 8)
    plain = projection.distil(x, 8, basis=basis)
    assert all(np.array_equal(a, b) for a, b in zip(plain, projection.distil(x, 8, basis=basis, views=v)))

    def gap(fit):  # mean cosine distance between a photo and its view through the map
        a, b = projection.apply(x, *fit), projection.apply(v[0], *fit)
        return float(np.mean(1 - (a * b).sum(1)))

    weak, strong = (projection.distil(x, 8, basis=basis, views=v, invariance=mu) for mu in (0.5, 5.0))
    assert gap(strong) < gap(weak) < 0.8 * gap(plain)


def test_train_head_fits_with_views_and_says_so():
    x, v = _with_nuisance()
    cfg = TrainCfg(dim=8, labels="none")
    r = train_head(x, None, cfg, views=v)
    assert r.extra["views"] == 1 and "and 1 augmented view of each" in r.describe(cfg)
    assert train_head(x, None, cfg).extra["views"] == 0
    with pytest.raises(ValueError, match="one per photo"):
        train_head(x, None, cfg, views=v[:, :10])


@pytest.mark.parametrize("size", [(1, 1), (3, 2000), (2000, 3)])
def test_a_view_of_a_degenerate_photo_is_still_the_models_square(tmp_path, size):
    path = tmp_path / "p.png"
    Image.new("RGB", size, (120, 30, 200)).save(path)
    out = decode_file(str(path), Preprocess(size=48, resize=56), ReaderCfg(), ViewCfg())
    assert out.pixels.shape == (3, 48, 48) and (out.width, out.height) == size
