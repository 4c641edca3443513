"""Training a projection head on cached backbone features.

The head starts as the PCA projection of the training features and is trained with a
metric-learning loss (:mod:`imgembed.learn.losses`), keeping the epoch that scores best on a
validation split (early stopping):

- supervised (``labels="folders"``): the loss sees the class of each photo; the validation score
  is the mAP of validation photos searched against the training photos.
- self-supervised (``labels="none"``): the classes are replaced by pseudo-labels from several
  spherical k-means clusterings of the PCA features at different granularities (DeepCluster-style
  targets, computed once; cheap, since no augmented view has to go through the backbone). The
  validation score is the negated loss of the validation photos assigned to the same clusters.

Pure compute: features and labels in, a head and its history out. Reading folders and writing
files happen in :func:`load_training_features` and :func:`save_trained_head`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from imgembed.config import LABEL_MODES, TrainCfg, check_choice
from imgembed.learn.baselines import pca_basis
from imgembed.learn.losses import ProxyAnchor, create_loss
from imgembed.model.head import HeadCfg, ProjectionHead, head_paths, save_head

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
        kind = "supervised" if cfg.labels == "folders" else "self-supervised"
        return (f"trained a {cfg.dim}-d {kind} head on {s['n_train']} photos ({s['n_val']} for validation) in "
                f"{self.seconds:.1f} s: kept epoch {s['best_epoch']} of {s['epochs_run']}, {s['val_metric']} "
                f"{self.history[0]['val']:.4f} -> {s['best_val']:.4f}")

    def summary(self) -> dict:
        best = self.history[self.best_epoch]["val"] if self.history else None
        return {"best_epoch": self.best_epoch, "epochs_run": len(self.history) - 1, "val_metric": self.val_metric,
                "best_val": best, "seconds": round(self.seconds, 2), "n_train": self.n_train,
                "n_val": self.n_val, **self.extra}


def mean_average_precision(sim: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray) -> float:
    """mAP for ``sim (Q, G)``, vectorised (the same definition as :mod:`imgembed.learn.metrics`)."""
    order = np.argsort(-sim, axis=1, kind="stable")
    rel = np.asarray(g_labels)[order] == np.asarray(q_labels)[:, None]  # (Q, G) relevant, best first
    n_rel = rel.sum(1)
    precision = np.cumsum(rel, axis=1) / np.arange(1, sim.shape[1] + 1)
    ap = (precision * rel).sum(1) / np.maximum(n_rel, 1)
    return float(ap.mean()) if len(ap) else 0.0


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


def cluster_sizes(n: int, base: int = 0) -> list[int]:
    """k-means sizes for ``n`` photos: half, once and twice ``base`` (default ``sqrt(n / 4)``)."""
    base = base or max(2, round(math.sqrt(n / 4)))
    return sorted({k for k in (base // 2, base, 2 * base) if 2 <= k <= n // 2}) or [min(2, n)]


def spherical_kmeans(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Centroids ``(k, d)`` of unit vectors ``z (N, d)``."""
    import faiss

    km = faiss.Kmeans(z.shape[1], k, niter=25, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=100_000)
    km.train(np.ascontiguousarray(z, dtype=np.float32))
    return km.centroids.copy()


