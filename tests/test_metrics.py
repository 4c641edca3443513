"""Retrieval metrics against hand-computed values."""

import numpy as np
import pytest

from imgembed.learn.metrics import average_precision, retrieval_metrics


def test_average_precision_by_hand():
    # relevant at ranks 1, 3, 4 of 5: AP = (1/1 + 2/3 + 3/4) / 3
    assert average_precision(np.array([1, 0, 1, 1, 0], bool)) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert average_precision(np.array([0, 0], bool)) == 0.0


def test_retrieval_metrics_by_hand_with_self_excluded():
    labels = np.array(["a", "a", "b", "b"])
    # query i against gallery j; the diagonal (self) is excluded
    sim = np.array([
        [1.0, 0.2, 0.9, 0.1],  # a: ranking (excl self) b(.9), a(.2), b(.1) -> relevant at rank 2
        [0.2, 1.0, 0.1, 0.3],  # a: b(.3), a(.2), b(.1) -> relevant at rank 2
        [0.9, 0.1, 1.0, 0.8],  # b: a(.9), b(.8), a(.1) -> relevant at rank 2
        [0.1, 0.3, 0.8, 1.0],  # b: b(.8), a(.3), a(.1) -> relevant at rank 1
    ])
    m = retrieval_metrics(sim, labels, labels, exclude=np.eye(4, dtype=bool), ks=(1, 2))
    assert m.mAP == pytest.approx((0.5 + 0.5 + 0.5 + 1.0) / 4)
    assert m.recall_at[1] == pytest.approx(0.25)
    assert m.recall_at[2] == pytest.approx(1.0)
    assert m.precision_at[1] == pytest.approx(0.25)
    assert m.precision_at[2] == pytest.approx(0.5)


def test_metrics_match_a_plain_loop():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(7, 20))
    ql, gl = rng.integers(0, 3, 7), rng.integers(0, 3, 20)
    m = retrieval_metrics(sim, ql, gl, ks=(5,))
    aps = []
    for i in range(7):
        order = sorted(range(20), key=lambda j: -sim[i, j])
        hits, precs = 0, []
        for rank, j in enumerate(order, 1):
            if gl[j] == ql[i]:
                hits += 1
                precs.append(hits / rank)
        aps.append(sum(precs) / max(1, (gl == ql[i]).sum()))
    assert m.mAP == pytest.approx(np.mean(aps))
