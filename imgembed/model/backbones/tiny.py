"""A deterministic random-init CNN for exercising the pipeline quickly (tests, benchmarks).

Its vectors carry colour and coarse layout only; it is not meant for real search.
Spec: ``test-tiny[:DIM]`` (default 32).
"""

from __future__ import annotations

import torch
from torch import nn

from imgembed.config import BackboneCfg
from imgembed.ingest.preprocess import Preprocess
from imgembed.model.backbones import Backbone, gem, register, state_fingerprint


class TinyCNN(Backbone):
    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, dim, 3, stride=2, padding=1), nn.ReLU(),
        )
        for p in self.net.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.dim = dim
        self.preprocess = Preprocess(size=64, resize=64, interpolation="bilinear")
        self.fingerprint = state_fingerprint(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(self.net(x))  # (B, dim)


@register("test-tiny", listed=False)
def _factory(arg: str, cfg: BackboneCfg) -> Backbone:
    return TinyCNN(int(arg) if arg else 32)
