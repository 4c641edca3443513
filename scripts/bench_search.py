"""Search at scale: build time, latency, batch QPS, recall@10 and bytes per vector per index type.

    python scripts/bench_search.py N DIM [--queries 1000] [--threads 2] [--types flat,ivf,hnsw,ivfpq]
                                   [--qe] [--dba N_DBA] [--filters 0.01,0.5]

``--qe``: also the latency of alpha query expansion on the auto index (search, fold the 10 hits'
vectors into the query, search again; the vectors come from memory here, from SQLite in the store).
``--dba N_DBA``: time database-side augmentation of the first N_DBA vectors as a publish computes it
from scratch (neighbours by exact search up to 50,000 vectors, by an IVF index beyond), and the
exact pass that finds what 100 added photos can change (:mod:`imgembed.index.dba`).

Vectors with the structure of real embeddings. Uniform random unit vectors would make every
approximate index look broken (no photo collection looks like them), so the N vectors are built
from real photos instead:

1. Raw EfficientNet-Lite0 features of the clothing-small photos (train + validation + test; cached
   by ``imgembed.learn.feature_cache``), the "anchors".
2. Real augmentation deltas: features of random crops / flips / colour jitter of a sample of those
   photos minus the features of the photo itself.
3. Each of the N vectors is a base plus a real delta (taken from another photo) scaled by
   U(0.75, 1.5): a synthetic "augmented copy". The base is a real photo, or for half of them a
   point between a photo and one of its 10 nearest real photos (t ~ U(0, 0.5)), so the set is a
   continuum between similar photos rather than tight blobs. Everything is projected by PCA
   (fitted on the anchors) to DIM and L2-normalised, as a trained head's output would be.

With ``--filters SHARES`` each index type is also searched with filters that keep those shares of
the photos (a random subset, as a date range or a camera would pick, uncorrelated with what the
photos show), through :mod:`imgembed.index.filtered_search`: latency per query, the time to build
the subset once (its selector, and its vectors when they are searched in memory; the index's
snapshot reads those from SQLite instead, which costs more), and recall@10 against brute force
over the matching photos.

The script prints neighbour statistics of real crops and synthetic copies side by side (cosine to
the source photo, cosine to the 1st and 10th neighbour) so the match can be judged. Queries are
fresh synthetic copies, not in the index. Recall@10 is against exact search (IndexFlatIP).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLOTHING = Path(os.environ.get("CLOTHING_DIR", "/work/shared/data/clothing-small"))


# ---------------------------------------------------------------- data


def real_features(n_crop_photos: int, crops_per_photo: int, seed: int = 0):
    """(anchors (A, 1280), deltas (C, 1280), crop_src (C,)) from real photos."""
    import torch
    import torchvision.transforms.v2 as T

    from imgembed.config import BackboneCfg, EmbedCfg, ReaderCfg
    from imgembed.ingest.reader import open_image, read_bytes, to_tensor
    from imgembed.learn.feature_cache import extract_features
    from imgembed.model.embedder import Embedder

    paths = sorted(os.fsencode(p) for p in CLOTHING.rglob("*.jpg"))
    if not paths:
        sys.exit(f"no photos under {CLOTHING} (set CLOTHING_DIR)")
    embedder = Embedder.from_cfg(BackboneCfg(device="cpu"))
    fs = extract_features(paths, embedder, ReaderCfg(), EmbedCfg(batch_size=64))
    anchors = fs.feats[fs.ok]
    print(f"anchors: {len(anchors)} real clothing-small photos ({fs.computed} computed, rest cached)")

    cache = Path(tempfile.gettempdir()) / f"imgembed-bench-crops-{n_crop_photos}x{crops_per_photo}-{seed}.npz"
    if cache.is_file():
        z = np.load(cache)
        return anchors, z["deltas"], z["src"]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(anchors), n_crop_photos, replace=False)
    ok_paths = [p for p, o in zip(paths, fs.ok) if o]
    aug = T.Compose([T.RandomResizedCrop(256, scale=(0.4, 1.0)), T.RandomHorizontalFlip(),
                     T.ColorJitter(0.3, 0.3, 0.3, 0.05)])
    torch.manual_seed(seed)
    pre = embedder.preprocess
    batch, src = [], []
    for i in pick:
        im = open_image(read_bytes(ok_paths[i], ReaderCfg()), ReaderCfg(), draft_to=None)
        for _ in range(crops_per_photo):
            batch.append(to_tensor(aug(im), pre))
            src.append(i)
    feats = []
    t0 = time.perf_counter()
    for j in range(0, len(batch), 32):
        feats.append(embedder.features(torch.stack(batch[j:j + 32])).numpy())
    feats = np.concatenate(feats)
    print(f"real crops: {len(feats)} augmented crops of {n_crop_photos} photos embedded in "
          f"{time.perf_counter() - t0:.0f} s")
    src = np.array(src)
    deltas = feats - anchors[src]
    np.savez(cache, deltas=deltas, src=src)
    return anchors, deltas, src


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Generator:
    """Synthetic augmented copies of real photos, projected to ``dim``."""

    def __init__(self, anchors: np.ndarray, deltas: np.ndarray, src: np.ndarray, dim: int) -> None:
        a = unit(anchors)
        self.mean = a.mean(0)
        _, _, vt = np.linalg.svd(a - self.mean, full_matrices=False)
        self.basis = vt[:dim].T.astype(np.float32)  # (1280, dim)
        self.anchors, self.src = anchors, src
        self.deltas = deltas
        self.norm = np.linalg.norm(anchors, axis=1, keepdims=True)
        self.unit_anchors = a
        sims = a @ a.T
        np.fill_diagonal(sims, -np.inf)
        self.knn = np.argsort(-sims, axis=1)[:, :10]  # each photo's 10 nearest real photos

    def project(self, raw: np.ndarray) -> np.ndarray:
        return unit((unit(raw) - self.mean) @ self.basis)

    def sample(self, n: int, rng: np.random.Generator, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors (n, dim), anchor index (n,))``."""
        out, which = [], []
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            ai = rng.integers(0, len(self.anchors), m)
            di = rng.integers(0, len(self.deltas), m)
            # half are new "photos" between a photo and one of its 10 nearest real neighbours
            t = (rng.uniform(0, 0.5, (m, 1)) * (rng.random((m, 1)) < 0.5)).astype(np.float32)
            nb = self.knn[ai, rng.integers(0, self.knn.shape[1], m)]
            base = (1 - t) * self.unit_anchors[ai] + t * self.unit_anchors[nb]
            scale = rng.uniform(0.75, 1.5, (m, 1)).astype(np.float32)
            raw = base * self.norm[ai] + scale * self.deltas[di]
            out.append(self.project(raw))
            which.append(ai)
        return np.concatenate(out), np.concatenate(which)


