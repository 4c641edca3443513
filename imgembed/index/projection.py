"""Linear projections fitted on a collection's own features, without labels. Pure numpy.

- :func:`pca_basis`: PCA of L2-normalised features (the start of every head, and the baseline).
- :func:`distil`: *neighbourhood distillation*. The photos are projected by PCA, each one's
  target is its DBA vector there (the weighted mean of its nearest neighbours,
  :mod:`imgembed.index.augment`), and a linear map from the full features to those targets is
  fitted in closed form (ridge regression). A photo from outside the collection (a query) then
  gets the neighbourhood's smoothing in one matrix product, where DBA itself only helps the
  indexed photos. Nothing depends on the number of kinds of subject: the only neighbourhood is
  the k = 20 nearest photos (:data:`DISTIL_K`).
- With augmented views of the photos (:mod:`imgembed.ingest.views`), the fit also pays for the
  distance between each photo and its views (an invariance penalty): the map puts a photo and its
  crops, mirror images and recoloured copies close together.
- :func:`consistency`: the label-free score that decides whether the distilled map is kept: how
  far the neighbours of held-out photos are neighbours of each other.

Measured on two dev sets and their union (README, "Label-free head"), with the constants below.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from imgembed.index.augment import DBA_ALPHA, augment, exact_search, unit

# Neighbours averaged into each photo's target. Measured (128-d, mAP on clothing-small / trashnet /
# both): k = 5 57.1 / 39.9 / 44.6, 10 58.2 / 40.5 / 45.5, 15 58.6 / 40.7 / 45.9, 20 59.0 / 40.9 / 46.1;
# 30 (diffusion-like targets) gained little more. A kind of subject with fewer photos than this is
# smoothed with its neighbours, weighted by cosine ** 3, which keeps the far ones faint.
DISTIL_K = 20
# Ridge strength relative to the mean feature variance; 1e-3..1e-1 measured within 0.5 mAP.
RIDGE = 0.01
# Neighbours in the consistency score.
CONSISTENCY_K = 10
# The distilled map must beat PCA's consistency by this much to be kept.
KEEP_MARGIN = 0.005


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


def apply(feats: np.ndarray, mean: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Raw features ``(N, D)`` -> unit vectors ``(N, d)`` through ``weight (d, D)``, as
    :class:`imgembed.model.head.ProjectionHead` computes them."""
    return unit((unit(np.asarray(feats, np.float32)) - mean.astype(np.float32)) @ weight.T.astype(np.float32))


