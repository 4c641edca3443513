"""The per-batch work a Ray cluster runs: decode files into pixels, embed pixels into vectors.

Both stages take and return Ray Data numpy batches (``dict[str, np.ndarray]``, one row per file).
They are the two halves of the local loop (:mod:`imgembed.model.pipeline`), run as separate stages
so that decoding scales with the cluster's CPUs and embedding with its actors: the batch loader
(and so ``reader.decode_file``) decodes, and :func:`~imgembed.model.pipeline.embed_pixels` with the
same :class:`~imgembed.model.embedder.Embedder` (backbone + head) embeds.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from imgembed.config import ReaderCfg
from imgembed.ingest import fs
from imgembed.ingest.loader import iter_batches
from imgembed.ingest.preprocess import Preprocess
from imgembed.model.embedder import Embedder, pick_device, pick_dtype
from imgembed.model.pipeline import embed_pixels

logger = logging.getLogger(__name__)


def decode_batch(batch: dict[str, np.ndarray], root: bytes, pre: Preprocess, cfg: ReaderCfg) -> dict[str, np.ndarray]:
    """Rows ``id, path, size, mtime_ns`` -> the same rows plus ``pixels uint8 (B, 3, S, S)``,
    ``hash``, ``width``, ``height`` and ``error`` ("" when decoded; failed rows keep zero pixels)."""
    n = len(batch["id"])
    items = [(j, fs.abspath(root, bytes(p))) for j, p in enumerate(batch["path"])]
    pixels = np.zeros((n, 3, pre.size, pre.size), np.uint8)
    digest = [""] * n
    width, height = np.zeros(n, np.int32), np.zeros(n, np.int32)
    error = ["not decoded"] * n
    for b in iter_batches(items, pre, cfg, batch_size=max(n, 1), workers=0):
        for j, reason in b.failures:
            error[j] = reason
        for k, j in enumerate(b.keys):
            pixels[j] = b.pixels[k].numpy()
            digest[j], error[j] = b.digests[k], ""
            width[j], height[j] = b.sizes[k]
    return {**batch, "pixels": pixels, "hash": np.array(digest, object), "width": width,
            "height": height, "error": np.array(error, object)}


def on_device(embedder: Embedder, device: str, precision: str) -> Embedder:
    """The embedder on ``device`` (it arrives on the CPU, as pickled on the driver)."""
    dev = pick_device(device)
    if embedder.device == dev and embedder.dtype == pick_dtype(dev, precision):
        return embedder
    return Embedder(embedder.backbone.cpu(), embedder.head.cpu() if embedder.head is not None else None,
                    device=str(dev), precision=precision, compile=embedder.compile_mode)


class EmbedActor:
    """Holds one embedder for its lifetime; embeds the decoded rows of each batch it is given."""

    def __init__(self, embedder: Embedder, device: str, precision: str, threads: int, images: int = 0) -> None:
        """``images``: about how many photos this actor will embed (for ``compile="auto"``)."""
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.embedder = on_device(embedder, device, precision)
        self.embedder.plan(images)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop("pixels")  # uint8 (B, 3, S, S); not sent on
        ok = np.array([not e for e in batch["error"]], bool)
        vectors = np.zeros((len(ok), self.embedder.dim), np.float32)  # (B, dim)
        if ok.any():
            vectors[ok] = embed_pixels(self.embedder, torch.from_numpy(np.ascontiguousarray(pixels[ok])))
        batch["vector"] = vectors
        return batch
