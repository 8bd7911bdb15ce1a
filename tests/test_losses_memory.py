"""RMGCL/GKSA losses (Eq. 6-9, 15-16), each against a direct loop transcription on small tensors."""
from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

from taltoolkit.losses.memory import (
    momentum_enqueue,
    noise_tolerant_contrastive,
    regional_features,
    segment_uncertainty,
    uncertainty_weighted_pseudo_loss,
)

G = torch.Generator().manual_seed(0)


def rand(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=G, dtype=torch.float64)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# ----------------------------------------------------------------------------- Eq. 6-7
def test_regional_features_match_loops() -> None:
    b, t, k, h, zeta = 3, 9, 4, 5, 0.6
    emb, scores = randn(b, t, h), rand(b, t, k)
    labels = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1]])
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 6:] = False
    scores[1, 6:] = 1.0  # padded steps would pass the threshold without the mask
    scores[2, :, 0] = 0.1  # class 0 of video 2 is labelled but never confident
    feats, valid = regional_features(emb, scores, labels, zeta=zeta, mask=mask)
    assert feats.shape == (b, k, h) and valid.shape == (b, k)
    for i in range(b):
        for c in range(k):
            mu = [tt for tt in range(t) if mask[i, tt] and scores[i, tt, c] > zeta]  # Eq. 7
            ok = bool(labels[i, c]) and len(mu) > 0
            assert bool(valid[i, c]) == ok
            if ok:
                ref = sum(emb[i, tt] for tt in mu) / len(mu)  # Eq. 6
                torch.testing.assert_close(feats[i, c], ref)
            else:
                assert (feats[i, c] == 0).all()
    assert not valid[2, 0] and not valid[0, 1]


def test_regional_features_keep_embedding_gradient() -> None:
    emb = randn(2, 6, 3).requires_grad_()
    scores = rand(2, 6, 2).requires_grad_()
    feats, valid = regional_features(emb, scores, torch.ones(2, 2), zeta=0.3)
    feats[valid].sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert scores.grad is None  # the selection is a hard threshold


# ----------------------------------------------------------------------------- Eq. 8
def enqueue_loop(memory, count, ptr, feats, rows, alpha):
    memory, count, ptr = memory.clone(), count.clone(), ptr.clone()
    q = memory.shape[1]
    for f, r in zip(feats, rows.tolist()):
        s = int(ptr[r])
        if count[r] <= s:  # never written: store as it is
            memory[r, s] = f
        else:  # Eq. 8 on the slot the queue evicts next
            memory[r, s] = (1 - alpha) * memory[r, s] + alpha * f
        ptr[r] = (s + 1) % q
        count[r] = min(int(count[r]) + 1, q)
    return memory, count, ptr


def test_momentum_enqueue_hand_built() -> None:
    memory = torch.zeros(2, 2, 1, dtype=torch.float64)
    count = torch.zeros(2, dtype=torch.long)
    ptr = torch.zeros(2, dtype=torch.long)
    alpha = 0.75
    m, c, p = momentum_enqueue(memory, count, ptr, torch.tensor([[4.0], [8.0]], dtype=torch.float64), torch.tensor([0, 0]), alpha)
    assert m[0, :, 0].tolist() == [4.0, 8.0] and c.tolist() == [2, 0] and p.tolist() == [0, 0]  # filled, wrapped
    m, c, p = momentum_enqueue(m, c, p, torch.tensor([[0.0], [2.0]], dtype=torch.float64), torch.tensor([0, 1]), alpha)
    # row 0 is full: its oldest slot (4.0) becomes 0.25 * 4 + 0.75 * 0 = 1; row 1 stores 2 as it is
    assert m[0, :, 0].tolist() == [1.0, 8.0] and m[1, :, 0].tolist() == [2.0, 0.0]
    assert c.tolist() == [2, 1] and p.tolist() == [1, 1]
    assert memory.abs().sum() == 0 and count.sum() == 0  # inputs untouched


