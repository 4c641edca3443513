"""Indexing throughput against what the hardware allows, in one run.

    python scripts/bench_pipeline.py FOLDER [--backbone open_clip:ViT-B-32:/path/weights.pt]
                                            [--repeat 3] [--rounds 3] [--clip-retrieval /tmp/cr-venv]
                                            [--burner] [--against /path/to/other/checkout]

Prints, for the photos in FOLDER:
  decode-only   images/s of the decode workers alone (read, hash, decode, resize; all cores)
  model-only    images/s of the embedder alone on ready uint8 batches (all cores)
  end-to-end    images/s of the indexing loop (``imgembed.indexer``: decode workers feeding the
                model, vectors committed to the store), and of the whole ``index`` run
  ceiling       on a CPU, where decoding and the model share the cores: 1 / (1/decode + 1/model);
                with the model on a GPU: min(decode, model)
  end-to-end / ceiling
  command       ``imgembed index`` itself on the same folder (a fresh process and index): the
                images/s of its embedding loop and of the whole command, over the same ceiling
For the loop and the command it also prints the kernel's share of the CPU time and the minor page
faults per photo (``resource.getrusage``, decode workers included).

On a machine whose speed drifts (a shared VM: other guests' steal time moves each figure by 10-30%
within minutes), a ratio of figures taken minutes apart measures the drift. So decode-only,
model-only, the loop and ``imgembed index`` are measured in ``--rounds`` rounds, one after the other
within each round; each round prints its own ratios to the ceiling, and the medians of the rounds
are the figures the rest uses.

``--runtime`` picks what runs the model on a CPU, as ``imgembed index --runtime`` does (auto: ONNX
Runtime for the default backbone). ``--burner`` measures the loop and the command again while a
process keeps one core busy, and prints each throughput over its idle figure. ``--against DIR``
also runs ``imgembed index`` from the checkout at DIR (the commit before a change, say) in the
same run, idle and with the burner.

With ``--clip-retrieval VENV`` it also runs ``clip-retrieval inference`` from that venv (created
with ``pip install clip-retrieval`` when missing) on the same folder, with the same open_clip
architecture and the same local weights file, and prints our images/s over theirs. Their figure
is taken inside their loop (the stats file they write: samples / (end - start)) and for the whole
command (with their start-up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Usage:
    """CPU time of this process and its reaped children (decode workers, commands) between two points."""

    def __init__(self) -> None:
        self.start = self._now()

    @staticmethod
    def _now() -> tuple[float, float, int]:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime, me.ru_minflt + kids.ru_minflt

    def line(self, photos: int, wall: float) -> str:
        user, sys_, faults = (b - a for a, b in zip(self.start, self._now()))
        return (f"kernel {100 * sys_ / max(user + sys_, 1e-9):4.1f}% of {user + sys_:.1f} s CPU "
                f"({100 * (user + sys_) / max(wall, 1e-9):.0f}% of a core), "
                f"{faults / max(photos, 1):,.0f} minor faults a photo")


@contextlib.contextmanager
def burner(on: bool):
    """A process spinning on the last core of this process's affinity mask while the block runs."""
    if not on:
        yield
        return
    core = max(os.sched_getaffinity(0))
    p = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    time.sleep(1.0)
    try:
        yield
    finally:
        p.kill()
        p.wait()


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def decode_only(items, pre, reader_cfg, batch_size, workers, repeat, device) -> float:
    """Images/s of the decode path the indexer uses on ``device`` (nvJPEG on CUDA)."""
    import torch

    from imgembed.ingest.gpu_decode import gpu_decode_available
    from imgembed.ingest.loader import iter_batches

    on_gpu = device.type == "cuda"
    gpu = device if gpu_decode_available(device) else None
    n, t = 0, time.perf_counter()
    for _ in range(repeat):
        for b in iter_batches(items, pre, reader_cfg, batch_size, workers, pin_memory=on_gpu, gpu_device=gpu):
            n += len(b.keys)
    if on_gpu:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def model_only(embedder, batch_size, n_images) -> float:
    import torch

    size = embedder.preprocess.size
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=embedder.device)
    embedder.embed(x)  # warm-up (allocations, compile when asked)
    n, t = 0, time.perf_counter()
    while n < n_images:
        embedder.embed(x)
        n += batch_size
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def precision_cosines(embedder, items, reader_cfg, n: int = 64) -> dict[str, tuple[float, float]]:
    """Cosine of reduced-precision embeddings to fp32 on the first ``n`` photos: {dtype: (mean, min)}."""
    import numpy as np
    import torch

    from imgembed.ingest.loader import iter_batches

    pixels = torch.cat([b.pixels for b in iter_batches(items[:n], embedder.preprocess, reader_cfg, 32, 0)])
    saved = embedder.dtype
    out = {}
    try:
        embedder.dtype = torch.float32
        ref = np.concatenate([embedder.embed(pixels[i:i + 32]) for i in range(0, len(pixels), 32)])
        kinds = [torch.bfloat16] + ([torch.float16] if embedder.device.type == "cuda" else [])
        for dt in kinds:
            embedder.dtype = dt
            got = np.concatenate([embedder.embed(pixels[i:i + 32]) for i in range(0, len(pixels), 32)])
            cos = np.sum(ref * got, axis=1)  # both are unit vectors
            out[str(dt).replace("torch.", "")] = (float(cos.mean()), float(cos.min()))
    finally:
        embedder.dtype = saved
    return out


