"""Re-indexing work that must stay cheap: no model for an unchanged folder, mismatches still caught."""

import os

import pytest
from helpers import TINY, write_photos

from imgembed.config import BackboneCfg, IndexJobCfg
from imgembed.index.format import StoreError
from imgembed.indexer import index_folder
from imgembed.model.embedder import Embedder


def cfg(name: str = TINY) -> IndexJobCfg:
    c = IndexJobCfg(backbone=BackboneCfg(name=name))
    c.embed.workers = 0
    return c


@pytest.fixture
def no_model(monkeypatch):
    """Building a model fails the test."""
    built = []
    real = Embedder.from_cfg.__func__

    def counting(cls, *a, **kw):
        built.append(1)
        return real(cls, *a, **kw)

    monkeypatch.setattr(Embedder, "from_cfg", classmethod(counting))
    return built


def test_unchanged_reindex_builds_no_model(photos, tmp_path, no_model):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    assert len(no_model) == 1
    s = index_folder(photos, ix, cfg())
    assert (s.unchanged, s.indexed, s.total) == (12, 0, 12)
    assert len(no_model) == 1  # the second run never built the model


def test_renamed_files_reuse_vectors_without_a_model(photos, tmp_path, no_model):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    os.rename(photos / "c0" / "img0000.jpg", photos / "c0" / "moved.jpg")
    s = index_folder(photos, ix, cfg())
    assert (s.renamed, s.indexed, s.total) == (1, 0, 12)
    assert len(no_model) == 1


def test_new_files_build_the_model_and_check_it(photos, tmp_path, no_model):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    write_photos(photos / "more", 2, start=200)
    s = index_folder(photos, ix, cfg())
    assert (s.indexed, s.total) == (2, 14)
    assert len(no_model) == 2


def test_another_embedder_is_refused_even_when_nothing_changed(photos, tmp_path):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    with pytest.raises(StoreError, match="differs in"):
        index_folder(photos, ix, cfg(name="test-tiny:16"))


def test_same_name_other_weights_is_refused_once_something_needs_embedding(photos, tmp_path, monkeypatch):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    from imgembed.model.backbones.tiny import TinyCNN

    real_init = TinyCNN.__init__
    monkeypatch.setattr(TinyCNN, "__init__", lambda self, dim, seed=0: real_init(self, dim, seed=7))
    assert index_folder(photos, ix, cfg()).unchanged == 12  # nothing to embed, nothing to mix
    write_photos(photos / "more", 1, start=300)
    with pytest.raises(StoreError, match="backbone_fingerprint"):
        index_folder(photos, ix, cfg())