@pytest.mark.parametrize("n", [3, 11])  # 11 > q: one call wraps a whole queue
def test_momentum_enqueue_matches_loop(n: int) -> None:
    r, q, h = 3, 4, 2
    memory = randn(r, q, h)
    count = torch.tensor([4, 1, 0])
    ptr = torch.tensor([2, 1, 0])
    feats, rows = randn(n, h), torch.randint(0, r, (n,), generator=G)
    got = momentum_enqueue(memory, count, ptr, feats, rows, 0.99)
    ref = enqueue_loop(memory, count, ptr, feats, rows, 0.99)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- Eq. 9
def ncl_loop(anchors, anchor_rows, memory, valid, tau, lam, q, reduction="mean"):
    """Eq. 9 as printed, one anchor and one positive at a time."""
    per_anchor = []
    for a, c in zip(anchors, anchor_rows.tolist()):
        pos = [memory[c, j] for j in range(memory.shape[1]) if valid[c, j]]
        neg = [memory[r, j] for r in range(memory.shape[0]) if r != c for j in range(memory.shape[1]) if valid[r, j]]
        if not pos:
            continue
        neg_sum = sum(math.exp(cos(a, n) / tau) for n in neg)
        total = 0.0
        for p in pos:
            s = cos(a, p) / tau
            total += -(1 / q) * math.exp(q * s) + (1 / q) * (lam * (math.exp(s) + neg_sum)) ** q
        per_anchor.append(total / (len(pos) if reduction == "mean" else 1))
    return sum(per_anchor) / len(per_anchor)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("q,lam,tau", [(0.2, 0.5, 0.1), (0.7, 1.0, 0.5), (1.0, 0.3, 0.2)])
def test_ncl_matches_eq9(q: float, lam: float, tau: float, reduction: str) -> None:
    r, slots, h = 4, 3, 5
    memory = randn(r, slots, h)
    valid = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    anchors = randn(5, h)
    rows = torch.tensor([0, 1, 3, 2, 0])  # row 2 is empty: that anchor has no positive and is skipped
    got = noise_tolerant_contrastive(anchors, rows, memory, valid, temperature=tau, lam=lam, q=q, reduction=reduction)
    ref = ncl_loop(anchors, rows, memory, valid, tau, lam, q, reduction)
    assert abs(float(got) - ref) < 1e-9 * max(1.0, abs(ref))


def test_ncl_no_positive_is_zero_and_attached() -> None:
    anchors = randn(2, 3).requires_grad_()
    memory = randn(2, 2, 3)
    valid = torch.tensor([[False, False], [True, True]])
    loss = noise_tolerant_contrastive(anchors, torch.tensor([0, 0]), memory, valid)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    # no negatives at all (only the anchor's own row filled) is finite, with a finite gradient
    loss = noise_tolerant_contrastive(anchors, torch.tensor([1, 1]), memory, valid)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(anchors.grad).all()


def _scores(anchor, memory, valid, row, tau):
    """(s+ list, s- list) of one anchor, for the closed forms."""
    sims = F.cosine_similarity(anchor.expand(memory.shape[0], memory.shape[1], -1), memory, dim=-1) / tau
    pos = sims[row][valid[row]]
    other = torch.ones(memory.shape[0], dtype=torch.bool)
    other[row] = False
    neg = sims[other][valid[other]]
    return pos, neg


def test_ncl_q_to_zero_is_infonce() -> None:
    # Sec. III-C2: q close to 0 is the standard (InfoNCE / cross-entropy) contrastive loss,
    # here exactly up to the constant log(lambda).
    memory, valid = randn(3, 4, 6), torch.ones(3, 4, dtype=torch.bool)
    anchor, lam, tau = randn(1, 6), 0.5, 0.2
    got = noise_tolerant_contrastive(anchor, torch.tensor([1]), memory, valid, tau, lam=lam, q=1e-9)
    pos, neg = _scores(anchor[0], memory, valid, 1, tau)
    infonce = torch.stack([-(s - torch.logsumexp(torch.cat([s[None], neg]), 0)) for s in pos]).mean()
    assert abs(float(got) - float(infonce + math.log(lam))) < 1e-6
    # InfoNCE proper when lambda = 1
    got1 = noise_tolerant_contrastive(anchor, torch.tensor([1]), memory, valid, tau, lam=1.0, q=1e-9)
    assert abs(float(got1) - float(infonce)) < 1e-6


