"""Backbone + optional head on a device: uint8 pixels in, unit vectors out. Pure compute."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
import torch.nn.functional as F

from imgembed.config import COMPILE_MODES, PRECISIONS, RUNTIMES, BackboneCfg, check_choice, check_device
from imgembed.ingest.cpu import answering_queries, keep_freed_memory, query_threads
from imgembed.model.backbones import Backbone, create_backbone
from imgembed.model.head import ProjectionHead, check_fits, load_head

logger = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then MPS, then the CPU. Raises ValueError for a name not in DEVICES, or for a
    device this machine does not have."""
    if check_device(name) != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU can be used on this machine "
                             "(torch.cuda.is_available() is false); use --device cpu or auto")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"--device {name}: Apple's MPS is not available here; use --device cpu or auto")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, precision: str) -> torch.dtype:
    """fp32 on CPUs (bf16 there is several times slower without bf16 units); bf16 on CUDA."""
    if check_choice("precision", precision, PRECISIONS) == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# compile="auto" compiles a CNN backbone on a CPU from this many photos to embed: a cold compile
# pays for itself from a few thousand photos, and this threshold leaves a margin (README, "Speed and
# scale", has the measured break-even; scripts/bench_pipeline.py --compile on measures the gain).
# ViT backbones gain nothing on a CPU, and on a GPU the pipeline is bound by decoding, so neither is
# compiled unless asked.
AUTO_COMPILE_MIN_IMAGES = 5000


def compile_mode(value: str | bool) -> str:
    """``"auto"``, ``"on"`` or ``"off"`` (``True``/``False`` from older configs are on/off)."""
    mode = ("on" if value else "off") if isinstance(value, bool) else value
    return check_choice("compile mode", mode, COMPILE_MODES)


def worth_compiling(device: torch.device, backbone: Backbone, n_images: int) -> bool:
    """The ``compile="auto"`` rule: a CNN on a CPU with enough photos to repay the compilation."""
    return device.type == "cpu" and backbone.convolutional and n_images >= AUTO_COMPILE_MIN_IMAGES


# EmbedCfg.batch_size = 0 (auto). A CPU gains nothing from larger batches than this; on CUDA the
# batch is as large as half the free memory holds, between these bounds. The upper one bounds the
# host memory of a batch's JPEG bytes (nvJPEG decodes whole files) while decoding is the limit.
CPU_BATCH = 32
GPU_BATCH_MIN, GPU_BATCH_MAX = 16, 256


def batch_for_memory(free_bytes: int, per_image_bytes: float, lo: int = GPU_BATCH_MIN,
                     hi: int = GPU_BATCH_MAX) -> int:
    """The largest power of two in [lo, hi] whose activations take at most half of ``free_bytes``."""
    fits = int(free_bytes * 0.5 / max(per_image_bytes, 1.0))
    batch = lo
    while batch * 2 <= min(fits, hi):
        batch *= 2
    return batch


