"""Queries without torch: an index job writes its backbone out as ONNX, and later queries on the same
machine run it on ONNX Runtime with the head in numpy, giving torch's vectors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, TINY, write_photos

from imgembed.config import BackboneCfg, EmbedCfg, IndexJobCfg
from imgembed.identity import raw_identity
from imgembed.index.format import read_manifest
from imgembed.indexer import index_folder
from imgembed.model import onnx_export
from imgembed.model.backbones import create_backbone
from imgembed.model.backbones.tiny import TinyCNN
from imgembed.model.embedder import Embedder
from imgembed.model.head import HeadCfg, ProjectionHead, load_head, save_head
from imgembed.model.onnx_embedder import OnnxEmbedder, load_numpy_head, model_paths
from imgembed.query.search import Searcher


@pytest.fixture
def exportable(monkeypatch):
    """The tiny test backbone, exported like the default one."""
    monkeypatch.setattr(TinyCNN, "exportable", True)


def tiny_index(tmp_path, head=None):
    folder = tmp_path / "photos"
    write_photos(folder, 9)
    ix = tmp_path / "ix"
    index_folder(folder, ix, IndexJobCfg(backbone=BackboneCfg(name=TINY), head=head, embed=EmbedCfg(workers=0)))
    return folder, ix


def test_an_index_job_exports_its_backbone_and_queries_then_run_on_onnx_runtime(tmp_path, exportable):
    folder, ix = tiny_index(tmp_path)
    model, meta = model_paths(raw_identity(read_manifest(ix)))
    assert model.is_file() and json.loads(meta.read_text())["min_cosine"] >= onnx_export.MIN_COSINE
    fast = Searcher(ix, device="cpu")
    assert isinstance(fast.embedder, OnnxEmbedder)
    slow = Searcher(ix, embedder=Embedder(create_backbone(BackboneCfg(name=TINY)), device="cpu"))
    for photo in sorted(folder.glob("*.jpg"))[:3]:
        data = photo.read_bytes()
        a, b = fast.embed_image_bytes(data), slow.embed_image_bytes(data)
        assert float((a * b).sum()) > 0.99999
        assert [h.id for h in fast.search_image_bytes(data, 5)] == [h.id for h in slow.search_image_bytes(data, 5)]


def test_a_query_with_an_exported_model_imports_no_torch(tmp_path, exportable):
    folder, ix = tiny_index(tmp_path)
    query = sorted(folder.glob("*.jpg"))[0]
    code = ("import sys\nfrom imgembed.cli import main\n"
            f"rc = main(['search', {str(query)!r}, '--index', {str(ix)!r}, '-k', '3'])\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch', rc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "no torch 0"
    assert query.name in out.stdout  # the photo itself is its first hit


def test_the_numpy_head_is_the_torch_head(tmp_path):
    torch.manual_seed(0)
    head = ProjectionHead(HeadCfg(in_dim=32, out_dim=8, hidden=16, backbone=TINY)).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.3)  # the residual branch starts at zero: make it count
        head.mean.normal_(0, 0.1)
    path = save_head(tmp_path / "h", head)
    fast = load_numpy_head(path)
    feats = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    with torch.no_grad():
        ref = head(torch.from_numpy(feats)).numpy()
    assert fast.fingerprint == head.fingerprint
    np.testing.assert_allclose(fast(feats), ref, atol=1e-5)


def test_an_index_with_a_head_queries_through_the_numpy_head(tmp_path, exportable):
    torch.manual_seed(1)
    head = ProjectionHead(HeadCfg(in_dim=32, out_dim=8, hidden=16, backbone=TINY,
                                  backbone_fingerprint=create_backbone(BackboneCfg(name=TINY)).fingerprint))
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.3)
    path = save_head(tmp_path / "heads" / "h", head.eval())
    folder, ix = tiny_index(tmp_path, head=str(path))
    fast = Searcher(ix, device="cpu")
    assert isinstance(fast.embedder, OnnxEmbedder) and fast.embedder.dim == 8
    photo = sorted(folder.glob("*.jpg"))[4]
    hits = fast.search_image_bytes(photo.read_bytes(), 3)
    assert hits[0].path.endswith(photo.name) and hits[0].score > 0.99999


def test_a_damaged_export_is_written_again(tmp_path, exportable, caplog):
    folder, ix = tiny_index(tmp_path)
    model, _ = model_paths(raw_identity(read_manifest(ix)))
    model.write_bytes(b"not an onnx model")
    s = Searcher(ix, device="cpu")
    with caplog.at_level(logging.WARNING):
        assert isinstance(s.embedder, Embedder)  # the query: torch, which writes the model again
    assert "does not load" in caplog.text and "writing it again" in caplog.text
    photo = sorted(folder.glob("*.jpg"))[0]
    assert s.search_image_bytes(photo.read_bytes(), 1)[0].path.endswith(photo.name)
    assert isinstance(Searcher(ix, device="cpu").embedder, OnnxEmbedder)  # and the next query has it


def test_an_export_that_does_not_match_torch_is_not_kept(tmp_path, exportable, monkeypatch, caplog):
    monkeypatch.setattr(onnx_export, "_check", lambda data, backbone: 0.97)
    backbone = create_backbone(BackboneCfg(name=TINY))
    with caplog.at_level(logging.WARNING):
        assert onnx_export.exported_model(backbone) is None
    assert not model_paths(onnx_export.identity_of(backbone))[0].exists()
    assert "differ from torch's (cosine 0.970000)" in caplog.text


def test_a_failed_export_is_not_tried_again_on_every_run(exportable, monkeypatch, caplog):
    calls = []

    def broken(backbone):
        calls.append(1)
        raise RuntimeError("Exporting the operator 'aten::something' to ONNX is not supported")

    monkeypatch.setattr(onnx_export, "to_onnx", broken)
    with caplog.at_level(logging.WARNING):
        assert Embedder(create_backbone(BackboneCfg(name=TINY)), device="cpu").onnx is None
        assert Embedder(create_backbone(BackboneCfg(name=TINY)), device="cpu").onnx is None
    assert len(calls) == 1 and caplog.text.count("runs on torch: its ONNX export was not kept") == 1
    assert "aten::something" in caplog.text


def test_a_torchvision_cnn_runs_on_onnx_runtime(tiny_torchvision):
    fast = Embedder.from_cfg(BackboneCfg(name=tiny_torchvision, device="cpu"))
    slow = Embedder.from_cfg(BackboneCfg(name=tiny_torchvision, device="cpu", runtime="torch"))
    assert fast.onnx is not None
    pixels = np.random.default_rng(2).integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)
    np.testing.assert_allclose(fast.embed(pixels), slow.embed(pixels), atol=1e-5)


def test_backbones_that_are_not_exportable_are_not_exported(tmp_path):
    _, ix = tiny_index(tmp_path)
    assert not model_paths(raw_identity(read_manifest(ix)))[0].exists()
    assert isinstance(Searcher(ix, device="cpu").embedder, Embedder)


def test_an_onnx_file_runs_as_a_backbone(tmp_path):
    tiny = create_backbone(BackboneCfg(name=TINY))
    path = tmp_path / "tiny.onnx"
    path.write_bytes(onnx_export.to_onnx(tiny))
    path.with_suffix(".json").write_text(json.dumps(onnx_export.identity_of(tiny)))
    as_onnx = Embedder.from_cfg(BackboneCfg(name=f"onnx:{path}", device="cpu"))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    np.testing.assert_allclose(as_onnx.embed(pixels), Embedder(tiny, device="cpu").embed(pixels), atol=1e-5)
    assert as_onnx.identity()["backbone_fingerprint"] != tiny.fingerprint  # never mixed with torch's vectors


def test_an_onnx_backbone_without_its_json_says_what_it_needs(tmp_path):
    from imgembed.errors import BackboneError

    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_export.to_onnx(create_backbone(BackboneCfg(name=TINY))))
    with pytest.raises(BackboneError, match="needs .*m.json beside it"):
        create_backbone(BackboneCfg(name=f"onnx:{path}"))


def test_the_onnx_runtime_embeds_what_torch_embeds(exportable):
    backbone = create_backbone(BackboneCfg(name=TINY))
    fast = Embedder(backbone, device="cpu", runtime="auto")
    slow = Embedder(create_backbone(BackboneCfg(name=TINY)), device="cpu", runtime="torch")
    assert fast.onnx is not None and slow.onnx is None
    pixels = np.random.default_rng(1).integers(0, 256, (5, 3, 64, 64), dtype=np.uint8)
    np.testing.assert_allclose(fast.embed(pixels), slow.embed(pixels), atol=1e-5)
    assert fast.identity() == slow.identity()  # the same vectors: one index, one feature cache
    fast.set_threads(1)
    assert fast.onnx.threads == 1 and fast.onnx.session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(fast.embed(pixels), slow.embed(pixels), atol=1e-5)


def test_the_runtime_falls_back_to_torch_or_says_why_not(exportable, monkeypatch):
    assert Embedder(create_backbone(BackboneCfg(name=TINY)), device="cpu", compile="on").onnx is None
    monkeypatch.setattr(TinyCNN, "exportable", False)
    assert Embedder(create_backbone(BackboneCfg(name=TINY)), device="cpu").onnx is None
    with pytest.raises(ValueError, match="--runtime onnx: the backbone test-tiny cannot run on ONNX Runtime"):
        Embedder(create_backbone(BackboneCfg(name=TINY)), device="cpu", runtime="onnx")


def test_an_index_job_on_the_onnx_runtime_stores_torch_s_vectors(tmp_path, exportable):
    folder, ix = tiny_index(tmp_path)  # runtime auto: ONNX Runtime
    torch_ix = tmp_path / "ix-torch"
    index_folder(folder, torch_ix, IndexJobCfg(backbone=BackboneCfg(name=TINY, runtime="torch"),
                                               embed=EmbedCfg(workers=0)))
    from imgembed.index.snapshot import Snapshot

    def by_path(snap: Snapshot) -> dict[bytes, np.ndarray]:
        rows = list(snap.iter_rows())
        vecs = snap.vectors(r.id for r in rows)
        return {r.path: vecs[r.id] for r in rows}

    a, b = by_path(Snapshot(ix)), by_path(Snapshot(torch_ix))
    assert len(a) == 9 and set(a) == set(b)
    for path in a:
        assert float(a[path] @ b[path]) > 0.99999


def test_an_index_that_projects_its_features_queries_through_the_numpy_projection(tmp_path, exportable,
                                                                                  monkeypatch):
    from imgembed.index import projection

    monkeypatch.setattr(projection, "AUTO_MIN", 30)
    monkeypatch.setattr(projection, "AUTO_DIM", 8)
    folder = tmp_path / "photos"
    paths = write_photos(folder, 30, classes=True)
    ix = tmp_path / "ix"
    index_folder(folder, ix, IndexJobCfg(backbone=BackboneCfg(name=TINY), embed=EmbedCfg(workers=0)))
    m = read_manifest(ix)
    assert m["dim"] == 8 and m["projection"]
    fast = Searcher(ix, device="cpu")
    assert isinstance(fast.embedder, OnnxEmbedder)
    assert fast.embedder.identity()["head_fingerprint"] == m["head_fingerprint"]
    slow = Searcher(ix, embedder=Embedder(create_backbone(BackboneCfg(name=TINY)),
                                          load_head(ix / m["head"]), device="cpu", runtime="torch"))
    data = paths[7].read_bytes()
    assert float((fast.embed_image_bytes(data) * slow.embed_image_bytes(data)).sum()) > 0.99999
    assert fast.search_image_bytes(data, 1)[0].path.endswith(paths[7].name)


def test_a_cache_folder_that_cannot_be_written_leaves_the_model_on_torch(exportable, monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("IMGEMBED_CACHE_DIR", str(blocked))
    emb = Embedder(create_backbone(BackboneCfg(name=TINY)), device="cpu")
    assert emb.onnx is None
    assert emb.embed(np.zeros((1, 3, 64, 64), np.uint8)).shape == (1, 32)
