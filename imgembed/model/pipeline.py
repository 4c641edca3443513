"""Embed these files: the one loop from paths to vectors, for the indexer and the feature cache.

Decode workers read, hash and decode the files (:func:`imgembed.ingest.loader.iter_batches`; JPEGs
on the GPU when the model runs on CUDA), and the model turns each batch into vectors. The Ray
engine runs the same two halves as separate stages, so decoding scales with the cluster's CPUs
and embedding with its actors: :func:`imgembed.ingest.loader.iter_batches` in its decode tasks and
:func:`embed_pixels` in its actors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from imgembed.config import EmbedCfg, ReaderCfg, ViewCfg
from imgembed.ingest import cpu
from imgembed.ingest.gpu_decode import gpu_decode_available
from imgembed.ingest.loader import iter_batches, raw_batch_cap
from imgembed.model.embedder import Embedder

logger = logging.getLogger(__name__)

# Files sampled to estimate the mean file size (the GPU path caps the bytes in flight).
_SIZE_SAMPLE = 256


class EmbeddedBatch(NamedTuple):
    keys: list[Any]  # the caller's key of each embedded file, in order
    vectors: np.ndarray  # float32 (B, d): unit vectors, or raw backbone features with raw=True
    sizes: list[tuple[int, int]]  # (width, height) of each photo as shown
    digests: list[str]  # content hash of each file
    failures: list[tuple[Any, str]]  # (key, reason) of the files that could not be decoded
    metas: list = []  # imgembed.ingest.metadata.PhotoMeta of each embedded file


def embed_pixels(embedder: Embedder, pixels: torch.Tensor, raw: bool = False) -> np.ndarray:
    """``uint8 (B, 3, S, S)`` -> ``float32 (B, d)``: unit vectors, or the backbone's raw features."""
    if raw:
        return embedder.features(pixels).cpu().numpy()
    return embedder.embed(pixels)


def embed_files(items: Sequence[tuple[Any, bytes]], embedder: Embedder, reader_cfg: ReaderCfg,
                embed_cfg: EmbedCfg, raw: bool = False, view: ViewCfg | None = None) -> Iterator[EmbeddedBatch]:
    """Embed ``(key, absolute path)`` items in order, a batch at a time; bad files come back as failures.

    ``view``: embed that augmented view of each photo (:mod:`imgembed.ingest.views`) instead.

    With ``compile="auto"`` the embedder decides here, from the number of files, whether to compile.
    The model's threads and the decode workers share the cores other programs leave free
    (:func:`imgembed.ingest.cpu.budget`); ``OMP_NUM_THREADS``, when set, decides the threads.
    """
    if not items:
        return
    embedder.plan(len(items))
    batch_size = embedder.batch_size(embed_cfg.batch_size)
    # watching the cores takes a moment: not worth it for a single batch
    share = cpu.budget(busy=None if len(items) > batch_size else 0.0, workers=embed_cfg.workers,
                       model_on_cpu=embedder.device.type == "cpu")
    workers = share.workers
    logger.info("%d of %d cores free: %d model threads, %d decode workers", share.free, share.cores,
                share.threads, workers)
    with model_threads(share.threads if embedder.device.type == "cpu" else None, embedder.set_threads) as retune:
        for b in _embed_batches(items, embedder, reader_cfg, batch_size, workers, raw, view):
            retune()
            yield b


def _embed_batches(items: Sequence[tuple[Any, bytes]], embedder: Embedder, reader_cfg: ReaderCfg,
                   batch_size: int, workers: int, raw: bool, view: ViewCfg | None) -> Iterator[EmbeddedBatch]:
    on_gpu = embedder.device.type == "cuda"
    decode_on_gpu = view is None and gpu_decode_available(embedder.device)
    if decode_on_gpu:  # batches carry file bytes: keep those in flight within memory
        cap = raw_batch_cap(_mean_file_bytes(items), workers)
        if cap < batch_size:
            logger.info("batch size %d instead of %d: the files' bytes in flight must fit in memory", cap, batch_size)
            batch_size = cap
    batches = iter_batches(items, embedder.preprocess, reader_cfg, batch_size, workers, pin_memory=on_gpu,
                           gpu_device=embedder.device if decode_on_gpu else None, view=view)
    for b in batches:
        vectors = embed_pixels(embedder, b.pixels, raw) if b.keys else np.zeros((0, 0), np.float32)
        yield EmbeddedBatch(b.keys, vectors, b.sizes, b.digests, b.failures, b.metas)


# How often the model's threads are fitted again to the cores other programs leave free.
RETUNE_SECONDS = 3.0


@contextlib.contextmanager
def model_threads(threads: int | None, set_threads: Callable[[int], None] = torch.set_num_threads
                  ) -> Iterator[Callable[[], None]]:
    """The model's threads set to ``threads`` for the block through ``set_threads`` (None, or
    ``OMP_NUM_THREADS`` set: unchanged); torch's are set back afterwards. The block calls what it is
    given between batches: every :data:`RETUNE_SECONDS` the threads follow the cores that other
    programs left free meanwhile (one started or ended)."""
    if threads is None or "OMP_NUM_THREADS" in os.environ:
        yield lambda: None
        return
    before = torch.get_num_threads()
    set_threads(threads)
    now = threads
    watch, last = cpu.CoreWatch(), time.monotonic()

    def retune() -> None:
        nonlocal last, now
        if time.monotonic() - last < RETUNE_SECONDS:
            return
        last = time.monotonic()
        busy = watch.others_busy()
        if busy is not None:
            fit = cpu.budget(cores=watch.cores, busy=busy).threads
            if fit != now:
                logger.info("other programs keep %.1f cores busy: %d model threads", busy, fit)
                set_threads(fit)
                now = fit

    try:
        yield retune
    finally:
        torch.set_num_threads(before)


def _mean_file_bytes(items: Sequence[tuple[Any, bytes]]) -> float:
    sizes = []
    for _, path in items[:: max(1, len(items) // _SIZE_SAMPLE)]:
        try:
            sizes.append(os.stat(path).st_size)
        except OSError:
            continue
    return float(np.mean(sizes)) if sizes else 1.0
