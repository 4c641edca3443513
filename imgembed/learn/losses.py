"""Metric-learning losses on unit embeddings, registered by name. Pure tensor code.

Every loss is an ``nn.Module`` called as ``loss(z, labels)`` with ``z`` float ``(B, d)`` unit vectors
and ``labels`` int64 ``(B,)``; it returns a scalar. Anchors without a positive (or negative) in the
batch are left out rather than counted as zero, so small classes do not dilute the mean.

- ``supcon``: supervised contrastive loss (Khosla et al., 2020); with one pair per label it is the
  InfoNCE / NT-Xent loss of SimCLR.
- ``proxy-anchor``: Proxy Anchor loss (Kim et al., 2020), one learnable proxy per class.
- ``triplet``: triplet loss with batch-hard mining (Hermans et al., 2017).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from imgembed.config import LOSSES, check_choice

# name -> factory; the names are imgembed.config.LOSSES (argparse reads that list without torch).
_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    check_choice("loss", name, LOSSES)  # a new loss is listed in config.LOSSES first

    def deco(factory):
        _FACTORIES[name] = factory
        return factory
    return deco


def create_loss(name: str, dim: int, n_classes: int, temperature: float = 0.1) -> nn.Module:
    """The loss ``name`` for ``dim``-d embeddings of ``n_classes`` classes. Raises ValueError if unknown."""
    check_choice("loss", name, LOSSES)
    return _FACTORIES[name](dim=dim, n_classes=n_classes, temperature=temperature)


class SupCon(nn.Module):
    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = (z @ z.T / self.temperature).masked_fill(eye, float("-inf"))  # (B, B), self excluded
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos = (labels[:, None] == labels[None, :]) & ~eye  # (B, B)
        n_pos = pos.sum(1)
        has = n_pos > 0
        if not has.any():
            return z.sum() * 0.0
        per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(1) / n_pos.clamp(min=1)
        return per_anchor[has].mean()


class ProxyAnchor(nn.Module):
    def __init__(self, n_classes: int, dim: int, alpha: float = 32.0, delta: float = 0.1) -> None:
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.alpha, self.delta = alpha, delta

    @torch.no_grad()
    def init_proxies(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Start each proxy at its class's mean embedding (classes absent from ``labels`` keep theirs)."""
        for c in labels.unique():
            self.proxies[c] = F.normalize(z[labels == c].mean(0), dim=0)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = z @ F.normalize(self.proxies, dim=1).T  # (B, C)
        onehot = F.one_hot(labels, self.proxies.shape[0]).bool()
        pos_exp = torch.exp(-self.alpha * (cos - self.delta)).masked_fill(~onehot, 0.0)
        neg_exp = torch.exp(self.alpha * (cos + self.delta)).masked_fill(onehot, 0.0)
        with_pos = onehot.any(0)  # proxies with a positive in the batch
        pos_term = torch.log1p(pos_exp.sum(0))[with_pos].sum() / with_pos.sum().clamp(min=1)
        neg_term = torch.log1p(neg_exp.sum(0)).sum() / self.proxies.shape[0]
        return pos_term + neg_term


class BatchHardTriplet(nn.Module):
    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = (2.0 - 2.0 * (z @ z.T)).clamp(min=1e-12).sqrt()  # (B, B) Euclidean on unit vectors
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
        pos, neg = same & ~eye, ~same
        valid = pos.any(1) & neg.any(1)
        if not valid.any():
            return z.sum() * 0.0
        hardest_pos = dist.masked_fill(~pos, float("-inf")).amax(1)
        hardest_neg = dist.masked_fill(~neg, float("inf")).amin(1)
        return F.relu(hardest_pos - hardest_neg + self.margin)[valid].mean()


@register("supcon")
def _supcon(dim: int, n_classes: int, temperature: float) -> nn.Module:
    return SupCon(temperature)


@register("proxy-anchor")
def _proxy_anchor(dim: int, n_classes: int, temperature: float) -> nn.Module:
    return ProxyAnchor(n_classes, dim)


@register("triplet")
def _triplet(dim: int, n_classes: int, temperature: float) -> nn.Module:
    return BatchHardTriplet()
