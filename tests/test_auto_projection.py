"""The projection an index fits on its own photos (IndexCfg.projection "auto"): raw features below the
threshold, a fitted head above it, new photos projected as they come, refits at growth, off again,
queries through the same map, readers that follow, and a crash between the publish and the manifest."""

import json
import sqlite3

import numpy as np
import pytest
from helpers import ASSETS, tiny_cfg, write_photos
from PIL import Image

from imgembed import head_file
from imgembed.cli import main
from imgembed.config import BackboneCfg, IndexCfg
from imgembed.index import projection, reproject
from imgembed.index.format import DB, MANIFEST, StoreError, read_manifest
from imgembed.index.snapshot import Snapshot
from imgembed.index.store import StoreWriter
from imgembed.indexer import index_folder, projection_mode
from imgembed.model.embedder import Embedder
from imgembed.model.head import load_head
from imgembed.query.search import Searcher


@pytest.fixture
def small(monkeypatch):
    """Thresholds a test collection reaches: fitted from 30 photos, 8-d (the tiny backbone is 32-d)."""
    monkeypatch.setattr(projection, "AUTO_MIN", 30)
    monkeypatch.setattr(projection, "AUTO_DIM", 8)


def stored(ix) -> dict[str, np.ndarray]:
    con = sqlite3.connect(ix / DB)
    try:
        return {h: np.frombuffer(v, np.float32) for h, v in con.execute("SELECT hash, vec FROM vectors")}
    finally:
        con.close()


def raw_of(ix) -> dict[str, np.ndarray]:
    con = sqlite3.connect(ix / DB)
    try:
        return {h: np.frombuffer(v, np.float16).astype(np.float32) for h, v in con.execute("SELECT hash, vec FROM raw")}
    finally:
        con.close()


def test_below_the_threshold_the_index_keeps_the_models_features(tmp_path, capsys):
    folder = tmp_path / "p"
    write_photos(folder, 12)
    s = index_folder(folder, tmp_path / "ix", tiny_cfg())
    m = read_manifest(tmp_path / "ix")
    assert m["dim"] == 32 and m["head"] is None and m.get("projection") is None
    assert m["index_cfg"]["projection"] == "auto" and not s.publish.projection
    assert main(["info", "--index", str(tmp_path / "ix")]) == 0
    assert "projection auto (the model's features until 1,000 photos)" in capsys.readouterr().out


def test_the_fitted_projection_stores_every_vector_and_embeds_every_query(tmp_path, small):
    folder = tmp_path / "p"
    paths = write_photos(folder, 30, classes=True)
    off = tmp_path / "off"
    index_folder(folder, off, tiny_cfg(index=IndexCfg(projection="off")))
    ix = tmp_path / "ix"
    s = index_folder(folder, ix, tiny_cfg())
    m = read_manifest(ix)
    p = m["projection"]
    assert m["dim"] == 8 and m["head"] == f"projection-{s.publish.generation}.safetensors"
    assert p["fitted_on"] == 30 and p["method"] in ("distil", "pca") and p["raw"]["dim"] == 32
    assert "projection" in s.publish.describe() and "fitted on 30 photos" in s.publish.describe()
    # the raw table holds the model's features; every vector is their projection
    raw, plain = raw_of(ix), stored(off)
    assert raw.keys() == plain.keys() == stored(ix).keys()
    assert max(np.abs(raw[h] - plain[h]).max() for h in raw) < 2e-3
    mean, weight = head_file.decode((ix / m["head"]).read_bytes())
    vec = stored(ix)
    for h in raw:
        np.testing.assert_allclose(vec[h], projection.apply(raw[h][None], mean, weight)[0], atol=1e-6)
    # the head file is a head like train-head's: same fingerprint, same map
    head = load_head(ix / m["head"])
    assert head.fingerprint == m["head_fingerprint"]
    # a query goes through the projection: an indexed photo finds itself at cosine 1
    searcher = Searcher(ix)
    hits = searcher.search_image_file(paths[4], k=3)
    assert hits[0].path.endswith(paths[4].name) and hits[0].score > 0.999
    assert searcher.embedder.dim == 8
    assert main(["verify", "--index", str(ix)]) == 0  # a projected index is a sound index


def test_photos_added_later_are_projected_with_the_same_map(tmp_path, small):
    folder = tmp_path / "p"
    write_photos(folder, 30)
    ix = tmp_path / "ix"
    index_folder(folder, ix, tiny_cfg())
    before = read_manifest(ix)
    write_photos(folder, 10, start=100)
    s = index_folder(folder, ix, tiny_cfg())
    m = read_manifest(ix)
    assert s.indexed == 10 and m["head"] == before["head"] and m["projection"]["fitted_on"] == 30  # no refit
    mean, weight = head_file.decode((ix / m["head"]).read_bytes())
    raw, vec = raw_of(ix), stored(ix)
    assert len(raw) == len(vec) == 40
    for h in raw:
        np.testing.assert_allclose(vec[h], projection.apply(raw[h][None], mean, weight)[0], atol=1e-6)


