"""Embed a folder on a Ray cluster into embedding shards (see ``imgembed.distributed.shards`` for the format).

The job is a Ray Data pipeline::

    listing (driver) -> decode (CPU tasks) -> embed (actor pool: GPU actors where the cluster has
    GPUs, CPU actors otherwise) -> rows streamed back to the driver -> one Parquet file per shard

Only vectors come back to the driver (``dim * 4`` bytes a photo), never pixels. A shard is written
as soon as all its rows are in. A killed worker or actor is retried by Ray (tasks are retried, actors
restart); if the job still fails, the finished shards stay, and running it again redoes only the
missing ones (from the listing recorded by the first run).

The photos must be readable at the same path on every node (a shared or network file system).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from imgembed.atomic import atomic_write_bytes
from imgembed.config import IndexJobCfg
from imgembed.distributed import shards
from imgembed.distributed.stages import EmbedActor, decode_batch
from imgembed.ingest import fs
from imgembed.model.embedder import CPU_BATCH, GPU_BATCH_MAX, Embedder
from imgembed.model.head import head_paths
from imgembed.text import printable

logger = logging.getLogger(__name__)

# progress(stage, done, total); stage is "embed"
Progress = Callable[[str, int, int], None]


class JobFailed(RuntimeError):
    """The Ray job stopped; the message says how many shards are kept and how to resume."""


@dataclass
class RayCfg:
    address: str | None = None  # None: $RAY_ADDRESS if set, else start a local cluster
    shard_size: int = 10_000  # files per output shard: the unit of resume
    actors: int = 0  # embedding actors; 0 = one per GPU in the cluster, else one per 2 CPUs
    actor_cpus: float = 1.0  # CPUs reserved by each CPU actor
    actor_threads: int = 0  # torch threads of a CPU actor; 0 = its reserved CPUs
    decode_cpus: float = 1.0  # CPUs reserved by each decode task
    # Retries of a decode task whose worker died. Bounded: a file that crashes the decoder would
    # otherwise be retried for ever. (Embedding actors restart without limit, Ray Data's default.)
    decode_retries: int = 3
    block_batches: int = 8  # batches per input block (the unit of a decode task)
    # Ray's own log lines (cluster start, execution plans, actor notes from its C++ core) and its
    # deprecation warnings held back from the terminal; False shows them (the CLI's -v).
    quiet: bool = True


@dataclass
class ShardJobSummary:
    root: str
    shards_dir: str
    files: int = 0
    shards: int = 0
    shards_resumed: int = 0  # already finished before this run
    shards_written: int = 0
    embedded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: int = 0  # rows delivered twice by retried work (kept once)
    unread: str | None = None  # what the folder holds besides images (fs.ScanResult.unread_line)
    actors: int = 0
    device: str = ""
    seconds: float = 0.0
    embed_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def lines(self) -> list[str]:
        return [
            f"embedded {self.embedded}, skipped {len(self.skipped)} of {self.files} files; "
            f"{self.shards_written} shards written, {self.shards_resumed} already done, {self.shards} in all "
            f"in {self.shards_dir}",
            *([self.unread] if self.unread else []),
            f"{self.seconds:.1f} s in all, {self.images_per_second:.1f} images/s on {self.actors} "
            f"{self.device} actor{'s' if self.actors != 1 else ''}",
        ]


@contextlib.contextmanager
def _stderr_to_log():
    """While Ray starts, what it writes to file descriptor 2 (its C++ core writes there directly, past
    Python's logging) goes to this module's debug log instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                logger.debug("ray: %s", line)


def connect(address: str | None = None, quiet: bool = True) -> None:
    """Join the Ray cluster at ``address`` (or $RAY_ADDRESS), or start a local one. ``quiet``: Ray
    logs errors only (see :attr:`RayCfg.quiet`)."""
    if quiet:  # read by Ray's C++ core when it starts, in this process and the workers it spawns
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        import ray
    except ImportError as e:
        raise JobFailed("the Ray engine needs Ray: pip install 'imgembed[ray]'") from e
    import ray.data  # noqa: F401  (it sets its loggers' levels when imported)

    level = logging.ERROR if quiet else logging.INFO
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(level)
    if not ray.is_initialized():
        try:
            with _stderr_to_log() if quiet else contextlib.nullcontext():
                ray.init(address=address, include_dashboard=False, log_to_driver=not quiet, logging_level=level)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise JobFailed(f"cannot join the Ray cluster at {address or '$RAY_ADDRESS'}: {e}. Give the address "
                            "that `ray status` prints on a cluster node (or `auto` there), or leave "
                            "--ray-address out to start a local cluster") from e


def embed_to_shards(root: str | Path, shards_dir: str | Path, cfg: IndexJobCfg, ray_cfg: RayCfg | None = None,
                    embedder: Embedder | None = None, progress: Progress | None = None) -> ShardJobSummary:
    """Embed every image under ``root`` into shards in ``shards_dir``, resuming a previous run.

    ``embedder`` (default: built from ``cfg`` on the CPU) is sent to every actor as is, so the
    cluster computes exactly what the local path computes.

    Raises:
        StoreError: ``shards_dir`` holds shards of another folder or embedder.
        JobFailed: Ray is missing, or the job stopped (finished shards are kept).
        NotADirectoryError: ``root`` is not a folder.
    """
    ray_cfg = ray_cfg or RayCfg()
    if ray_cfg.shard_size < 1:
        raise ValueError("the shard size must be at least 1")
    t0 = time.perf_counter()
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    out = Path(shards_dir)
    out.mkdir(parents=True, exist_ok=True)
    embedder = embedder or Embedder.from_cfg(replace(cfg.backbone, device="cpu"), cfg.head)
    summary = ShardJobSummary(str(root), str(out))

    manifest = _plan(root, out, cfg, ray_cfg, embedder, summary)
    listing = shards.read_listing(out)
    done = shards.finished_shards(out, manifest["shards"])
    summary.files, summary.shards, summary.shards_resumed = manifest["files"], manifest["shards"], len(done)
    todo = [s for s in range(manifest["shards"]) if s not in done]
    if todo:
        with warnings.catch_warnings():
            _run(root, out, listing, todo, manifest, cfg, ray_cfg, embedder, summary, progress)
    summary.seconds = time.perf_counter() - t0
    return summary


def _plan(root: Path, out: Path, cfg: IndexJobCfg, ray_cfg: RayCfg, embedder: Embedder,
          summary: ShardJobSummary) -> dict:
    """Reuse the recorded listing of an earlier run, or scan and record a new one."""
    if (out / shards.MANIFEST).exists():
        manifest = shards.read_manifest(out)
        shards.check_same_job(manifest, root, embedder.identity(), out)
        return manifest
    scan = fs.scan(root, cfg.reader)
    summary.skipped += [(fs.display(p), why) for p, why in scan.skipped]
    summary.unread = scan.unread_line()
    for p, why in scan.skipped:
        logger.warning("skipped %s: %s", printable(fs.display(p)), printable(why))
    if cfg.head:
        for src in head_paths(cfg.head):
            atomic_write_bytes(out / ("head" + src.suffix), src.read_bytes())  # never through a link
    shards.write_listing(out, scan.files)
    manifest = shards.new_manifest(root, embedder.identity(), ray_cfg.shard_size, len(scan.files),
                                   bool(cfg.head), {"job": asdict(cfg), "ray": asdict(ray_cfg)})
    shards.write_manifest(out, manifest)  # last: a manifest means the listing is complete
    return manifest


def _run(root: Path, out: Path, listing, todo: list[int], manifest: dict, cfg: IndexJobCfg,
         ray_cfg: RayCfg, embedder: Embedder, summary: ShardJobSummary, progress: Progress | None) -> None:
    connect(ray_cfg.address, ray_cfg.quiet)
    import ray
    from ray.util.annotations import RayDeprecationWarning

    if ray_cfg.quiet:  # e.g. ray_remote_args_fn's, due in Ray 2.64 (pyproject.toml keeps Ray below it);
        warnings.simplefilter("ignore", RayDeprecationWarning)  # scoped by the caller's catch_warnings
    ray.data.DataContext.get_current().enable_progress_bars = False  # the caller shows its own
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = ray_cfg.actors or (gpus if gpus else max(1, cpus // 2))
    summary.actors, summary.device = actors, "GPU" if gpus else "CPU"
    size = manifest["shard_size"]  # the first run's, whatever this run asked for
    # auto: the CPU batch, or on GPU actors the largest auto batch (an actor halves one that does not fit)
    batch = cfg.embed.batch_size or (GPU_BATCH_MAX if gpus else CPU_BATCH)
    block = max(1, min(size, batch * ray_cfg.block_batches))
    blocks = []
    for s in todo:
        part = listing.slice(s * size, size)
        blocks += [part.slice(i, block) for i in range(0, len(part), block)]
    total = sum(len(b) for b in blocks)

    ds = ray.data.from_arrow(blocks)
    # Decode runs as tasks of its own (Ray does not fuse a stage that has a ray_remote_args_fn into
    # the next): decoding scales with the cluster's CPUs, embedding with its actors.
    ds = ds.map_batches(decode_batch, batch_size=batch, num_cpus=ray_cfg.decode_cpus,
                        ray_remote_args_fn=partial(dict, max_retries=ray_cfg.decode_retries),
                        fn_kwargs={"root": os.fsencode(root), "pre": embedder.preprocess, "cfg": cfg.reader})
    threads = ray_cfg.actor_threads or max(1, int(ray_cfg.actor_cpus))
    ds = ds.map_batches(
        EmbedActor, batch_size=batch, compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"embedder": embedder, "device": "cuda" if gpus else "cpu",
                               "precision": cfg.backbone.precision, "threads": threads,
                               "images": total // actors},
        num_gpus=1 if gpus else None, num_cpus=None if gpus else ray_cfg.actor_cpus)

    assembler = shards.ShardAssembler(out, size, manifest["files"], embedder.dim)
    done = 0
    t0 = time.perf_counter()
    try:
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            errors = [str(e) for e in b["error"]]
            paths = [bytes(p) for p in b["path"]]
            for p, e in zip(paths, errors):
                if e:
                    summary.skipped.append((fs.display(p), e))
                    logger.warning("skipped %s: %s", printable(fs.display(p)), printable(e))
            assembler.add(shards.ShardRows(
                b["id"].astype(np.int64), paths, b["size"], b["mtime_ns"], [str(h) for h in b["hash"]],
                b["width"], b["height"], errors, np.asarray(b["vector"], np.float32)))
            summary.embedded += sum(1 for e in errors if not e)
            done += len(errors)
            if progress:
                progress("embed", done, total)
    except (Exception, KeyboardInterrupt) as e:
        summary.shards_written = len(assembler.written)
        kept = summary.shards_resumed + summary.shards_written
        msg = (f"the Ray job stopped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
               f"{kept} of {summary.shards} shards are written in {out}; run the same command again to "
               "embed only the rest")
        if isinstance(e, KeyboardInterrupt):
            logger.warning(msg)
            raise
        raise JobFailed(msg) from e
    finally:
        summary.embed_seconds = time.perf_counter() - t0
    summary.shards_written = len(assembler.written)
    summary.duplicates = assembler.duplicates
    if assembler.incomplete:  # every row came back, so this is a bug, not a cluster failure
        raise JobFailed(f"internal error: shards {assembler.incomplete[:5]} did not receive all their rows; "
                        "run the same command again")
