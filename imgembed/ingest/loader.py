"""Parallel decoding into batches: a DataLoader whose workers read, hash and decode files.

Files that fail are not in the batch; they come back in ``Batch.failures`` with their reason.

With ``gpu_jpeg`` (a CUDA embedder), workers only read, hash and probe JPEGs; the batch is decoded
on the GPU in the main process (:mod:`imgembed.ingest.gpu_decode`), and other files are decoded by the
workers on the CPU as usual. Either way the batch keeps the order of the items.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from imgembed.config import ReaderCfg, ViewCfg
from imgembed.ingest import gpu_decode, reader
from imgembed.ingest.metadata import PhotoMeta
from imgembed.ingest.preprocess import Preprocess
from imgembed.ingest.reader import ImageSkipped, content_hash, decode_file, metadata_of, read_bytes

logger = logging.getLogger(__name__)

# Batches each worker prepares ahead of the model.
PREFETCH = 4
# On the GPU path a batch carries its files' bytes (12 MP camera JPEGs: 3-8 MB each), and every
# worker holds PREFETCH batches: the batch is capped so that all of them take at most this share
# of the machine's memory.
RAW_MEMORY_SHARE = 0.25


def raw_batch_cap(mean_file_bytes: float, workers: int, memory_bytes: int | None = None) -> int:
    """The largest batch whose file bytes, for every batch in flight, fit :data:`RAW_MEMORY_SHARE`
    of ``memory_bytes`` (default: this machine's physical memory)."""
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    in_flight = max(1, workers) * PREFETCH + 2  # the workers' queue, plus the batch being embedded
    return max(1, int(memory_bytes * RAW_MEMORY_SHARE / (in_flight * max(mean_file_bytes, 1.0))))


class Batch(NamedTuple):
    keys: list[Any]  # the caller's key of each decoded image, in batch order
    pixels: torch.Tensor  # uint8 (B, 3, size, size); on the GPU when decoded there
    sizes: list[tuple[int, int]]  # (width, height) of each photo as shown
    digests: list[str]  # content hash of each file
    failures: list[tuple[Any, str]]  # (key, reason) of files that could not be decoded
    metas: list[PhotoMeta] = []  # what each file's EXIF says (capture time, camera, GPS)


class _Sample(NamedTuple):
    key: Any
    item: Any  # uint8 (3, s, s) tensor, gpu_decode.Pending, or None on failure
    size: tuple[int, int]
    digest: str
    error: str | None
    meta: PhotoMeta = PhotoMeta()


class _Files(Dataset):
    def __init__(self, items: Sequence[tuple[Any, bytes]], pre: Preprocess, cfg: ReaderCfg,
                 gpu_jpeg: bool = False, view: ViewCfg | None = None) -> None:
        self.items, self.pre, self.cfg, self.gpu_jpeg, self.view = items, pre, cfg, gpu_jpeg, view

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> _Sample:
        key, path = self.items[i]
        try:
            if self.gpu_jpeg:
                data = read_bytes(path, self.cfg)
                info = gpu_decode.probe(data, self.cfg)
                if info is not None:
                    pending = gpu_decode.Pending(torch.frombuffer(bytearray(data), dtype=torch.uint8), info)
                    return _Sample(key, pending, gpu_decode.shown_size(info), content_hash(data), None,
                                   metadata_of(data, self.cfg))
            d = decode_file(path, self.pre, self.cfg, self.view)
            return _Sample(key, d.pixels, (d.width, d.height), d.digest, None, d.meta)
        except ImageSkipped as e:
            return _Sample(key, None, (0, 0), "", str(e))
        except Exception as e:  # a decoder bug must not stop a run over thousands of photos
            return _Sample(key, None, (0, 0), "", f"unexpected error while decoding: {type(e).__name__}: {e}")


def _collate(samples: list[_Sample]) -> Batch:
    """CPU path: every sample already decoded."""
    ok = [s for s in samples if s.error is None]
    pixels = torch.stack([s.item for s in ok]) if ok else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return Batch([s.key for s in ok], pixels, [s.size for s in ok], [s.digest for s in ok],
                 [(s.key, s.error) for s in samples if s.error is not None], [s.meta for s in ok])


class _RawBatch(NamedTuple):
    samples: list[_Sample]  # Pending items carry (start, end) into ``blob`` instead of bytes
    blob: torch.Tensor  # uint8: the JPEG bytes of the batch, end to end


def _collate_raw(samples: list[_Sample]) -> _RawBatch:
    """GPU path: the main process decodes the pending JPEGs. Their bytes travel as one tensor
    (one shared-memory block per batch rather than one per photo)."""
    datas, out, at = [], [], 0
    for s in samples:
        if isinstance(s.item, gpu_decode.Pending):
            n = s.item.data.numel()
            datas.append(s.item.data)
            s = s._replace(item=s.item._replace(data=(at, at + n)))
            at += n
        out.append(s)
    return _RawBatch(out, torch.cat(datas) if datas else torch.empty(0, dtype=torch.uint8))


def _unpack(raw: _RawBatch) -> list[_Sample]:
    out = []
    for s in raw.samples:
        if isinstance(s.item, gpu_decode.Pending):
            start, end = s.item.data
            s = s._replace(item=s.item._replace(data=raw.blob[start:end]))
        out.append(s)
    return out


def _init_worker(large_decodes, _: int) -> None:
    torch.set_num_threads(1)  # decoding is PIL work; leave the cores' BLAS threads to the model
    reader.share_large_decode_lock(large_decodes)  # one large decode at a time across the workers


def _loader(items: Sequence[tuple[Any, bytes]], pre: Preprocess, cfg: ReaderCfg, batch_size: int, workers: int,
            pin_memory: bool, gpu: bool, prefetch: int = PREFETCH, view: ViewCfg | None = None) -> DataLoader:
    ctx = torch.multiprocessing.get_context()
    return DataLoader(
        _Files(items, pre, cfg, gpu_jpeg=gpu, view=view), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate_raw if gpu else _collate, pin_memory=pin_memory,
        worker_init_fn=functools.partial(_init_worker, ctx.Lock()) if workers else None,
        multiprocessing_context=ctx if workers else None,
        prefetch_factor=prefetch if workers else None, persistent_workers=False,
    )


def _report_dead_workers_in_order() -> None:
    """Let a dead worker be reported by the loader's own next batch, not by torch's SIGCHLD handler.

    That handler raises wherever the main thread is when any child process ends, also in the
    code that consumes the batches (writing to the index, closing it), where :func:`_decoded`
    cannot take it. Without it the loader notices the dead worker itself, within
    ``MP_STATUS_CHECK_INTERVAL`` (5 s), and raises from ``next()``. Torch installs the handler once,
    with its first loader, in the main thread only.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGCHLD"):
        return
    handler = signal.getsignal(signal.SIGCHLD)
    if getattr(handler, "__module__", "").startswith("torch.utils.data"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _worker_died(e: Exception) -> bool:
    """DataLoader's error for a worker process that died (the OOM killer's SIGKILL, a crash), or the
    connection to it reset while its batch was being handed over."""
    return isinstance(e, (ConnectionError, EOFError)) or str(e).startswith("DataLoader worker")


def _decoded(items: Sequence[tuple[Any, bytes]], pre: Preprocess, cfg: ReaderCfg, batch_size: int,
             workers: int, pin_memory: bool, gpu: bool, view: ViewCfg | None = None) -> Iterator[Any]:
    """The loader's batches of ``items`` in order, surviving decode workers that die.

    A worker killed mid-run (the OOM killer, most likely) makes DataLoader raise (or the batch it
    was handing over arrive as a reset connection). The files from the
    first batch not yet delivered are tried again with fresh workers; if the workers die again at the
    same place, the files that were in flight are decoded one at a time by a single worker, so that
    the file that kills it is found, reported as a failure and skipped, and the rest are kept.
    """
    start, died_at, alone_until = 0, -1, 0
    while start < len(items):
        alone = start < alone_until
        size = 1 if alone else batch_size
        loader = _loader(items[start:alone_until] if alone else items[start:], pre, cfg, size,
                         1 if alone else workers, pin_memory, gpu, prefetch=1 if alone else PREFETCH, view=view)
        try:
            batches = iter(loader)
            _report_dead_workers_in_order()
            for batch in batches:
                yield batch
                start = min(len(items), start + size)
        except (RuntimeError, ConnectionError, EOFError) as e:
            if not workers or not _worker_died(e):
                raise
            if alone:  # one worker, one file in flight: this file killed it
                logger.warning("a decode worker died while decoding file %d; skipping that file", start + 1)
                yield _killed(items[start][0], gpu)
                start += 1
            elif died_at == start:  # again: find the file among those that were in flight
                logger.warning("decode workers died twice at file %d; decoding the next files one at a time",
                               start + 1)
                alone_until = min(len(items), start + max(1, workers) * PREFETCH * batch_size)
            else:
                logger.warning("a decode worker died (out of memory?); trying again from file %d", start + 1)
                died_at = start


KILLED = ("the decoding process was killed while reading it (out of memory? --max-pixels lowers the limit "
          "of what is decoded)")


def _killed(key: Any, gpu: bool) -> Any:
    """A batch holding no image and one failure: the file whose decoding killed its worker."""
    sample = _Sample(key, None, (0, 0), "", KILLED)
    return _collate_raw([sample]) if gpu else _collate([sample])


def iter_batches(items: Sequence[tuple[Any, bytes]], pre: Preprocess, cfg: ReaderCfg,
                 batch_size: int, workers: int, pin_memory: bool = False,
                 gpu_device: torch.device | None = None, view: ViewCfg | None = None) -> Iterator[Batch]:
    """Decode ``(key, path)`` items in order, ``workers`` processes in parallel.

    ``gpu_device``: a CUDA device to decode JPEGs on (nvJPEG); None decodes everything on the CPU.
    ``view``: each photo's pixels are that augmented view of it (decoded on the CPU).
    A file whose decoding kills its worker process comes back as a failure; the others are decoded.
    """
    if not items:
        return
    if view is not None:
        gpu_device = None  # the views are drawn by PIL
    gpu = gpu_device is not None
    loader = _decoded(items, pre, cfg, batch_size, workers, pin_memory, gpu, view)
    if not gpu:
        yield from loader
        return
    for raw in loader:
        samples = _unpack(raw)
        ok = [s for s in samples if s.error is None]
        kept, pixels, failed = gpu_decode.finish([s.item for s in ok], gpu_device, pre, cfg)
        failures = [(s.key, s.error) for s in samples if s.error is not None]
        failures += [(ok[i].key, why) for i, why in failed]
        yield Batch([ok[i].key for i in kept], pixels, [ok[i].size for i in kept],
                    [ok[i].digest for i in kept], failures, [ok[i].meta for i in kept])
