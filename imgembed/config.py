"""Dataclass configs. ``asdict(cfg)`` is saved with every artefact so it can be rebuilt exactly."""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_BACKBONE = "efficientnet-lite0"
# The index folder when neither --index nor $IMGEMBED_INDEX names one (CLI and app alike).
DEFAULT_INDEX = "imgembed-index"

# Choice lists: the one source that the configs, argparse and the app read. Each is implemented
# next to the code named in its comment, which refuses a value that is not listed here.
COMPILE_MODES = ("auto", "on", "off")  # imgembed.model.embedder
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # imgembed.model.embedder.pick_dtype
DEVICES = ("auto", "cpu", "cuda", "mps")  # imgembed.model.embedder.pick_device; "cuda:N" picks a GPU
POOLS = ("gem", "avg")  # CNN backbones (imgembed.model.backbones)
INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq")  # imgembed.index.faiss_index; "auto" chooses one
LABEL_MODES = ("folders", "none")  # imgembed.learn.train
LOSSES = ("supcon", "proxy-anchor", "triplet")  # imgembed.learn.losses
# imgembed.query.copies: same pixels; edited copies of one photo (the default); near-identical scenes
DUPLICATE_PRESETS = ("exact", "copies", "similar")
DBA_MODES = ("off", "on")  # imgembed.index.dba: database-side augmentation of an index
PROJECTION_MODES = ("auto", "off")  # imgembed.index.projection: a projection fitted on the collection
RUNTIMES = ("auto", "torch", "onnx")  # imgembed.model.embedder.Embedder: what runs the backbone on a CPU


def default_index() -> str:
    """``$IMGEMBED_INDEX``, else :data:`DEFAULT_INDEX` (relative to the working folder)."""
    return os.environ.get("IMGEMBED_INDEX") or DEFAULT_INDEX


def cache_dir() -> Path:
    """Where imgembed keeps what it can recompute: ``$IMGEMBED_CACHE_DIR``, else ``~/.cache/imgembed``
    (backbone features; the per-folder indexes of ``imgembed similar``)."""
    return Path(os.environ.get("IMGEMBED_CACHE_DIR") or Path.home() / ".cache" / "imgembed")


def settings_path() -> Path:
    """Where the app keeps its settings (the open index, recent ones): ``$IMGEMBED_SETTINGS``, else
    ``$XDG_CONFIG_HOME/imgembed/app.json`` (``~/.config`` when that is unset)."""
    if os.environ.get("IMGEMBED_SETTINGS"):
        return Path(os.environ["IMGEMBED_SETTINGS"])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "imgembed" / "app.json"


