"""The ACM-Net baseline (method=rmgcl memory_branch=none) against ACM-Net's public code.

Two kinds of tests:

* against a TRANSCRIPTION written here from reading the public code (model/ACMNet.py,
  utils/net_utils.py ACMLoss, main_thu.py / main_act.py test(), utils/net_evaluation.py):
  per-term training losses with shared weights and the same dropout draws, test-time
  outputs, and the proposals of the test loop. The transcription follows the public code's
  steps one by one (sort-and-slice top-k, log of the softmax, in-order NMS) rather than the
  library's vectorised forms, so that a convention the library gets wrong shows up;
* against the public code itself, when ``ACMNET_OFFICIAL_DIR`` points at a checkout of it
  (skipped otherwise): the official network and loss with the library's weights copied in.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from taltoolkit.methods.rmgcl import RMGCL
from taltoolkit.models.acmnet import ACMNet
from taltoolkit.postprocess.acmnet import acmnet_proposals

D, H, C = 6, 16, 4  # feature width, embedding width, classes
THUMOS = {"topk": (8, 3, 3), "branch": (1.0, 1.0, 1.0), "lambdas": (2e-3, 5e-5, 2e-4), "anet": False}
ANET = {"topk": (2, 10, 10), "branch": (5.0, 1.0, 1.0), "lambdas": (5e-3, 5e-5, 0.0), "anet": True}


def _baseline(setting: dict, dropout: float = 0.7, seed: int = 0, hidden: int = H, in_dim: int = D) -> RMGCL:
    torch.manual_seed(seed)
    model = ACMNet(in_dim, C, hidden_dim=hidden, dropout=dropout, input_dropout=setting["anet"],
                   attention_dropout=setting["anet"])
    # Larger embeddings than PyTorch's default init, so that the feature norms straddle the
    # margin of 50 and both hinge terms of the feature loss take part; the heads are scaled down
    # alike so that attention and CAS do not saturate (tied attention values would make the
    # top-k steps ambiguous, and saturated softmaxes underflow to log(0) in the public loss).
    with torch.no_grad():
        model.embedding.weight.mul_(150.0)
        model.attention.weight.div_(150.0)
        model.classifier.weight.div_(150.0)
    g, f, s = setting["lambdas"]
    return RMGCL(model, memory_branch=None, topk_segments=setting["topk"], branch_weights=setting["branch"],
                 guide_weight=g, feature_weight=f, sparse_weight=s, test_cam="main")


def _inputs(b: int = 3, t: int = 23, seed: int = 1, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, t, d, generator=gen) * 2
    y = torch.zeros(b, C)
    y[torch.arange(b), (torch.arange(b) + 1) % C] = 1
    if b > 1:
        y[1, 3] = 1  # a two-class video: normalised targets
    return x, y


# ----------------------------------------------------------------------------- transcription: training
def reference_forward(m: ACMNet, x: torch.Tensor, training: bool, p: float, activitynet: bool,
                      topk: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """ACM-Net's forward as its code does it, step by step, with m's weights.

    Random draws in the code's order: [ActivityNet: input features, attention input], the
    per-step mask ``select_idx`` (B, T, 1), then the elements of the masked embedding.
    """
    b, t, _ = x.shape
    k = [max(t // s, 1) for s in topk]  # inst/cont/back_topk_num
    z = x.permute(0, 2, 1)  # (B, D, T)
    if activitynet:
        z = F.dropout(z, p, training)
    z = F.relu(F.conv1d(z, m.embedding.weight, m.embedding.bias, padding=1))  # (B, H, T)
    a_in = F.dropout(z, p, training) if activitynet else z
    att = torch.softmax(F.conv1d(a_in, m.attention.weight, m.attention.bias).permute(0, 2, 1), dim=2)  # (B, T, 3)
    emb = z.permute(0, 2, 1)  # (B, T, H): embeded_feature_rev, no dropout
    select = F.dropout(torch.ones(b, t, 1), p, training)
    cas = F.linear(F.dropout(emb * select, p, training), m.classifier.weight, m.classifier.bias)  # (B, T, C+1)
    out = {"att": att, "cas_logits": cas}
    for i, name in enumerate(("inst", "cont", "back")):
        branch = cas * att[:, :, i : i + 1]
        top = torch.sort(branch, dim=1, descending=True).values[:, : k[i], :]
        out[f"{name}_cls"] = torch.softmax(top.mean(1), dim=1)  # (B, C+1)
        order = torch.sort(att[:, :, i : i + 1], dim=1, descending=True).indices[:, : k[i], :]
        out[f"{name}_feat"] = torch.gather(emb, 1, order.expand(-1, -1, emb.shape[2])).mean(1)  # (B, H)
        out[f"{name}_cas"] = torch.softmax(branch, dim=2)
    return out


def reference_losses(o: dict[str, torch.Tensor], y: torch.Tensor, setting: dict) -> dict[str, torch.Tensor]:
    """ACMLoss.forward: normalised labels, three CE terms, guide / feature / sparsity terms."""
    one, zero = torch.ones(y.shape[0], 1), torch.zeros(y.shape[0], 1)
    labels = {"inst": torch.cat([y, zero], 1), "cont": torch.cat([y, one], 1),
              "back": torch.cat([torch.zeros_like(y), one], 1)}
    ce = {}
    for name, lab in labels.items():
        lab = lab / lab.sum(1, keepdim=True)
        ce[name] = -torch.mean(torch.sum(torch.log(o[f"{name}_cls"]) * lab, dim=1))
    guide = torch.sum(torch.abs(1 - o["inst_cas"][:, :, -1] - o["att"][:, :, 0].detach()), dim=1).mean()
    n_i, n_c, n_b = (o[f"{name}_feat"].norm(p=2, dim=1) for name in ("inst", "cont", "back"))
    hinge1 = torch.clamp(50 - n_i + n_c, min=0)
    hinge2 = torch.clamp(50 - n_c + n_b, min=0)
    feat = torch.mean((hinge1 + hinge2 + n_b) ** 2)
    sparse = torch.sum(o["att"][:, :, :2], dim=1).mean()
    w = setting["branch"]
    l1, l2, l3 = setting["lambdas"]
    total = w[0] * ce["inst"] + w[1] * ce["cont"] + w[2] * ce["back"] + l1 * guide + l2 * feat + l3 * sparse
    return {"loss_ins": ce["inst"], "loss_con": ce["cont"], "loss_back": ce["back"], "loss_guide": guide,
            "loss_feat": feat, "loss_sparse": sparse, "loss": total, "feat_hinges": torch.stack([hinge1, hinge2])}


@pytest.mark.parametrize("setting", [THUMOS, ANET], ids=["thumos", "activitynet"])
def test_training_losses_match_the_transcription_term_by_term(setting: dict) -> None:
    method = _baseline(setting).train()
    x, y = _inputs()
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    torch.manual_seed(123)
    got = method.training_step({"features": x, "mask": mask, "video_labels": y})
    torch.manual_seed(123)  # the same dropout draws, in the code's order
    with torch.no_grad():
        ref = reference_losses(reference_forward(method.model, x, True, 0.7, setting["anet"], setting["topk"]), y,
                               setting)
    hinges = ref.pop("feat_hinges")
    if not setting["anet"]:
        assert (hinges > 0).any() and (hinges == 0).any()  # both sides of the margin are exercised
    for key, value in ref.items():
        if key == "loss_sparse" and setting["lambdas"][2] == 0:
            assert key not in got  # weight 0 (ActivityNet): the term is not computed
            continue
        torch.testing.assert_close(got[key].detach(), value, rtol=1e-5, atol=1e-6, msg=key)


def test_sparse_loss_is_the_mean_over_videos_and_both_branches() -> None:
    # the public code averages the (B, 2) per-branch sums: half of summing the two branches
    att = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]])  # (1, 2, 3)
    from taltoolkit.losses.acmnet import sparse_attention_loss

    assert float(sparse_attention_loss(att)) == pytest.approx(((0.5 + 0.1) + (0.25 + 0.1)) / 2)


# ----------------------------------------------------------------------------- transcription: test time
@pytest.mark.parametrize("setting", [THUMOS, ANET], ids=["thumos", "activitynet"])
def test_test_time_outputs_match_the_transcription(setting: dict) -> None:
    """Per video (batch of 1 at its own length, as the code tests): instance video scores,
    instance CAS softmax and instance attention; the library predicts a padded batch."""
    method = _baseline(setting).eval()
    x, _ = _inputs(b=2, t=29)
    lengths = [29, 17]  # 29 // 8 = 3 (round would give 4), 17 // 8 = 2
    mask = torch.zeros(2, 29, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    got = method.predict({"features": x * mask[..., None], "mask": mask})
    for i, n in enumerate(lengths):
        with torch.no_grad():
            ref = reference_forward(method.model, x[i : i + 1, :n], False, 0.7, setting["anet"], setting["topk"])
        torch.testing.assert_close(torch.as_tensor(got[i]["class_scores"]), ref["inst_cls"][0, :C])
        torch.testing.assert_close(torch.as_tensor(got[i]["cas"]), ref["inst_cas"][0, :, :C])
        torch.testing.assert_close(torch.as_tensor(got[i]["actionness"]), ref["att"][0, :, 0])


def _groups(idx: np.ndarray) -> list[np.ndarray]:
    return np.split(idx, np.where(np.diff(idx) != 1)[0] + 1) if idx.size else []


def reference_proposals(cas: np.ndarray, scores: np.ndarray, att: np.ndarray, t_factor: float, *,
                        cls_thr: float, cas_levels: np.ndarray, att_levels: np.ndarray, lamb: float,
                        gamma_cas: float, gamma_att: float, mix: float, nms_thr: float, scale: int = 20
                        ) -> list[tuple[int, float, float, float]]:
    """main_thu.py / main_act.py test(): class choice, upgrade_resolution, the two level loops,
    get_proposal_oic and nms, rewritten as plain loops."""
    from scipy.interpolate import interp1d

    pred = np.where(scores > cls_thr)[0] if scores.max() > cls_thr else np.array([np.argmax(scores)])
    up = lambda a: interp1d(np.arange(a.shape[0]), a, kind="linear", axis=0,  # noqa: E731
                            fill_value="extrapolate")(np.arange(0, a.shape[0], 1 / scale))
    cs = up(cas[:, pred])  # (T', K)
    at = up(np.repeat(att[:, None], len(pred), axis=1))  # (T', K)
    found: dict[int, list[list[float]]] = {}

    def oic(pos_lists: list[np.ndarray], seq: np.ndarray, gamma: float) -> None:
        for i, pos in enumerate(pos_lists):
            for grp in _groups(pos):
                if len(grp) < 2:
                    continue
                n = len(grp)
                inner = seq[grp, i].mean()
                s = max(0, int(grp[0] - lamb * n))
                e = min(int(seq.shape[0] - 1), int(grp[-1] + lamb * n))
                outer_idx = list(range(s, int(grp[0]))) + list(range(int(grp[-1] + 1), e + 1))
                outer = seq[outer_idx, i].mean() if outer_idx else 0
                c = int(pred[i])
                found.setdefault(c, []).append(
                    [c, inner - outer + gamma * scores[c], grp[0] * t_factor, (grp[-1] + 1) * t_factor])

    for thr in cas_levels:
        masked = cs.copy()
        masked[masked < thr] = 0
        oic([np.where(masked[:, i] >= thr)[0] for i in range(len(pred))], (1 - mix) * masked + mix * at, gamma_cas)
    for thr in att_levels:
        masked = at.copy()
        masked[masked < thr] = 0
        oic([np.where(masked[:, i] >= thr)[0] for i in range(len(pred))], (1 - mix) * cs + mix * masked, gamma_att)

    out = []
    for props in found.values():
        p = np.array(props)
        order = p[:, 1].argsort()[::-1]
        while order.size:
            i = order[0]
            out.append((int(p[i, 0]), p[i, 1], p[i, 2], p[i, 3]))
            rest = order[1:]
            inter = np.maximum(0.0, np.minimum(p[i, 3], p[rest, 3]) - np.maximum(p[i, 2], p[rest, 2]) + 1)
            iou = inter / ((p[i, 3] - p[i, 2] + 1) + (p[rest, 3] - p[rest, 2] + 1) - inter)
            order = rest[iou < nms_thr]
    return out


def _smooth(t: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    kernel = np.ones(5) / 5
    logits = np.stack([np.convolve(rng.normal(0, 3, t + 4), kernel, "valid") for _ in range(c + 1)], 1)
    cas = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # (T, C+1) probabilities
    att = 1 / (1 + np.exp(-np.convolve(rng.normal(0, 4, t + 4), kernel, "valid")))  # (T,)
    return cas[:, :c], att


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dataset", ["thumos", "activitynet"])
def test_proposals_match_the_transcription(seed: int, dataset: str) -> None:
    t = 40
    cas, att = _smooth(t, C, seed)
    scores = np.array([0.5, 0.3, 0.25, 0.05]) if seed != 2 else np.array([0.2, 0.24, 0.1, 0.05])  # seed 2: top-1
    step_s = 0.64
    if dataset == "thumos":
        kw = dict(cls_thr=0.25, cas_levels=np.arange(0.15, 0.25, 0.05), att_levels=np.arange(0.15, 1.0, 0.05),
                  lamb=0.2, gamma_cas=0.0, gamma_att=0.0, mix=0.0, nms_thr=0.55)
        got = acmnet_proposals(cas, scores, att, step_s=step_s)  # the defaults are ACM-Net's THUMOS14 values
    else:
        levels = [0.005, 0.01, 0.015, 0.02]
        kw = dict(cls_thr=0.1, cas_levels=np.array(levels), att_levels=np.array(levels), lamb=0.15, gamma_cas=0.0,
                  gamma_att=0.25, mix=0.3, nms_thr=0.9)
        cas = cas / 20  # ActivityNet's levels are low: keep runs at every level
        got = acmnet_proposals(cas, scores, att, step_s=step_s, cas_thresholds=levels, actionness_thresholds=levels,
                               class_threshold=0.1, inflation=0.15, actionness_mix=0.3, actionness_score_weight=0.25,
                               nms_threshold=0.9)
    # main_thu.py: t_factor = (16 * vid_len) / (25 * scale * T_in); here vid_len = T_in
    ref = reference_proposals(cas, scores, att, (16 * t) / (25 * 20 * t), **kw)
    assert len(ref) > 5
    ref_sorted = sorted(ref, key=lambda r: (r[0], -r[1], r[2]))
    got_sorted = sorted(zip(got.labels.tolist(), got.scores.tolist(), got.segments[:, 0].tolist(),
                            got.segments[:, 1].tolist()), key=lambda r: (r[0], -r[1], r[2]))
    assert [r[0] for r in got_sorted] == [r[0] for r in ref_sorted]
    np.testing.assert_allclose(np.array([r[1:] for r in got_sorted]), np.array([r[1:] for r in ref_sorted]),
                               rtol=1e-9, atol=1e-9)
    if seed == 2 and dataset == "thumos":
        assert set(got.labels.tolist()) == {1}  # no score above 0.25: the top-1 class alone


def test_proposal_conventions_each_matter() -> None:
    """Each of ACM-Net's conventions changes the output on this input, so a test above that
    passes is not blind to it."""
    cas, att = _smooth(40, C, 0)
    scores = np.array([0.5, 0.3, 0.25, 0.05])
    base = acmnet_proposals(cas, scores, att, step_s=0.64)

    def differs(**kw) -> bool:
        other = acmnet_proposals(cas, scores, att, step_s=0.64, **kw)
        return len(other) != len(base) or not (np.allclose(other.segments, base.segments)
                                               and np.allclose(other.scores, base.scores))

    assert differs(iou_offset=0.0)  # the +1 of the public NMS
    assert differs(min_length=1)  # one-step runs dropped
    assert set(base.labels.tolist()) == {0, 1}  # strict >: class 2's score 0.25 is not above 0.25 ...
    assert 2 in acmnet_proposals(cas, scores, att, step_s=0.64, class_threshold=0.2499).labels  # ... but above 0.2499
    assert differs(actionness_mix=0.3) and differs(actionness_score_weight=0.25) and differs(inflation=0.25)
    clipped = acmnet_proposals(cas, scores, att, step_s=0.64, clip=True, duration=20.0)
    assert base.segments.max() > 20.0 and clipped.segments.max() <= 20.0  # no clipping unless asked


# ----------------------------------------------------------------------------- the public code itself
OFFICIAL = os.environ.get("ACMNET_OFFICIAL_DIR")
# The public network keeps the feature width (in = hidden). Wide enough that no step has all
# of its embedding dropped (ActivityNet's attention dropout): such steps tie in attention, and
# the public sort and the library's top-k may then pick different, equally ranked steps.
W = 48


@pytest.fixture
def official(monkeypatch: pytest.MonkeyPatch):
    """ACM-Net's model/ACMNet.py, utils/net_utils.py and utils/net_evaluation.py, imported from the checkout."""
    if not OFFICIAL or not (Path(OFFICIAL) / "model" / "ACMNet.py").is_file():
        pytest.skip("set ACMNET_OFFICIAL_DIR to a checkout of ACM-Net's public code")
    # The code uses np.int / np.float, removed from numpy; net_evaluation imports pandas for its
    # mAP class only, which these tests do not use.
    monkeypatch.setattr(np, "int", int, raising=False)
    monkeypatch.setattr(np, "float", float, raising=False)
    if importlib.util.find_spec("pandas") is None:
        monkeypatch.setitem(sys.modules, "pandas", types.ModuleType("pandas"))
    monkeypatch.syspath_prepend(OFFICIAL)
    for name in ("model", "model.ACMNet", "utils", "utils.net_utils", "utils.net_evaluation"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return Namespace(model=importlib.import_module("model.ACMNet"), loss=importlib.import_module("utils.net_utils"),
                     evaluation=importlib.import_module("utils.net_evaluation"))


def _official_net(official: Namespace, method: RMGCL, setting: dict) -> torch.nn.Module:
    """The public network (in = hidden = W) with the library's weights copied in."""
    args = Namespace(dataset="ActivityNet" if setting["anet"] else "THUMOS", feature_dim=W, action_cls_num=C,
                     dropout=0.7, ins_topk_seg=setting["topk"][0], con_topk_seg=setting["topk"][1],
                     bak_topk_seg=setting["topk"][2])
    net = official.model.ACMNet(args)
    conv = 1 if setting["anet"] else 0  # ActivityNet: Sequential(Dropout, Conv, ReLU)
    m = method.model
    with torch.no_grad():  # copy_ checks the shapes: the layers must be built alike (e.g. kernel 1 attention)
        for theirs, ours in ((net.feature_embedding[conv], m.embedding), (net.att_branch, m.attention),
                             (net.snippet_cls, m.classifier)):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
    return net


@pytest.mark.parametrize("setting", [THUMOS, ANET], ids=["thumos", "activitynet"])
def test_official_network_and_loss_match(official: Namespace, setting: dict) -> None:
    method = _baseline(setting, hidden=W, in_dim=W).train()
    net = _official_net(official, method, setting).train()
    x, y = _inputs(d=W)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    torch.manual_seed(7)
    got = method.training_step({"features": x, "mask": mask, "video_labels": y})
    torch.manual_seed(7)
    outs = net(x)
    criterion = official.loss.ACMLoss(*setting["lambdas"], dataset="ActivityNet" if setting["anet"] else "THUMOS14")
    loss, terms = criterion(*outs[:3], y, outs[6], *outs[3:6], outs[7])
    names = {"act_inst_loss": "loss_ins", "act_cont_loss": "loss_con", "act_back_loss": "loss_back",
             "guide_loss": "loss_guide", "feat_loss": "loss_feat", "sparse_loss": "loss_sparse"}
    for theirs, ours in names.items():
        if ours in got:
            assert float(got[ours]) == pytest.approx(terms[theirs], rel=1e-5, abs=1e-6), ours
    assert float(got["loss"]) == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.parametrize("setting", [THUMOS, ANET], ids=["thumos", "activitynet"])
def test_official_test_outputs_and_proposals_match(official: Namespace, setting: dict) -> None:
    method = _baseline(setting, seed=3, hidden=W, in_dim=W).eval()
    net = _official_net(official, method, setting).eval()
    ev = official.evaluation
    x, _ = _inputs(b=1, t=37, seed=5, d=W)
    with torch.no_grad():
        outs = net(x)
    got = method.predict({"features": x, "mask": torch.ones(1, 37, dtype=torch.bool)})[0]
    score_np = outs[0][0, :C].numpy()
    temp_cas = outs[7][0].numpy()  # (T, C+1) instance CAS softmax
    temp_att = outs[6][0].numpy()  # (T, 3)
    np.testing.assert_allclose(got["class_scores"], score_np, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["cas"], temp_cas[:, :C], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["actionness"], temp_att[:, 0], rtol=1e-5, atol=1e-7)

    # The test loop of main_thu.py / main_act.py, calling the public helpers in its order.
    cls_thr, levels_c, levels_a, lamb, g_c, g_a, mix, nms_thr = (
        (0.1, [0.005, 0.01, 0.015, 0.02], [0.005, 0.01, 0.015, 0.02], 0.15, 0.0, 0.25, 0.3, 0.9) if setting["anet"]
        else (0.25, np.arange(0.15, 0.25, 0.05), np.arange(0.15, 1.00, 0.05), 0.2, 0.0, 0.0, 0.0, 0.55))
    # Video scores in this toy network are flat: lower the class threshold so that two classes
    # are predicted and the multi-class path runs (the same value for both sides).
    cls_thr = float(np.sort(score_np)[-2]) - 1e-6
    t_in, scale = 37, 20
    t_factor = (16 * t_in) / (25 * scale * t_in)
    pred = np.where(score_np > cls_thr)[0] if score_np.max() > cls_thr else np.array([np.argmax(score_np)])
    cas_up = ev.upgrade_resolution(temp_cas[:, :C][:, pred].reshape(t_in, len(pred), 1), scale)
    att_up = ev.upgrade_resolution(np.repeat(temp_att[:, 0:1], C, 1)[:, pred].reshape(t_in, len(pred), 1), scale)
    found: dict[int, list] = {}
    for thr, is_cas in [(v, True) for v in levels_c] + [(v, False) for v in levels_a]:
        src = cas_up if is_cas else att_up
        masked = src.copy()
        masked[np.where(masked < thr)] = 0
        seg_list = [np.where(masked[:, i] >= thr) for i in range(len(pred))]
        seq = ((1 - mix) * masked + mix * att_up) if is_cas else ((1 - mix) * cas_up + mix * masked)
        for props in ev.get_proposal_oic(seg_list, seq, pred, score_np, t_factor, lamb=lamb, gamma=g_c if is_cas else g_a):
            if props:
                found.setdefault(props[0][0], []).extend(props)
    theirs = sorted((int(p[0]), p[1], p[2], p[3]) for c in found for p in ev.nms(found[c], nms_thr))
    post = dict(class_threshold=cls_thr, inflation=lamb, actionness_mix=mix, cas_score_weight=g_c,
                actionness_score_weight=g_a, nms_threshold=nms_thr)
    if setting["anet"]:
        post.update(cas_thresholds=levels_c, actionness_thresholds=levels_a)
    det = acmnet_proposals(got["cas"], got["class_scores"], got["actionness"], step_s=0.64, **post)
    ours = sorted(zip(det.labels.tolist(), det.scores.tolist(), det.segments[:, 0].tolist(), det.segments[:, 1].tolist()))
    assert len(theirs) > 0 and len(pred) == 2
    assert [o[0] for o in ours] == [t[0] for t in theirs]
    np.testing.assert_allclose(np.array([o[1:] for o in ours]), np.array([t[1:] for t in theirs]), rtol=1e-5, atol=1e-6)