def neighbour_stats(gen: Generator, rng: np.random.Generator) -> None:
    """Real crops vs synthetic copies, in the projected space: how alike are they?"""
    A = gen.project(gen.anchors)
    real = gen.project(gen.anchors[gen.src] + gen.deltas)
    real_src = gen.src
    syn, syn_src = gen.sample(len(real), rng)
    print("neighbour statistics in the projected space (real augmented crops vs synthetic copies):")
    print(f"  {'':10s} {'cos to source':>14s} {'NN1 cos':>8s} {'NN10 cos':>9s} {'NN10/NN1 gap':>13s}")
    for name, X, s in (("real", real, real_src), ("synthetic", syn, syn_src)):
        to_src = np.sum(X * A[s], axis=1)
        sims = X @ A.T  # neighbours among the real photos, source excluded
        sims[np.arange(len(X)), s] = -np.inf
        top = -np.sort(-sims, axis=1)[:, :10]
        print(f"  {name:10s} {np.mean(to_src):8.3f}+-{np.std(to_src):.3f} {np.mean(top[:, 0]):8.3f} "
              f"{np.mean(top[:, 9]):9.3f} {np.mean(top[:, 0] - top[:, 9]):13.3f}")


# ---------------------------------------------------------------- measurements


def exact_topk(X: np.ndarray, Q: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    return index.search(Q, k)[1]


def latency(index, Q: np.ndarray, k: int = 10) -> tuple[float, float, float, float]:
    """Wall-clock p50, p99 and CPU-time p50, p99 (ms) of one query at a time on one thread.

    One thread: a server answers concurrent queries on separate threads, and one query split
    over OpenMP threads stalls whenever another process holds a core. The CPU time of the thread
    is what the query costs on an idle machine; wall-clock includes waiting for a busy core.
    """
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    wall, cpu = [], []
    for q in Q:
        t, c = time.perf_counter(), time.thread_time()
        index.search(q[None], k)
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    faiss.omp_set_num_threads(threads)
    wall, cpu = np.array(wall) * 1000, np.array(cpu) * 1000
    return (float(np.percentile(wall, 50)), float(np.percentile(wall, 99)),
            float(np.percentile(cpu, 50)), float(np.percentile(cpu, 99)))


def recall_at(got: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(g[:k]) & set(t[:k])) / k for g, t in zip(got, truth)]))


