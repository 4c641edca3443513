"""Projection head: PCA baselines, training, saving, eval comparison, and indexes built with a head."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ASSETS, TINY, plain_metrics

from imgembed.cli import main
from imgembed.config import BackboneCfg
from imgembed.index.format import StoreError
from imgembed.learn.baselines import fit_pca, pca_basis
from imgembed.learn.metrics import average_precision, mean_average_precision, retrieval_metrics
from imgembed.learn.train import TrainCfg, split_validation, train_head
from imgembed.model.backbones import create_backbone
from imgembed.model.embedder import Embedder
from imgembed.model.head import HeadCfg, HeadError, ProjectionHead, load_head, read_head_info, save_head
from imgembed.query.search import Searcher


def clustered(n_per=30, n_cls=4, dim=48, seed=0, noise=1.0):
    """Features of ``n_cls`` classes told apart in a few quiet dims; louder noise in the others."""
    rng = np.random.default_rng(seed)
    quiet = np.arange(dim) < 6
    centres = rng.normal(0, 1, (n_cls, dim)) * quiet
    labels = np.repeat(np.arange(n_cls), n_per)
    x = centres[labels] + rng.normal(0, 1, (len(labels), dim)) * np.where(quiet, 0.3, 1.5 * noise) + 3.0
    return x.astype(np.float32), np.array([f"c{i}" for i in labels])


def test_fast_map_matches_reference():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(9, 40))
    q, g = rng.integers(0, 3, 9), rng.integers(0, 3, 40)
    one_by_one = [average_precision(g[np.argsort(-sim[i], kind="stable")] == q[i]) for i in range(len(q))]
    assert mean_average_precision(sim, q, g) == pytest.approx(np.mean(one_by_one), abs=1e-12)
    assert retrieval_metrics(sim, q, g).mAP == pytest.approx(np.mean(one_by_one), abs=1e-12)


def test_pca_basis_matches_svd_and_completes_beyond_rank():
    x, _ = clustered(n_per=10)
    mean, comps, var = pca_basis(x, 8)
    a = x / np.linalg.norm(x, axis=1, keepdims=True)
    _, s, vt = np.linalg.svd(a - a.mean(0), full_matrices=False)
    assert np.allclose(np.abs((comps * vt[:8]).sum(1)), 1, atol=1e-6)
    assert np.allclose(var, s[:8] ** 2 / len(a), rtol=1e-6)
    few = x[:5]  # 5 photos define 4 directions; 10 asked
    _, comps, var = pca_basis(few, 10)
    assert np.allclose(comps @ comps.T, np.eye(10), atol=1e-8) and np.all(var[4:] == 0)


def test_pca_heads_project_and_whiten():
    x, _ = clustered()
    z = fit_pca(x, 8)(torch.from_numpy(x)).numpy()
    assert z.shape == (len(x), 8) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    w = fit_pca(x, 8, whiten=True)
    a = torch.nn.functional.normalize(torch.from_numpy(x), dim=1) - w.mean
    assert np.allclose(np.var(w.proj(a).numpy(), axis=0), 1, atol=1e-3)  # unit variance before L2
    with pytest.raises(ValueError, match="more than"):
        fit_pca(x[:5], 8, whiten=True)


def test_split_validation_is_stratified_and_seeded():
    y = np.array(["a"] * 20 + ["b"] * 10 + ["c"] * 2)
    tr, va = split_validation(len(y), y, 0.1, seed=3)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(y)))
    assert [int((y[va] == c).sum()) for c in "abc"] == [2, 1, 1]
    assert np.array_equal(va, split_validation(len(y), y, 0.1, seed=3)[1])


def test_supervised_training_beats_its_pca_start_and_is_deterministic():
    x, y = clustered(seed=1)
    xv, yv = clustered(n_per=8, seed=1)
    xv = xv[::-1].copy()
    cfg = TrainCfg(dim=8, epochs=6, patience=6, batch_size=32, lr=1e-2)
    seen = []
    r = train_head(x, y, cfg, xv, yv[::-1], progress=seen.append)
    assert len(seen) == len(r.history) and r.history[0]["loss"] is None
    assert r.best_epoch > 0 and r.history[r.best_epoch]["val"] > r.history[0]["val"] + 0.05
    again = train_head(x, y, cfg, xv, yv[::-1])
    for k, v in r.head.state_dict().items():
        assert torch.equal(v, again.head.state_dict()[k]), k
    assert r.head(torch.from_numpy(x)).shape == (len(x), 8)


def test_label_free_head_beats_pca_or_is_pca():
    x, _ = clustered(n_per=40, seed=2)
    r = train_head(x, None, TrainCfg(dim=8, labels="none"))
    assert r.n_val == 16 and r.n_train == 160 and r.extra["judged_on"] == 144  # refit on all 160
    assert r.val_metric == "held-out neighbourhood consistency"
    pca_score, score = r.history[0]["val"], r.history[1]["val"]
    assert r.best_epoch == int(score > pca_score + 0.005) and r.extra["kept"] == bool(r.best_epoch)
    again = train_head(x, None, TrainCfg(dim=8, labels="none"))
    assert torch.equal(again.head.proj.weight, r.head.proj.weight)  # closed form: same photos, same head
    with pytest.raises(ValueError, match="one label per photo"):
        train_head(x, None, TrainCfg(dim=8))
    with pytest.raises(ValueError, match="--hidden applies to supervised"):
        train_head(x, None, TrainCfg(dim=8, labels="none", hidden=16))


def test_label_free_head_falls_back_to_pca_when_it_does_not_help(monkeypatch):
    """A distilled map that scores no better than PCA on the held-out photos is not kept: the head is PCA."""
    from imgembed.index import projection

    x, _ = clustered(n_per=40, seed=2)
    monkeypatch.setattr(projection, "distil", lambda feats, dim, basis=None, **kw: (basis[0], basis[1][:dim]))
    r = train_head(x, None, TrainCfg(dim=8, labels="none"))
    assert r.best_epoch == 0 and not r.extra["kept"]
    assert "did not beat its PCA start" in r.describe(TrainCfg(dim=8, labels="none"))
    expect = fit_pca(x, 8)
    assert torch.allclose(r.head.proj.weight, expect.proj.weight, atol=1e-5)


def test_head_file_round_trip(tmp_path):
    x, y = clustered()
    r = train_head(x, y, TrainCfg(dim=8, epochs=2, hidden=16))
    save_head(tmp_path / "h", r.head, extra={"method": "supervised"})
    back = load_head(tmp_path / "h.safetensors")
    assert back.fingerprint == r.head.fingerprint and read_head_info(tmp_path / "h")["method"] == "supervised"
    assert torch.allclose(back(torch.from_numpy(x)), r.head(torch.from_numpy(x)))
    (tmp_path / "h.json").write_text("{not json")
    with pytest.raises(HeadError, match="not a head config"):
        load_head(tmp_path / "h")


def test_train_head_and_eval_comparison_cli(photos, tmp_path, capsys):
    out = tmp_path / "heads" / "h"
    args = ["--backbone", f"{TINY}:24", "--workers", "0", "--no-progress"]
    assert main(["train-head", str(photos), "--out", str(out), "--dim", "8", "--epochs", "3", *args]) == 0
    assert "supervised head" in capsys.readouterr().out
    assert main(["train-head", str(photos), "--out", str(out) + "-ssl", "--dim", "16", "--labels", "none",
                 "--val", str(photos), *args]) == 0
    printed = capsys.readouterr().out
    assert "label-free head" in printed and "and 2 augmented views of each" in printed
    assert json.loads(Path(str(out) + "-ssl.json").read_text())["train"]["views"] == 2
    for suffix in (".safetensors", ".json", ".png"):
        assert out.with_suffix(suffix).stat().st_size > 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["method"] == "supervised" and info["train"]["dim"] == 8 and info["history"]
    table, chart = tmp_path / "cmp.json", tmp_path / "cmp.png"
    assert main(["eval", "--gallery", str(photos), "--queries", str(photos), "--head", str(out),
                 "--head", str(out) + "-ssl", "--json", str(table), "--chart", str(chart), *args]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(table.read_text())["rows"]
    # 12 photos define 11 directions: PCA rows only where they apply (none of 64/128/256 here)
    variants = ("", " +DBA", " +QE", " +DBA+QE")
    assert [(r["method"], r["dim"]) for r in rows] == [
        (m + v, d) for m, d in (("raw", 24), ("head supervised (h)", 8), ("head label-free (h-ssl)", 16))
        for v in variants]
    plain = [r for r in rows if "+" not in r["method"]]
    assert plain[1]["bytes"] == 32
    # each plain row is what a plain loop over the photos' own vectors gives (self left out)
    for row, head in zip(plain, (None, out, Path(str(out) + "-ssl"))):
        m, p5, r1 = plain_metrics(photos, f"{TINY}:24", head and str(head))
        assert (row["mAP"], row["P@5"], row["R@1"]) == pytest.approx((m, p5, r1), abs=1e-6)
        assert row["mAP_lo"] <= row["mAP"] <= row["mAP_hi"]
    assert "head supervised (h)" in printed and "95% interval" in printed and chart.stat().st_size > 0
    info = json.loads(Path(str(out) + "-ssl.json").read_text())
    assert info["method"] == "label-free" and info["collection"]["count"] == 12  # the folder, not --val
    assert info["collection"]["path"] == str(photos.resolve())
    assert main(["eval", "--gallery", str(photos), "--queries", str(photos), "--head", str(out),
                 "--workers", "0", "--backbone", TINY]) == 1
    assert "the head takes 24-d features" in capsys.readouterr().err


def _random_head(backbone, out_dim, seed):
    torch.manual_seed(seed)
    cfg = HeadCfg(in_dim=backbone.dim, out_dim=out_dim, backbone=backbone.spec,
                  backbone_fingerprint=backbone.fingerprint)
    return ProjectionHead(cfg).eval()


def test_index_built_with_a_head_searches_in_its_space(photos, tmp_path, capsys):
    backbone = create_backbone(BackboneCfg(name=TINY))
    save_head(tmp_path / "h128", _random_head(backbone, 128, 0))
    save_head(tmp_path / "other", _random_head(backbone, 128, 1))
    ix = str(tmp_path / "ix")
    common = ["--index", ix, "--backbone", TINY, "--workers", "0"]
    assert main(["index", str(photos), *common, "--head", str(tmp_path / "h128")]) == 0
    capsys.readouterr()
    s = Searcher(ix)
    assert s.info().dim == 128 and s.embedder.dim == 128 and s.snapshot.manifest["head"]
    q = photos / "c1" / "img0004.jpg"
    qvec = s.embed_image_bytes(q.read_bytes())
    assert qvec.shape == (1, 128)
    hits = s.search_image_file(q, 3)
    assert hits[0].path.endswith("img0004.jpg") and hits[0].score > 0.999
    # the same backbone through another head: refused, with what to do
    other = Embedder(backbone, load_head(tmp_path / "other"), device="cpu")
    with pytest.raises(StoreError, match="head_fingerprint"):
        Searcher(ix, embedder=other)
    assert main(["index", str(photos), *common, "--head", str(tmp_path / "other")]) == 1
    assert "Use the same --backbone/--head" in capsys.readouterr().err
    assert main(["index", str(photos), *common]) == 1  # no head at all
    assert "head_fingerprint" in capsys.readouterr().err


@pytest.mark.slow
def test_train_head_on_the_sample_photos(tmp_path, capsys):
    """The real default backbone: a supervised head on 60 real photos beats the raw features."""
    out = tmp_path / "h"
    assert main(["train-head", str(ASSETS), "--out", str(out), "--dim", "32", "--no-progress"]) == 0
    capsys.readouterr()
    table = tmp_path / "cmp.json"
    assert main(["eval", "--gallery", str(ASSETS), "--queries", str(ASSETS), "--head", str(out),
                 "--json", str(table), "--no-progress"]) == 0
    rows = {r["method"]: r for r in json.loads(table.read_text())["rows"]}
    assert rows["head supervised (h)"]["mAP"] > rows["raw"]["mAP"]


def test_a_head_from_another_collection_warns_once(photos, tmp_path, capsys):
    args = ["--backbone", f"{TINY}:24", "--workers", "0", "--no-progress"]
    out = tmp_path / "h"
    assert main(["train-head", str(photos), "--out", str(out), "--dim", "8", "--labels", "none", *args]) == 0
    capsys.readouterr()
    assert main(["eval", "--gallery", str(photos), "--queries", str(photos), "--head", str(out), "--no-rerank",
                 *args]) == 0
    assert "another collection" not in capsys.readouterr().err  # its own photos: no warning
    other = tmp_path / "other"
    for p in sorted(photos.rglob("*.jpg"))[:8]:
        (other / p.parent.name).mkdir(parents=True, exist_ok=True)
        (other / p.parent.name / p.name).write_bytes(p.read_bytes())
    assert main(["eval", "--gallery", str(other), "--queries", str(other), "--head", str(out), "--no-rerank",
                 *args]) == 0
    err = capsys.readouterr().err
    assert err.count("was trained on another collection") == 1 and "not these 8 photos" in err
