"""CASE losses, each against a direct transcription of its equation (Eq. 1-6, 11, 13) on small tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from taltoolkit.losses.clustering import (
    ascending_ranks,
    cluster_fb_logits,
    cluster_prototypes,
    fb_marginal,
    rank_gaussian_prior,
    soft_ce,
)
from taltoolkit.losses.mil import generalized_bce, topk_count, topk_mil_indices, topk_mil_pool, video_ce_loss
from taltoolkit.models.wtal import TwoStreamWTAL
from taltoolkit.pseudo.sinkhorn import sinkhorn_labels

G = torch.Generator().manual_seed(0)


def rand(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=G, dtype=torch.float64)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float64)


# ----------------------------------------------------------------------------- Eq. 1: top-k MIL
def test_topk_count() -> None:
    assert topk_count(750, ratio=1 / 8).item() == 94 and topk_count(320, ratio=1 / 8).item() == 40
    assert topk_count(3, ratio=1 / 8).item() == 1  # at least one snippet
    assert topk_count(torch.tensor([0, 2, 16]), k=5).tolist() == [0, 2, 5]  # never more than the length


def test_topk_indices_match_sorting() -> None:
    scores = rand(2, 16, 3)
    idx = topk_mil_indices(scores, ratio=1 / 8)
    assert idx.shape == (2, 2, 3)
    for b in range(2):
        for c in range(3):
            ref = sorted(range(16), key=lambda t: -scores[b, t, c].item())[:2]
            assert idx[b, :, c].tolist() == ref


def test_topk_respects_mask() -> None:
    b, t, c = 3, 20, 4
    scores = rand(b, t, c)
    lengths = torch.tensor([20, 9, 3])
    mask = torch.arange(t)[None] < lengths[:, None]
    scores[~mask] = 100.0  # padded steps would win every top-k without the mask
    idx, counts = topk_mil_indices(scores, ratio=1 / 4, mask=mask, return_counts=True)
    assert counts.tolist() == [5, 2, 1]
    assert idx.shape == (b, 5, c)
    assert (idx < lengths[:, None, None]).all(), "a padded step was selected"
    values = randn(b, t, c)
    pooled = topk_mil_pool(values, idx, counts)
    for i in range(b):
        for j in range(c):
            n = lengths[i].item()
            top = sorted(range(n), key=lambda s: -scores[i, s, j].item())[: counts[i]]
            torch.testing.assert_close(pooled[i, j], values[i, top, j].mean())
    # streams share the indices: (S, B, T, C) pools to (S, B, C)
    stacked = topk_mil_pool(torch.stack([values, 2 * values]), idx, counts)
    torch.testing.assert_close(stacked, torch.stack([pooled, 2 * pooled]))


def test_eq1_video_loss_matches_transcription() -> None:
    b, t, g = 3, 16, 5
    cas = randn(2, b, t, g).requires_grad_()  # (S, B, T, G) logits
    att = rand(2, b, t)
    labels = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    # "T-CAS calibrated by attention" score of the public code, then top-k on it
    combined = (0.5 * cas[0].softmax(-1) + 0.5 * cas[1].softmax(-1) + att[0, ..., None] + att[1, ..., None]) / 3
    k = t // 8
    idx = topk_mil_indices(combined, ratio=1 / 8)
    video = topk_mil_pool(cas, idx)  # (S, B, G)
    loss = 0.5 * video_ce_loss(video[0], labels) + 0.5 * video_ce_loss(video[1], labels)
    # direct transcription
    total = 0.0
    for s in range(2):
        ce = 0.0
        for i in range(b):
            logits = torch.stack(
                [cas[s, i, combined[i, :, c].argsort(descending=True)[:k], c].mean() for c in range(g)]
            )
            y = labels[i] / labels[i].sum()
            ce = ce - (y * torch.log(torch.exp(logits) / torch.exp(logits).sum())).sum()
        total = total + 0.5 * ce / b
    torch.testing.assert_close(loss, total)
    loss.backward()
    assert cas.grad is not None and cas.grad.abs().sum() > 0


def test_video_ce_unlabelled_video_is_zero() -> None:
    logits = randn(2, 4)
    labels = torch.tensor([[0.0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(video_ce_loss(logits, labels), -F.log_softmax(logits[0], -1)[1] / 2)


# ----------------------------------------------------------------------------- Eq. 2: generalized BCE
def gce_reference(p: torch.Tensor, q_t: torch.Tensor, gamma: float) -> torch.Tensor:
    n_pos, n_neg = q_t.sum(), (1 - q_t).sum()
    pos = sum(q_t[i] * (1 - p[i] ** gamma) / gamma for i in range(len(p)))
    neg = sum((1 - q_t[i]) * (1 - (1 - p[i]) ** gamma) / gamma for i in range(len(p)))
    return pos / n_pos + neg / n_neg


def test_eq2_generalized_bce_matches_transcription() -> None:
    p = rand(2, 10) * 0.98 + 0.01
    target = (rand(2, 10) > 0.6).double()
    # Eq. 2 is per video: N_pos / N_neg count that video's snippets; the batch loss is the mean.
    per_video = [gce_reference(p[b], target[b], 0.7) for b in range(2)]
    torch.testing.assert_close(generalized_bce(p, target, q=0.7), sum(per_video) / 2)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    per_video = [gce_reference(p[b][mask[b]], target[b][mask[b]], 0.7) for b in range(2)]
    torch.testing.assert_close(generalized_bce(p, target, q=0.7, mask=mask), sum(per_video) / 2)


def test_eq2_q_to_zero_is_bce() -> None:
    p = rand(30) * 0.98 + 0.01
    target = (rand(30) > 0.5).double()
    pos, neg = target.bool(), ~target.bool()
    bce = -p[pos].log().mean() - (1 - p[neg]).log().mean()
    torch.testing.assert_close(generalized_bce(p, target, q=1e-6), bce, rtol=1e-4, atol=0)


def test_eq2_empty_sets_and_gradient() -> None:
    p = (rand(8) * 0.9 + 0.05).requires_grad_()
    loss = generalized_bce(p, torch.zeros(8, dtype=torch.float64), q=0.7)  # no positive at all
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ((1 - (1 - p) ** 0.7) / 0.7).mean())
    loss.backward()
    assert torch.isfinite(p.grad).all()
    edge = torch.tensor([0.0, 1.0], requires_grad=True)  # saturated probabilities: finite gradient
    generalized_bce(edge, torch.tensor([1.0, 0.0]), q=0.7).backward()
    assert torch.isfinite(edge.grad).all()


# ----------------------------------------------------------------------------- Eq. 3 / 6: soft CE
def test_eq3_eq6_soft_ce_matches_transcription() -> None:
    for n, k in ((12, 4), (16, 2)):  # (N, K) snippets x clusters for Eq. 3, (K, 2) clusters x F&B for Eq. 6
        logits = randn(n, k).requires_grad_()
        targets = sinkhorn_labels(logits)  # no gradient
        probs = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
        ref = sum(-(targets[i] * probs[i].log()).sum() for i in range(n)) / n
        loss = soft_ce(targets, logits)
        torch.testing.assert_close(loss, ref)
        loss.backward()
        assert logits.grad is not None and logits.grad.abs().sum() > 0
    t = rand(5, 3).requires_grad_()
    assert not soft_ce(t, randn(5, 3)).requires_grad, "soft_ce must not push gradient into its targets"


# ----------------------------------------------------------------------------- Eq. 4 / 5: prototypes
def test_eq4_prototypes_match_transcription() -> None:
    n, k, d = 20, 4, 6
    assign = sinkhorn_labels(randn(n, k))
    emb = randn(n, d).requires_grad_()
    protos = cluster_prototypes(assign, emb)
    for j in range(k):
        mean = sum(assign[i, j] * emb[i] for i in range(n)) / assign[:, j].sum()  # Eq. 4
        torch.testing.assert_close(protos[j], mean / mean.norm())
    q_a = (rand(n) > 0.5).double()
    fb = cluster_prototypes(torch.stack([q_a, 1 - q_a], -1), emb)  # F&B prototypes (2, D)
    torch.testing.assert_close(fb[0], F.normalize(emb[q_a.bool()].mean(0), dim=0))
    torch.testing.assert_close(fb[1], F.normalize(emb[~q_a.bool()].mean(0), dim=0))
    protos.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    empty = cluster_prototypes(torch.zeros(n, 2, dtype=torch.float64), emb)
    assert torch.isfinite(empty).all()


def test_eq5_logits_match_transcription() -> None:
    cp, fp = randn(5, 7), randn(2, 7)
    logits = cluster_fb_logits(cp, fp, rho=10.0)
    for k in range(5):
        for i in range(2):
            torch.testing.assert_close(logits[k, i], 10.0 * F.cosine_similarity(cp[k], fp[i], dim=0))
    torch.testing.assert_close(cluster_fb_logits(F.normalize(cp, dim=-1), F.normalize(fp, dim=-1)), logits)


# ----------------------------------------------------------------------------- Eq. 11 / 13: priors
def test_ascending_ranks() -> None:
    x = torch.tensor([0.3, 0.1, 0.9, 0.5])
    assert ascending_ranks(x).tolist() == [1, 0, 3, 2]


def test_eq11_rank_prior_matches_transcription() -> None:
    n, k, sigma = 10, 4, 0.2
    att = rand(n)
    fg = rand(k)
    prior = rank_gaussian_prior(att, fg, sigma)
    for i in range(n):
        rank = sum(int(att[j] < att[i]) for j in range(n))  # ascending order, 0-based
        for j in range(k):
            ref = math.exp(-((rank / n - fg[j].item()) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
            assert prior[i, j].item() == pytest.approx(ref, rel=1e-12)
    torch.testing.assert_close(rank_gaussian_prior(att, fg, sigma, log=True).exp(), prior)
    rows = rank_gaussian_prior(att, fg, sigma, normalize_rows=True)
    torch.testing.assert_close(rows, prior / prior.sum(1, keepdim=True))
    # the most / least foreground snippet prefers the cluster whose Q^C_fg is nearest its rank
    # position (n - 1) / n or 0 (not necessarily the largest / smallest Q^C_fg)
    for i, pos in ((att.argmax(), (n - 1) / n), (att.argmin(), 0.0)):
        assert prior[i].argmax() == (fg - pos).abs().argmin()
    # the public code's sigma = 10 gives a nearly flat prior
    flat = rank_gaussian_prior(att, fg, 10.0)
    assert (flat.max() / flat.min()).item() < 1.01
    # tiny sigma: the log form stays finite where the exp underflows
    assert torch.isfinite(rank_gaussian_prior(att, fg, 1e-3, log=True)).all()


def test_eq11_rank_prior_mask() -> None:
    att = torch.tensor([0.2, 0.9, 0.5, 0.0, 0.0], dtype=torch.float64)
    mask = torch.tensor([True, True, True, False, False])
    fg = torch.tensor([0.0, 1.0], dtype=torch.float64)
    prior = rank_gaussian_prior(att, fg, 0.5, mask=mask)
    torch.testing.assert_close(prior[:3], rank_gaussian_prior(att[:3], fg, 0.5))  # padding does not shift ranks
    torch.testing.assert_close(prior[3], torch.ones(2, dtype=torch.float64))  # uniform rows for padding


def test_eq13_marginal() -> None:
    q_a = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(fb_marginal(q_a), torch.tensor([0.6, 0.4]))
    mask = torch.tensor([True, True, True, True, False])
    torch.testing.assert_close(fb_marginal(q_a, mask), torch.tensor([0.5, 0.5]))


# ----------------------------------------------------------------------------- gradient routing end to end
def test_case_objective_gradients() -> None:
    """Eq. 14 on a tiny model: every loss reaches the parameters it should, Sinkhorn labels carry none."""
    torch.manual_seed(0)
    b, t, d, g, k = 2, 16, 8, 3, 4
    model = TwoStreamWTAL(d, g, hidden_dim=6, num_clusters=k)
    x = torch.randn(b, t, d)
    y = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    out = model(x)
    cas, att = out["cas"], out["attention"]
    combined = (cas.softmax(-1).mean(0) + att.sum(0).unsqueeze(-1)) / 3
    idx = topk_mil_indices(combined, ratio=1 / 8)
    video = topk_mil_pool(cas, idx)
    loss_v = 0.5 * video_ce_loss(video[0], y) + 0.5 * video_ce_loss(video[1], y)
    chosen = torch.zeros(b, t, g).scatter_(1, idx, 1.0)
    q_a = (chosen * y[:, None]).amax(-1)  # (B, T)
    loss_a = sum(generalized_bce(a, q_a, q=0.7) for a in att)
    logits = out["cluster_logits"].reshape(2, b * t, k)
    emb = out["embeddings"].reshape(2, b * t, -1)
    q_c_prev = torch.full((k, 2), 1 / k)
    prior = rank_gaussian_prior(att.mean(0).reshape(-1), q_c_prev[:, 0], 10.0)
    q_s = sinkhorn_labels(logits.mean(0), prior=prior)
    assert not q_s.requires_grad
    loss_s = sum(soft_ce(q_s, lg) for lg in logits)
    qa = q_a.reshape(-1)
    pc = torch.stack([
        cluster_fb_logits(cluster_prototypes(q_s, e), cluster_prototypes(torch.stack([qa, 1 - qa], -1), e), 10.0)
        for e in emb
    ])
    q_c = sinkhorn_labels(pc.mean(0), col_marginal=fb_marginal(qa))
    assert not q_c.requires_grad and q_c.shape == (k, 2)
    loss_c = sum(soft_ce(q_c, lg) for lg in pc)
    for name, loss, reaches, spares in (
        # top-k indices are discrete and the video logits pool raw CAS: L_V trains only the
        # classification branch (attention shapes it only through which snippets are picked)
        ("L_V", loss_v, ["classifier", "cls_encoder"], ["attention.", "att_encoder", "cluster_head"]),
        ("L_A", loss_a, ["attention.", "att_encoder"], ["classifier", "cls_encoder", "cluster_head"]),
        ("L_S", loss_s, ["cluster_head", "att_encoder"], ["classifier", "cls_encoder", "attention."]),
        ("L_C", loss_c, ["att_encoder"], ["classifier", "cls_encoder", "attention.", "cluster_head"]),
    ):
        grads = dict(zip([n for n, _ in model.named_parameters()],
                         torch.autograd.grad(loss, list(model.parameters()), retain_graph=True, allow_unused=True)))
        for n, gr in grads.items():
            has = gr is not None and gr.abs().sum() > 0
            if any(r in n for r in reaches):
                assert has, f"{name} does not reach {n}"
            if any(s in n for s in spares):
                assert not has, f"{name} should not reach {n}"
