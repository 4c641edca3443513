"""torchvision classification models as feature extractors: ``torchvision:NAME[:WEIGHTS]``.

WEIGHTS is a torchvision weights enum name (``IMAGENET1K_V2``, ``DEFAULT``; downloaded on a
machine with network into ``$TORCH_HOME``) or the path of a local state_dict file. The classifier
is removed, so the output is the pooled feature vector.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from imgembed.config import BackboneCfg
from imgembed.ingest.preprocess import Preprocess
from imgembed.model.backbones import Backbone, BackboneError, register, state_fingerprint

_CLASSIFIER_ATTRS = ("fc", "classifier", "heads", "head")


class TorchvisionBackbone(Backbone):
    def __init__(self, model: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        for attr in _CLASSIFIER_ATTRS:
            if isinstance(getattr(model, attr, None), nn.Module):
                setattr(model, attr, nn.Identity())
                break
        else:
            raise BackboneError(f"{type(model).__name__}: no classifier attribute among {_CLASSIFIER_ATTRS}")
        self.model = model.eval()
        self.preprocess = preprocess
        with torch.inference_mode():
            probe = self.model(torch.zeros(1, 3, preprocess.size, preprocess.size))
        self.dim = int(probe.flatten(1).shape[1])
        self.fingerprint = state_fingerprint(model)

    @property
    def exportable(self) -> bool:  # CNNs (ResNet-50: 1.5x torch's speed on ONNX Runtime); ViTs do not export
        return self.convolutional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).flatten(1).float()  # (B, dim)


@register("torchvision")
def _factory(arg: str, cfg: BackboneCfg) -> Backbone:
    import torchvision.models as tvm

    name, _, weights = arg.partition(":")
    if name not in tvm.list_models(module=tvm):
        raise ValueError(f"unknown torchvision model '{name}'; see torchvision.models.list_models()")
    if not weights:
        raise BackboneError(
            f"torchvision:{name} names no weights, and random weights would make meaningless "
            f"vectors. Use torchvision:{name}:DEFAULT (downloads on a machine with network into "
            f"$TORCH_HOME) or torchvision:{name}:/path/to/state_dict.pth"
        )
    model = tvm.get_model(name, weights=None)
    if os.path.isfile(os.path.expanduser(weights)):
        state = torch.load(os.path.expanduser(weights), map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise BackboneError(f"{weights} does not fit torchvision:{name}: {e}") from e
        return TorchvisionBackbone(model, Preprocess(size=224, resize=256, interpolation="bilinear"))
    try:
        enum = tvm.get_model_weights(name)[weights] if weights != "DEFAULT" else tvm.get_model_weights(name).DEFAULT
    except KeyError as e:
        known = ", ".join(w.name for w in tvm.get_model_weights(name))
        raise BackboneError(f"torchvision:{name} has no weights '{weights}'; known: {known}, or a file path") from e
    try:
        model.load_state_dict(enum.get_state_dict(progress=False, check_hash=True))
    except Exception as e:
        raise BackboneError(
            f"could not load torchvision weights {name}:{enum.name}: {e}. On a machine with network "
            f"they download into $TORCH_HOME (~/.cache/torch); copy that cache here, or pass a local "
            f"file: --backbone torchvision:{name}:/path/to/state_dict.pth"
        ) from e
    t = enum.transforms()
    pre = Preprocess(
        size=int(t.crop_size[0]), resize=int(t.resize_size[0]), mean=tuple(t.mean), std=tuple(t.std),
        interpolation=t.interpolation.value,
    )
    return TorchvisionBackbone(model, pre)
