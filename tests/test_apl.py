"""APL: ALQA selection, ICD, ACP losses against transcriptions and limits; the Fig. 3(c) diagnostic,
the ignore region and the EMA schedule on constructed cases; tiny semi runs (adaptive regime, resume)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import taltoolkit
from taltoolkit.losses.contrastive import kmeans, pyramid_to_input, sample_partition_frames, set_infonce
from taltoolkit.engine.method import Stage, StageContext
from taltoolkit.losses.detection import assign_targets, make_points, quality_focal_loss, sigmoid_focal_loss
from taltoolkit.methods.apl import APL
from taltoolkit.models.actionformer import ActionFormer
from taltoolkit.pseudo.apl import (
    ConsistencyDiscriminator,
    adaptive_split,
    adaptive_split_videos,
    adaptive_thresholds,
    fixed_split,
    icd_loss,
    icd_refine,
    icd_similarity,
    instance_features,
    joint_score,
    pseudo_label_quality,
)
from taltoolkit.structures import Video

# ----------------------------------------------------------------------------- ALQA selection


def test_tau_pos_is_mean_plus_std_of_scores_above_tau_neg():
    s = np.array([0.05, 0.1, 0.2, 0.4, 0.6])
    rest = np.array([0.2, 0.4, 0.6])
    want = rest.mean() + rest.std()  # population std: 0.1633
    assert adaptive_thresholds(s, 0.15) == pytest.approx(want)
    assert adaptive_thresholds(s, 0.15, std_factor=0.0) == pytest.approx(0.4)
    pos, cand, tau = adaptive_split(s, 0.15)
    assert tau == pytest.approx(0.4 + math.sqrt(0.08 / 3))
    assert pos.tolist() == [False, False, False, False, True]
    assert cand.tolist() == [False, False, True, True, False]
    # nothing above tau_neg: nothing positive, nothing candidate
    pos, cand, tau = adaptive_split(np.array([0.1, 0.15]), 0.15)
    assert tau == math.inf and not pos.any() and not cand.any()


def test_tau_pos_falls_back_below_the_minimum_count():
    # One score above tau_neg: mean + std is that score, which would select it alone.
    s = np.array([0.05, 0.1, 0.2])
    assert adaptive_thresholds(s, 0.15) == pytest.approx(0.2)
    pos, cand, tau = adaptive_split(s, 0.15, min_count=2, fallback=0.3)
    assert tau == 0.3 and not pos.any() and cand.tolist() == [False, False, True]
    # exactly min_count scores: the statistics apply
    assert adaptive_thresholds(np.array([0.2, 0.4]), 0.15, min_count=2, fallback=0.3) == pytest.approx(0.4)


def test_tau_pos_pooled_and_per_video():
    a, b = np.array([0.9, 0.5, 0.35, 0.2, 0.1]), np.array([0.25, 0.18, 0.16])
    above = np.array([0.9, 0.5, 0.35, 0.2, 0.25, 0.18, 0.16])
    pooled = above.mean() + above.std()
    pos, cand, taus, info = adaptive_split_videos([a, b], 0.15, scope="pooled")
    assert taus.tolist() == pytest.approx([pooled, pooled]) and info["tau_pos_pooled"] == pytest.approx(pooled)
    assert pos.tolist() == [True] + [False] * 7
    assert cand.tolist() == [False, True, True, True, False, True, True, True]
    assert info["num_above_tau_neg"] == 7 and not info["tau_pos_fallback"] and info["videos_fallback"] == 0
    ta, tb = a[:4].mean() + a[:4].std(), b.mean() + b.std()
    pos, cand, taus, info = adaptive_split_videos([a, b], 0.15, scope="video")
    assert taus.tolist() == pytest.approx([ta, tb])
    assert pos.tolist() == [True, False, False, False, False, True, False, False]  # b's own tau_pos selects 0.25
    # b has 3 scores above tau_neg < 4: it takes the pooled value, a keeps its own
    pos, cand, taus, info = adaptive_split_videos([a, b], 0.15, scope="video", min_count=4, fallback=0.3)
    assert taus.tolist() == pytest.approx([ta, pooled]) and info["videos_fallback"] == 1
    # pooled with too few scores: the stated fallback, recorded
    _, _, taus, info = adaptive_split_videos([a, b], 0.15, scope="pooled", min_count=8, fallback=0.3)
    assert taus.tolist() == [0.3, 0.3] and info["tau_pos_fallback"] and info["num_above_tau_neg"] == 7
    with pytest.raises(ValueError, match="scope"):
        adaptive_split_videos([a], 0.15, scope="batch")


def test_fixed_split_is_the_table2_baseline():
    pos, cand, tau = fixed_split(np.array([0.29, 0.3, 0.8]), 0.3)
    assert pos.tolist() == [False, True, True] and not cand.any() and tau == 0.3


def test_joint_score_clamps_the_reliability_at_eps():
    cls = torch.tensor([[0.5, 1.0], [0.8, 0.2]])
    tiou, tnd = torch.tensor([0.9, 0.1]), torch.tensor([0.1, 0.3])
    got = joint_score(cls, tiou, tnd, eps=1e-3)
    assert torch.allclose(got, torch.tensor([[0.4, 0.8], [0.8e-3, 0.2e-3]]))


# ----------------------------------------------------------------------------- ICD


def test_icd_refine_eliminates_and_mines_on_constructed_cases():
    pos = np.array([True, True, False, False, False])
    cand = np.array([False, False, True, True, False])
    sim = np.array([0.9, 0.2, 0.8, 0.6, 0.99])  # last is neither positive nor candidate
    assert icd_refine(pos, cand, sim, 0.3, 0.7).tolist() == [True, False, True, False, False]
    assert icd_refine(pos, cand, sim, 0.3, 0.7, eliminate=False).tolist() == [True, True, True, False, False]
    assert icd_refine(pos, cand, sim, 0.3, 0.7, mine=False).tolist() == [True, False, False, False, False]


class _DotDisc(ConsistencyDiscriminator):
    """D(a, b) = sigmoid(a . b): a known discriminator for checking Eq. 10 and Eq. 8."""

    def __init__(self):
        super().__init__(1, 1)

    def forward(self, a, b):
        return (a * b).sum(-1)


def test_icd_similarity_averages_over_labelled_instances_of_the_predicted_class():
    disc = _DotDisc()
    bank = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    bank_l = torch.tensor([0, 0, 1])
    pred = torch.tensor([[1.0, 1.0], [0.5, 0.0], [3.0, 3.0]])
    pred_l = torch.tensor([0, 1, 2])  # class 2 has no labelled instance
    got = icd_similarity(disc, pred, pred_l, bank, bank_l)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert got.tolist() == pytest.approx([(sig(1) + sig(2)) / 2, sig(0), 0.0])


def test_icd_loss_is_bce_on_same_and_different_pairs():
    torch.manual_seed(0)
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])

    class Const(ConsistencyDiscriminator):
        def __init__(self, c):
            super().__init__(1, 1)
            self.c = c

        def forward(self, a, b):
            return torch.full((a.shape[0],), self.c)

    c = 0.7
    want = -math.log(1 / (1 + math.exp(-c))) - math.log(1 - 1 / (1 + math.exp(-c)))
    assert float(icd_loss(Const(c), feats, labels, pairs=3)) == pytest.approx(want, rel=1e-6)
    # same-class partners are never the anchor itself: with D = a . b on these features,
    # every positive pair has logit 1 and every negative pair logit 0
    got = float(icd_loss(_DotDisc(), feats, labels, pairs=5))
    assert got == pytest.approx(-math.log(1 / (1 + math.exp(-1))) + math.log(2), rel=1e-6)
    assert float(icd_loss(_DotDisc(), feats[:1], labels[:1])) == 0.0


def test_icd_learns_to_separate_classes():
    torch.manual_seed(0)
    centres = torch.randn(3, 8) * 3
    labels = torch.arange(3).repeat(10)
    feats = centres[labels] + 0.3 * torch.randn(30, 8)
    disc = ConsistencyDiscriminator(8, 32)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for _ in range(80):
        opt.zero_grad()
        icd_loss(disc, feats, labels, pairs=4).backward()
        opt.step()
    sim = icd_similarity(disc, feats[:3], torch.tensor([0, 1, 2]), feats[3:], labels[3:])
    wrong = icd_similarity(disc, feats[:3], torch.tensor([1, 2, 0]), feats[3:], labels[3:])
    assert (sim > 0.7).all() and (wrong < 0.3).all()


def test_instance_features_max_pool_over_covered_steps():
    feats = torch.tensor([[0.0, 5.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
    got = instance_features(feats, torch.tensor([[0.5, 2.2], [3.0, 3.0], [-1.0, 9.0]]))
    # [0.5, 2.2] covers steps 0..2; a zero-length segment at 3 takes step 3; out of range clips
    assert got.tolist() == [[2.0, 5.0], [3.0, 0.0], [3.0, 5.0]]


# ----------------------------------------------------------------------------- ACP


def _infonce_loop(f, labels, tau):
    f = F.normalize(f, dim=-1)
    total, n = 0.0, 0
    for i in range(len(f)):
        for j in range(len(f)):
            if j == i or labels[j] != labels[i]:
                continue
            sij = float(f[i] @ f[j]) / tau
            neg = sum(math.exp(float(f[i] @ f[k]) / tau) for k in range(len(f)) if labels[k] != labels[i])
            total += -math.log(math.exp(sij) / (math.exp(sij) + neg))
            n += 1
    return total / n


def test_set_infonce_matches_eq11_transcription():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(9, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1])
    assert float(set_infonce(f, labels, 0.5)) == pytest.approx(_infonce_loop(f, labels, 0.5), rel=1e-5)


def test_set_infonce_limits():
    # identical features: every pair costs log(1 + |N_i|)
    f = torch.ones(6, 4)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert float(set_infonce(f, labels, 0.1)) == pytest.approx(math.log(1 + 3), rel=1e-5)
    # perfectly separated (positives equal, negatives opposite), low temperature: -> 0
    sep = torch.tensor([[1.0, 0.0]] * 3 + [[-1.0, 0.0]] * 3)
    assert float(set_infonce(sep, labels, 0.05)) < 1e-10
    # the same features with the labels swapped across clusters: large loss
    bad = torch.tensor([0, 0, 1, 1, 1, 0])
    assert float(set_infonce(sep, bad, 0.05)) > 10
    # no negative anywhere: 0; a single frame: 0
    assert float(set_infonce(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 0.1)) == pytest.approx(0.0, abs=1e-6)
    assert float(set_infonce(torch.randn(1, 3), torch.zeros(1, dtype=torch.long), 0.1)) == 0.0
    with pytest.raises(ValueError, match="temperature"):
        set_infonce(f, labels, 0.0)


def test_kmeans_recovers_separated_blobs():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20, 3) * 0.1, torch.randn(15, 3) * 0.1 + 5])
    lab = kmeans(x, 2)
    assert len(set(lab[:20].tolist())) == 1 and len(set(lab[20:].tolist())) == 1 and lab[0] != lab[-1]
    assert kmeans(x[:1], 4).tolist() == [0]


def test_partition_sampling_and_pyramid_upsampling():
    torch.manual_seed(0)
    idx = sample_partition_frames(100, 8, torch.device("cpu"))
    assert idx.shape == (8,) and all(12.5 * i - 1 < v < 12.5 * (i + 1) for i, v in enumerate(idx.tolist()))
    assert sample_partition_frames(3, 8, torch.device("cpu")).tolist() == [0, 1, 2]
    levels = [torch.arange(4.0).reshape(1, 4, 1), torch.tensor([[[10.0], [20.0]]])]
    rep = pyramid_to_input(levels, 4, 2)
    assert rep[0].tolist() == [[0, 10], [1, 10], [2, 20], [3, 20]]


# ----------------------------------------------------------------------------- ALQA losses


def _tiny_apl(**kw):
    torch.manual_seed(0)
    model = ActionFormer(8, 3, embed_dim=16, fpn_dim=16, head_dim=16, window_size=5, branch_layers=2,
                         regression_ranges=[(0, 4), (4, 8), (8, 1000)], quality_heads=True, dropout=0.0, drop_path=0.0)
    base = dict(ema_decay=0.0, use_icd=False, use_acp=False)
    base.update(kw)
    return APL(model, **base)


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_alqa_detection_loss_matches_transcription(alpha):
    m = _tiny_apl(beta=2.0, lambda_locq=0.1, joint_eps=1e-3, alqa_alpha=alpha)
    torch.manual_seed(1)
    batch = {
        "features": torch.randn(2, 16, 8), "mask": torch.ones(2, 16, dtype=torch.bool),
        "segments": [torch.tensor([[2.0, 7.0]]), torch.tensor([[5.0, 12.0], [1.0, 3.0]])],
        "labels": [torch.tensor([1]), torch.tensor([2, 0])],
        "label_level": ["full", "pseudo"],
    }
    out = m.model(batch["features"], batch["mask"])
    # Untrained heads give tIoU ~ tND and the class prior 0.01, so every joint score is ~1e-5
    # and Eq. 5 would be invisible next to the regression terms; confident heads make it count.
    out["tiou_logits"] = [t + 3.0 for t in out["tiou_logits"]]
    out["tnd_logits"] = [t - 3.0 for t in out["tnd_logits"]]
    out["cls_logits"] = [c + 4.0 for c in out["cls_logits"]]
    got = m.detection_losses(out, batch)
    assert float(got["cls_loss"].detach()) > 0.2 * float(got["loss_det"].detach())
    pts = make_points([16, 8, 4], 2, [(0, 4), (4, 8), (8, 1000)], torch.device("cpu"))
    cls = torch.sigmoid(torch.cat(out["cls_logits"], 1)).detach()
    off = torch.cat(out["offsets"], 1).detach()
    ti = torch.sigmoid(torch.cat(out["tiou_logits"], 1)).detach()
    tn = torch.sigmoid(torch.cat(out["tnd_logits"], 1)).detach()
    total = 0.0
    for b, weight in ((0, 1.0), (1, 2.0)):
        ct, rt, pos = assign_targets(pts, batch["segments"][b], batch["labels"][b], 3)
        npos = max(int(pos.sum()), 1)
        acc = 0.0
        for p in range(pts.shape[0]):
            target = torch.zeros(3)
            if pos[p]:
                lp, rp = off[b, p].tolist()
                lg, rg = rt[p].tolist()
                inter = min(lp, lg) + min(rp, rg)
                iou = inter / (lp + rp + lg + rg - inter)
                nd = (0.5 * (rp - lp - rg + lg)) ** 2 / (max(lp, lg) + max(rp, rg)) ** 2
                target = ct[p] * max(iou - nd, 1e-3)
                acc += (1 - iou + nd)  # DIoU loss, lambda_reg 1
                pi, pn = float(ti[b, p]), float(tn[b, p])
                acc += 0.1 * (-(iou * math.log(pi) + (1 - iou) * math.log(1 - pi))
                              - (nd * math.log(pn) + (1 - nd) * math.log(1 - pn)))
            joint = max(float(ti[b, p] - tn[b, p]), 1e-3) * cls[b, p]
            for c in range(3):
                q, pr = float(target[c]), float(joint[c])
                a_t = 1.0 if alpha is None else alpha * q + (1 - alpha) * (1 - q)
                acc += a_t * abs(q - pr) ** 2 * -(q * math.log(pr) + (1 - q) * math.log(1 - pr))
        total += weight * acc / npos
    assert float(got["loss_det"].detach()) == pytest.approx(total, rel=1e-4)


def test_alqa_cls_loss_is_the_baseline_focal_loss_on_one_hot_labels_and_minimal_at_the_soft_label():
    """Eq. 5 "based on focal loss" of the baseline: with alqa_alpha=0.25 and a one-hot label the
    ALQA loss is ActionFormer's focal loss (alpha 0.25, gamma 2) of the joint score; without
    alpha, the same focal loss without alpha (QFL). On a soft label q both are minimal at p = q."""
    p = torch.tensor([[0.05, 0.3, 0.7, 0.95]])
    logit = torch.log(p / (1 - p))
    for q in (torch.zeros(1, 4), torch.ones(1, 4)):
        got = _tiny_apl(alqa_alpha=0.25).alqa_cls_loss(p, q)
        assert torch.allclose(got, sigmoid_focal_loss(logit, q, 0.25, 2.0), rtol=1e-5)
        got = _tiny_apl(alqa_alpha=None).alqa_cls_loss(p, q)
        assert torch.allclose(got, sigmoid_focal_loss(logit, q, -1, 2.0), rtol=1e-5)
    for alpha in (None, 0.25):
        m = _tiny_apl(alqa_alpha=alpha)
        q = torch.tensor([0.2, 0.55, 0.9])
        at = q.clone().requires_grad_(True)
        m.alqa_cls_loss(at, q).sum().backward()
        assert at.grad.abs().max() < 1e-4  # stationary at the soft label
        assert (m.alqa_cls_loss(q + 0.05, q) > m.alqa_cls_loss(q, q)).all()
        assert (m.alqa_cls_loss(q - 0.05, q) > m.alqa_cls_loss(q, q)).all()
    # the alpha weighting changes the loss (the switch is live): positives down-weighted
    q1 = torch.tensor([1.0])
    assert float(_tiny_apl(alqa_alpha=0.25).alqa_cls_loss(torch.tensor([0.3]), q1)) == pytest.approx(
        0.25 * float(quality_focal_loss(torch.tensor([0.3]), q1)))


def _apl_videos() -> tuple[list[Video], dict[str, Video]]:
    """Two unlabelled videos (1 s steps, grid = seconds) and their hidden ground truth."""
    feats = np.zeros((100, 8), np.float32)
    truth = {"a": (np.array([[10.0, 20.0], [40.0, 50.0], [70.0, 80.0]]), np.array([0, 1, 2])),
             "b": (np.array([[5.0, 15.0], [30.0, 40.0]]), np.array([0, 1]))}
    unl = [Video(n, feats, 100.0, 1.0, 1.0, label_level="none") for n in ("a", "b")]
    ref = {n: Video(n, feats, 100.0, 1.0, 1.0, segments=s, labels=lab) for n, (s, lab) in truth.items()}
    return unl, ref


# Post-NMS predictions (no two of one class overlap, so Soft-NMS keeps every score): segment
# (grid = seconds), class, score, ICD similarity, and whether it hits a hidden instance.
_PREDS = {
    "a": [([10, 20], 0, 0.9, 0.2, True), ([40, 50], 1, 0.5, 0.8, True), ([70, 80], 0, 0.35, 0.2, False),
          ([85, 95], 1, 0.2, 0.75, False), ([60, 62], 2, 0.1, 0.9, False)],
    "b": [([5, 15], 0, 0.25, 0.9, True), ([30, 40], 1, 0.18, 0.5, True), ([50, 60], 2, 0.16, 0.1, False)],
}


def _stub_context(unl: list[Video], ref: dict[str, Video]) -> StageContext:
    def predict(videos):
        return [{"segments": torch.tensor([p[0] for p in _PREDS[v.name]], dtype=torch.float32),
                 "labels": torch.tensor([p[1] for p in _PREDS[v.name]]),
                 "scores": torch.tensor([p[2] for p in _PREDS[v.name]])} for v in videos]
    return StageContext(train_videos=unl, device=torch.device("cpu"), predict=predict, reference_videos=ref)


def _stub_icd(m: APL) -> None:
    sims = {round(p[2], 3): p[3] for preds in _PREDS.values() for p in preds}
    m._icd_scores = lambda unl, dets, lab, dev: np.concatenate(  # type: ignore[method-assign]
        [[sims[round(float(s), 3)] for s in d.scores] for d in dets])


def test_fig3c_diagnostic_compares_both_rules_on_one_pool_and_never_changes_the_selection():
    unl, ref = _apl_videos()
    above = np.array([0.9, 0.5, 0.35, 0.2, 0.25, 0.18, 0.16])
    tau = above.mean() + above.std()  # 0.62: only the 0.9 prediction is positive
    runs = {}
    for selection in ("adaptive", "fixed"):
        m = _tiny_apl(selection=selection, tau_pos_min_count=1)
        pseudo, ignore, metrics = m.make_pseudo_labels(unl, [], _stub_context(unl, ref))
        blind = m.make_pseudo_labels(unl, [], _stub_context(unl, {}))  # no hidden labels: no diagnostic
        assert blind[0] == pseudo and blind[1] == ignore and "fig3c" not in blind[2]
        runs[selection] = (pseudo, metrics)
    fig = runs["adaptive"][1]["fig3c"]
    assert fig == runs["fixed"][1]["fig3c"]  # same pool, same numbers, whichever rule trains
    assert fig["score"] == "joint" and fig["num_hidden"] == 5
    assert fig["adaptive"]["tau_pos"] == pytest.approx(tau)
    assert (fig["adaptive"]["count"], fig["adaptive"]["precision"], fig["adaptive"]["recall"]) == (1, 1.0, 0.2)
    # fixed 0.3: 0.9 (hit), 0.5 (hit), 0.35 (wrong class) -> 2 of 3 right, 2 of 5 found
    assert fig["fixed"]["tau_pos"] == 0.3 and fig["fixed"]["count"] == 3
    assert fig["fixed"]["precision"] == pytest.approx(2 / 3) and fig["fixed"]["recall"] == pytest.approx(0.4)
    # the selection that trains follows method.selection
    assert runs["adaptive"][0] == {"a": ([[10.0, 20.0]], [0]), "b": ([], [])}
    assert sorted(runs["fixed"][0]["a"][0]) == [[10.0, 20.0], [40.0, 50.0], [70.0, 80.0]] and runs["fixed"][0]["b"] == ([], [])
    assert runs["adaptive"][1]["num_above_tau_neg"] == 7 and not runs["adaptive"][1]["tau_pos_fallback"]


def test_fig3c_icd_points_and_ignore_regions_on_constructed_predictions():
    unl, ref = _apl_videos()
    m = _tiny_apl(use_icd=True, ignore_uncertain=True, tau_pos_min_count=1)  # tau_icd 0.3, sigma_icd 0.7
    _stub_icd(m)
    pseudo, ignore, metrics = m.make_pseudo_labels(unl, [], _stub_context(unl, ref))
    fig = metrics["fig3c"]
    # adaptive positives {0.9 (S 0.2)}; candidates 0.5 (S 0.8), 0.35, 0.2 (S 0.75), 0.25 (S 0.9), 0.18, 0.16
    assert fig["eap"]["count"] == 0  # EAP removes the only positive (S 0.2 < 0.3)
    assert (fig["mpp"]["count"], fig["mpp"]["precision"], fig["mpp"]["recall"]) == (4, 0.75, 0.6)
    assert (fig["eap_mpp"]["count"], fig["eap_mpp"]["recall"]) == (3, 0.4)
    assert fig["eap_mpp"]["precision"] == pytest.approx(2 / 3)
    assert metrics["pseudo_quality"]["num_pseudo"] == 3 and metrics["num_eliminated"] == 1 and metrics["num_mined"] == 3
    assert sorted(pseudo["a"][0]) == [[40.0, 50.0], [85.0, 95.0]] and pseudo["b"] == ([[5.0, 15.0]], [0])
    # ignore regions: every prediction above tau_neg = 0.15 that is not a final pseudo-label
    # (the eliminated positive, the unmined candidates); below tau_neg stays background
    assert sorted(ignore["a"]) == [[10.0, 20.0], [70.0, 80.0]]
    assert sorted(ignore["b"]) == [[30.0, 40.0], [50.0, 60.0]]
    assert metrics["num_ignored"] == metrics["num_uncertain"] == 4
    m.ignore_uncertain = False
    assert m.make_pseudo_labels(unl, [], _stub_context(unl, ref))[1] == {}


def test_pseudo_label_oracles_keep_the_correct_selection_or_the_hidden_labels():
    unl, ref = _apl_videos()
    plain = _tiny_apl(selection="fixed").make_pseudo_labels(unl, [], _stub_context(unl, ref))
    # fixed 0.3 selects 0.9 (hit), 0.5 (hit) and 0.35 (class 0 on the class-2 instance) in "a"
    assert sorted(plain[0]["a"][0]) == [[10.0, 20.0], [40.0, 50.0], [70.0, 80.0]] and "oracle" not in plain[2]
    m = _tiny_apl(selection="fixed", ignore_uncertain=True, pseudo_label_oracle="correct")
    pseudo, ignore, metrics = m.make_pseudo_labels(unl, [], _stub_context(unl, ref))
    assert sorted(zip(map(tuple, pseudo["a"][0]), pseudo["a"][1])) == [((10.0, 20.0), 0), ((40.0, 50.0), 1)]
    assert pseudo["b"] == ([], [])
    assert metrics["oracle"]["mode"] == "correct" and metrics["oracle"]["pos_acc"] == 1.0
    assert metrics["oracle"]["recall"] == pytest.approx(2 / 5)
    assert ignore["a"] == [[85.0, 95.0]] and len(ignore["b"]) == 3  # the selection's ignore regions, unchanged
    assert metrics["fig3c"]["fixed"]["count"] == 3  # the diagnostics still describe the teacher's selection
    m.pseudo_label_oracle = "truth"
    pseudo, ignore, metrics = m.make_pseudo_labels(unl, [], _stub_context(unl, ref))
    assert pseudo["a"] == ([[10.0, 20.0], [40.0, 50.0], [70.0, 80.0]], [0, 1, 2])
    assert pseudo["b"] == ([[5.0, 15.0], [30.0, 40.0]], [0, 1])
    assert ignore == {} and metrics["oracle"]["recall"] == 1.0 and metrics["oracle"]["num_pseudo"] == 5
    with pytest.raises(RuntimeError, match="pseudo_label_oracle=truth.*hidden labels"):
        m.make_pseudo_labels(unl, [], _stub_context(unl, {"a": ref["a"]}))
    with pytest.raises(ValueError, match="pseudo_label_oracle"):
        _tiny_apl(pseudo_label_oracle="gt")


def test_ignore_region_removes_only_the_classification_loss_of_unselected_points():
    m = _tiny_apl(beta=2.0, ignore_uncertain=True)
    torch.manual_seed(1)
    batch = {
        "features": torch.randn(2, 16, 8), "mask": torch.ones(2, 16, dtype=torch.bool),
        "segments": [torch.tensor([[2.0, 7.0]]), torch.tensor([[2.0, 7.0]])],
        "labels": [torch.tensor([1]), torch.tensor([1])],
        "label_level": ["full", "pseudo"], "names": ["l", "u"],
        # crops starting at step 10 of their videos; steps of 0.5 s, step 0 centred at 0.25 s
        "positions": torch.arange(10, 26, dtype=torch.float64).repeat(2, 1),
        "step_s": torch.tensor([0.5, 0.5], dtype=torch.float64), "offset_s": torch.tensor([0.25, 0.25], dtype=torch.float64),
    }
    sec = lambda x: 0.25 + 0.5 * (x + 10)  # noqa: E731  crop grid -> seconds of the video
    # [10, 16] of the crop: background points; [4, 6]: inside the pseudo-label, positives keep their loss
    regions = [[sec(10.0), sec(16.0)], [sec(4.0), sec(6.0)]]
    m._ignore = {"u": regions, "l": regions}  # a labelled video is never ignored
    out = m.model(batch["features"], batch["mask"])
    # An untrained network's tIoU ~ tND makes every joint score ~eps and background losses ~0;
    # confident quality heads give background points a loss worth removing.
    out["tiou_logits"] = [t + 3.0 for t in out["tiou_logits"]]
    out["tnd_logits"] = [t - 3.0 for t in out["tnd_logits"]]
    pts = out["points"][:, 0]
    _, _, pos = assign_targets(out["points"], batch["segments"][1], batch["labels"][1], 3)
    inside = ((pts >= 10) & (pts <= 16)) | ((pts >= 4) & (pts <= 6))
    got_mask = m.ignore_mask(out, batch)
    assert torch.equal(got_mask[1], inside) and not got_mask[0].any()
    assert bool((inside & pos).any())  # some positives sit in a region: they keep their loss
    want = inside & ~pos
    on = m.detection_losses(out, batch)
    m.ignore_uncertain = False
    off = m.detection_losses(out, batch)
    joint = joint_score(torch.sigmoid(torch.cat(out["cls_logits"], 1)), torch.sigmoid(torch.cat(out["tiou_logits"], 1)),
                        torch.sigmoid(torch.cat(out["tnd_logits"], 1)), 1e-3)[1]  # (P, C), video u
    removed = quality_focal_loss(joint[want], torch.zeros_like(joint[want])).sum() * 2.0 / int(pos.sum())
    on, off, removed = ({k: float(v.detach()) for k, v in d.items()} for d in (on, off, {"r": removed}))
    assert removed["r"] > 0.01 * off["cls_loss"]
    assert off["cls_loss"] - on["cls_loss"] == pytest.approx(removed["r"], rel=1e-4)
    assert on["reg_loss"] == pytest.approx(off["reg_loss"])


def _stage_context(m: APL, resumed: bool = False) -> StageContext:
    feats = np.zeros((20, 8), np.float32)
    videos = [Video("l", feats, 20.0, 1.0, 1.0, segments=np.array([[2.0, 6.0]]), labels=np.array([0])),
              Video("u", feats, 20.0, 1.0, 1.0, label_level="none")]
    return StageContext(train_videos=videos, device=torch.device("cpu"), predict=lambda v: [],
                        set_train_videos=lambda v: None, resumed=resumed)


def _set_weights(m: APL, value: float) -> None:
    with torch.no_grad():
        for p in m.model.parameters():
            p.fill_(value)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_ema_restarts_at_the_supervised_stage_and_averages_its_steps(bias_correction):
    d = 0.5
    m = _tiny_apl(ema_decay=d, use_acp=True, ema_bias_correction=bias_correction)
    acp, sup = m.stages()[:2]
    m.on_stage_start(acp, _stage_context(m))
    for v in (7.0, 9.0):  # "ACP" steps move the EMA away from the live weights
        _set_weights(m, v)
        m.on_train_step_end()
    _set_weights(m, 1.0)  # the weights the supervised stage starts from
    m.on_stage_start(sup, _stage_context(m))
    assert all(torch.equal(e, p) for e, p in zip(m.ema.parameters(), m.model.parameters()))
    steps = [2.0, 4.0, 8.0]
    for v in steps:
        _set_weights(m, v)
        m.on_train_step_end()
    n = len(steps)
    if bias_correction:  # normalised exponential weights of the supervised steps only
        want = sum(d ** (n - 1 - k) * (1 - d) * w for k, w in enumerate(steps)) / (1 - d**n)
        assert m.ema_restart_weight() == 0.0
    else:  # the restart point keeps d^n
        want = d**n * 1.0 + sum(d ** (n - 1 - k) * (1 - d) * w for k, w in enumerate(steps))
        assert m.ema_restart_weight() == pytest.approx(d**n)
    for e in m.ema.parameters():
        assert torch.allclose(e, torch.full_like(e, want))
    assert m.extra_state()["ema_steps"] == n


def test_ema_is_not_restarted_when_resuming_inside_the_stage_or_when_switched_off():
    m = _tiny_apl(ema_decay=0.5, use_acp=True)
    sup = m.stages()[1]
    _set_weights(m, 3.0)
    m.on_stage_start(sup, _stage_context(m, resumed=True))  # the checkpoint holds this stage's EMA
    assert not any(torch.equal(e, p) for e, p in zip(m.ema.parameters(), m.model.parameters()))
    m = _tiny_apl(ema_decay=0.5, use_acp=True, ema_reset=False)
    _set_weights(m, 3.0)
    m.on_stage_start(m.stages()[1], _stage_context(m))
    assert not any(torch.equal(e, p) for e, p in zip(m.ema.parameters(), m.model.parameters()))


def test_pseudo_label_quality_on_a_constructed_case():
    truth = [(np.array([[0.0, 10.0], [20.0, 30.0]]), np.array([1, 2]))]
    pseudo = [(np.array([[0.0, 8.0], [21.0, 29.0], [40.0, 50.0]]), np.array([1, 0, 2]))]
    q = pseudo_label_quality(pseudo, truth)
    assert q["num_pseudo"] == 3
    assert q["class_acc"] == pytest.approx(1 / 3)  # 2nd overlaps class 2 but says 0; 3rd overlaps nothing (best = first GT)
    assert q["avg_tiou"] == pytest.approx((0.8 + 0.8 + 0.0) / 3)
    assert q["pos_acc"] == pytest.approx(1 / 3)
    assert q["recall"] == pytest.approx(0.5)


def test_apl_options_are_checked():
    with pytest.raises(ValueError, match="quality_heads"):
        APL(ActionFormer(8, 3, embed_dim=16, fpn_dim=16, head_dim=16), use_alqa=True)
    with pytest.raises(ValueError, match="selection"):
        _tiny_apl(selection="median")
    with pytest.raises(ValueError, match="tau_pos_scope"):
        _tiny_apl(tau_pos_scope="batch")
    with pytest.raises(ValueError, match="tau_pos_min_count"):
        _tiny_apl(tau_pos_min_count=0)
    with pytest.raises(ValueError, match="alqa_alpha"):
        _tiny_apl(alqa_alpha=1.5)
    with pytest.raises(ValueError, match="acp_coarse"):
        _tiny_apl(use_acp=True, acp_coarse=False, acp_fine=False)
    assert [s.name for s in _tiny_apl(use_acp=True, rounds=2).stages()] == ["acp_pretrain", "supervised", "semi1", "semi2"]
    assert [s.name for s in _tiny_apl(rounds=0).stages()] == ["supervised"]


# ----------------------------------------------------------------------------- end to end

# The paper's tau_neg = 0.15 with the default guard (10 scores): 8 supervised epochs of 3 steps
# (6 labelled videos, batch 2) at a high rate give a network with a few hundred joint scores
# above tau_neg, so Eq. 6's adaptive regime (not the fallback) selects the pseudo-labels.
TINY = ["model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.window_size=5", "method.icd_hidden=32",
        "method.acp_epochs=1", "method.supervised_epochs=8", "method.semi_epochs=2", "method.acp_frames=8",
        "method.ema_decay=0.9", "trainer.lr=3e-3", "trainer.warmup_epochs=1"]
SUPERVISED_STEPS = 8 * 3


def _check_adaptive_regime(semi: dict) -> None:
    """Eq. 6 ran on real scores: enough above tau_neg, tau_pos from them, positives and candidates."""
    assert semi["num_above_tau_neg"] >= 10 and semi["tau_pos_fallback"] is False
    assert 0.15 < semi["tau_pos"] < 1.0 and semi["tau_pos"] != 0.3
    assert semi["num_positive"] > 0 and semi["num_candidate"] > 0
    assert semi["num_positive"] + semi["num_candidate"] == semi["num_above_tau_neg"]
    fig = semi["fig3c"]
    assert fig["score"] == "joint" and fig["adaptive"]["tau_pos"] == semi["tau_pos"]
    assert fig["adaptive"]["count"] == semi["num_positive"] == semi["before_icd"]["num_pseudo"]
    assert fig["fixed"]["tau_pos"] == 0.3
    # the EMA that pseudo-labels averages the supervised stage's steps only
    assert semi["ema_steps"] == SUPERVISED_STEPS and semi["ema_restart_weight"] == 0.0


def test_tiny_semi_run_resumes_mid_stage_identically(compose, tiny_overrides, tmp_path):
    common = ["method=apl", "labelled_fraction=0.25", *TINY, "method.ignore_uncertain=true"]
    full = taltoolkit.run(compose([*common, *tiny_overrides, "trainer.batch_size=2"]))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["label_mode"] == "semi" and saved["preset"] == "thumos14_semi"
    stages = [r["stage"] for r in saved["history"]]
    assert stages == ["acp_pretrain"] + ["supervised"] * 8 + ["semi"] * 2
    semi = [s for s in saved["stage_metrics"] if s["stage"] == "semi"][0]
    _check_adaptive_regime(semi)
    assert set(semi["pseudo_quality"]) == {"num_pseudo", "class_acc", "avg_tiou", "pos_acc", "recall"}
    assert semi["num_final"] > 0  # something was pseudo-labelled and trained on
    assert saved["history"][-1]["pseudo_videos"] > 0
    # the ignore region is on: the unselected predictions above tau_neg of pseudo-labelled videos
    assert 0 < semi["num_ignored"] <= semi["num_uncertain"]
    # interrupted after 10 epochs = inside the semi stage; the resumed run reuses the saved
    # pseudo-labels, ignore regions and EMA step count
    part_over = [o.replace(str(tmp_path / "run"), str(tmp_path / "part")) for o in tiny_overrides]
    assert taltoolkit.run(compose([*common, "trainer.stop_after_epochs=10", *part_over, "trainer.batch_size=2"]))["interrupted"]
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert state["stage_index"] == 2 and state["method_extra"]["pseudo"] and state["method_extra"]["ignore"]
    res_over = [o.replace(str(tmp_path / "run"), str(tmp_path / "resumed")) for o in tiny_overrides] + ["trainer.batch_size=2"]
    resumed = taltoolkit.run(compose([*common, f"trainer.resume={ckpt}", *res_over]))
    assert resumed["mAP"] == full["mAP"]
    assert resumed["stage_metrics"][-1] == saved["stage_metrics"][-1]
    a = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    assert a["method_extra"]["pseudo"] == b["method_extra"]["pseudo"]
    assert a["method_extra"]["ignore"] == b["method_extra"]["ignore"]
    assert a["method_extra"]["ema_steps"] == b["method_extra"]["ema_steps"] > SUPERVISED_STEPS  # + the semi steps


def test_table2_baseline_switches_run(compose, tiny_overrides):
    # The tiny network's class probabilities stay below 0.3 after 8 epochs; 0.2 keeps the rule's
    # mechanics (a fixed threshold on the class probability) with something to select.
    cfg = compose(["method=apl", "labelled_fraction=0.25", *TINY, "method.use_alqa=false", "model.quality_heads=false",
                   "method.selection=fixed", "method.fixed_threshold=0.2", "method.use_icd=false", "method.use_acp=false",
                   *tiny_overrides, "trainer.batch_size=2"])
    metrics = taltoolkit.run(cfg)
    assert [r["stage"] for r in metrics["history"]] == ["supervised"] * 8 + ["semi"] * 2
    assert "locq_loss" not in metrics["history"][-1] and "loss_icd" not in metrics["history"][-1]
    semi = metrics["stage_metrics"][-1]
    fig = semi["fig3c"]
    # the pseudo-labels are exactly the pool's predictions with class probability >= 0.2:
    # no candidate, no ICD, and the same count as the diagnostic's fixed rule on that pool
    assert fig["score"] == "class" and semi["tau_pos"] == fig["fixed"]["tau_pos"] == 0.2
    assert semi["num_final"] == semi["num_positive"] == fig["fixed"]["count"] > 0 and semi["num_candidate"] == 0
    assert semi["pseudo_quality"]["num_pseudo"] == fig["fixed"]["count"]
    assert semi["pseudo_quality"]["pos_acc"] == fig["fixed"]["precision"]
    # the adaptive rule on the same pool is measured, not used
    assert fig["adaptive"]["count"] != fig["fixed"]["count"]
    assert metrics["history"][-1]["pseudo_videos"] > 0


def test_actionformer_refuses_semi_labels(compose, tiny_overrides):
    cfg = compose(["method=actionformer", "label_mode=semi", "labelled_fraction=0.5", "trainer.max_epochs=1",
                   "model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32", *tiny_overrides])
    with pytest.raises(ValueError, match="method=apl"):
        taltoolkit.run(cfg)