def filtered(index, X: np.ndarray, Q: np.ndarray, shares: list[float], rng: np.random.Generator,
             label: str, nq: int) -> None:
    """Latency and recall@10 of filtered queries keeping each share of the vectors (ids 0..n-1)."""
    from imgembed.index import filtered_search

    n = len(X)
    for share in shares:
        keep = np.sort(rng.choice(n, max(1, round(n * share)), replace=False))
        t = time.perf_counter()
        in_memory = filtered_search.exact_fits(len(keep), X.shape[1])  # as the snapshot decides
        subset = filtered_search.Subset(keep, X[keep] if in_memory else None)  # the snapshot reads SQLite
        build_ms = (time.perf_counter() - t) * 1000
        queries = Q[:nq]
        truth = keep[np.argsort(-(queries @ X[keep].T), axis=1)[:, :10]]
        wall, cpu, got = [], [], []
        for q in queries:
            t, c = time.perf_counter(), time.thread_time()
            got.append(filtered_search.search(index, q[None], 10, subset)[1][0])
            wall.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
        wall, cpu = np.array(wall) * 1000, np.array(cpu) * 1000
        path = "in memory" if in_memory else "exact, selector" if label == "flat" else "raised probes"
        print(f"{label:6s} {f'filter keeps {share:.0%} ({path})':34s} {np.percentile(wall, 50):7.2f} "
              f"{np.percentile(wall, 99):7.2f} {np.percentile(cpu, 50):7.2f} {np.percentile(cpu, 99):7.2f} "
              f"{recall_at(np.array(got), truth):9.3f} {build_ms:9.1f}", flush=True)


