"""The 2-D map: PCA against numpy's covariance eigenvectors, grid snapping against its contract."""

import numpy as np
import pytest

from imgembed.query.collection import grid_shape, pca_2d, snap_to_grid


def test_pca_matches_covariance_eigenvectors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    x = x @ np.linalg.qr(rng.normal(size=(6, 6)))[0]  # rotate: axes are not the coordinates
    coords = pca_2d(x)
    centred = x - x.mean(axis=0)
    vals, vecs = np.linalg.eigh(np.cov(centred.T))
    top = vecs[:, ::-1][:, :2]  # the two largest
    ref = centred @ top
    for j in range(2):  # equal up to sign
        assert np.allclose(np.abs(coords[:, j]), np.abs(ref[:, j]), atol=1e-8)
    assert coords[:, 0].var() > coords[:, 1].var()


def test_pca_is_deterministic_and_separates_clusters():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 8)) + 4.0
    b = rng.normal(size=(30, 8)) - 4.0
    x = np.concatenate([a, b])
    c1, c2 = pca_2d(x), pca_2d(x[::-1].copy())[::-1]
    assert np.allclose(c1, c2)  # same points, same map, whatever the order
    assert np.sign(c1[:30, 0]).std() == 0 and np.sign(c1[30:, 0]).std() == 0
    assert np.sign(c1[0, 0]) != np.sign(c1[30, 0])


def test_pca_small_inputs():
    assert pca_2d(np.zeros((0, 4))).shape == (0, 2)
    assert np.allclose(pca_2d(np.ones((1, 4))), 0)
    assert pca_2d(np.eye(2, 5)).shape == (2, 2)
    with pytest.raises(ValueError):
        pca_2d(np.ones(4))


@pytest.mark.parametrize("n", [1, 2, 7, 60, 400])
def test_grid_snapping_gives_every_point_its_own_cell(n):
    rng = np.random.default_rng(n)
    pts = rng.normal(size=(n, 2))
    cols, rows = grid_shape(n)
    assert cols * rows >= n
    cells = snap_to_grid(pts, cols, rows)
    assert cells.shape == (n, 2)
    assert len({tuple(c) for c in cells.tolist()}) == n  # no two thumbnails overlap
    assert (cells[:, 0] >= 0).all() and (cells[:, 0] < cols).all()
    assert (cells[:, 1] >= 0).all() and (cells[:, 1] < rows).all()


def test_grid_snapping_keeps_points_already_on_a_grid():
    cc, rr = np.meshgrid(np.arange(5), np.arange(3))
    pts = np.stack([cc.ravel(), rr.ravel()], axis=1).astype(float) * 2.5 + 1.0
    assert (snap_to_grid(pts, 5, 3) == np.stack([cc.ravel(), rr.ravel()], axis=1)).all()


def test_grid_snapping_keeps_neighbours_near():
    rng = np.random.default_rng(3)
    left = rng.normal(size=(20, 2)) + [-10, 0]
    right = rng.normal(size=(20, 2)) + [10, 0]
    cells = snap_to_grid(np.concatenate([left, right]), *grid_shape(40))
    assert cells[:20, 0].max() < cells[20:, 0].min()  # the two clusters stay apart, left and right


def test_too_many_points():
    with pytest.raises(ValueError):
        snap_to_grid(np.zeros((5, 2)), 2, 2)