def end_to_end(folder, job_cfg, embedder, repeat) -> tuple[float, float, str]:
    """(images/s inside the indexing loop, images/s of the whole index run incl. publish, CPU use)."""
    from imgembed.indexer import index_folder

    n = loop_s = run_s = 0.0
    use = Usage()
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            s = index_folder(folder, Path(d) / "ix", job_cfg, embedder=embedder)
            run_s += time.perf_counter() - t
            n += s.indexed
            loop_s += s.embed_seconds
    return n / loop_s, n / run_s, use.line(int(n), run_s)


def command(checkout: Path, folder: Path, backbone: str, extra: list[str]) -> tuple[float, float, str]:
    """(images/s of the embedding loop it reports, images/s of the whole command, CPU use) of
    ``imgembed index`` run from ``checkout`` on a fresh index, in a process of its own."""
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, PYTHONPATH=str(checkout))
        cmd = [sys.executable, "-m", "imgembed.cli", "index", str(folder), "--index", f"{d}/ix",
               "--backbone", backbone, "--no-progress", *extra]
        use = Usage()
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=d)
        wall = time.perf_counter() - t
    m = re.search(r"embedded (\d+) in [\d.]+ s \(([\d.]+) images/s", r.stdout)
    if r.returncode or not m:
        raise RuntimeError(f"imgembed index failed (exit {r.returncode}): {r.stderr[-2000:]}")
    n = int(m.group(1))
    return float(m.group(2)), n / wall, use.line(n, wall)


