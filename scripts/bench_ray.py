"""Ray engine against the local path on the same photos, in one run (the machine is shared: compare
the ratio, not the absolute figures).

    python scripts/bench_ray.py /work/shared/data/clothing-small/test -n 300 [--backbone NAME]

Copies the first N photos (sorted by path) into a temporary folder, then embeds them
1. with the local path (``index_folder``: DataLoader decode workers + the model in this process),
   before and after the Ray runs (the ratio uses the mean of the two: the machine's load drifts),
2. with the Ray engine on a local Ray cluster of all cores (decode tasks + an actor pool), with the
   default actor settings and with the actor's torch threads raised to all cores,
and prints images/s of each (embedding loop, model already loaded), the end-to-end seconds, the
Ray/local ratio and the largest difference between the vectors of the two paths.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args(argv)

    import ray

    from imgembed.config import BackboneCfg, EmbedCfg, IndexJobCfg, ReaderCfg
    from imgembed.distributed import shards
    from imgembed.distributed.ray_job import RayCfg, embed_to_shards
    from imgembed.index.snapshot import Snapshot
    from imgembed.indexer import index_folder
    from imgembed.ingest import fs
    from imgembed.model.embedder import Embedder

    files = fs.scan(a.folder, ReaderCfg()).files[: a.n]
    if not files:
        print(f"no photos under {a.folder}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        photos = work / "photos"
        for f in files:
            dst = photos / os.fsdecode(f.relpath)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fs.abspath(a.folder, f.relpath), dst)
        cpus = os.cpu_count() or 1
        cfg = IndexJobCfg(backbone=BackboneCfg(name=a.backbone, device="cpu"), embed=EmbedCfg(batch_size=a.batch_size))
        embedder = Embedder.from_cfg(cfg.backbone)
        print(f"{len(files)} photos from {a.folder}, backbone {a.backbone} ({embedder.dim}-d), "
              f"batch {a.batch_size}, {cpus} CPUs")

        def run_local(name: str) -> float:
            t = time.perf_counter()
            shutil.rmtree(work / "local-ix", ignore_errors=True)
            local = index_folder(photos, work / "local-ix", cfg, embedder=embedder)
            print(f"{name}: {local.images_per_second:7.1f} images/s  ({local.indexed} embedded, "
                  f"{time.perf_counter() - t:.1f} s end to end, {cpus} decode workers)", flush=True)
            return local.images_per_second

        local_before = run_local("local (before ray)")

        t = time.perf_counter()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        init_s = time.perf_counter() - t
        print(f"ray   : cluster start {init_s:.1f} s", flush=True)
        results = {}
        variants = {"ray (default: 1 CPU, 1 thread per actor)": RayCfg(),
                    f"ray (actor with {cpus} torch threads)": RayCfg(actor_threads=cpus)}
        for name, rcfg in variants.items():
            out = work / f"shards-{len(results)}"
            t = time.perf_counter()
            s = embed_to_shards(photos, out, cfg, rcfg, embedder=embedder)
            wall = time.perf_counter() - t
            results[name] = (s, out)
            print(f"{name}: {s.images_per_second:7.1f} images/s  ({s.embedded} embedded on {s.actors} actor(s), "
                  f"{wall:.1f} s end to end without the cluster start)", flush=True)
        ray.shutdown()
        # The machine's load drifts: the local path runs before and after, and the ratio uses the mean.
        local_ips = (local_before + run_local("local (after ray)")) / 2

        snap = Snapshot(work / "local-ix")
        rows = list(snap.iter_rows())
        lv = snap.vectors(r.id for r in rows)
        local_vecs = {r.relpath: lv[r.id] for r in rows}
        snap.close()
        for name, (s, out) in results.items():
            diff = 0.0
            for _, chunk in shards.iter_shards(out):
                for f, v in zip(chunk.files, chunk.vectors):
                    diff = max(diff, float(np.abs(v - local_vecs[f.relpath]).max()))
            print(f"{name}: ray/local images/s = {s.images_per_second / local_ips:.2f}, "
                  f"max abs vector diff vs local = {diff:.2g}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