def test_an_unchanged_folder_needs_no_model(tmp_path, small, monkeypatch):
    folder = tmp_path / "p"
    write_photos(folder, 30)
    index_folder(folder, tmp_path / "ix", tiny_cfg())

    def no_model(*a, **kw):
        raise AssertionError("the model was built")

    monkeypatch.setattr(Embedder, "from_cfg", classmethod(no_model))
    s = index_folder(folder, tmp_path / "ix", tiny_cfg())
    assert s.unchanged == 30 and s.indexed == 0


def test_a_grown_collection_is_fitted_again_and_open_readers_follow(tmp_path, small, monkeypatch):
    monkeypatch.setattr(projection, "REFIT_GROWTH", 2)
    folder = tmp_path / "p"
    paths = write_photos(folder, 30)
    ix = tmp_path / "ix"
    index_folder(folder, ix, tiny_cfg())
    first = read_manifest(ix)
    searcher = Searcher(ix)
    assert searcher.search_image_file(paths[0], k=1)[0].score > 0.999
    write_photos(folder, 20, start=100)
    index_folder(folder, ix, tiny_cfg())
    assert read_manifest(ix)["projection"]["fitted_on"] == 30  # 50 photos < 2 x 30: not yet
    assert read_manifest(ix)["head"] == first["head"]
    write_photos(folder, 10, start=200)
    s = index_folder(folder, ix, tiny_cfg())
    m = read_manifest(ix)
    assert m["projection"]["fitted_on"] == 60 and m["head"] != first["head"] and "fitted on 60" in s.publish.describe()
    assert not (ix / first["head"]).exists()  # the superseded projection's files are gone
    assert sorted(n.name for n in ix.glob("projection-*")) == sorted([m["head"], m["head"].replace(".safetensors",
                                                                                                   ".json")])
    # the open searcher embeds with the new projection: a photo's query vector is its stored vector
    snap = searcher.snapshot
    with snap.read():
        mine = snap.vectors([snap.row_by_path(bytes(paths[0].resolve())).id])
    q = searcher.embed_image_bytes(paths[0].read_bytes())[0]
    assert q.shape == (8,) and float(q @ next(iter(mine.values()))) > 0.9999
    assert searcher.info().projection.endswith("fitted on 60 of 60 photos")


def test_projection_off_goes_back_to_the_models_features_without_embedding(tmp_path, small, monkeypatch):
    folder = tmp_path / "p"
    write_photos(folder, 30)
    ix = tmp_path / "ix"
    index_folder(folder, ix, tiny_cfg())
    raw = raw_of(ix)
    monkeypatch.setattr(Embedder, "from_cfg", classmethod(lambda *a, **kw: pytest.fail("the model was built")))
    s = index_folder(folder, ix, tiny_cfg(index=IndexCfg(projection="off")))
    m = read_manifest(ix)
    assert m["dim"] == 32 and m["head"] is None and m["projection"] is None and s.indexed == 0
    assert "projection off" in s.publish.describe()
    vec = stored(ix)
    assert vec.keys() == raw.keys() and all(np.array_equal(vec[h], raw[h]) for h in raw)
    assert not raw_of(ix) and not list(ix.glob("projection-*"))
    assert Snapshot(ix).index.d == 32


def test_with_dba_the_augmented_vectors_are_those_of_the_projected_ones(tmp_path, small):
    folder = tmp_path / "p"
    write_photos(folder, 30)
    ix = tmp_path / "ix"
    index_folder(folder, ix, tiny_cfg(index=IndexCfg(dba="on")))
    m = read_manifest(ix)
    assert m["dim"] == 8
    con = sqlite3.connect(ix / DB)
    plain = {h: np.frombuffer(v, np.float32) for h, v in con.execute("SELECT hash, vec FROM plain")}
    assert con.execute("SELECT value FROM meta WHERE key='dba'").fetchone()[0] == "1"
    con.close()
    mean, weight = head_file.decode((ix / m["head"]).read_bytes())
    raw = raw_of(ix)
    for h in raw:  # the plain vectors are the projected ones; the stored ones are their DBA
        np.testing.assert_allclose(plain[h], projection.apply(raw[h][None], mean, weight)[0], atol=1e-6)
    from imgembed.index.augment import DBA_K, augment

    hashes = sorted(plain)
    want, _ = augment(np.stack([plain[h] for h in hashes]), DBA_K)
    vec = stored(ix)
    np.testing.assert_allclose(np.stack([vec[h] for h in hashes]), want, atol=1e-5)