def clip_retrieval(venv: Path, folder: Path, arch: str, weights: str, batch_size: int,
                   workers: int) -> tuple[float, float, int]:
    """(images/s inside their loop, images/s of their whole command, images) of clip-retrieval."""
    exe = venv / "bin" / "clip-retrieval"
    if not exe.exists():
        print(f"installing clip-retrieval into its own venv {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # clip (a dependency) imports pkg_resources, which setuptools >= 81 no longer has
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "clip-retrieval", "setuptools<70"], check=True)
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(exe), "inference", "--input_dataset", str(folder), "--output_folder", f"{out}/o",
               "--input_format", "files", "--clip_model", f"open_clip:{arch}/{weights}",
               "--enable_text", "False", "--enable_metadata", "False", "--batch_size", str(batch_size),
               "--num_prepro_workers", str(workers), "--use_jit", "False", "--enable_wandb", "False"]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        stats = list(Path(out, "o", "stats").glob("*.json")) if r.returncode == 0 else []
        if not stats:
            raise RuntimeError(f"clip-retrieval failed (exit {r.returncode}): {r.stderr[-2000:]}")
        n = end = 0.0
        start = float("inf")
        for p in stats:
            s = json.loads(p.read_text())
            n += s["sample_count"]
            start, end = min(start, s["start_time"]), max(end, s["end_time"])
    return n / (end - start), n / wall, int(n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--backbone", default="efficientnet-lite0")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=0, help="0: chosen as `imgembed index` would")
    p.add_argument("--workers", type=int, default=-1, help="decode processes (-1: one per core)")
    p.add_argument("--repeat", type=int, default=2, help="passes over the folder per measurement")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of decode-only, model-only and loop (each round's ratio; then medians)")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile the backbone; auto decides as `imgembed index` would for this folder")
    p.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"],
                   help="what runs the model on a CPU (as `imgembed index --runtime`)")
    p.add_argument("--precision-check", action="store_true",
                   help="print the cosine of bf16 (and fp16 on CUDA) embeddings to fp32 ones")
    p.add_argument("--burner", action="store_true",
                   help="measure again with a process keeping one core busy; print the ratio to idle")
    p.add_argument("--against", type=Path, metavar="DIR",
                   help="also time `imgembed index` from the checkout at DIR, in the same run")
    p.add_argument("--clip-retrieval", type=Path, metavar="VENV",
                   help="also run clip-retrieval inference from this venv (open_clip backbones)")
    a = p.parse_args(argv)

    import torch

    from imgembed.config import BackboneCfg, EmbedCfg, IndexJobCfg, ReaderCfg
    from imgembed.ingest import fs
    from imgembed.ingest.cpu import budget
    from imgembed.model.embedder import Embedder

    share = budget(workers=a.workers)  # as `imgembed index` would split the cores now
    workers = share.workers
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(share.threads)
    reader_cfg = ReaderCfg()
    items = list(fs.iter_image_paths(a.folder, reader_cfg))
    if not items:
        sys.exit(f"no images under {a.folder}")
    t = time.perf_counter()
    embedder = Embedder.from_cfg(BackboneCfg(name=a.backbone, device=a.device, runtime=a.runtime),
                                 compile=a.compile)
    build_s = time.perf_counter() - t
    on_gpu = embedder.device.type == "cuda"
    a.batch_size = embedder.batch_size(a.batch_size)
    print(f"{len(items)} photos in {a.folder}; backbone {a.backbone} on {embedder.device} "
          f"({embedder.dtype}, {'ONNX Runtime' if embedder.onnx is not None else 'torch'}); "
          f"batch {a.batch_size}; {workers} decode workers; "
          f"{share.threads} model threads; {share.free} of {share.cores} cores free; {load()}; "
          f"model built in {build_s:.1f} s")
    eager_mod = None
    if embedder.plan(len(items)):
        eager_mod = model_only(Embedder.from_cfg(BackboneCfg(name=a.backbone, device=a.device), compile="off"),
                               a.batch_size, max(len(items) * a.repeat, 4 * a.batch_size))
        t = time.perf_counter()
        embedder.embed(torch.zeros(a.batch_size, 3, embedder.preprocess.size, embedder.preprocess.size,
                                   dtype=torch.uint8, device=embedder.device))
        print(f"torch.compile (--compile {a.compile}): compiled in {time.perf_counter() - t:.1f} s "
              "(less when torch's kernel cache already holds it)", flush=True)
    job = IndexJobCfg(backbone=BackboneCfg(name=a.backbone, compile=a.compile, runtime=a.runtime),
                      embed=EmbedCfg(a.batch_size, a.workers), reader=reader_cfg)
    extra = ["--batch-size", str(a.batch_size), "--compile", a.compile, "--device", a.device]
    ours = [*extra, "--runtime", a.runtime]  # a checkout before --runtime existed takes only the others

    ceil = (lambda d, m: min(d, m)) if on_gpu else (lambda d, m: 1 / (1 / d + 1 / m))
    rounds = []  # (decode, model, ceiling, loop, whole run, command's loop, whole command)
    for r in range(1, max(1, a.rounds) + 1):
        dec = decode_only(items, embedder.preprocess, reader_cfg, a.batch_size, workers, a.repeat, embedder.device)
        mod = model_only(embedder, a.batch_size, max(len(items) * a.repeat, 4 * a.batch_size))
        loop, run, use = end_to_end(a.folder, job, embedder, a.repeat)
        c_loop, c_run, c_use = command(ROOT, a.folder, a.backbone, ours)
        top = ceil(dec, mod)
        rounds.append((dec, mod, top, loop, run, c_loop, c_run))
        print(f"round {r}: decode-only {dec:.1f}, model-only {mod:.1f}, ceiling {top:.1f}, loop {loop:.1f}, "
              f"imgembed index's loop {c_loop:.1f} images/s; / ceiling {loop / top:.2f} and {c_loop / top:.2f}  "
              f"[{load()}]")
        print(f"         loop: {use}")
        print(f"         imgembed index: {c_use}", flush=True)
    dec, mod, ceiling, loop, run, c_loop, c_run = (statistics.median(x) for x in zip(*rounds))
    ratio = lambda i: ", ".join(f"{x[i] / x[2]:.2f}" for x in rounds)  # noqa: E731
    print(f"decode-only   {dec:9.1f} images/s (medians of {len(rounds)} rounds from here)")
    print(f"model-only    {mod:9.1f} images/s" + (f" compiled; {eager_mod:.1f} without compiling "
          f"({mod / eager_mod:.2f}x)" if eager_mod else ""))
    print(f"ceiling       {ceiling:9.1f} images/s = " + ("min(decode, model)" if on_gpu else "1/(1/decode + 1/model)"))
    print(f"end-to-end    {loop:9.1f} images/s in the indexing loop; {run:.1f} for the whole run "
          f"(scan, publish; model already built); / ceiling: {statistics.median(x[3] / x[2] for x in rounds):.2f} "
          f"(rounds: {ratio(3)})  [idle]")
    print(f"imgembed index {c_loop:8.1f} images/s in its loop; {c_run:.1f} for the whole command "
          f"(start-up, model build); loop / ceiling {statistics.median(x[5] / x[2] for x in rounds):.2f} "
          f"(rounds: {ratio(5)})  [idle]", flush=True)
    runs = [("idle", False)] + ([("burner", True)] if a.burner else [])
    loops, whole, cmds, theirs = {"idle": loop}, {"idle": run}, {"idle": c_loop}, {}
    for name, burn in runs:
        with burner(burn):
            if burn:
                loop, run, use = end_to_end(a.folder, job, embedder, a.repeat)
                loops[name], whole[name] = loop, run
                print(f"end-to-end    {loop:9.1f} images/s in the indexing loop; {run:.1f} for the whole run "
                      f"(scan, publish; model already built); / ceiling {loop / ceiling:.2f}  [{name}, {load()}]")
                print(f"              {use}", flush=True)
                c_loop, c_run, c_use = command(ROOT, a.folder, a.backbone, ours)
                cmds[name] = c_loop
                print(f"imgembed index {c_loop:8.1f} images/s in its loop; {c_run:.1f} for the whole command "
                      f"(start-up, model build); loop / ceiling {c_loop / ceiling:.2f}  [{name}, {load()}]")
                print(f"              {c_use}", flush=True)
            if a.against:
                o_loop, o_run, o_use = command(a.against.resolve(), a.folder, a.backbone, extra)
                theirs[name] = o_loop
                print(f"  from {a.against}: {o_loop:.1f} images/s in its loop; {o_run:.1f} for the whole "
                      f"command; ours / that {c_loop / o_loop:.2f}x  [{name}, {load()}]")
                print(f"              {o_use}", flush=True)
    if a.burner:
        print(f"with one core busy / idle: loop {loops['burner'] / loops['idle']:.2f}, "
              f"imgembed index {cmds['burner'] / cmds['idle']:.2f}"
              + (f", {a.against} {theirs['burner'] / theirs['idle']:.2f}" if a.against else ""))

    if a.precision_check:
        for dt, (mean, low) in precision_cosines(embedder, items, reader_cfg).items():
            print(f"cosine {dt} vs fp32  mean {mean:.5f}  min {low:.5f}  (first 64 photos)")

    if a.clip_retrieval:
        family, _, rest = a.backbone.partition(":")
        arch, _, weights = rest.partition(":")
        if family != "open_clip" or not os.path.isfile(weights):
            sys.exit("--clip-retrieval needs --backbone open_clip:ARCH:/path/to/local/weights")
        theirs_loop, theirs_run, n = clip_retrieval(a.clip_retrieval, a.folder, arch, os.path.abspath(weights),
                                                    a.batch_size, workers)
        loop, run = loops["idle"], whole["idle"]
        ours_run_cold = len(items) / (build_s + len(items) / run)
        print(f"clip-retrieval {theirs_loop:8.1f} images/s in its loop; {theirs_run:.1f} for the whole "
              f"command ({n} images)")
        print(f"ours / theirs {loop / theirs_loop:9.2f}x in the loop; {ours_run_cold / theirs_run:.2f}x whole "
              f"run counting our model build ({ours_run_cold:.1f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
