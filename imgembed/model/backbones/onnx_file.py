"""An ONNX model file as a backbone: ``onnx:PATH`` (for measuring exported or quantised models).

PATH is a model written like imgembed.model.onnx_export's, with its JSON beside it (the
preprocessing and feature size). The model runs on ONNX Runtime's CPU provider; the whole pipeline
(index, eval) works with it as with any backbone, and its fingerprint is the file's, so an int8
copy of a model never shares an index or a feature cache with the float one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from imgembed.config import BackboneCfg
from imgembed.model.backbones import Backbone, BackboneError, file_fingerprint, register
from imgembed.model.onnx_embedder import OnnxRunner, preprocess_of


class OnnxFileBackbone(Backbone):
    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        meta = path.with_suffix(".json")
        try:
            info = json.loads(meta.read_text())
            self.preprocess = preprocess_of(info)
            self.dim = int(info["dim"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackboneError(f"onnx:{path} needs {meta} beside it, with its preprocess and dim ({e})") from e
        try:
            self.runner = OnnxRunner(path, threads)
        except Exception as e:  # onnxruntime raises its own error types for unreadable models
            raise BackboneError(f"onnx:{path} is not a model ONNX Runtime can load ({e})") from e
        self.pool = info.get("pool")
        self.fingerprint = file_fingerprint(path)

    @property
    def convolutional(self) -> bool:  # nothing for torch to compile or reorder
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.runner.run(x.detach().float().cpu().numpy()), np.float32))


@register("onnx", listed=False)
def _factory(arg: str, cfg: BackboneCfg) -> Backbone:
    path = Path(os.path.expanduser(arg))
    if not arg or not path.is_file():
        raise BackboneError(f"onnx:{arg}: no such model file; give the path of an .onnx file")
    return OnnxFileBackbone(path, max(1, torch.get_num_threads()))