def test_a_crash_before_the_manifest_is_rewritten_is_repaired(tmp_path, small, monkeypatch):
    folder = tmp_path / "p"
    paths = write_photos(folder, 30)
    ix = tmp_path / "ix"
    index_folder(folder, ix, tiny_cfg(index=IndexCfg(projection="off")))
    real = StoreWriter._write_manifest

    def crash_on_the_projection(self, manifest):
        if manifest.get("projection"):
            raise KeyboardInterrupt
        real(self, manifest)

    monkeypatch.setattr(StoreWriter, "_write_manifest", crash_on_the_projection)
    with pytest.raises(KeyboardInterrupt):
        index_folder(folder, ix, tiny_cfg(index=IndexCfg(projection="auto")))
    monkeypatch.setattr(StoreWriter, "_write_manifest", real)
    assert read_manifest(ix)["dim"] == 32  # the manifest is behind the published generation
    snap = Snapshot(ix)  # a reader takes the space from the database
    assert snap.index.d == snap.manifest["dim"] == 8
    hit = Searcher(ix).search_image_file(paths[3], k=1)[0]
    assert hit.path.endswith(paths[3].name) and hit.score > 0.999
    StoreWriter(ix, None, IndexCfg()).close()  # the next writer rewrites the manifest
    assert read_manifest(ix)["dim"] == 8 and json.loads((ix / MANIFEST).read_text())["projection"]["fitted_on"] == 30


@pytest.mark.slow
def test_a_resized_copy_still_ranks_first(tmp_path, monkeypatch):
    """Through the index's projection (the real backbone on the 60 sample photos, fitted on them)."""
    monkeypatch.setattr(projection, "AUTO_MIN", 30)
    monkeypatch.setattr(projection, "AUTO_DIM", 32)
    cfg = tiny_cfg()
    cfg.backbone = BackboneCfg(device="cpu")
    ix = tmp_path / "ix"
    index_folder(ASSETS, ix, cfg)
    assert read_manifest(ix)["projection"]["fitted_on"] == 60
    searcher = Searcher(ix)
    for path in sorted(ASSETS.rglob("*.jpg"))[::3]:
        im = Image.open(path).convert("RGB")
        im.resize((im.width // 2, im.height // 2), Image.BICUBIC).save(tmp_path / "q.jpg", quality=60)
        assert searcher.search_image_file(tmp_path / "q.jpg", k=1)[0].path == str(path)


def test_projection_choices_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="does not go with --head"):
        projection_mode(tiny_cfg(head="h.safetensors", index=IndexCfg(projection="auto")), None, None)


def test_a_manifest_cannot_name_another_file_as_its_projection(tmp_path, small):
    folder = tmp_path / "p"
    write_photos(folder, 30)
    ix = tmp_path / "ix"
    index_folder(folder, ix, tiny_cfg())
    m = json.loads((ix / MANIFEST).read_text())
    m["head"] = "../projection-1.safetensors"
    (ix / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(StoreError, match="head must be"):
        read_manifest(ix)


def test_the_fit_keeps_distillation_only_when_it_beats_pca():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 64))
    x = np.concatenate([c + 0.3 * rng.normal(size=(60, 64)) for c in centres]).astype(np.float32)
    fit = projection.fit_label_free(x[::2], x[1::2], 8)
    assert fit.method == ("distil" if fit.distil_score > fit.pca_score + projection.KEEP_MARGIN else "pca")
    assert fit.weight.shape == (8, 64) and np.isfinite(fit.weight).all()
    assert reproject.describe({"projection": {"method": fit.method, "raw": {"dim": 64}, "dim": 8, "fitted_on": 360,
                                              "contents": 400}}).endswith("64 -> 8, fitted on 360 of 400 photos")


def test_photos_added_while_turning_it_off_and_a_lost_projection_file(tmp_path, small):
    folder = tmp_path / "p"
    write_photos(folder, 30)
    ix = tmp_path / "ix"
    index_folder(folder, ix, tiny_cfg())
    (ix / read_manifest(ix)["head"]).write_bytes(b"damaged")
    with pytest.raises(StoreError, match="--projection off"):
        index_folder(folder, ix, tiny_cfg())
    write_photos(folder, 3, start=100)
    s = index_folder(folder, ix, tiny_cfg(index=IndexCfg(projection="off")))  # new photos embedded meanwhile
    assert s.indexed == 3 and read_manifest(ix)["dim"] == 32
    vec = stored(ix)
    assert len(vec) == 33 and {len(v) for v in vec.values()} == {32}
    assert Snapshot(ix).index.ntotal == 33


def test_copy_candidates_come_from_the_models_own_features(tmp_path, small):
    """The duplicate finder proposes pairs by the model's features, not by the projection (which
    gathers look-alikes and so pushes a crop of a photo down its list)."""
    from imgembed.query.collection import neighbour_graph_of
    from imgembed.query.duplicates import neighbour_graph

    folder = tmp_path / "p"
    write_photos(folder, 30)
    ix = tmp_path / "ix"
    index_folder(folder, ix, tiny_cfg())
    snap = Snapshot(ix)
    with snap.read():
        ids = snap.visible_ids()
        raw_ids, raw = snap.raw_vectors_array(ids)
        _, projected = snap.vectors_array(ids)
    assert raw.shape == (30, 32) and projected.shape == (30, 8)
    got = neighbour_graph_of(snap, k=3, model_features=True)
    want = neighbour_graph(raw_ids, raw, k=3)
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.nbr, want.nbr)
    plain = neighbour_graph_of(snap, k=3)  # everything else keeps to the index's own space
    np.testing.assert_array_equal(plain.nbr, neighbour_graph(ids, projected, k=3).nbr)