class Embedder:
    """Turns uint8 image batches into L2-normalised float32 vectors of ``dim`` dimensions."""

    def __init__(self, backbone: Backbone, head: ProjectionHead | None = None,
                 device: str = "auto", precision: str = "auto", compile: str | bool = "off",
                 runtime: str = "auto") -> None:
        """``compile``: run the backbone through ``torch.compile``: "on", "off", or "auto" (decided
        by :meth:`plan` from the number of photos; see :data:`AUTO_COMPILE_MIN_IMAGES`).
        ``runtime``: on a CPU, "auto" runs an exportable backbone on ONNX Runtime (:meth:`_onnx_runner`)."""
        if head is not None:
            check_fits(head, backbone)
        self.device = pick_device(device)
        self.runtime = check_choice("runtime", runtime, RUNTIMES)
        keep_freed_memory()  # activations are large blocks: mapping them afresh each batch costs the kernel
        if answering_queries():  # the app, a server (imgembed.ingest.cpu.use_query_threads)
            torch.set_num_threads(query_threads())
        self.dtype = pick_dtype(self.device, precision)
        self.backbone = backbone.to(self.device)
        # NHWC: faster convolutions on CPUs and GPUs; for ViTs only copies, which made them slower (README)
        self._channels_last = self.device.type in ("cpu", "cuda") and backbone.convolutional
        if self._channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.compile_mode = compile_mode(compile)
        self.onnx = self._onnx_runner()  # None: torch runs the backbone
        if self.onnx is not None:
            self._channels_last, self.compile_mode = False, "off"
        self._forward = self.backbone
        self._fixed_batch = 0  # once compiled: every batch is padded to the first one's size
        self._compile_tried = False  # the first compiled call either works or falls back
        self._warned_oom = False
        if self.compile_mode == "on":
            self._compile()
        self.head = head.to(self.device) if head is not None else None
        pre = backbone.preprocess
        self._mean = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1) * 255.0

    @classmethod
    def from_cfg(cls, cfg: BackboneCfg, head_path: str | None = None, compile: str | bool | None = None) -> "Embedder":
        head = load_head(head_path) if head_path else None
        return cls(create_backbone(cfg), head, device=cfg.device, precision=cfg.precision,
                   compile=cfg.compile if compile is None else compile, runtime=cfg.runtime)

    def _onnx_runner(self):
        """ONNX Runtime for the backbone, when ``runtime`` and the device allow it: on a CPU, for a
        backbone that exports (the export is written once per machine and checked against torch,
        imgembed.model.onnx_export), unless ``compile="on"`` asks for torch.compile. Its vectors are
        torch's (cosine >= 0.9999), so the identity, indexes and feature caches are the same."""
        if self.runtime == "torch" or self.device.type != "cpu":
            return None
        if self.runtime == "auto" and self.compile_mode == "on":
            return None
        from imgembed.model.onnx_embedder import OnnxRunner
        from imgembed.model.onnx_export import exported_model

        for replace in (False, True):  # a file that does not load (damaged on disk) is written again
            path = exported_model(self.backbone, replace) if self.backbone.exportable else None
            if path is None:
                break
            try:
                return OnnxRunner(path, torch.get_num_threads())
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own error types
                logger.warning("the exported model %s does not load (%s)%s", path, str(e).splitlines()[0][:200],
                               "; writing it again" if not replace else "")
        if self.runtime == "onnx":
            raise ValueError(f"--runtime onnx: the backbone {self.backbone.spec} cannot run on ONNX Runtime "
                             "(the default backbone and torchvision CNNs do); use --runtime torch or auto")
        return None

    def set_threads(self, n: int) -> None:
        """The model's CPU threads: torch's, and ONNX Runtime's when it runs the backbone."""
        torch.set_num_threads(n)
        if self.onnx is not None:
            self.onnx.threads = n

    @property
    def compiled(self) -> bool:
        return self._forward is not self.backbone

    def plan(self, n_images: int) -> bool:
        """Called before embedding ``n_images`` photos: with ``compile="auto"``, compile the
        backbone when :func:`worth_compiling` says so. Returns whether it runs compiled."""
        if self.compile_mode == "auto" and not self.compiled and not self._compile_tried \
                and worth_compiling(self.device, self.backbone, n_images):
            logger.info("compiling the model for %d photos (about 30 s, once; --compile off skips it)", n_images)
            self._compile()
        return self.compiled

    def batch_size(self, requested: int = 0) -> int:
        """``requested`` when positive; otherwise :data:`CPU_BATCH`, or on CUDA the batch that
        :func:`batch_for_memory` picks from one probe batch's peak memory."""
        if requested > 0:
            return requested
        if self.device.type != "cuda":
            return CPU_BATCH
        free, per_image = self._probe_memory()
        batch = batch_for_memory(free, per_image)
        logger.info("batch size %d: %.1f MB a photo in the model, %.1f GB free", batch, per_image / 1e6, free / 1e9)
        return batch

    def _probe_memory(self, n: int = 8) -> tuple[int, float]:
        """(free bytes, peak bytes per photo) of one batch of ``n`` through the backbone on CUDA."""
        size = self.preprocess.size
        x = torch.zeros(n, 3, size, size, device=self.device)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        with torch.inference_mode(), self._autocast():
            self.backbone(x)  # uncompiled: compiling happens at the real batch size
        torch.cuda.synchronize(self.device)
        per_image = (torch.cuda.max_memory_allocated(self.device) - base) / n
        return int(torch.cuda.mem_get_info(self.device)[0]), per_image

    def __getstate__(self) -> dict:  # sent to Ray actors: compiled code and sessions do not pickle; made there
        return dict(self.__dict__, _forward=None, _fixed_batch=0, _compile_tried=False, onnx=None)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._forward = self.backbone
        self.onnx = self._onnx_runner()
        if self.compile_mode == "on":
            self._compile()

    def _compile(self) -> None:
        self._forward = torch.compile(self.backbone, dynamic=False)
        self._fixed_batch = None

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self._run_once(x)
        except torch.OutOfMemoryError:
            if len(x) < 2:
                raise
            # Other processes took GPU memory after the batch size was chosen: halve and go on.
            if not self._warned_oom:
                logger.warning("out of device memory at a batch of %d; embedding it in halves "
                               "(pass a smaller --batch-size to avoid the retries)", len(x))
                self._warned_oom = True
            if x.is_cuda:
                torch.cuda.empty_cache()
            half = len(x) // 2
            return torch.cat([self._run(x[:half]), self._run(x[half:])])

    def _run_once(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compiled or self._compile_tried:
            return self._forward(x)
        self._compile_tried = True
        try:  # compilation happens in this first call
            return self._forward(x)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any compiler failure (no C++ compiler, unsupported op)
            logger.warning("torch.compile failed (%s: %s); embedding without it (--compile off skips "
                           "the attempt)", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            self._forward, self._fixed_batch = self.backbone, 0
            return self._forward(x)

    @property
    def dim(self) -> int:
        return self.head.cfg.out_dim if self.head is not None else self.backbone.dim

    @property
    def preprocess(self):
        return self.backbone.preprocess

    def identity(self) -> dict:
        """What produced the vectors; an index records it and refuses a different one."""
        return {
            "backbone": self.backbone.spec,
            "backbone_fingerprint": self.backbone.fingerprint,
            "pool": getattr(self.backbone, "pool", None),
            "head_fingerprint": self.head.fingerprint if self.head is not None else None,
            "dim": self.dim,
            "preprocess": self.backbone.preprocess.to_dict(),
        }

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def features(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Raw backbone features ``float32 (B, backbone.dim)`` for ``uint8 (B, 3, H, W)`` pixels."""
        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(pixels)
        n = len(pixels)
        if self._fixed_batch is None:
            self._fixed_batch = max(n, 1)
        if 0 < n < self._fixed_batch:  # a short last batch would make torch.compile compile again
            pixels = torch.cat([pixels, pixels[:1].expand(self._fixed_batch - n, -1, -1, -1)])
        x = pixels.to(self.device, non_blocking=True).float()
        x = (x - self._mean) / self._std  # (B, 3, H, W)
        if self.onnx is not None:
            return torch.from_numpy(self.onnx.run(x.numpy()))
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self._run(x).float()[:n]

    @torch.inference_mode()
    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """Backbone features -> unit vectors ``(B, dim)`` (through the head when there is one)."""
        feats = feats.to(self.device).float()
        if self.head is not None:
            return self.head(feats)
        return F.normalize(feats, dim=-1)

    def embed(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """``uint8 (B, 3, H, W)`` -> ``float32 (B, dim)`` unit vectors."""
        return self.project(self.features(pixels)).cpu().numpy().astype(np.float32, copy=False)

    @property
    def has_text(self) -> bool:
        return self.backbone.has_text

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """``float32 (T, dim)`` unit vectors for text queries (CLIP backbones only)."""
        feats = self.backbone.encode_text(texts)
        return self.project(feats).cpu().numpy().astype(np.float32, copy=False)
