"""APL: ALQA selection, ICD, ACP losses against transcriptions and limits; a tiny semi run with resume."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import taltoolkit
from taltoolkit.losses.contrastive import kmeans, pyramid_to_input, sample_partition_frames, set_infonce
from taltoolkit.losses.detection import make_points
from taltoolkit.methods.apl import APL
from taltoolkit.models.actionformer import ActionFormer
from taltoolkit.pseudo.apl import (
    ConsistencyDiscriminator,
    adaptive_split,
    adaptive_thresholds,
    fixed_split,
    icd_loss,
    icd_refine,
    icd_similarity,
    instance_features,
    joint_score,
    pseudo_label_quality,
)

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


def test_alqa_detection_loss_matches_transcription():
    m = _tiny_apl(beta=2.0, lambda_locq=0.1, joint_eps=1e-3)
    torch.manual_seed(1)
    batch = {
        "features": torch.randn(2, 16, 8), "mask": torch.ones(2, 16, dtype=torch.bool),
        "segments": [torch.tensor([[2.0, 7.0]]), torch.tensor([[5.0, 12.0], [1.0, 3.0]])],
        "labels": [torch.tensor([1]), torch.tensor([2, 0])],
        "label_level": ["full", "pseudo"],
    }
    out = m.model(batch["features"], batch["mask"])
    got = m.detection_losses(out, batch)
    pts = make_points([16, 8, 4], 2, [(0, 4), (4, 8), (8, 1000)], torch.device("cpu"))
    cls = torch.sigmoid(torch.cat(out["cls_logits"], 1)).detach()
    off = torch.cat(out["offsets"], 1).detach()
    ti = torch.sigmoid(torch.cat(out["tiou_logits"], 1)).detach()
    tn = torch.sigmoid(torch.cat(out["tnd_logits"], 1)).detach()
    from taltoolkit.losses.detection import assign_targets

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
                acc += abs(q - pr) ** 2 * -(q * math.log(pr) + (1 - q) * math.log(1 - pr))
        total += weight * acc / npos
    assert float(got["loss_det"]) == pytest.approx(total, rel=1e-4)


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
    with pytest.raises(ValueError, match="acp_coarse"):
        _tiny_apl(use_acp=True, acp_coarse=False, acp_fine=False)
    assert [s.name for s in _tiny_apl(use_acp=True, rounds=2).stages()] == ["acp_pretrain", "supervised", "semi1", "semi2"]
    assert [s.name for s in _tiny_apl(rounds=0).stages()] == ["supervised"]


# ----------------------------------------------------------------------------- end to end

TINY = ["model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.window_size=5", "method.icd_hidden=32",
        "method.acp_epochs=1", "method.supervised_epochs=2", "method.semi_epochs=2", "method.acp_frames=8",
        "method.tau_neg=0.0"]  # a 3-epoch model scores low; keep every prediction in play


def test_tiny_semi_run_resumes_mid_stage_identically(compose, tiny_overrides, tmp_path):
    common = ["method=apl", "labelled_fraction=0.25", *TINY]
    full = taltoolkit.run(compose([*common, *tiny_overrides]))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["label_mode"] == "semi" and saved["preset"] == "thumos14_semi"
    stages = [r["stage"] for r in saved["history"]]
    assert stages == ["acp_pretrain", "supervised", "supervised", "semi", "semi"]
    semi = [s for s in saved["stage_metrics"] if s["stage"] == "semi"][0]
    assert {"tau_pos", "num_final", "pseudo_quality", "before_icd"} <= set(semi)
    assert set(semi["pseudo_quality"]) == {"num_pseudo", "class_acc", "avg_tiou", "pos_acc", "recall"}
    assert semi["num_final"] > 0  # something was pseudo-labelled and trained on
    assert saved["history"][-1]["pseudo_videos"] > 0
    # interrupted after 4 epochs = inside the semi stage; the resumed run reuses the saved pseudo-labels
    part_over = [o.replace(str(tmp_path / "run"), str(tmp_path / "part")) for o in tiny_overrides]
    assert taltoolkit.run(compose([*common, "trainer.stop_after_epochs=4", *part_over]))["interrupted"]
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert state["stage_index"] == 2 and state["method_extra"]["pseudo"]
    res_over = [o.replace(str(tmp_path / "run"), str(tmp_path / "resumed")) for o in tiny_overrides]
    resumed = taltoolkit.run(compose([*common, f"trainer.resume={ckpt}", *res_over]))
    assert resumed["mAP"] == full["mAP"]
    assert resumed["stage_metrics"][-1] == saved["stage_metrics"][-1]
    a = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    assert a["method_extra"]["pseudo"] == b["method_extra"]["pseudo"]


def test_table2_baseline_switches_run(compose, tiny_overrides):
    cfg = compose(["method=apl", "labelled_fraction=0.25", *TINY, "method.use_alqa=false", "model.quality_heads=false",
                   "method.selection=fixed", "method.use_icd=false", "method.use_acp=false", *tiny_overrides])
    metrics = taltoolkit.run(cfg)
    assert [r["stage"] for r in metrics["history"]] == ["supervised", "supervised", "semi", "semi"]
    assert "locq_loss" not in metrics["history"][-1] and "loss_icd" not in metrics["history"][-1]
    assert metrics["stage_metrics"][-1]["tau_pos"] == 0.3


def test_actionformer_refuses_semi_labels(compose, tiny_overrides):
    cfg = compose(["method=actionformer", "label_mode=semi", "labelled_fraction=0.5", "trainer.max_epochs=1",
                   "model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32", *tiny_overrides])
    with pytest.raises(ValueError, match="method=apl"):
        taltoolkit.run(cfg)
