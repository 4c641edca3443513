"""A linear projection written and read as a head file (``NAME.safetensors`` + ``NAME.json``, the
format of :func:`imgembed.model.head.save_head`) without torch, so the index can keep the
projection it fitted on its own photos and any embedder can load it as its head.

The fingerprint is the one :attr:`imgembed.model.head.ProjectionHead.fingerprint` computes for the
same weights (tests/test_auto_projection.py checks both agree).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

HEAD_FORMAT = 1  # imgembed.model.head.HEAD_FORMAT


def head_cfg(mean: np.ndarray, weight: np.ndarray, backbone: str, backbone_fingerprint: str) -> dict:
    """The ``HeadCfg`` of a linear head, as a dict."""
    return {"in_dim": int(weight.shape[1]), "out_dim": int(weight.shape[0]), "hidden": 0,
            "backbone": backbone, "backbone_fingerprint": backbone_fingerprint}


def tensors(mean: np.ndarray, weight: np.ndarray) -> dict[str, np.ndarray]:
    return {"mean": np.ascontiguousarray(mean, np.float32), "proj.weight": np.ascontiguousarray(weight, np.float32)}


def fingerprint(cfg: dict, weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for name, t in sorted(weights.items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(t).tobytes())
    return h.hexdigest()[:16]


def encode(mean: np.ndarray, weight: np.ndarray, backbone: str, backbone_fingerprint: str,
           extra: dict) -> tuple[bytes, bytes, str]:
    """``(safetensors bytes, json bytes, fingerprint)`` of the linear head
    ``x -> unit((unit(x) - mean) @ weight.T)``."""
    from safetensors.numpy import save

    cfg = head_cfg(mean, weight, backbone, backbone_fingerprint)
    w = tensors(mean, weight)
    fp = fingerprint(cfg, w)
    info = {"format": HEAD_FORMAT, "cfg": cfg, "fingerprint": fp, **extra}
    return save(w), (json.dumps(info, indent=2, sort_keys=True) + "\n").encode(), fp


def decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, weight)`` of a linear head's safetensors bytes. Raises ValueError when it is not one."""
    from safetensors.numpy import load

    try:
        w = load(data)
        return w["mean"].astype(np.float32), w["proj.weight"].astype(np.float32)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"not a linear head ({e})") from e
