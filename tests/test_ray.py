"""The Ray engine on a real local Ray cluster (one start for the module: it takes seconds).

Checked against the local path: the same vectors, the same search answers; and exactly one row per
photo when an embedding actor dies mid-job, and when a job is resumed.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # each test starts or uses a real local Ray cluster

ray = pytest.importorskip("ray", reason="the Ray engine is the optional extra imgembed[ray]")
pq = pytest.importorskip("pyarrow.parquet")

from helpers import TINY, write_photos  # noqa: E402

from imgembed.cli import main  # noqa: E402
from imgembed.config import BackboneCfg, EmbedCfg, IndexJobCfg  # noqa: E402
from imgembed.distributed import shards  # noqa: E402
from imgembed.distributed.ray_job import RayCfg, embed_to_shards  # noqa: E402
from imgembed.index.format import StoreError  # noqa: E402
from imgembed.index.snapshot import Snapshot  # noqa: E402
from imgembed.indexer import index_folder  # noqa: E402
from imgembed.model.embedder import Embedder  # noqa: E402
from imgembed.query.search import Searcher  # noqa: E402

N = 24
SHARD = 10  # 25 files (24 photos and a broken one) -> 3 shards
CFG = IndexJobCfg(backbone=BackboneCfg(name=TINY, device="cpu"), embed=EmbedCfg(batch_size=4, workers=0))


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a running one
    ray.data.DataContext.get_current().enable_progress_bars = False
    # The test's crashing embedder is defined here, a module the workers cannot import.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    write_photos(d, N, classes=True)
    (d / "c0" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return d


@pytest.fixture(scope="module")
def local(folder, tmp_path_factory) -> Path:
    ix = tmp_path_factory.mktemp("local") / "ix"
    index_folder(folder, ix, CFG)
    return ix


@pytest.fixture(scope="module")
def ray_run(cluster, folder, tmp_path_factory):
    """The CLI's Ray engine: shards, then an index built from them."""
    d = tmp_path_factory.mktemp("ray")
    argv = ["index", str(folder), "--engine", "ray", "--shards-out", str(d / "shards"), "--index", str(d / "ix"),
            "--backbone", TINY, "--device", "cpu", "--batch-size", "4", "--shard-size", str(SHARD)]
    return d, main(argv)


def stored_vectors(ix: Path) -> dict[bytes, np.ndarray]:
    snap = Snapshot(ix)
    try:
        rows = list(snap.iter_rows())
        vecs = snap.vectors(r.id for r in rows)
        return {r.relpath: vecs[r.id] for r in rows}
    finally:
        snap.close()


def shard_table(shards_dir: Path):
    import pyarrow as pa

    m = shards.read_manifest(shards_dir)
    return pa.concat_tables([pq.read_table(shards_dir / shards.shard_name(i)) for i in range(m["shards"])])


def assert_exactly_once(shards_dir: Path, folder: Path) -> dict[bytes, np.ndarray]:
    """Every listed file is in the shards once, and the shards hold nothing else."""
    t = shard_table(shards_dir)
    ids = t.column("id").to_pylist()
    assert sorted(ids) == list(range(N + 1))
    paths = t.column("path").to_pylist()
    assert sorted(paths) == sorted(os.fsencode(p.relative_to(folder)) for p in folder.rglob("*.jpg"))
    errors = dict(zip(paths, t.column("error").to_pylist()))
    assert [p for p, e in errors.items() if e] == [b"c0/broken.jpg"]
    vecs = t.column("vector").to_pylist()
    return {p: np.asarray(v, np.float32) for p, v, e in zip(paths, vecs, errors.values()) if e is None}


def test_ray_vectors_equal_local(ray_run, folder, local, capsys):
    d, status = ray_run
    assert status == 0
    ray_vecs = assert_exactly_once(d / "shards", folder)
    local_vecs = stored_vectors(local)
    assert set(ray_vecs) == set(local_vecs) and len(local_vecs) == N
    diff = max(float(np.abs(ray_vecs[p] - local_vecs[p]).max()) for p in local_vecs)
    print(f"max abs diff ray vs local: {diff:.3g}")
    assert diff < 1e-5
    # The index built from the shards stores the same vectors.
    assert max(float(np.abs(v - local_vecs[p]).max()) for p, v in stored_vectors(d / "ix").items()) < 1e-5


