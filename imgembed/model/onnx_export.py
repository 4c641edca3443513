"""Write a backbone out as an ONNX model: ONNX Runtime runs it on CPUs, for indexing
(imgembed.model.embedder, ``runtime="auto"``) and for queries without torch (imgembed.model.onnx_embedder).

Done once per machine and backbone, by the first job that builds the model (about 2 s for the
default backbone), into ``cache_dir()/query-models``. The export is kept only when ONNX Runtime
gives the features torch gives, to within :data:`MIN_COSINE` on a random batch; anything that goes
wrong leaves the model on torch and is said in one line.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from imgembed.atomic import atomic_write_bytes, atomic_write_json
from imgembed.model.backbones import Backbone
from imgembed.model.onnx_embedder import EXPORT_FORMAT, model_paths

logger = logging.getLogger(__name__)

MIN_COSINE = 0.9999  # of every exported feature vector to torch's, or the export is not kept
OPSET = 17


def identity_of(backbone: Backbone) -> dict:
    """The part of an embedder identity that names a backbone, as an index manifest stores it."""
    return json.loads(json.dumps({"backbone": backbone.spec, "backbone_fingerprint": backbone.fingerprint,
                                  "pool": getattr(backbone, "pool", None), "dim": backbone.dim,
                                  "preprocess": backbone.preprocess.to_dict()}))


def exported_model(backbone: Backbone, replace: bool = False) -> Path | None:
    """The exported model of ``backbone``, written now unless this machine has it (or ``replace``:
    it does not load). None when the backbone is not exportable (text backbones) or the export
    failed or did not match torch."""
    if not backbone.exportable:
        return None
    identity = identity_of(backbone)
    model_file, meta_file = model_paths(identity)
    if meta_file.is_file() and not replace and _failed_before(meta_file):
        return None  # said once, when it failed: not tried on every run
    if model_file.is_file() and meta_file.is_file() and not replace:
        return model_file
    try:
        cpu = copy.deepcopy(backbone).to("cpu", torch.float32).eval()  # the job's model stays where it is
        data = to_onnx(cpu)
        worst = _check(data, cpu)
        if worst < MIN_COSINE:
            why = f"its features differ from torch's (cosine {worst:.6f})"
        else:
            model_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(model_file, data)
            atomic_write_json(meta_file, {"format": EXPORT_FORMAT, **identity, "opset": OPSET,
                                          "torch": torch.__version__, "min_cosine": round(worst, 7)})
            why = ""
    except Exception as e:  # noqa: BLE001 - an exporter failure costs only the faster runtime
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if why:
        logger.warning("%s runs on torch: its ONNX export was not kept (%s)", backbone.spec, why)
        try:  # remembered, so that the next run does not try again
            model_file.unlink(missing_ok=True)
            meta_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(meta_file, {"format": EXPORT_FORMAT, **identity, "torch": torch.__version__,
                                          "failed": why[:500]})
        except OSError:  # a cache folder that cannot be written: the next run tries again
            pass
        return None
    logger.info("wrote the ONNX model %s (%.1f MB)", model_file, model_file.stat().st_size / 1e6)
    return model_file


def _failed_before(meta_file: Path) -> bool:
    """Whether the export of this backbone failed with this torch (another torch may export it)."""
    try:
        info = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return False
    return bool(info.get("failed")) and info.get("torch") == torch.__version__


def to_onnx(backbone: Backbone) -> bytes:
    """``backbone`` as ONNX bytes with a dynamic batch axis: normalised ``(B, 3, S, S)`` in, features out."""
    size = backbone.preprocess.size
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes, on every export
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(backbone, (torch.zeros(2, 3, size, size),), str(path), input_names=["pixels"],
                          output_names=["features"], dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
        return path.read_bytes()


def _check(data: bytes, backbone: Backbone, n: int = 4) -> float:
    """The lowest cosine between ONNX Runtime's and torch's features for ``n`` random inputs."""
    import onnxruntime as ort

    size = backbone.preprocess.size
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = backbone(x).numpy()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    cos = (ref * got).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
    return float(cos.min())
