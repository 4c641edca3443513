"""Query vectors without torch: the backbone as an ONNX model run by ONNX Runtime, the head in numpy.

A one-off ``imgembed search IMG`` spent most of its time importing torch (2.5 s of 3.7 here) to
embed one photo. The first job that builds the model writes the backbone out once per machine
(:mod:`imgembed.model.onnx_export`, into ``cache_dir()/query-models``) after checking that it gives
the same features as torch; a query then loads that file in a fraction of a second. The file is
named by what the index records (backbone spec, weights fingerprint, pooling), so an index only
ever meets the export of its own model, and :meth:`OnnxEmbedder.identity` is checked against the
manifest like the torch embedder's. Text queries, GPUs and backbones that were never exported keep
to :class:`imgembed.model.embedder.Embedder`. Pure compute, plus the loading of those files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np

from imgembed.config import cache_dir
from imgembed.errors import HeadError, no_text_encoder
from imgembed.identity import raw_identity
from imgembed.ingest.cpu import query_threads
from imgembed.ingest.preprocess import Preprocess

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # of the JSON written beside an exported model


def model_paths(identity: dict) -> tuple[Path, Path]:
    """``(model.onnx, model.json)`` for the backbone an identity names (spec, weights, pooling)."""
    key = json.dumps([identity.get("backbone"), identity.get("backbone_fingerprint"), identity.get("pool"),
                      identity.get("preprocess")], sort_keys=True)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(identity.get("backbone")))[:60]
    stem = cache_dir() / "query-models" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return stem.with_suffix(".onnx"), stem.with_suffix(".json")


def preprocess_of(info: dict) -> Preprocess:
    """The :class:`Preprocess` recorded in an exported model's JSON (lists for tuples, as stored)."""
    pre = info["preprocess"]
    return Preprocess(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])})


class NumpyHead:
    """:class:`imgembed.model.head.ProjectionHead` in numpy: unit(features) - mean, projected (plus
    the residual GELU branch when the head has one), then unit length."""

    def __init__(self, cfg: dict, weights: dict[str, np.ndarray], fingerprint: str) -> None:
        self.cfg, self.w, self.fingerprint = cfg, weights, fingerprint
        self.out_dim = int(cfg["out_dim"])

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        x = _unit(feats.astype(np.float32)) - self.w["mean"]
        y = x @ self.w["proj.weight"].T
        if self.cfg.get("hidden"):
            h = x @ self.w["mlp.0.weight"].T + self.w["mlp.0.bias"]
            h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))  # torch's exact GELU
            y = y + h @ self.w["mlp.2.weight"].T + self.w["mlp.2.bias"]
        return _unit(y)


_erf = np.vectorize(math.erf, otypes=[np.float32])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def load_numpy_head(path: str | Path) -> NumpyHead:
    """A head file (``NAME.safetensors`` + ``NAME.json``) read without torch. Raises HeadError."""
    from safetensors.numpy import load_file

    from imgembed.head_file import HEAD_FORMAT, fingerprint

    stem = Path(path).with_suffix("") if Path(path).suffix in (".safetensors", ".json") else Path(path)
    try:
        info = json.loads(stem.with_suffix(".json").read_text())
        weights = {k: v.astype(np.float32) for k, v in load_file(str(stem.with_suffix(".safetensors"))).items()}
    except Exception as e:  # a missing or damaged head: the torch loader says what is wrong in full
        raise HeadError(f"{stem}: cannot read the head ({e})") from e
    if info.get("format") != HEAD_FORMAT or "cfg" not in info:
        raise HeadError(f"{stem}.json: not a head this imgembed reads")
    return NumpyHead(info["cfg"], weights, fingerprint(info["cfg"], weights))


class OnnxRunner:
    """An ONNX model on ONNX Runtime's CPU provider: ``run(x float32 (B, ...)) -> (B, ...)``.

    Its threads sleep when out of work instead of spinning (like OpenMP's passive wait policy,
    imgembed.ingest.cpu): a spinning pool takes the core that decoding or another program needs.
    Setting :attr:`threads` opens the model again with that many (a fraction of a second)."""

    def __init__(self, model: str | Path | bytes, threads: int) -> None:
        self.model = str(model) if isinstance(model, Path) else model
        self._threads = 0
        self.threads = threads

    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, n: int) -> None:
        if n == self._threads:
            return
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, n)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # warnings about unused initialisers are not the user's business
        self.session = ort.InferenceSession(self.model, opts, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name
        self._threads = max(1, n)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.ascontiguousarray(x, np.float32)})[0]


class OnnxEmbedder:
    """The query side of :class:`imgembed.model.embedder.Embedder` (``embed``, ``preprocess``,
    ``dim``, ``identity``) on ONNX Runtime's CPU provider."""

    has_text = False

    def __init__(self, model: Path, info: dict, head: NumpyHead | None = None) -> None:
        self.runner = OnnxRunner(model, query_threads())
        self.info, self.head = info, head
        self.preprocess = preprocess_of(info)
        self._mean = np.asarray(self.preprocess.mean, np.float32).reshape(1, 3, 1, 1) * 255.0
        self._std = np.asarray(self.preprocess.std, np.float32).reshape(1, 3, 1, 1) * 255.0

    @property
    def dim(self) -> int:
        return self.head.out_dim if self.head is not None else int(self.info["dim"])

    def identity(self) -> dict:
        """What the torch embedder of the same backbone and head reports."""
        return {"backbone": self.info["backbone"], "backbone_fingerprint": self.info["backbone_fingerprint"],
                "pool": self.info["pool"], "head_fingerprint": self.head.fingerprint if self.head else None,
                "dim": self.dim, "preprocess": self.info["preprocess"]}

    def features(self, pixels) -> np.ndarray:
        """Raw backbone features ``float32 (B, dim)`` for ``uint8 (B, 3, H, W)`` pixels."""
        x = (np.asarray(pixels, dtype=np.float32) - self._mean) / self._std
        return self.runner.run(x).astype(np.float32, copy=False)

    def embed(self, pixels) -> np.ndarray:
        """``uint8 (B, 3, H, W)`` -> ``float32 (B, dim)`` unit vectors."""
        feats = self.features(pixels)
        return self.head(feats) if self.head is not None else _unit(feats)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        raise no_text_encoder(self.info["backbone"])


def onnx_embedder_for(manifest: dict, index_dir: str | Path) -> OnnxEmbedder | None:
    """The ONNX embedder of an index's backbone and head, or None when there is none to use: no
    exported model on this machine, no onnxruntime, or a file that does not load (then the torch
    embedder answers, and says what is wrong if it is the head)."""
    identity = raw_identity(manifest)
    model, meta = model_paths(identity)
    if not model.is_file() or not meta.is_file():
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    try:
        info = json.loads(meta.read_text())
        named = ("backbone", "backbone_fingerprint", "pool", "preprocess")
        if info.get("format") != EXPORT_FORMAT or info.get("failed") or any(info.get(k) != identity.get(k)
                                                                            for k in named):
            return None
        head = load_numpy_head(Path(index_dir) / manifest["head"]) if manifest.get("head") else None
        return OnnxEmbedder(model, info, head)
    except Exception as e:  # noqa: BLE001 - a damaged cache file must not stop a query: torch answers
        logger.info("the exported model %s is not usable (%s); using torch", model, e)
        return None