def check_device(name: str) -> str:
    """``name`` when it is one of :data:`DEVICES` or ``cuda:N``; otherwise ValueError."""
    family, _, number = name.partition(":")
    if family in DEVICES and (not number or family == "cuda" and number.isdigit()):
        return name
    raise ValueError(f"unknown device '{name}'; use {', '.join(DEVICES)} or cuda:N")


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` when it is in ``choices``; otherwise a ValueError that lists them."""
    if value not in choices:
        raise ValueError(f"unknown {what} '{value}'; use one of {', '.join(choices)}")
    return value


# Image formats imgembed reads: file suffix -> the Pillow plugin that decodes it. Files are opened
# with these plugins only, whatever their bytes claim to be (a PostScript file named .jpg must never
# reach Pillow's EPS plugin, which runs Ghostscript on it). ReaderCfg.extensions, the app's upload
# types and the reader's plugin list all come from here. HEIF (.heic/.heif, the iPhone default) is
# decoded by pillow-heif's plugin, AVIF by Pillow's own.
IMAGE_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF",
    ".tif": "TIFF", ".tiff": "TIFF", ".heic": "HEIF", ".heif": "HEIF", ".avif": "AVIF",
}
# Query images (an upload in the app, `imgembed search FILE`) may declare at most this many pixels:
# fewer than for indexing, since several users of the app may decode at once (README, "Bad input").
QUERY_MAX_PIXELS = 50_000_000
# The largest upload the app and the HTTP API accept, in MB (the app checks it itself and says why;
# server.maxUploadSize in .streamlit/config.toml is set higher so the page, not the browser, answers).
MAX_UPLOAD_MB = 25


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
    # Lower-case file suffixes that are considered images (keys of IMAGE_FORMATS).
    extensions: tuple[str, ...] = tuple(IMAGE_FORMATS)

    @property
    def formats(self) -> tuple[str, ...]:
        """The Pillow plugins allowed to open a file: those of :attr:`extensions`."""
        return tuple(dict.fromkeys(IMAGE_FORMATS[e] for e in self.extensions if e in IMAGE_FORMATS))


def query_reader_cfg() -> ReaderCfg:
    """The reader settings for a query image: :data:`QUERY_MAX_PIXELS` instead of the index limit."""
    return ReaderCfg(max_pixels=QUERY_MAX_PIXELS)


@dataclass
class BackboneCfg:
    name: str = DEFAULT_BACKBONE  # registry name, e.g. "open_clip:ViT-B-32:laion2b_s34b_b79k"
    device: str = "auto"  # auto = cuda, then mps, then cpu
    # Pooling of the last feature map for CNN backbones: one of POOLS.
    pool: str = "gem"
    # Precision: "auto" picks per device (bf16 on CUDA, fp32 on CPU, where bf16 is slower).
    precision: str = "auto"
    # torch.compile the backbone: "on", "off", or "auto": CNNs on a CPU from 5,000 photos to embed
    # (faster after a one-off compile; imgembed.model.embedder.AUTO_COMPILE_MIN_IMAGES says more).
    compile: str = "auto"
    # What runs the backbone on a CPU: "auto" = ONNX Runtime for the backbones that export to it (the
    # default one: about 3x torch's speed, the same vectors; torchvision CNNs), else torch; "torch"; "onnx".
    runtime: str = "auto"


@dataclass
class EmbedCfg:
    # Photos per batch; 0 = auto: 32 on a CPU, on CUDA what the free GPU memory holds (16-256).
    batch_size: int = 0
    # Decode worker processes; -1 = one per CPU core.
    workers: int = -1


@dataclass
class IndexCfg:
    # "auto" or one of INDEX_TYPES: flat (exact inner product), ivf (IVF-Flat), hnsw, ivfpq.
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
    # Database-side augmentation (DBA_MODES): "on" stores each photo's vector averaged with its 10
    # nearest neighbours' (imgembed.index.dba). "" keeps what the index has (off for a new index).
    dba: str = ""
    # PROJECTION_MODES: "auto" fits a 128-d label-free projection on the collection's own features
    # once it holds 1,000 photos (imgembed.index.projection), "off" keeps the model's features.
    # "" keeps what the index has (a new index: "off"; imgembed index chooses "auto").
    projection: str = ""


@dataclass(frozen=True)
class ViewCfg:
    """An augmented view of a photo (imgembed.ingest.views): SimCLR's crops, flips and colours."""

    seed: int = 0  # with each file's content hash, draws that file's view: one seed, one view a photo
    scale: tuple[float, float] = (0.35, 1.0)  # share of the photo's area the crop keeps
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratios of the crop
    flip: float = 0.5  # probability of a mirror image
    jitter: float = 0.8  # probability of moving the colours, each by up to:
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # of the colour circle
    grey: float = 0.2  # probability of a greyscale view


@dataclass
class TrainCfg:
    dim: int = 128  # output dimension
    labels: str = "folders"  # LABEL_MODES: "folders": sub-folder names are classes; "none": label-free
    loss: str = "supcon"  # one of LOSSES (imgembed.learn.losses)
    hidden: int = 0  # 0 = linear head; > 0 adds a residual MLP branch (starts at zero)
    epochs: int = 100  # upper bound; early stopping usually ends sooner
    patience: int = 10  # stop after this many epochs without a better validation score
    min_delta: float = 1e-3  # a validation score must rise by more than this to count as better
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1  # supcon
    # Held out of the training photos when no validation set is given (supervised: early stopping;
    # label-free: the keep-or-PCA decision).
    val_fraction: float = 0.1
    seed: int = 0
    # Label-free only: augmented views of each photo (ViewCfg seeds 0 .. views - 1) pass through the
    # backbone once (their features are cached like the photos'), and the fit pays ``invariance`` times
    # the squared distance between a photo and its views, so it maps both to the same place.
    views: int = 2
    invariance: float = 0.5


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
