"""The measured inputs of docs/scaling.md, in one run on this machine.

    python scripts/capacity_figures.py /work/shared/data/clothing-small/test [--decode-n 200] [--n-query 1000000]

Prints:
1. decode: ms per photo for ``reader.decode_file`` (read, hash, JPEG draft decode, resize, crop) in
   one process, with the mean size of the photos;
2. model: ms per photo of the default backbone (EfficientNet-Lite0, fp32, batch 32, all cores);
   both as wall time and as CPU time (core-ms: the figure that holds on a shared, loaded machine);
3. index: bytes per vector of an IVF-PQ index (the store's own ``faiss_index.new_index``) and of
   the store's SQLite metadata (which keeps every full-precision vector), at 128-d and 1280-d;
   add: seconds per million vectors to add to a 128-d IVF-PQ with nlist 2,564 (the most the store's
   100k training sample allows) and 65,536 (what 1B vectors want);
4. build: ``build_index`` from shards (SQLite inserts, IVF-PQ training, adding) on N synthetic
   128-d vectors, extrapolated linearly to seconds per million;
5. query: IVF-PQ search latency (p50/p99 over single queries) when each probed list holds as many
   codes as at 100M and 1B vectors with nlist 65,536, plus the coarse-quantizer cost of 65,536
   centroids; and a memory-mapped open of the same index giving identical results.
Vectors in 3-5 are random unit vectors: fine for sizes and costs, not for recall.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure_decode(folder: str, n: int) -> None:
    from PIL import Image

    from imgembed.config import ReaderCfg
    from imgembed.ingest import fs
    from imgembed.ingest.preprocess import Preprocess
    from imgembed.ingest.reader import decode_file

    files = fs.scan(folder, ReaderCfg()).files[:n]
    paths = [fs.abspath(folder, f.relpath) for f in files]
    mp = np.mean([np.prod(Image.open(p).size) for p in paths]) / 1e6
    pre, cfg = Preprocess(), ReaderCfg()
    for p in paths[:10]:
        decode_file(p, pre, cfg)  # warm the page cache and the decoder
    t, c = time.perf_counter(), time.process_time()
    for p in paths:
        decode_file(p, pre, cfg)
    ms = (time.perf_counter() - t) / len(paths) * 1e3
    cpu = (time.process_time() - c) / len(paths) * 1e3
    print(f"decode : {ms:.2f} ms/photo wall, {cpu:.2f} ms CPU time in one process ({1e3 / cpu:.0f} photos/s per "
          f"free core), {len(paths)} photos of {mp:.2f} MP on average, 224 px crop, JPEG draft on", flush=True)


def measure_model(batches: int = 4) -> None:
    import torch

    from imgembed.config import BackboneCfg
    from imgembed.model.embedder import Embedder

    e = Embedder.from_cfg(BackboneCfg(device="cpu"))
    x = torch.randint(0, 256, (32, 3, 224, 224), dtype=torch.uint8)
    e.embed(x)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(batches):
        e.embed(x)
    ms = (time.perf_counter() - t) / (batches * 32) * 1e3
    cpu = (time.process_time() - c) / (batches * 32) * 1e3
    print(f"model  : {ms:.1f} ms/photo wall, {cpu:.1f} ms CPU time (core-ms), {e.backbone.spec} fp32 batch 32 on "
          f"{torch.get_num_threads()} threads ({1e3 / ms:.1f} photos/s wall)", flush=True)


def measure_index_bytes(work: Path, n: int, dims: tuple[int, ...] = (128, 1280)) -> None:
    import faiss

    from imgembed.config import IndexCfg
    from imgembed.index import faiss_index
    from imgembed.index.format import NewFile
    from imgembed.index.store import StoreWriter

    for dim, n in ((d, n if d <= 512 else max(3000, n // 8)) for d in dims):
        x = unit(n, dim, 1)
        # Bytes per vector depend neither on nlist nor on n (past the fixed centroids and codebooks):
        # keep training cheap, and n small at 1280-d, where training 320 sub-quantisers is slow.
        index = faiss_index.new_index("ivfpq", dim, IndexCfg(index_type="ivfpq", ivf_nlist=64), x)
        faiss_index.add(index, np.arange(n, dtype=np.int64), x)
        path = work / f"ivfpq{dim}.faiss"
        faiss.write_index(index, str(path))
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        fixed = ivf.nlist * dim * 4 + ivf.pq.M * 256 * ivf.pq.dsub * 4  # centroids and PQ codebooks
        ident = {"backbone": "synthetic", "backbone_fingerprint": "x", "pool": None, "head_fingerprint": None,
                 "dim": dim, "preprocess": {}}
        files = [NewFile(f"c{i % 10}/{i:08d}.jpg".encode(), 123_456, 1_700_000_000_000_000_000 + i,
                         f"{i:032x}", 640, 480) for i in range(n)]
        with StoreWriter(work / f"store{dim}", ident, IndexCfg(index_type="flat")) as st:
            rid = st.root_id(work)
            t = time.perf_counter()
            for i in range(0, n, 10_000):  # one transaction a shard, as build-index does
                st.add(rid, files[i:i + 10_000], x[i:i + 10_000])
            insert_s = time.perf_counter() - t
        sql = sum(p.stat().st_size for p in (work / f"store{dim}").glob("meta.sqlite*"))
        print(f"index  : {dim}-d IVF-PQ (store defaults: m={ivf.pq.M} sub-quantisers x 8 bits): "
              f"{(path.stat().st_size - fixed) / n:.1f} bytes/vector in the .faiss file at n={n}; "
              f"SQLite metadata (path, size, hash, full float32 vector) {sql / n:.0f} bytes/vector, inserted at "
              f"{insert_s / n * 1e6:.0f} s per million", flush=True)


def measure_add(n: int, dim: int = 128) -> None:
    """Adding cost per vector: coarse assignment (grows with nlist) plus PQ encoding."""
    import faiss

    x = unit(n, dim, 6)
    for nlist in (2564, 65536):
        quant = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quant, dim, nlist, dim // 4, 8, faiss.METRIC_INNER_PRODUCT)
        # Centroids need not be good to time the add: random unit centroids, PQ trained on a sample.
        quant.add(unit(nlist, dim, 7))
        index.pq.train(x[:10_000])
        index.is_trained = True
        t = time.perf_counter()
        index.add(x)
        s = time.perf_counter() - t
        print(f"add    : {dim}-d IVF-PQ with nlist {nlist} (flat coarse quantiser): {s / n * 1e6:.0f} s per "
              f"million vectors (measured on {n}, extrapolated linearly)", flush=True)


def measure_build(work: Path, n: int) -> None:
    from imgembed.config import IndexCfg
    from imgembed.distributed import shards
    from imgembed.distributed.build_index import build_index

    dim, size = 128, 10_000
    d = work / "shards"
    d.mkdir()
    files = [(f"c{i % 10}/{i:08d}.jpg".encode(), 123_456, 1_700_000_000_000_000_000 + i) for i in range(n)]
    ident = {"backbone": "synthetic", "backbone_fingerprint": "x", "pool": None, "head_fingerprint": None,
             "dim": dim, "preprocess": {}}
    from imgembed.ingest.fs import FileEntry

    shards.write_listing(d, [FileEntry(*f) for f in files])
    shards.write_manifest(d, shards.new_manifest(work, ident, size, n, False, {}))
    asm = shards.ShardAssembler(d, size, n, dim)
    x = unit(n, dim, 2)
    for s in range(0, n, size):
        j = np.arange(s, min(n, s + size))
        asm.add(shards.ShardRows(j, [files[i][0] for i in j], np.full(len(j), 123_456), j + 1, [f"{i:032x}" for i in j],
                                 np.full(len(j), 640), np.full(len(j), 480), [""] * len(j), x[j]))
    shard_bytes = sum(p.stat().st_size for p in d.glob("shard-*.parquet"))
    t = time.perf_counter()
    summary = build_index(d, work / "built", IndexCfg(index_type="ivfpq"))
    s = time.perf_counter() - t
    print(f"build  : build-index from {n} shard rows (128-d, ivfpq, store defaults): {s:.1f} s = "
          f"{s / n * 1e6:.0f} s per million if linear (extrapolated; publish type {summary.publish.index_type}); "
          f"shards {shard_bytes / n:.0f} bytes/vector on disk", flush=True)


def measure_query(work: Path, n: int, dim: int = 128, nprobe: int = 16, queries: int = 300) -> None:
    import faiss

    x = unit(n, dim, 3)
    q = unit(queries, dim, 4)
    for label, per_list in (("100M", 100_000_000 // 65536), ("1B", 1_000_000_000 // 65536)):
        nlist = max(1, n // per_list)
        quant = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quant, dim, nlist, dim // 4, 8, faiss.METRIC_INNER_PRODUCT)
        index.train(x[: min(n, 50_000)])
        index.add(x)
        index.nprobe = nprobe
        lat = []
        for v in q:
            t = time.perf_counter()
            index.search(v[None], 10)
            lat.append(time.perf_counter() - t)
        lat = np.array(lat) * 1e3
        path = work / f"q{label}.faiss"
        faiss.write_index(index, str(path))
        mm = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
        mm.nprobe = nprobe
        same = np.array_equal(mm.search(q[:20], 10)[1], index.search(q[:20], 10)[1])
        print(f"query  : {dim}-d IVF-PQ, {per_list} codes per list as at {label} with nlist 65536, nprobe {nprobe} "
              f"(n={n}, nlist={nlist}): p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms; "
              f"memory-mapped open gives the same ids: {same}", flush=True)
    cent = faiss.IndexFlatIP(dim)
    cent.add(unit(65536, dim, 5))
    lat = []
    for v in q[:100]:
        t = time.perf_counter()
        cent.search(v[None], nprobe)
        lat.append(time.perf_counter() - t)
    print(f"query  : coarse quantiser, 65536 centroids x {dim}-d: p50 {np.percentile(np.array(lat) * 1e3, 50):.2f} ms",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="photos for the decode figure")
    ap.add_argument("--decode-n", type=int, default=100)
    ap.add_argument("--n-bytes", type=int, default=20_000, help="vectors for the bytes-per-vector figure")
    ap.add_argument("--n-add", type=int, default=20_000, help="vectors for the add-cost figure")
    ap.add_argument("--n-build", type=int, default=20_000, help="vectors for the build-index figure")
    ap.add_argument("--n-query", type=int, default=200_000, help="vectors for the query-latency figure")
    ap.add_argument("--dims", default="128,1280", help="dimensions for the bytes-per-vector figure")
    ap.add_argument("--parts", default="decode,model,bytes,add,build,query", help="which figures, comma-separated")
    a = ap.parse_args(argv)
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    parts = set(a.parts.split(","))
    if "decode" in parts:
        measure_decode(a.folder, a.decode_n)
    if "model" in parts:
        measure_model()
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        if "bytes" in parts:
            measure_index_bytes(Path(tmp), a.n_bytes, tuple(int(d) for d in a.dims.split(",")))
        if "add" in parts:
            measure_add(a.n_add)
        if "build" in parts:
            measure_build(Path(tmp), a.n_build)
        if "query" in parts:
            measure_query(Path(tmp), a.n_query)
    return 0


if __name__ == "__main__":
    sys.exit(main())