def distil(feats: np.ndarray, dim: int, k: int = DISTIL_K, alpha: float = DBA_ALPHA, ridge: float = RIDGE,
           basis: tuple | None = None, views: np.ndarray | None = None,
           invariance: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Neighbourhood distillation of ``feats (N, D)`` to ``dim``: ``(mean (D,), weight (dim, D))``.

    ``basis`` is a :func:`pca_basis` of ``feats`` (computed when not given). ``views (V, N, D)``: the
    features of V augmented views of each photo; the least-squares fit then also pays ``invariance``
    times the mean squared distance between a photo's projection and its views'.
    """
    mean, comps, _ = basis if basis is not None else pca_basis(feats, dim)
    comps = comps[:dim]
    x = unit(np.asarray(feats, np.float32)) - mean.astype(np.float32)  # (N, D)
    start = unit(x @ comps.T.astype(np.float32))  # (N, dim) the PCA vectors
    targets, _ = augment(start, k, alpha)  # (N, dim)
    cov = (x.T @ x).astype(np.float64)  # (D, D)
    lam = ridge * np.trace(cov) / len(cov)
    cov += lam * np.eye(len(cov))
    if views is not None and len(views) and invariance:
        for v in views:
            dx = unit(np.asarray(v, np.float32)) - mean.astype(np.float32) - x  # (N, D) view minus photo
            cov += (invariance / len(views)) * (dx.T @ dx).astype(np.float64)
    w = np.linalg.solve(cov, x.T.astype(np.float64) @ targets)  # (D, dim)
    return mean, np.ascontiguousarray(w.T, dtype=np.float32)


def consistency(held: np.ndarray, fitted: np.ndarray, k: int = CONSISTENCY_K) -> float:
    """Neighbourhood consistency of held-out unit vectors ``held (H, d)`` against ``fitted (F, d)``:
    for each held-out photo, its ``k`` nearest fitted photos; the score is the mean share of each
    neighbour's own ``k`` nearest (among the fitted photos) that are in that list too.

    Measured over 13 projections of each dev set, this ranks them like class-level mAP does
    (Spearman 0.97 and 0.89), where instance-level checks (an augmented view finding its photo,
    reciprocal neighbours) ranked them backwards.
    """
    k = min(k, len(fitted) - 1)
    if k < 1 or not len(held):
        return 0.0
    search = exact_search(fitted)
    _, nbrs = search(held, k)  # (H, k)
    _, own = search(fitted, k + 1)
    own = own[:, 1:]  # (F, k) without the photo itself (ties aside)
    member = np.zeros((len(held), len(fitted)), dtype=bool)  # (H, F): H is a sample
    np.put_along_axis(member, nbrs, True, axis=1)
    second = own[nbrs].reshape(len(held), k * k)  # (H, k * k) the neighbours' neighbours
    return float(member[np.arange(len(held))[:, None], second].mean())


class Fit(NamedTuple):
    mean: np.ndarray  # (D,)
    weight: np.ndarray  # (dim, D)
    method: str  # "distil" or "pca"
    pca_score: float  # held-out neighbourhood consistency of PCA
    distil_score: float  # and of the distilled map


def fit_label_free(feats: np.ndarray, held: np.ndarray, dim: int, refit: np.ndarray | None = None,
                   seed: int = 0, views: np.ndarray | None = None, refit_views: np.ndarray | None = None,
                   invariance: float = 0.0) -> Fit:
    """The label-free projection of ``feats (N, D)`` to ``dim``: the distilled map when it beats PCA
    by :data:`KEEP_MARGIN` in held-out neighbourhood consistency (``held (H, D)`` are photos of the
    same collection left out of the fit), else PCA. With ``refit`` the chosen method is fitted
    again on those features (e.g. ``feats`` and ``held`` together). ``views (V, N, D)`` and
    ``refit_views``: augmented views of ``feats`` and of ``refit`` for :func:`distil`."""
    basis = pca_basis(feats, dim, seed=seed)
    mean, comps, _ = basis
    pca = consistency(apply(held, mean, comps), apply(feats, mean, comps))
    mean, weight = distil(feats, dim, basis=basis, views=views, invariance=invariance)
    score = consistency(apply(held, mean, weight), apply(feats, mean, weight))
    kept = score > pca + KEEP_MARGIN
    if refit is not None:
        basis = pca_basis(refit, dim, seed=seed)
        mean, comps, _ = basis
        if kept:
            mean, weight = distil(refit, dim, basis=basis, views=refit_views, invariance=invariance)
    return Fit(mean, weight if kept else comps.astype(np.float32), "distil" if kept else "pca", pca, score)


# -- the projection an index fits on its own photos (IndexCfg.projection == "auto")

# Fitted once a collection holds this many distinct photos; below it the index keeps raw features.
# Measured (128-d mAP, fitted on a random part of the gallery): clothing-small raw 47.6, fitted on
# 150 photos PCA 54.5 / distilled 55.7, on 500 54.1 / 57.7, on 1,000 53.9 / 56.8; trashnet raw 36.1,
# 150: 38.3 / 39.3, 500: 38.0 / 40.1, 1,000: 37.8 / 40.1.
AUTO_MIN = 1000
AUTO_DIM = 128  # and only for features wider than this
# Photos the fit uses at most (a random sample); the rest are only projected. The neighbourhoods
# of distillation cost the square of this.
AUTO_FIT_MAX = 10_000
AUTO_HELD_SHARE = 0.1  # of the sample, left out to judge distillation against PCA
REFIT_GROWTH = 4  # fitted again when the collection has grown this many times past its fit


def auto_due(contents: int, raw_dim: int, record: dict | None) -> bool:
    """Whether an index of ``contents`` distinct photos with ``raw_dim`` features should fit its
    projection now (``record``: the one it has, or None)."""
    if raw_dim <= AUTO_DIM or contents < AUTO_MIN:
        return False
    if record is None:
        return True
    fitted = int(record["fitted_on"])
    return fitted < AUTO_FIT_MAX and contents >= REFIT_GROWTH * fitted


def auto_fit(raw: np.ndarray, seed: int = 0) -> tuple[Fit, int]:
    """Fit the index's projection on a sample of its raw features ``(N, D)``; ``(fit, photos used)``."""
    rng = np.random.default_rng(seed)
    sample = raw[np.sort(rng.choice(len(raw), AUTO_FIT_MAX, replace=False))] if len(raw) > AUTO_FIT_MAX else raw
    sample = np.asarray(sample, np.float32)
    order = rng.permutation(len(sample))
    n_held = max(1, int(AUTO_HELD_SHARE * len(sample)))
    fit = fit_label_free(sample[order[n_held:]], sample[order[:n_held]], AUTO_DIM, refit=sample, seed=seed)
    return fit, len(sample)
