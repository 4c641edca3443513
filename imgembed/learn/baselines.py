"""Label-free linear baselines a trained head has to beat: PCA and PCA-whitening.

Both are fitted on L2-normalised features (as the head sees them) and returned as
:class:`ProjectionHead` objects, so they are saved, applied and indexed exactly like a trained
head; a trained head also starts from the PCA projection.
"""

from __future__ import annotations

import numpy as np

from imgembed.index.projection import pca_basis, pca_rank  # noqa: F401 (re-exported: the heads' PCA)
from imgembed.model.head import ProjectionHead, linear_head  # noqa: F401 (linear_head re-exported)


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
