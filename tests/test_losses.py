"""Each metric-learning loss against a plain-loop reference on a tiny batch."""

import math

import pytest
import torch
import torch.nn.functional as F

from imgembed.config import LOSSES
from imgembed.learn.losses import BatchHardTriplet, ProxyAnchor, SupCon, create_loss


def _batch(seed=0, n=7, d=5):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, d, generator=g), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])[:n]  # class 2 and 3: no positive in the batch
    return z, labels


def supcon_loop(z, labels, t):
    n, total, anchors = len(z), 0.0, 0
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(n) if a != i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in pos) / len(pos)
        anchors += 1
    return total / anchors


def proxy_anchor_loop(z, labels, proxies, alpha, delta):
    proxies = F.normalize(proxies, dim=1)
    n_cls = len(proxies)
    pos_sum, neg_sum, with_pos = 0.0, 0.0, 0
    for c in range(n_cls):
        pos = [i for i in range(len(z)) if labels[i] == c]
        neg = [i for i in range(len(z)) if labels[i] != c]
        if pos:
            with_pos += 1
            pos_sum += math.log(1 + sum(math.exp(-alpha * (float(z[i] @ proxies[c]) - delta)) for i in pos))
        neg_sum += math.log(1 + sum(math.exp(alpha * (float(z[i] @ proxies[c]) + delta)) for i in neg))
    return pos_sum / with_pos + neg_sum / n_cls


def triplet_loop(z, labels, margin):
    n, total, anchors = len(z), 0.0, 0
    for i in range(n):
        pos = [float((z[i] - z[p]).norm()) for p in range(n) if p != i and labels[p] == labels[i]]
        neg = [float((z[i] - z[q]).norm()) for q in range(n) if labels[q] != labels[i]]
        if pos and neg:
            total += max(0.0, max(pos) - min(neg) + margin)
            anchors += 1
    return total / anchors


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_supcon_matches_loop(t):
    z, y = _batch()
    assert float(SupCon(t)(z, y)) == pytest.approx(supcon_loop(z, y, t), rel=1e-5)


def test_supcon_with_pairs_is_infonce():
    """One pair per label: the loss is NT-Xent, minimal when each pair coincides."""
    z = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    y = torch.tensor([0, 1, 0, 1])
    good = torch.cat([z[:2], z[:2]])
    assert float(SupCon(0.1)(good, y)) < float(SupCon(0.1)(z, y))


def test_proxy_anchor_matches_loop():
    z, y = _batch(2)
    loss = ProxyAnchor(n_classes=5, dim=5, alpha=8.0, delta=0.1)  # class 4 has no sample: negatives only
    ref = proxy_anchor_loop(z, y, loss.proxies.detach(), 8.0, 0.1)
    assert float(loss(z, y).detach()) == pytest.approx(ref, rel=1e-5)


def test_triplet_matches_loop():
    z, y = _batch(3)
    assert float(BatchHardTriplet(0.2)(z, y)) == pytest.approx(triplet_loop(z, y, 0.2), rel=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_losses_give_finite_gradients_and_handle_no_positives(name):
    z, y = _batch(4)
    z = z.clone().requires_grad_(True)
    loss = create_loss(name, dim=5, n_classes=4)
    value = loss(z, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    lonely = create_loss(name, dim=5, n_classes=4)(z.detach()[:3], torch.tensor([0, 1, 2]))
    assert torch.isfinite(lonely)


def test_unknown_loss_lists_the_known_ones():
    with pytest.raises(ValueError, match="supcon"):
        create_loss("nosuch", 4, 2)
