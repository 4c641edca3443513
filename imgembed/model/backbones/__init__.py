"""Backbone registry: a name turns into a model that maps ``(B, 3, H, W) -> (B, dim)`` features.

A backbone spec is ``family[:arg[:arg]]``; the family picks a factory registered with
:func:`register`, the rest is handed to it (``open_clip:ViT-B-32:laion2b_s34b_b79k``).
Every backbone carries its own preprocessing (:class:`Preprocess`) and a fingerprint of its
weights, which the index manifest records.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from imgembed.config import BackboneCfg
from imgembed.errors import BackboneError, no_text_encoder  # noqa: F401  (BackboneError: re-exported)
from imgembed.ingest.preprocess import Preprocess


class Backbone(nn.Module):
    """Contract: ``forward(x: float (B, 3, size, size), normalised) -> float (B, dim)``."""

    dim: int
    preprocess: Preprocess
    spec: str  # the registry name it was built from
    fingerprint: str  # digest of the weights, recorded in index manifests
    # Run on ONNX Runtime on CPUs, and for queries without torch (imgembed.model.onnx_export): image-only
    # backbones whose export has been checked; a text backbone's queries need torch anyway.
    exportable: bool = False

    @property
    def has_text(self) -> bool:
        return False

    @property
    def convolutional(self) -> bool:
        """A CNN rather than a ViT: channels-last memory and ``torch.compile`` speed it up on a CPU."""
        return mostly_convolutional(self)

    def encode_text(self, texts: list[str]) -> torch.Tensor:  # (T, dim)
        raise no_text_encoder(self.spec)


Factory = Callable[[str, BackboneCfg], Backbone]
_REGISTRY: dict[str, Factory] = {}
_UNLISTED: set[str] = set()  # registered for tests and benchmarks, never offered to users
# What the error for an unknown name offers, one example per listed family.
EXAMPLES = {
    "efficientnet-lite0": "efficientnet-lite0 (the default: works offline)",
    "open_clip": "open_clip:ViT-B-32:laion2b_s34b_b79k (adds text search; weights from the Hugging Face Hub)",
    "torchvision": "torchvision:resnet50:IMAGENET1K_V2",
}


def register(family: str, listed: bool = True) -> Callable[[Factory], Factory]:
    """Register a factory for ``family``; ``listed=False`` keeps it out of what users are offered."""
    def deco(fn: Factory) -> Factory:
        _REGISTRY[family] = fn
        if not listed:
            _UNLISTED.add(family)
        return fn

    return deco


def known_backbones() -> list[str]:
    """The families a user can name (test backbones left out)."""
    _load_builtin()
    return sorted(f for f in _REGISTRY if f not in _UNLISTED)


def did_you_mean(word: str, choices: list[str]) -> str | None:
    """The choice closest to ``word`` (case and ``-``/``_`` ignored), or None when none is close."""
    def norm(w: str) -> str:
        return w.lower().replace("_", "-")

    by_norm = {norm(c): c for c in choices}
    close = difflib.get_close_matches(norm(word), list(by_norm), n=1, cutoff=0.6)
    return by_norm[close[0]] if close else None


def check_name(spec: str) -> None:
    """Raise ValueError for a backbone spec whose family is not registered, with the nearest known
    spec ("did you mean ...?") and the known families. Cheap: builds nothing."""
    _load_builtin()
    family, sep, arg = spec.partition(":")
    if family in _REGISTRY:
        return
    listed = known_backbones()
    near = did_you_mean(family, listed)
    hint = f"did you mean {near + sep + arg}? " if near else ""
    raise ValueError(f"unknown backbone '{spec}'; {hint}known: " + "; ".join(EXAMPLES.get(f, f) for f in listed))


def create_backbone(cfg: BackboneCfg) -> Backbone:
    """Build the backbone named by ``cfg.name`` in eval mode on the CPU.

    Raises:
        ValueError: the family is not registered (the message suggests the nearest and lists the known ones).
        BackboneError: the weights cannot be loaded (the message says how to supply them).
    """
    check_name(cfg.name)
    family, _, arg = cfg.name.partition(":")
    model = _REGISTRY[family](arg, cfg)
    model.spec = cfg.name
    return model.eval().requires_grad_(False)


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def state_fingerprint(module: nn.Module) -> str:
    """Digest of a module's parameters and buffers (for weights that did not come from one file)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def mostly_convolutional(module: nn.Module) -> bool:
    """More of ``module``'s weights sit in convolutions than in dense and attention layers."""
    conv = dense = 0
    for m in module.modules():
        n = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, nn.Conv2d):
            conv += n
        elif isinstance(m, (nn.Linear, nn.MultiheadAttention)):
            dense += n
    return conv > dense


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling ``(B, C, H, W) -> (B, C)``; p=1 is average pooling."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from imgembed.model.backbones import efficientnet, onnx_file, openclip, tiny, tv  # noqa: F401