def test_ncl_q_one_is_bounded_symmetric_form() -> None:
    # q = 1: -(1 - lambda) e^{s+} + lambda sum e^{s-}, linear in the exponentiated scores
    memory, valid = randn(3, 4, 6), torch.ones(3, 4, dtype=torch.bool)
    anchor, lam, tau = randn(1, 6), 0.3, 0.5
    got = noise_tolerant_contrastive(anchor, torch.tensor([2]), memory, valid, tau, lam=lam, q=1.0)
    pos, neg = _scores(anchor[0], memory, valid, 2, tau)
    ref = (-(1 - lam) * pos.exp() + lam * neg.exp().sum()).mean()
    assert abs(float(got) - float(ref)) < 1e-10
    # symmetric condition (Ghosh et al. [62]): with lambda = 1/K, the losses of one score set
    # summed over which of its K candidates is the positive are a constant (0).
    memory1, valid1 = randn(4, 1, 6), torch.ones(4, 1, dtype=torch.bool)
    total = sum(
        noise_tolerant_contrastive(anchor, torch.tensor([r]), memory1, valid1, tau, lam=1 / 4, q=1.0) for r in range(4)
    )
    assert abs(float(total)) < 1e-10


def _positive_gradient(q: float, angle: float, lam: float = 0.5, tau: float = 0.5) -> float:
    """|dL/ds+| for one positive at ``angle`` from the anchor, negatives orthogonal (fixed s- = 0)."""
    theta = torch.tensor(angle, dtype=torch.float64, requires_grad=True)
    anchor = torch.stack([torch.cos(theta), torch.sin(theta), torch.zeros((), dtype=torch.float64)])[None]
    memory = torch.tensor([[[1.0, 0, 0]], [[0, 0, 1.0]], [[0, 0, -1.0]]], dtype=torch.float64)
    loss = noise_tolerant_contrastive(anchor, torch.tensor([0]), memory, torch.ones(3, 1, dtype=torch.bool), tau, lam, q)
    (g,) = torch.autograd.grad(loss, theta)
    return abs(float(g) / (-math.sin(angle) / tau))  # chain rule: s+ = cos(theta) / tau


def test_ncl_gradient_weighting_of_positives() -> None:
    # Sec. III-C2: q -> 0 mines hard positives (gradient largest for the least similar, so a
    # false positive dominates); q -> 1 weights easy positives most (robust to noisy pairs).
    angles = [0.3, 1.0, 1.6, 2.4]  # decreasing similarity
    near_zero = [_positive_gradient(1e-6, a) for a in angles]
    near_one = [_positive_gradient(1.0, a) for a in angles]
    assert all(x < y for x, y in pairwise(near_zero)), near_zero
    assert all(x > y for x, y in pairwise(near_one)), near_one


