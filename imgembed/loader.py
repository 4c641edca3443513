"""Parallel decoding into batches: a DataLoader whose workers read, hash and decode files.

Files that fail are not in the batch; they come back in ``Batch.failures`` with their reason.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from imgembed.backbones import Preprocess
from imgembed.config import ReaderCfg
from imgembed.reader import ImageSkipped, decode_file


class Batch(NamedTuple):
    keys: list[Any]  # the caller's key of each decoded image, in batch order
    pixels: torch.Tensor  # uint8 (B, 3, size, size)
    sizes: list[tuple[int, int]]  # (width, height) of each photo as shown
    digests: list[str]  # content hash of each file
    failures: list[tuple[Any, str]]  # (key, reason) of files that could not be decoded


class _Files(Dataset):
    def __init__(self, items: Sequence[tuple[Any, bytes]], pre: Preprocess, cfg: ReaderCfg) -> None:
        self.items, self.pre, self.cfg = items, pre, cfg

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        key, path = self.items[i]
        try:
            return key, decode_file(path, self.pre, self.cfg), None
        except ImageSkipped as e:
            return key, None, str(e)
        except Exception as e:  # a decoder bug must not stop a run over thousands of photos
            return key, None, f"unexpected error while decoding: {type(e).__name__}: {e}"


def _collate(samples: list) -> Batch:
    ok = [(k, d) for k, d, _ in samples if d is not None]
    failures = [(k, err) for k, d, err in samples if d is None]
    pixels = torch.stack([d.pixels for _, d in ok]) if ok else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return Batch([k for k, _ in ok], pixels, [(d.width, d.height) for _, d in ok],
                 [d.digest for _, d in ok], failures)


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)  # decoding is PIL work; leave the cores' BLAS threads to the model


def iter_batches(items: Sequence[tuple[Any, bytes]], pre: Preprocess, cfg: ReaderCfg,
                 batch_size: int, workers: int, pin_memory: bool = False) -> Iterator[Batch]:
    """Decode ``(key, path)`` items in order, ``workers`` processes in parallel."""
    if not items:
        return
    loader = DataLoader(
        _Files(items, pre, cfg), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate, pin_memory=pin_memory, worker_init_fn=_init_worker if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False,
    )
    yield from loader