def file_bytes(index) -> int:
    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int)
    p.add_argument("dim", type=int)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--types", default="flat,ivf,ivfpq,hnsw")
    p.add_argument("--crop-photos", type=int, default=96)
    p.add_argument("--crops", type=int, default=4)
    p.add_argument("--qe", action="store_true", help="also time query expansion on the auto index")
    p.add_argument("--dba", type=int, default=0, metavar="N_DBA", help="also time DBA of N_DBA vectors")
    p.add_argument("--filters", help="also search with filters keeping these shares, e.g. 0.01,0.5")
    p.add_argument("--filter-queries", type=int, default=500, help="queries per filter")
    a = p.parse_args(argv)

    import faiss

    from imgembed.config import IndexCfg
    from imgembed.index import faiss_index

    faiss.omp_set_num_threads(a.threads)
    rng = np.random.default_rng(1)
    anchors, deltas, src = real_features(a.crop_photos, a.crops)
    if a.dim > anchors.shape[1]:
        sys.exit(f"DIM must be at most {anchors.shape[1]} (the backbone's feature size)")
    gen = Generator(anchors, deltas, src, a.dim)
    neighbour_stats(gen, rng)
    t = time.perf_counter()
    X, _ = gen.sample(a.n, rng)
    Q, _ = gen.sample(a.queries, rng)
    ids = np.arange(a.n, dtype=np.int64)
    print(f"{a.n} x {a.dim}-d vectors generated in {time.perf_counter() - t:.0f} s; {a.queries} queries; "
          f"{a.threads} faiss threads for batches, 1 for single queries; {os.cpu_count()} CPUs")
    t = time.perf_counter()
    truth = exact_topk(X, Q, 10)
    print(f"exact top-10 of the queries in {time.perf_counter() - t:.1f} s")

    cfg = IndexCfg()
    auto = faiss_index.choose_type(cfg, a.n, a.dim)
    print(f"auto picks: {auto}")
    print(f"load average {os.getloadavg()[0]:.1f} (other processes share the {os.cpu_count()} CPUs); "
          "latency: one query at a time; wall = elapsed, cpu = the query thread's CPU time")
    print(f"{'type':6s} {'params':22s} {'build s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'cpu p50':>7s} "
          f"{'cpu p99':>7s} {'batch QPS':>10s} {'recall@10':>9s} {'B/vector':>9s}")
    for kind in a.types.split(","):
        t = time.perf_counter()
        train = X[rng.choice(a.n, min(a.n, 262_144), replace=False)] if faiss_index.needs_training(kind) else None
        index = faiss_index.build(kind, a.dim, cfg, iter([(ids, X)]), train, a.n)
        if train is not None and cfg.target_recall > 0:  # as the store does after training lists
            c = time.perf_counter()
            sample = rng.choice(a.n, faiss_index.CALIBRATION_QUERIES, replace=False)
            cal = faiss_index.calibrate(index, ids[sample], X[sample], cfg.target_recall)
            print(f"{kind}: calibrated {cal.describe()} in {time.perf_counter() - c:.1f} s "
                  "(included in build s)", flush=True)
        build_s = time.perf_counter() - t
        nbytes = file_bytes(index)
        if kind == "ivf" or kind == "ivfpq":
            inner = faiss.extract_index_ivf(index)
            default = inner.nprobe
            sweep = sorted({default, max(1, default // 2), default * 2, default * 4} & set(range(1, inner.nlist + 1)))
            settings = [(f"nlist={inner.nlist} nprobe={v}" + (" *" if v == default else ""),
                         lambda v=v: setattr(inner, "nprobe", v)) for v in sweep]
            reset = lambda: setattr(inner, "nprobe", default)  # noqa: E731
        elif kind == "hnsw":
            inner = faiss.downcast_index(index.index)
            default = inner.hnsw.efSearch
            settings = [(f"M={cfg.hnsw_m} efSearch={v}" + (" *" if v == default else ""),
                         lambda v=v: setattr(inner.hnsw, "efSearch", v)) for v in (32, 64, 128)]
            reset = lambda: setattr(inner.hnsw, "efSearch", default)  # noqa: E731
        else:
            settings, reset = [("exact", lambda: None)], lambda: None
        for label, apply in settings:
            apply()
            nq = min(len(Q), 300 if kind == "flat" else len(Q))
            lat = latency(index, Q[:nq])
            t = time.perf_counter()
            _, got = index.search(Q, 10)
            qps = len(Q) / (time.perf_counter() - t)
            print(f"{kind:6s} {label:22s} {build_s:8.1f} {lat[0]:7.2f} {lat[1]:7.2f} {lat[2]:7.2f} {lat[3]:7.2f} "
                  f"{qps:10.0f} {recall_at(got, truth):9.3f} {nbytes / a.n:9.0f}", flush=True)
        reset()
        if a.filters:
            print(f"{'type':6s} {'filtered search':34s} {'p50 ms':>7s} {'p99 ms':>7s} {'cpu p50':>7s} {'cpu p99':>7s} "
                  f"{'recall@10':>9s} {'subset ms':>9s}  (subset ms: building the subset, once per filter)")
            filtered(index, X, Q, [float(v) for v in a.filters.split(",")], rng, kind, a.filter_queries)
        if kind == auto and a.qe:
            qe_latency(index, X, Q, truth)
        if kind == auto:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "x.faiss")
                faiss.write_index(index, path)
                del index
                t = time.perf_counter()
                mapped = faiss_index.read(path, mmap=True)
                load_s = time.perf_counter() - t
                _, got = mapped.search(Q, 10)
                lat = latency(mapped, Q)
                print(f"{kind:6s} {'mmap (defaults)':22s} {load_s:8.2f} {lat[0]:7.2f} {lat[1]:7.2f} {lat[2]:7.2f} "
                      f"{lat[3]:7.2f} {'':>10s} {recall_at(got, truth):9.3f}   (build s column: time to open; "
                      "file in the page cache)", flush=True)
                del mapped
        else:
            del index
    print("* = the parameters the store uses by default")
    if a.dba:
        dba_cost(X[:a.dba])
    return 0


def qe_latency(index, X: np.ndarray, Q: np.ndarray, truth: np.ndarray, k: int = 10) -> None:
    """p50/p99 of one query with alpha-QE (two searches and the fold), one thread."""
    import faiss

    from imgembed.index.augment import expand

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    wall = []
    for q in Q:
        t = time.perf_counter()
        sims, ids = index.search(q[None], k)
        q2 = expand(q[None], sims, X[np.maximum(ids, 0)] * (ids >= 0)[..., None])
        index.search(q2, k)
        wall.append(time.perf_counter() - t)
    faiss.omp_set_num_threads(threads)
    wall = np.array(wall) * 1000
    print(f"alpha-QE (k=10, alpha=3) on this index: p50 {np.percentile(wall, 50):.2f} ms, "
          f"p99 {np.percentile(wall, 99):.2f} ms per query, one thread", flush=True)


def dba_cost(X: np.ndarray) -> None:
    """Seconds of a full DBA of ``X`` and of the exact pass that finds what 100 new photos change."""
    from imgembed.index import dba
    from imgembed.index.augment import affected, augment_rows

    t = time.perf_counter()
    search = dba._search(X)
    built = time.perf_counter() - t
    vecs, kth = augment_rows(X, np.arange(len(X)), search)
    full = time.perf_counter() - t
    t = time.perf_counter()
    hit = affected(X, kth, X[:100])
    found = time.perf_counter() - t
    t = time.perf_counter()
    augment_rows(X, np.flatnonzero(hit), search)
    redo = time.perf_counter() - t
    print(f"DBA of {len(X)} x {X.shape[1]}-d: {full:.1f} s from scratch ({built:.1f} s of it building the "
          f"neighbour index); 100 changed photos reach {int(hit.sum())} others: found in {found:.1f} s, "
          f"recomputed in {redo:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