def test_ncl_stable_for_small_temperature() -> None:
    memory, valid = randn(3, 4, 6).float(), torch.ones(3, 4, dtype=torch.bool)
    anchor = randn(2, 6).float().requires_grad_()
    loss = noise_tolerant_contrastive(anchor, torch.tensor([0, 1]), memory, valid, temperature=0.005, q=0.2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(anchor.grad).all()


def test_ncl_does_not_touch_memory_gradient() -> None:
    memory = randn(2, 3, 4).requires_grad_()
    anchors = randn(2, 4).requires_grad_()
    noise_tolerant_contrastive(anchors, torch.tensor([0, 1]), memory, torch.ones(2, 3, dtype=torch.bool)).backward()
    assert memory.grad is None and anchors.grad is not None


# ----------------------------------------------------------------------------- Eq. 15-16
def test_uncertainty_matches_eq15() -> None:
    cam, pseudo = randn(2, 5, 4), randn(2, 5, 4)
    d = segment_uncertainty(cam, pseudo)
    assert d.shape == (2, 5)
    for b in range(2):
        for t in range(5):
            a, ah = cam[b, t].softmax(-1), pseudo[b, t].softmax(-1)
            ref = sum(float(a[c]) * math.log(float(a[c]) / float(ah[c])) for c in range(4))
            assert abs(float(d[b, t]) - ref) < 1e-12
    assert (d >= 0).all()
    assert segment_uncertainty(cam, cam).abs().max() < 1e-12  # identical predictions: no uncertainty


def pseudo_loss_loop(cam, pseudo, mask, rho, use_uncertainty=True):
    per_video = []
    for b in range(cam.shape[0]):
        steps = [t for t in range(cam.shape[1]) if mask[b, t]]
        total = 0.0
        for t in steps:
            a, ah = cam[b, t].softmax(-1), pseudo[b, t].softmax(-1)
            ce = -sum(float(ah[c]) * math.log(float(a[c])) for c in range(cam.shape[2]))
            d = sum(float(a[c]) * math.log(float(a[c]) / float(ah[c])) for c in range(cam.shape[2]))
            total += math.exp(-d) * ce + rho * d if use_uncertainty else ce
        per_video.append(total / len(steps))
    return sum(per_video) / len(per_video)


@pytest.mark.parametrize("use_uncertainty", [True, False])
def test_pseudo_loss_matches_eq16(use_uncertainty: bool) -> None:
    cam, pseudo = randn(3, 6, 4), randn(3, 6, 4)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    rho = 0.3  # large enough that the regulariser matters in the comparison
    got = uncertainty_weighted_pseudo_loss(cam, pseudo, mask, rho=rho, use_uncertainty=use_uncertainty)
    ref = pseudo_loss_loop(cam, pseudo, mask, rho, use_uncertainty)
    assert abs(float(got) - ref) < 1e-12


def test_pseudo_loss_weights_uncertain_segments_less() -> None:
    # two segments with the same cross-entropy: the one whose predictions disagree more
    # (larger D_t) contributes less, exp(-D_t).
    cam = torch.tensor([[[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]], dtype=torch.float64)
    pseudo = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64)
    per_seg = [
        float(uncertainty_weighted_pseudo_loss(cam[:, i : i + 1], pseudo[:, i : i + 1], rho=0.0)) for i in range(2)
    ]
    assert per_seg[0] == per_seg[1]
    far = torch.tensor([[[-3.0, 4.0, 0.0]]], dtype=torch.float64)
    ce = lambda a, p: float(-(p.softmax(-1) * a.log_softmax(-1)).sum())
    d = float(segment_uncertainty(cam[:, :1], far))
    assert abs(float(uncertainty_weighted_pseudo_loss(cam[:, :1], far, rho=0.0)) - math.exp(-d) * ce(cam[0, 0], far[0, 0])) < 1e-12


def test_pseudo_loss_gradients() -> None:
    cam, pseudo = randn(2, 4, 3).requires_grad_(), randn(2, 4, 3).requires_grad_()
    uncertainty_weighted_pseudo_loss(cam, pseudo).backward()
    assert cam.grad.abs().sum() > 0 and pseudo.grad.abs().sum() > 0  # pseudo: through D_t only
    cam.grad, pseudo.grad = None, None
    uncertainty_weighted_pseudo_loss(cam, pseudo, use_uncertainty=False).backward()
    assert cam.grad.abs().sum() > 0 and pseudo.grad is None  # a detached label without D_t
    uncertainty_weighted_pseudo_loss(cam, pseudo, use_uncertainty=False, detach_target=False).backward()
    assert pseudo.grad.abs().sum() > 0


def test_literal_eq16_drifts_to_large_uncertainty_and_detached_weight_does_not() -> None:
    """Minimising Eq. 16 literally over D_t drives it to ln(CE / rho); a fixed weight pulls D_t to 0."""
    torch.manual_seed(0)
    target = torch.tensor([[[4.0, 0.0, 0.0]]])  # the pseudo-TCAM, held fixed
    results = {}
    for detach in (False, True):
        cam = torch.tensor([[[0.0, 2.0, 0.0]]], requires_grad=True)  # disagrees with it
        opt = torch.optim.SGD([cam], lr=0.5)
        for _ in range(400):
            opt.zero_grad()
            uncertainty_weighted_pseudo_loss(cam, target, rho=1e-3, detach_weight=detach).backward()
            opt.step()
        results[detach] = float(segment_uncertainty(cam, target))
    assert results[False] > 3.0  # drifted: the pseudo-label's weight exp(-D) is < 5 %
    assert results[True] < 0.5  # learned from the pseudo-label