def test_index_from_shards_answers_like_local(ray_run, folder, local, capsys):
    d, _ = ray_run
    a, b = Searcher(d / "ix"), Searcher(local)
    assert a.info().count == b.info().count == N
    for q in sorted(folder.rglob("img*.jpg"))[::5]:
        ha, hb = a.search_image_file(q, 5), b.search_image_file(q, 5)
        assert [h.path for h in ha] == [h.path for h in hb]
        assert np.allclose([h.score for h in ha], [h.score for h in hb], atol=1e-5)
        assert ha[0].path == str(q)
    assert main(["search", str(folder / "c1" / "img0004.jpg"), "--index", str(d / "ix"), "-k", "1"]) == 0
    assert "img0004.jpg" in capsys.readouterr().out
    assert main(["verify", "--index", str(d / "ix")]) == 0, capsys.readouterr().out


class CrashOnce(Embedder):
    """Kills its worker process on the second batch it embeds, the first time only (a marker file
    records that it happened, so the restarted actor goes through)."""

    marker = ""

    def embed(self, pixels):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2 and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return super().embed(pixels)


def test_killed_actor_is_restarted_and_every_photo_lands_once(cluster, folder, local, tmp_path):
    base = Embedder.from_cfg(CFG.backbone)
    crashing = CrashOnce(base.backbone, None, device="cpu")
    crashing.marker = str(tmp_path / "crashed")
    summary = embed_to_shards(folder, tmp_path / "shards", CFG, RayCfg(shard_size=SHARD), embedder=crashing)
    assert (tmp_path / "crashed").exists(), "the actor was never killed"
    assert summary.embedded == N and summary.shards_written == 3
    ray_vecs = assert_exactly_once(tmp_path / "shards", folder)
    local_vecs = stored_vectors(local)
    assert max(float(np.abs(ray_vecs[p] - local_vecs[p]).max()) for p in local_vecs) < 1e-5

    # Resume: a lost shard is redone, the others are not touched; the first run's shard size holds.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("shard-*")}
    (tmp_path / "shards" / shards.shard_name(1)).unlink()
    again = embed_to_shards(folder, tmp_path / "shards", CFG, RayCfg(shard_size=7), embedder=base)
    assert (again.shards_resumed, again.shards_written, again.embedded) == (2, 1, SHARD)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("shard-*")}
    assert after[shards.shard_name(0)] == before[shards.shard_name(0)]
    assert after[shards.shard_name(2)] == before[shards.shard_name(2)]
    assert_exactly_once(tmp_path / "shards", folder)


def test_finished_job_needs_no_cluster_and_other_embedder_is_refused(ray_run, folder, tmp_path):
    d, _ = ray_run
    sd = tmp_path / "shards"
    shutil.copytree(d / "shards", sd)
    summary = embed_to_shards(folder, sd, CFG, RayCfg(shard_size=SHARD))
    assert (summary.shards_resumed, summary.shards_written, summary.embedded) == (3, 0, 0)
    other = IndexJobCfg(backbone=BackboneCfg(name=TINY + ":16", device="cpu"))
    with pytest.raises(StoreError, match="same --backbone"):
        embed_to_shards(folder, sd, other)
    with pytest.raises(StoreError, match="not .*" + str(tmp_path / "elsewhere")):
        (tmp_path / "elsewhere").mkdir()
        embed_to_shards(tmp_path / "elsewhere", sd, CFG)


def test_build_index_cli_ivfpq_and_incomplete_shards(ray_run, tmp_path, capsys):
    d, _ = ray_run
    ix = tmp_path / "ivf"
    assert main(["build-index", "--from-shards", str(d / "shards"), "--index", str(ix), "--index-type", "ivfpq"]) == 0
    assert "added 24" in capsys.readouterr().out
    s = Searcher(ix)
    assert s.info().count == N and s.info().index_type == "ivfpq"
    # Built again from the same shards: nothing changes.
    assert main(["build-index", "--from-shards", str(d / "shards"), "--index", str(ix), "--index-type", "ivfpq"]) == 0
    assert "added 0, unchanged 24" in capsys.readouterr().out

    sd = tmp_path / "partial"
    shutil.copytree(d / "shards", sd)
    (sd / shards.shard_name(2)).unlink()
    assert main(["build-index", "--from-shards", str(sd), "--index", str(tmp_path / "x")]) == 1
    assert "1 of 3 shards" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--engine", "ray", "--index", str(tmp_path / "y")]) == 1
    assert "--shards-out" in capsys.readouterr().err
