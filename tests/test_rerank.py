"""Re-ranking: DBA and alpha-QE against plain loops, the incremental DBA rule against a full
recompute, query expansion through an index, and near-duplicates under the label-free head."""

import io

import numpy as np
import pytest
import torch
from helpers import ASSETS, tiny_cfg, write_photos
from PIL import Image

from imgembed.config import BackboneCfg, ReaderCfg, ViewCfg
from imgembed.index.augment import affected, augment, augment_rows, exact_search, expand
from imgembed.indexer import index_folder
from imgembed.ingest.reader import decode_file, decode_query
from imgembed.learn.train import TrainCfg, train_head
from imgembed.model.embedder import Embedder
from imgembed.query.search import Searcher


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vectors(n=60, d=16, seed=0):
    return unit(np.random.default_rng(seed).normal(size=(n, d))).astype(np.float32)


def test_dba_matches_a_plain_loop():
    x = vectors()
    got, kth = augment(x, k=5, alpha=3.0)
    for i in range(len(x)):
        sims = x @ x[i]
        top = np.argsort(-sims, kind="stable")[:5]
        v = sum(max(sims[j], 0) ** 3 * x[j] for j in top)
        assert np.allclose(got[i], v / np.linalg.norm(v), atol=1e-5)
        assert kth[i] == pytest.approx(sims[top[-1]], abs=1e-6)
    few, kth = augment(x[:3], k=5)  # fewer photos than k: all of them, and any newcomer counts
    assert np.all(kth == -2.0) and few.shape == (3, 16)


def test_query_expansion_matches_a_plain_loop():
    g, q = vectors(), vectors(4, seed=1)
    sims, pos = exact_search(g)(q, 10)
    got = expand(q, sims, g[pos], alpha=3.0)
    for r in range(len(q)):
        s = g @ q[r]
        top = np.argsort(-s)[:10]
        v = q[r] + sum(max(s[j], 0) ** 3 * g[j] for j in top)
        assert np.allclose(got[r], v / np.linalg.norm(v), atol=1e-5)


def test_incremental_dba_equals_a_full_recompute():
    """Recomputing only the photos :func:`affected` names gives what recomputing all of them gives."""
    x = vectors(200, 8, seed=3)  # 8-d: crowded, so a change reaches many lists
    old, new = x[:150], np.concatenate([x[:140], x[150:]])  # 10 removed, 50 added
    _, kth_old = augment(old, k=10)
    changed = np.concatenate([x[140:150], x[150:]])
    kept_rows = np.arange(140)
    hit = affected(old[:140], kth_old[:140], changed)
    assert 0 < hit.sum() < 140  # some, not all, of the kept photos
    full, _ = augment(new, k=10)
    rows = np.concatenate([kept_rows[hit], np.arange(140, 190)])
    part, _ = augment_rows(new, rows, exact_search(new), k=10)
    assert np.allclose(part, full[rows], atol=1e-6)
    untouched = kept_rows[~hit]  # the others keep their old DBA vectors, which are still right
    before, _ = augment(old, k=10)
    assert np.allclose(before[untouched], full[untouched], atol=1e-6)


def test_search_with_query_expansion(tmp_path):
    photos = tmp_path / "p"
    write_photos(photos, 18)
    ix = tmp_path / "ix"
    index_folder(photos, ix, tiny_cfg())
    s = Searcher(ix, device="cpu")
    q = s.embed_image_bytes((photos / "img0004.jpg").read_bytes())
    plain = s.search_vectors(q, 5)[0]
    hits = s.search_vectors(q, 5, qe=True)[0]
    top = s.search_vectors(q, 10)[0]  # by hand: fold the 10 best into the query, search again
    v = s.snapshot.vectors([h.id for h in top])
    sims = np.array([[h.score for h in top]])
    expanded = expand(q, sims, np.stack([v[h.id] for h in top])[None])
    assert [h.id for h in hits] == [h.id for h in s.search_vectors(expanded, 5)[0]]
    assert hits[0].path == plain[0].path and hits[0].path.endswith("img0004.jpg")
    first = s.search_id(plain[1].id, 3, qe=True)
    assert plain[1].id not in [h.id for h in first]  # the photo itself stays out, also of its expansion


@pytest.mark.slow
def test_resized_copy_ranks_first_under_the_label_free_head():
    """A resized, re-encoded copy of a photo finds the photo first among the gallery, through the
    label-free head fitted with an augmented view of each photo, as ``train-head`` fits it (the real
    backbone on the 60 sample photos; the tiny one cannot tell them apart)."""
    e = Embedder.from_cfg(BackboneCfg(device="cpu"))
    paths = sorted(ASSETS.rglob("*.jpg"))
    feats = np.concatenate([e.features(decode_query(p.read_bytes(), e.preprocess, ReaderCfg())).numpy()
                            for p in paths])
    views = np.concatenate([e.features(decode_file(str(p), e.preprocess, ReaderCfg(), ViewCfg()).pixels[None]).numpy()
                            for p in paths])[None]
    r = train_head(feats, None, TrainCfg(dim=32, labels="none"), views=views)
    assert r.extra["views"] == 1
    with torch.no_grad():
        g = r.head(torch.from_numpy(feats)).numpy()
        for i in range(0, len(paths), 3):
            im = Image.open(paths[i]).convert("RGB")
            small = im.resize((im.width // 2, im.height // 2), Image.BICUBIC)
            q = e.features(decode_query(_jpeg(small, 60), e.preprocess, ReaderCfg())).numpy()
            sims = g @ r.head(torch.from_numpy(q)).numpy()[0]
            assert int(np.argmax(sims)) == i, (paths[i].name, np.sort(sims)[-3:])


def _jpeg(im, quality):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
