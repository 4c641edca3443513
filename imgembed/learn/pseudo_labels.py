"""Pseudo-labels for training without labels: spherical k-means clusterings of the PCA features.

Several clusterings at different granularities (DeepCluster-style targets, computed once) stand in
for classes; nothing but the cached features is needed, no augmented view goes through the backbone.
"""

from __future__ import annotations

import math

import numpy as np


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
