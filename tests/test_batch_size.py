"""Batch size chosen to fit memory, and a batch that does not fit embedded in halves."""

import logging

import numpy as np
import pytest
import torch
from helpers import TINY

from imgembed.config import BackboneCfg
from imgembed.model import embedder as embedder_mod
from imgembed.model.embedder import CPU_BATCH, GPU_BATCH_MAX, GPU_BATCH_MIN, Embedder, batch_for_memory


def test_batch_for_memory():
    assert batch_for_memory(free_bytes=80e9, per_image_bytes=3e6) == GPU_BATCH_MAX  # an H200: capped
    assert batch_for_memory(free_bytes=4e9, per_image_bytes=20e6) == 64  # 100 fit in half: 64
    assert batch_for_memory(free_bytes=8e9, per_image_bytes=62.5e6) == 64  # exactly 64 fit
    assert batch_for_memory(free_bytes=1e9, per_image_bytes=50e6) == GPU_BATCH_MIN  # floor; halving copes
    assert batch_for_memory(free_bytes=0, per_image_bytes=0) == GPU_BATCH_MIN


def test_embedder_batch_size_by_device(monkeypatch):
    e = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu"))
    assert e.batch_size(0) == CPU_BATCH and e.batch_size(48) == 48
    # on CUDA the probe's figures decide (the probe itself runs on a GPU only: scripts/gpu_check.sh)
    e.device = torch.device("cuda")
    monkeypatch.setattr(e, "_probe_memory", lambda: (8_000_000_000, 30e6))
    assert e.batch_size(0) == 128 and e.batch_size(24) == 24


def test_out_of_memory_embeds_the_batch_in_halves(monkeypatch, caplog):
    ref = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu"))
    e = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu"))
    forward = e.backbone.forward
    sizes = []

    def small_batches_only(x):
        sizes.append(len(x))
        if len(x) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x)

    monkeypatch.setattr(e.backbone, "forward", small_batches_only)
    x = torch.randint(0, 256, (11, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger=embedder_mod.__name__):
        got = e.embed(x)
        e.embed(x)
    np.testing.assert_allclose(got, ref.embed(x), atol=1e-6)
    assert sum(s for s in sizes if s <= 3) == 2 * 11  # every photo embedded once per call
    assert caplog.text.count("out of device memory") == 1 and "--batch-size" in caplog.text


def test_out_of_memory_on_one_photo_is_raised(monkeypatch):
    e = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu"))

    def never(x):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(e.backbone, "forward", never)
    with pytest.raises(torch.OutOfMemoryError):
        e.embed(torch.zeros(4, 3, 64, 64, dtype=torch.uint8))


def test_out_of_memory_while_compiling_is_not_taken_for_a_compiler_failure(monkeypatch):
    def compiled(module, **kw):
        def run(x):
            if len(x) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return module(x)
        return run

    monkeypatch.setattr(torch, "compile", compiled)
    e = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu", compile="on"))
    ref = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu", compile="off"))
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    np.testing.assert_allclose(e.embed(x), ref.embed(x), atol=1e-6)
    assert e.compiled  # still compiled: only the batch was too large


def test_gpu_path_batches_keep_file_bytes_in_flight_within_memory():
    from imgembed.ingest.loader import PREFETCH, RAW_MEMORY_SHARE, raw_batch_cap

    gib = 1 << 30
    # 16 workers x 4 batches of 6 MB camera photos on a 128 GiB machine: at most 32 GiB in flight
    cap = raw_batch_cap(6e6, workers=16, memory_bytes=128 * gib)
    assert (16 * PREFETCH + 2) * cap * 6e6 <= RAW_MEMORY_SHARE * 128 * gib < (16 * PREFETCH + 2) * (cap + 1) * 6e6
    assert cap < GPU_BATCH_MAX  # so the GPU's own choice of 256 would be cut down
    assert raw_batch_cap(200e3, workers=16, memory_bytes=128 * gib) > GPU_BATCH_MAX  # 640x480 files: no cut
    assert raw_batch_cap(1e12, workers=8, memory_bytes=8 * gib) == 1
    assert raw_batch_cap(1e6, workers=2) >= 1  # this machine's memory
