"""Dataclass configs. ``asdict(cfg)`` is saved with every artefact so it can be rebuilt exactly."""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

DEFAULT_BACKBONE = "efficientnet-lite0"
DEFAULT_INDEX_DIRNAME = ".imgembed-index"
COMPILE_MODES = ("auto", "on", "off")


@dataclass
class ReaderCfg:
    # A declared width x height above this is refused before decoding (decompression bombs).
    # 100 MP covers every consumer camera and phone; raise it for panoramas or scans.
    max_pixels: int = 100_000_000
    # Files larger than this many bytes are skipped without being opened.
    max_bytes: int = 200 * 1024 * 1024
    # Let JPEG decode at a reduced DCT scale when the photo is much larger than the model input.
    jpeg_draft: bool = True
    # Follow symlinked files (symlinked directories are never followed: they can loop).
    follow_symlinks: bool = True
    # Lower-case file suffixes that are considered images.
    extensions: tuple[str, ...] = (
        ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
    )


@dataclass
class BackboneCfg:
    name: str = DEFAULT_BACKBONE  # registry name, e.g. "open_clip:ViT-B-32:laion2b_s34b_b79k"
    device: str = "auto"  # auto = cuda, then mps, then cpu
    # Pooling of the last feature map for CNN backbones: "gem" or "avg".
    pool: str = "gem"
    # Precision: "auto" picks per device (bf16 on CUDA, fp32 on CPU, where bf16 is slower).
    precision: str = "auto"
    # torch.compile the backbone: "on", "off", or "auto": CNNs on a CPU from 5,000 photos to embed
    # (1.4x faster there after a one-off compile of about 30 s; imgembed.model.embedder says more).
    compile: str = "auto"


@dataclass
class EmbedCfg:
    # Photos per batch; 0 = auto: 32 on a CPU, on CUDA what the free GPU memory holds (16-256).
    batch_size: int = 0
    # Decode worker processes; -1 = one per CPU core.
    workers: int = -1


@dataclass
class IndexCfg:
    # "auto", "flat" (exact inner product), "hnsw" or "ivfpq".
    index_type: str = "auto"
    metric: str = "cosine"  # vectors are L2-normalised, so inner product = cosine
    hnsw_m: int = 32  # HNSW graph degree
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    ivf_nlist: int = 0  # 0 = choose from the collection size (about 4 * sqrt(n))
    ivf_nprobe: int = 16  # lists probed per query at least (nlist / 64 when that is more)
    # After IVF lists are trained, nprobe is raised until recall@10 of sample queries reaches
    # this (against exact search); 0 keeps the probes above.
    target_recall: float = 0.95
    pq_m: int = 0  # 0 = choose from the dimension (dim / 4 sub-quantisers of 8 bits)


@dataclass
class IndexJobCfg:
    backbone: BackboneCfg = field(default_factory=BackboneCfg)
    embed: EmbedCfg = field(default_factory=EmbedCfg)
    reader: ReaderCfg = field(default_factory=ReaderCfg)
    index: IndexCfg = field(default_factory=IndexCfg)
    head: str | None = None  # path of a trained projection head, or None for raw features
    # Embedded vectors are committed to the store at least this often, so a crash loses little.
    commit_every: int = 512


def resolve_workers(workers: int) -> int:
    return (os.cpu_count() or 1) if workers < 0 else workers


def to_dict(cfg: Any) -> dict:
    return asdict(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a (possibly nested) config dataclass from ``asdict`` output, ignoring unknown keys."""
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = f.default_factory
        if sub is not MISSING and hasattr(sub, "__dataclass_fields__") and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)
