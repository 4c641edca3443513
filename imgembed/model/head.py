"""The trainable projection head: backbone features -> a compact, L2-normalised embedding.

A head file is ``NAME.safetensors`` (weights) with ``NAME.json`` beside it (its ``HeadCfg``, the
backbone it was trained on, and training metrics). Loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HEAD_FORMAT = 1


from imgembed.errors import HeadError  # noqa: E402  (defined beside nothing heavy; raised here)


@dataclass
class HeadCfg:
    in_dim: int = 1280  # backbone feature dimension
    out_dim: int = 128  # embedding dimension
    hidden: int = 0  # 0 = linear head; > 0 adds a residual MLP branch of this width
    backbone: str = ""  # backbone spec the head was trained on
    backbone_fingerprint: str = ""


class ProjectionHead(nn.Module):
    """``(B, in_dim)`` raw features -> ``(B, out_dim)`` unit vectors.

    Features are L2-normalised and centred (``mean``), then projected; an optional residual MLP
    branch starts at zero so training begins exactly at the linear (e.g. PCA) initialisation.
    """

    def __init__(self, cfg: HeadCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.zeros(cfg.in_dim))
        self.proj = nn.Linear(cfg.in_dim, cfg.out_dim, bias=False)
        self.mlp = None
        if cfg.hidden > 0:
            self.mlp = nn.Sequential(
                nn.Linear(cfg.in_dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.out_dim))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = F.normalize(feats.float(), dim=-1) - self.mean  # (B, in_dim)
        y = self.proj(x)  # (B, out_dim)
        if self.mlp is not None:
            y = y + self.mlp(x)
        return F.normalize(y, dim=-1)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(asdict(self.cfg), sort_keys=True).encode())
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def linear_head(mean: np.ndarray, weight: np.ndarray, backbone: str = "", backbone_fingerprint: str = "",
                hidden: int = 0) -> ProjectionHead:
    """A :class:`ProjectionHead` with the given centring ``mean (D,)`` and linear map ``weight (d, D)``
    (plus, with ``hidden``, a residual MLP branch that starts at zero, so the head starts linear)."""
    head = ProjectionHead(HeadCfg(in_dim=weight.shape[1], out_dim=weight.shape[0], hidden=hidden,
                                  backbone=backbone, backbone_fingerprint=backbone_fingerprint))
    with torch.no_grad():
        head.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        head.proj.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
    return head.eval().requires_grad_(False)


def check_fits(head: ProjectionHead, backbone) -> None:
    """Raise HeadError unless ``head`` was trained on features of ``backbone`` (dim and weights)."""
    if head.cfg.in_dim != backbone.dim:
        raise HeadError(
            f"the head takes {head.cfg.in_dim}-d features but backbone '{backbone.spec}' "
            f"gives {backbone.dim}-d; train a head for this backbone (imgembed train-head)")
    if head.cfg.backbone_fingerprint and head.cfg.backbone_fingerprint != backbone.fingerprint:
        raise HeadError(
            f"the head was trained on backbone '{head.cfg.backbone}' "
            f"(weights {head.cfg.backbone_fingerprint}), not on '{backbone.spec}' "
            f"(weights {backbone.fingerprint}); use --backbone {head.cfg.backbone}")


def head_paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_head(path: str | Path, head: ProjectionHead, extra: dict | None = None) -> Path:
    """Write weights and config atomically; returns the ``.safetensors`` path."""
    from safetensors.torch import save

    from imgembed.atomic import atomic_write_bytes, atomic_write_json

    weights, meta = head_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    atomic_write_bytes(weights, save(tensors))
    atomic_write_json(meta, {"format": HEAD_FORMAT, "cfg": asdict(head.cfg),
                             "fingerprint": head.fingerprint, **(extra or {})})
    return weights


def read_head_info(path: str | Path) -> dict:
    """The JSON written beside a head (config, fingerprint, and how it was made). Raises HeadError."""
    meta = head_paths(path)[1]
    try:
        return json.loads(meta.read_text())
    except FileNotFoundError as e:
        raise HeadError(f"head not found: expected {meta} (made by `imgembed train-head`)") from e
    except ValueError as e:
        raise HeadError(f"{meta}: not a head config ({e})") from e


def load_head(path: str | Path) -> ProjectionHead:
    """Load a head saved by :func:`save_head`. Raises HeadError with what to do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta = head_paths(path)
    if not weights.is_file() or not meta.is_file():
        raise HeadError(f"head not found: expected {weights} and {meta} (made by `imgembed train-head`)")
    try:
        info = json.loads(meta.read_text())
        cfg = HeadCfg(**info["cfg"])
    except (ValueError, KeyError, TypeError) as e:
        raise HeadError(f"{meta}: not a head config ({e})") from e
    if info.get("format") != HEAD_FORMAT:
        raise HeadError(f"{meta}: head format {info.get('format')!r}, this imgembed reads {HEAD_FORMAT}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise HeadError(f"{weights}: not a safetensors file ({e})") from e
    broken = sorted(k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if broken:  # its vectors would be NaN, and every search of them empty
        raise HeadError(f"{weights} holds weights that are not finite (NaN or infinity) in {', '.join(broken)}; "
                        "train the head again")
    head = ProjectionHead(cfg)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HeadError(f"{weights} does not match its config {meta}: {e}") from e
    return head.eval().requires_grad_(False)
