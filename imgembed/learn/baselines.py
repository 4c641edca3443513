"""Label-free linear baselines a trained head has to beat: PCA and PCA-whitening.

Both are fitted on L2-normalised features (as the head sees them) and returned as
:class:`ProjectionHead` objects, so they are saved, applied and indexed exactly like a trained
head; a trained head also starts from the PCA projection.
"""

from __future__ import annotations

import numpy as np
import torch

from imgembed.model.head import HeadCfg, ProjectionHead


def pca_rank(n_samples: int, in_dim: int) -> int:
    """How many principal directions ``n_samples`` centred samples can define."""
    return max(0, min(n_samples - 1, in_dim))


def pca_basis(feats: np.ndarray, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean ``(D,)``, orthonormal components ``(dim, D)`` and their variances ``(dim,)``.

    ``feats (N, D)`` are L2-normalised first. When ``dim`` exceeds what the samples define
    (:func:`pca_rank`), the basis is completed with random orthonormal directions (variance 0).
    """
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"PCA needs at least 2 feature vectors, got {len(x)}")
    if dim < 1 or dim > x.shape[1]:
        raise ValueError(f"dimension {dim} must be between 1 and the feature dimension {x.shape[1]}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mean = x.mean(0)
    xc = x - mean
    # Eigen-decompose the smaller of the covariance (D, D) and the Gram matrix (N, N): much faster
    # than an SVD of the (N, D) data.
    if len(x) >= x.shape[1]:
        var, vecs = np.linalg.eigh(xc.T @ xc / len(x))
        var, vt = var[::-1], vecs[:, ::-1].T  # (D,), (D, D), largest first
    else:
        var, u = np.linalg.eigh(xc @ xc.T / len(x))
        var, u = var[::-1], u[:, ::-1]
        vt = (xc.T @ u / np.sqrt(np.maximum(var, 1e-30) * len(x))).T  # (N, D)
    var, vt = np.maximum(var, 0.0), np.ascontiguousarray(vt)
    k = min(dim, pca_rank(len(x), x.shape[1]))
    comps, var = vt[:k], var[:k]
    if k < dim:
        rng = np.random.default_rng(seed)
        extra = rng.standard_normal((dim - k, x.shape[1]))
        extra -= extra @ comps.T @ comps  # orthogonal to the data's directions
        q, _ = np.linalg.qr(extra.T)  # (D, dim - k) orthonormal
        comps = np.concatenate([comps, q.T])
        var = np.concatenate([var, np.zeros(dim - k)])
    return mean, comps, var


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


def fit_pca(feats: np.ndarray, dim: int, whiten: bool = False, basis: tuple | None = None,
            **ident) -> ProjectionHead:
    """PCA (or PCA-whitening: each component scaled to unit variance) to ``dim`` dims, as a head.

    ``basis`` is a :func:`pca_basis` of ``feats`` with at least ``dim`` components, to fit several
    dimensions from one decomposition. Raises ValueError when whitening asks for more directions
    than the samples define.
    """
    mean, comps, var = basis if basis is not None else pca_basis(feats, dim)
    comps, var = comps[:dim], var[:dim]
    if whiten:
        if dim > pca_rank(len(feats), np.asarray(feats).shape[1]):
            raise ValueError(f"whitening to {dim} dims needs more than {dim} photos (got {len(feats)})")
        comps = comps / np.sqrt(var + 1e-9 * var[0])[:, None]
    return linear_head(mean, comps, **ident)