def assign(z: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.argmax(z @ centroids.T, axis=1).astype(np.int64)


def _encode(labels: Sequence[str], classes: list[str]) -> np.ndarray:
    pos = {c: i for i, c in enumerate(classes)}
    return np.array([pos.get(c, -1) for c in labels], dtype=np.int64)


def _embed(head: ProjectionHead, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([head(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else x


def train_head(feats: np.ndarray, labels: Sequence[str] | None, cfg: TrainCfg,
               val_feats: np.ndarray | None = None, val_labels: Sequence[str] | None = None,
               backbone: str = "", backbone_fingerprint: str = "",
               progress: Callable[[dict], None] | None = None) -> TrainResult:
    """Train a head on raw features ``feats (N, D)``.

    ``labels`` are the class names (required for ``cfg.labels == "folders"``, ignored for
    ``"none"``). Without ``val_feats`` a ``cfg.val_fraction`` of the photos is held out for
    early stopping. ``progress`` receives each epoch's record. Raises ValueError on bad input.
    """
    t0 = time.perf_counter()
    check_choice("label mode", cfg.labels, LABEL_MODES)
    supervised = cfg.labels == "folders"
    feats = np.asarray(feats, dtype=np.float32)
    if supervised and (labels is None or len(labels) != len(feats)):
        raise ValueError("supervised training needs one label per photo (sub-folder names); use --labels none without")
    str_labels = np.asarray(labels) if supervised else None
    if val_feats is None:
        tr, va = split_validation(len(feats), str_labels, cfg.val_fraction, cfg.seed)
        val_feats, feats = feats[va], feats[tr]
        if supervised:
            val_labels, str_labels = str_labels[va], str_labels[tr]
    elif supervised and (val_labels is None or len(val_labels) != len(val_feats)):
        raise ValueError("supervised validation needs one label per validation photo")
    if len(feats) < 4 or len(val_feats) < 1:
        raise ValueError(f"too few photos to train a head: {len(feats)} for training, {len(val_feats)} for "
                         "validation (need at least 4 and 1)")
    if supervised:
        classes = sorted(set(str_labels.tolist()))
        if len(classes) < 2:
            raise ValueError(f"supervised training needs at least 2 classes (sub-folders), found {classes}")

    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        mean, comps, _ = pca_basis(feats, cfg.dim, seed=cfg.seed)
        head = ProjectionHead(HeadCfg(in_dim=feats.shape[1], out_dim=cfg.dim, hidden=cfg.hidden,
                                      backbone=backbone, backbone_fingerprint=backbone_fingerprint))
        with torch.no_grad():
            head.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            head.proj.weight.copy_(torch.as_tensor(comps, dtype=torch.float32))
        x, xv = torch.from_numpy(feats), torch.from_numpy(np.asarray(val_feats, dtype=np.float32))
        z0 = _embed(head.eval(), x).numpy()
        extra: dict = {}
        if supervised:
            label_sets = [_encode(str_labels, classes)]
            val_codes = _encode(val_labels, classes)
            losses = [create_loss(cfg.loss, cfg.dim, len(classes), cfg.temperature)]
        else:
            sizes = cluster_sizes(len(feats), cfg.clusters)
            cents = [spherical_kmeans(z0, k, cfg.seed + i) for i, k in enumerate(sizes)]
            label_sets = [assign(z0, c) for c in cents]
            z0v = _embed(head, xv).numpy()
            val_sets = [torch.from_numpy(assign(z0v, c)) for c in cents]
            losses = [create_loss(cfg.loss, cfg.dim, k, cfg.temperature) for k in sizes]
            extra["clusters"] = sizes
        label_sets = [torch.from_numpy(s) for s in label_sets]
        for loss, lab in zip(losses, label_sets):
            if isinstance(loss, ProxyAnchor):
                loss.init_proxies(torch.from_numpy(z0), lab)

        def validate() -> float:
            head.eval()
            if supervised:
                g, q = _embed(head, x).numpy(), _embed(head, xv).numpy()
                return mean_average_precision(q @ g.T, val_codes, label_sets[0].numpy())
            with torch.no_grad():
                zv = _embed(head, xv)
                return -float(np.mean([float(f(zv, v)) for f, v in zip(losses, val_sets)]))

        params = list(head.parameters()) + [p for f in losses for p in f.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        best_val = validate()
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
                loss = sum(f(z, lab[b]) for f, lab in zip(losses, label_sets)) / len(losses)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, steps = total + float(loss.detach()), steps + 1
            val = validate()
            history.append({"epoch": epoch, "loss": total / max(steps, 1), "val": val})
            logger.debug("epoch %d: loss %.4f, %s %.4f", epoch, history[-1]["loss"], "val", val)
            if val > best_val + cfg.min_delta:
                best_val, best_state, best_epoch = val, _state(head), epoch
            if progress:
                progress(history[-1])
            if epoch - best_epoch >= cfg.patience:
                break
        head.load_state_dict(best_state)
    return TrainResult(head.eval().requires_grad_(False), history, best_epoch,
                       "val mAP" if supervised else "val -loss", time.perf_counter() - t0,
                       len(feats), len(val_feats), extra)


def _state(head: ProjectionHead) -> dict:
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


def plot_curve(result: TrainResult, path: str | Path, title: str = "") -> Path:
    """PNG of training loss and validation score per epoch, the kept epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = result.history
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ep = [r["epoch"] for r in h if r["loss"] is not None]
    ax.plot(ep, [r["loss"] for r in h if r["loss"] is not None], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot([r["epoch"] for r in h], [r["val"] for r in h], color="tab:orange", marker=".", label=result.val_metric)
    ax2.axvline(result.best_epoch, color="grey", linestyle="--", linewidth=1)
    ax2.set_ylabel(f"{result.val_metric} (kept epoch {result.best_epoch})", color="tab:orange")
    ax.set_title(title or "projection head training")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_trained_head(path: str | Path, result: TrainResult, cfg: TrainCfg, source: str = "") -> tuple[Path, Path]:
    """Write the head (safetensors + JSON with config, summary and history) and its curve PNG."""
    method = "supervised" if cfg.labels == "folders" else "self-supervised"
    weights = save_head(path, result.head, extra={
        "method": method, "train": asdict(cfg), "source": source, "result": result.summary(),
        "history": result.history})
    png = head_paths(path)[0].with_suffix(".png")
    plot_curve(result, png, title=f"{method} head, {cfg.dim}-d, {cfg.loss}")
    return weights, png


def load_training_features(folder: str | Path, labels: str, embedder, reader_cfg, embed_cfg,
                           progress: Callable[[int, int], None] | None = None):
    """Raw features (cached) of the photos under ``folder``: ``(feats, labels or None, failures)``.

    With ``labels == "folders"`` only photos inside a sub-folder count, labelled by its name.
    """
    from imgembed.ingest import fs
    from imgembed.learn.evaluate import labelled_images
    from imgembed.learn.feature_cache import extract_features

    if labels == "folders":
        try:
            paths, names = labelled_images(folder, reader_cfg)
        except ValueError as e:
            raise ValueError(f"{e}; or train without labels: --labels none") from e
    else:
        root = Path(folder).resolve()
        if not root.is_dir():
            raise NotADirectoryError(f"not a folder: {root}")
        paths, names = [absp for _, absp in fs.iter_image_paths(root, reader_cfg)], None
        if not paths:
            raise ValueError(f"no images under {root}")
    fset = extract_features(paths, embedder, reader_cfg, embed_cfg, progress=progress)
    kept = np.asarray(names)[fset.ok] if names is not None else None
    return fset.feats[fset.ok], kept, [(fs.display(p), why) for p, why in fset.failures]
