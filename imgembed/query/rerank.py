"""Query-time re-ranking of a search: alpha query expansion (alpha-QE).

The query is searched once; its ``k`` best hits are folded into it, weighted by cosine ** alpha
(:func:`imgembed.index.augment.expand`), and the expanded query is searched again (Radenovic et
al. 2018). The hits' vectors are the indexed (searchable) ones, so on an index built with
database-side augmentation the expansion uses the augmented vectors, as DBA + QE is defined.
k = 10 and alpha = 3, those of DBA, measured in the README, "Re-ranking".
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from imgembed.index.augment import DBA_ALPHA, DBA_K, expand

QE_K = DBA_K
QE_ALPHA = DBA_ALPHA


def expand_with(queries: np.ndarray, search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
                vectors_of: Callable[[np.ndarray], np.ndarray], k: int = QE_K,
                alpha: float = QE_ALPHA) -> np.ndarray:
    """alpha-QE through callbacks: ``search(queries, k) -> (sims, ids)`` (-1 where fewer) and
    ``vectors_of(ids (m,)) -> (m, d)``. Returns the expanded queries, to be searched again."""
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    sims, ids = search(queries, k)
    valid = ids >= 0
    nbrs = np.zeros((*ids.shape, queries.shape[1]), np.float32)
    if valid.any():
        nbrs[valid] = vectors_of(ids[valid])
    return expand(queries, np.where(valid, sims, 0.0), nbrs, alpha)
