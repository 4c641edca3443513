"""Training a projection head on cached backbone features. Pure compute: features and labels in, a
head and its history out (reading folders: :mod:`imgembed.learn.folders`; writing the head:
:mod:`imgembed.learn.head_files`).

The head starts as the PCA projection of the training features and is trained with a
metric-learning loss (:mod:`imgembed.learn.losses`), keeping the epoch that scores best on a
validation split (early stopping):

- supervised (``labels="folders"``): the loss sees the class of each photo; the validation score
  is the mAP of validation photos searched against the training photos.
- label-free (``labels="none"``): no loss and no epochs. The linear map is fitted in closed form by
  neighbourhood distillation (:func:`imgembed.index.projection.distil`) on the training photos and,
  when given, the features of their augmented views (``cfg.invariance``), and
  kept only if it beats the PCA projection by the held-out neighbourhood consistency of the
  validation photos (:func:`imgembed.index.projection.consistency`); otherwise the head *is* that
  PCA projection, and the result says so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from imgembed.config import LABEL_MODES, TrainCfg, check_choice
from imgembed.index import projection
from imgembed.learn.baselines import linear_head, pca_basis
from imgembed.learn.losses import ProxyAnchor, create_loss
from imgembed.learn.metrics import mean_average_precision
from imgembed.model.head import ProjectionHead

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    head: ProjectionHead
    history: list[dict]  # one record per epoch: epoch, loss, val
    best_epoch: int  # 0 = the PCA initialisation was never beaten
    val_metric: str  # what "val" is: "val mAP" or "val -loss"
    seconds: float
    n_train: int
    n_val: int
    extra: dict = field(default_factory=dict)

    def describe(self, cfg: TrainCfg) -> str:
        """One sentence: what was trained, on how many photos, how long, and what early stopping kept."""
        s = self.summary()
        if cfg.labels == "none":
            start, end = self.history[0]["val"], self.history[-1]["val"]
            verdict = (f"kept: {s['val_metric']} {start:.4f} (PCA) -> {end:.4f}" if self.best_epoch else
                       f"it did not beat its PCA start ({s['val_metric']} {end:.4f} against {start:.4f}), "
                       "so the head is the PCA projection")
            n_views = s.get("views", 0)
            with_views = f" and {n_views} augmented view{'s' if n_views > 1 else ''} of each" if n_views else ""
            return (f"fitted a {cfg.dim}-d label-free head (neighbourhood distillation) on {s['n_train']} photos"
                    f"{with_views} in {self.seconds:.1f} s, judged on {s['n_val']} held-out photos; {verdict}")
        kind = "supervised"
        return (f"trained a {cfg.dim}-d {kind} head on {s['n_train']} photos ({s['n_val']} for validation) in "
                f"{self.seconds:.1f} s: kept epoch {s['best_epoch']} of {s['epochs_run']}, {s['val_metric']} "
                f"{self.history[0]['val']:.4f} -> {s['best_val']:.4f}")

    def summary(self) -> dict:
        best = self.history[self.best_epoch]["val"] if self.history else None
        return {"best_epoch": self.best_epoch, "epochs_run": len(self.history) - 1, "val_metric": self.val_metric,
                "best_val": best, "seconds": round(self.seconds, 2), "n_train": self.n_train,
                "n_val": self.n_val, **self.extra}


def split_validation(n: int, labels: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices; stratified by label, one photo of each class kept for training."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    val = []
    for idx in groups:
        k = min(max(int(round(fraction * len(idx))), 1 if fraction > 0 else 0), len(idx) - 1)
        val.extend(rng.permutation(idx)[:max(k, 0)].tolist())
    val = np.sort(np.array(val, dtype=np.int64))
    train = np.setdiff1d(np.arange(n), val)
    return train, val


class _Data(NamedTuple):
    """Training and validation features (and class codes when supervised), checked."""

    x: np.ndarray  # float32 (N, D)
    xv: np.ndarray  # float32 (V, D)
    y: np.ndarray | None  # int64 (N,) class codes, supervised only
    yv: np.ndarray | None  # int64 (V,)
    n_classes: int
    refit: np.ndarray | None = None  # label-free, validation held out of feats: all of them, for the final fit
    views: np.ndarray | None = None  # label-free: (V, N, D) augmented views of x
    refit_views: np.ndarray | None = None  # and (V, len(refit), D) of refit


class _Task(NamedTuple):
    """What the head is trained on: one loss per target labelling, and the early-stopping score."""

    losses: list[nn.Module]
    targets: list[torch.Tensor]  # int64 (N,) labels of the training photos, one per loss
    validate: Callable[[], float]
    val_metric: str
    extra: dict


def _prepare(feats: np.ndarray, labels: Sequence[str] | None, cfg: TrainCfg, val_feats: np.ndarray | None,
             val_labels: Sequence[str] | None, views: np.ndarray | None = None) -> _Data:
    """Split off the validation photos when none are given, encode classes, refuse what cannot train."""
    supervised = cfg.labels == "folders"
    feats = np.asarray(feats, dtype=np.float32)
    if views is not None and (views.ndim != 3 or views.shape[1:] != feats.shape):
        raise ValueError(f"views must be (V, {len(feats)}, {feats.shape[1]}), one per photo, got {views.shape}")
    all_views = views
    if supervised and (labels is None or len(labels) != len(feats)):
        raise ValueError("supervised training needs one label per photo (sub-folder names); use --labels none without")
    str_labels = np.asarray(labels) if supervised else None
    everything = None
    if val_feats is None:
        everything = feats
        tr, va = split_validation(len(feats), str_labels, cfg.val_fraction, cfg.seed)
        val_feats, feats = feats[va], feats[tr]
        views = views[:, tr] if views is not None else None
        if supervised:
            val_labels, str_labels = str_labels[va], str_labels[tr]
    elif supervised and (val_labels is None or len(val_labels) != len(val_feats)):
        raise ValueError("supervised validation needs one label per validation photo")
    if len(feats) < 4 or len(val_feats) < 1:
        raise ValueError(f"too few photos to train a head: {len(feats)} for training, {len(val_feats)} for "
                         "validation (need at least 4 and 1)")
    xv = np.asarray(val_feats, dtype=np.float32)
    if not supervised:
        return _Data(feats, xv, None, None, 0, everything, views, all_views if everything is not None else None)
    classes = sorted(set(str_labels.tolist()))
    if len(classes) < 2:
        raise ValueError(f"supervised training needs at least 2 classes (sub-folders), found {classes}")
    return _Data(feats, xv, _encode(str_labels, classes), _encode(val_labels, classes), len(classes))


def _encode(labels: Sequence[str], classes: list[str]) -> np.ndarray:
    pos = {c: i for i, c in enumerate(classes)}
    return np.array([pos.get(c, -1) for c in labels], dtype=np.int64)


def _embed(head: ProjectionHead, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([head(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else x


def _supervised_task(head: ProjectionHead, x: torch.Tensor, xv: torch.Tensor, d: _Data, cfg: TrainCfg) -> _Task:
    def validate() -> float:  # mAP of the validation photos searched against the training photos
        head.eval()
        g, q = _embed(head, x).numpy(), _embed(head, xv).numpy()
        return mean_average_precision(q @ g.T, d.yv, d.y)

    loss = create_loss(cfg.loss, cfg.dim, d.n_classes, cfg.temperature)
    return _Task([loss], [torch.from_numpy(d.y)], validate, "val mAP", {})


def _label_free(d: _Data, cfg: TrainCfg, ident: dict, t0: float,
                progress: Callable[[dict], None] | None) -> TrainResult:
    """Neighbourhood distillation, kept only if it beats PCA by held-out neighbourhood consistency."""
    if cfg.hidden:
        raise ValueError("--hidden applies to supervised heads; the label-free head is linear")
    # the held-out photos came from the training folder (d.refit): the kept map is fitted on all
    fit = projection.fit_label_free(d.x, d.xv, cfg.dim, refit=d.refit, seed=cfg.seed, views=d.views,
                                    refit_views=d.refit_views, invariance=cfg.invariance)
    kept = fit.method == "distil"
    head = linear_head(fit.mean, fit.weight, **ident)
    history = [{"epoch": 0, "loss": None, "val": fit.pca_score}, {"epoch": 1, "loss": None, "val": fit.distil_score}]
    for rec in history if progress else ():
        progress(rec)
    n_fit = len(d.refit) if d.refit is not None else len(d.x)
    return TrainResult(head, history, int(kept), "held-out neighbourhood consistency", time.perf_counter() - t0,
                       n_fit, len(d.xv), {"method": "neighbourhood distillation", "kept": bool(kept),
                                          "judged_on": len(d.x), "views": 0 if d.views is None else len(d.views)})


def train_head(feats: np.ndarray, labels: Sequence[str] | None, cfg: TrainCfg,
               val_feats: np.ndarray | None = None, val_labels: Sequence[str] | None = None,
               backbone: str = "", backbone_fingerprint: str = "",
               progress: Callable[[dict], None] | None = None, views: np.ndarray | None = None) -> TrainResult:
    """Train a head on raw features ``feats (N, D)``.

    ``labels`` are the class names (required for ``cfg.labels == "folders"``, ignored for
    ``"none"``, which fits in closed form: see the module docstring). Without ``val_feats`` a
    ``cfg.val_fraction`` of the photos is held out for early stopping. ``progress`` receives each
    epoch's record. ``views (V, N, D)``: label-free only, the features of V augmented views of each
    photo. Raises ValueError on bad input.
    """
    t0 = time.perf_counter()
    check_choice("label mode", cfg.labels, LABEL_MODES)
    d = _prepare(feats, labels, cfg, val_feats, val_labels, views if cfg.labels == "none" else None)
    if cfg.labels == "none":
        return _label_free(d, cfg, {"backbone": backbone, "backbone_fingerprint": backbone_fingerprint}, t0,
                           progress)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        mean, comps, _ = pca_basis(d.x, cfg.dim, seed=cfg.seed)
        head = linear_head(mean, comps, hidden=cfg.hidden, backbone=backbone,
                           backbone_fingerprint=backbone_fingerprint).requires_grad_(True)
        x, xv = torch.from_numpy(d.x), torch.from_numpy(d.xv)
        task = _supervised_task(head, x, xv, d, cfg)
        history, best_epoch = _fit(head, task, x, cfg, progress)
    return TrainResult(head.eval().requires_grad_(False), history, best_epoch, task.val_metric,
                       time.perf_counter() - t0, len(d.x), len(d.xv), task.extra)


def _fit(head: ProjectionHead, task: _Task, x: torch.Tensor, cfg: TrainCfg,
         progress: Callable[[dict], None] | None) -> tuple[list[dict], int]:
    """The epochs, with early stopping on ``task.validate``; leaves ``head`` at the best epoch."""
    if any(isinstance(f, ProxyAnchor) for f in task.losses):
        z0 = _embed(head.eval(), x)
        for f, lab in zip(task.losses, task.targets):
            if isinstance(f, ProxyAnchor):
                f.init_proxies(z0, lab)
    params = list(head.parameters()) + [p for f in task.losses for p in f.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best_val = task.validate()
    history = [{"epoch": 0, "loss": None, "val": best_val}]
    best_state, best_epoch = _state(head), 0
    if progress:
        progress(history[-1])
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        perm = torch.randperm(len(x), generator=gen)
        total, steps = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            b = perm[i:i + cfg.batch_size]
            if len(b) < 2:
                continue
            z = head(x[b])  # (B, dim)
            loss = sum(f(z, lab[b]) for f, lab in zip(task.losses, task.targets)) / len(task.losses)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        val = task.validate()
        history.append({"epoch": epoch, "loss": total / max(steps, 1), "val": val})
        logger.debug("epoch %d: loss %.4f, val %.4f", epoch, history[-1]["loss"], val)
        if val > best_val + cfg.min_delta:
            best_val, best_state, best_epoch = val, _state(head), epoch
        if progress:
            progress(history[-1])
        if epoch - best_epoch >= cfg.patience:
            break
    head.load_state_dict(best_state)
    return history, best_epoch


def _state(head: ProjectionHead) -> dict:
    return {k: v.detach().clone() for k, v in head.state_dict().items()}
