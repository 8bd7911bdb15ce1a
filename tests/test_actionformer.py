"""ActionFormer: label assignment, losses against direct transcriptions, masking, decoding."""
from __future__ import annotations

import math

import pytest
import torch

from taltoolkit.losses.detection import (
    assign_targets,
    diou_loss,
    diou_terms,
    make_points,
    quality_focal_loss,
    sigmoid_focal_loss,
)
from taltoolkit.methods.actionformer import ActionFormerMethod
from taltoolkit.models.actionformer import ActionFormer, local_attention

RANGES = [(0.0, 2.0), (2.0, 4.0), (4.0, 1000.0)]


def _points(lengths=(16, 8, 4)):
    return make_points(list(lengths), 2, RANGES, torch.device("cpu"))


# ----------------------------------------------------------------------------- points


def test_points_sit_at_step_centres_of_each_level():
    pts = _points((4, 2, 1))
    assert pts[:, 0].tolist() == [0.5, 1.5, 2.5, 3.5, 0.5, 2.5, 0.5]
    assert pts[:, 3].tolist() == [1, 1, 1, 1, 2, 2, 4]
    assert pts[4:6, 1:3].tolist() == [[2.0, 4.0], [2.0, 4.0]]
    with pytest.raises(ValueError, match="regression_ranges"):
        make_points([4, 2, 1, 1], 2, RANGES, torch.device("cpu"))


# ----------------------------------------------------------------------------- assignment


def test_hand_built_assignment_levels_points_and_targets():
    """Segment [2, 5] (length 3, centre 3.5), class 1 of 3.

    Level 0 (stride 1, range [0, 2]): the sampling window is [2, 5]; points 2.5, 3.5, 4.5 are
    inside but only 3.5 has max distance 1.5 <= 2. Level 1 (stride 2, range [2, 4]): points
    2.5 and 4.5 (max distance 2.5). Level 2 (stride 4, range [4, 1000]): point 0.5 is outside.
    """
    pts = _points()
    cls_t, reg_t, pos = assign_targets(pts, torch.tensor([[2.0, 5.0]]), torch.tensor([1]), 3)
    x = pts[:, 0]
    got = [(float(x[i]), int(pts[i, 3])) for i in torch.nonzero(pos).squeeze(1)]
    assert got == [(3.5, 1), (2.5, 2), (4.5, 2)]
    i0 = 3  # level 0, x = 3.5
    assert reg_t[i0].tolist() == [1.5, 1.5]
    i1 = 16 + 1  # level 1, x = 2.5: distances (0.5, 2.5) / stride 2
    assert reg_t[i1].tolist() == [0.25, 1.25]
    assert cls_t[pos].tolist() == [[0, 1, 0]] * 3
    assert cls_t[~pos].abs().sum() == 0 and reg_t[~pos].abs().sum() == 0


def test_center_sampling_drops_points_far_from_the_centre():
    """A long segment [0, 16] at stride 1 (range [0, 1000] everywhere): only points within
    1.5 steps of the centre 8 (strictly: 6.5 and 9.5 are on the border) are positive; without
    center sampling every inside point is."""
    pts = make_points([16], 2, [(0.0, 1000.0)], torch.device("cpu"))
    seg, lab = torch.tensor([[0.0, 16.0]]), torch.tensor([0])
    _, _, pos = assign_targets(pts, seg, lab, 1, center_radius=1.5)
    assert pts[pos, 0].tolist() == [7.5, 8.5]
    _, _, pos_all = assign_targets(pts, seg, lab, 1, center_radius=0.0)
    assert int(pos_all.sum()) == 16


def test_ties_resolve_to_the_shortest_segment_and_equal_lengths_share_the_point():
    pts = make_points([12], 2, [(0.0, 1000.0)], torch.device("cpu"))
    # long [0, 12] class 0 and short [4, 8] class 1 both contain x = 5.5, 6.5
    cls_t, reg_t, _ = assign_targets(pts, torch.tensor([[0.0, 12.0], [4.0, 8.0]]), torch.tensor([0, 1]), 3,
                                     center_radius=0.0)
    i = 6  # x = 6.5
    assert cls_t[i].tolist() == [0, 1, 0]
    assert reg_t[i].tolist() == [2.5, 1.5]
    # two segments of equal length 4 ([4, 8] class 1 and [5, 9] class 2) both containing x = 6.5:
    # positive for both classes, regressing to the first
    cls_t, reg_t, _ = assign_targets(pts, torch.tensor([[4.0, 8.0], [5.0, 9.0]]), torch.tensor([1, 2]), 3,
                                     center_radius=0.0)
    assert cls_t[i].tolist() == [0, 1, 1]
    assert reg_t[i].tolist() == [2.5, 1.5]


def _assign_loop(points, segs, labels, c, radius):
    """Direct per-point, per-segment transcription of ActionFormer's rule."""
    n = points.shape[0]
    cls_t, reg_t, pos = torch.zeros(n, c), torch.zeros(n, 2), torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        x, lo, hi, s = points[i].tolist()
        best, cands = math.inf, []
        for j, (a, b) in enumerate(segs.tolist()):
            mid = 0.5 * (a + b)
            wa, wb = (max(mid - radius * s, a), min(mid + radius * s, b)) if radius > 0 else (a, b)
            if not (x - wa > 0 and wb - x > 0):
                continue
            reach = max(x - a, b - x)
            if not (lo <= reach <= hi):
                continue
            cands.append((b - a, j))
            best = min(best, b - a)
        if not cands:
            continue
        pos[i] = True
        tied = [j for ln, j in cands if ln <= best + 1e-3]
        for j in tied:
            cls_t[i, int(labels[j])] = 1
        a, b = segs[tied[0]].tolist()
        reg_t[i] = torch.tensor([(x - a) / s, (b - x) / s])
    return cls_t, reg_t, pos


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assignment_matches_the_loop_transcription_on_random_instances(seed):
    g = torch.Generator().manual_seed(seed)
    pts = make_points([64, 32, 16, 8], 2, [(0, 4), (4, 8), (8, 16), (16, 1000)], torch.device("cpu"))
    start = torch.rand(7, generator=g) * 50
    segs = torch.stack([start, start + 0.5 + torch.rand(7, generator=g) * 30], 1)
    labels = torch.randint(0, 4, (7,), generator=g)
    got = assign_targets(pts, segs, labels, 4, center_radius=1.5)
    want = _assign_loop(pts, segs, labels, 4, 1.5)
    assert torch.equal(got[2], want[2])
    assert torch.equal(got[0], want[0])
    assert torch.allclose(got[1], want[1], atol=1e-5)


def test_assignment_rejects_bad_labels_and_handles_empty_videos():
    pts = _points()
    with pytest.raises(ValueError, match="labels must be in"):
        assign_targets(pts, torch.tensor([[1.0, 3.0]]), torch.tensor([5]), 3)
    c, r, p = assign_targets(pts, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 3)
    assert c.shape == (28, 3) and not p.any()


# ----------------------------------------------------------------------------- losses


def test_sigmoid_focal_loss_matches_transcription():
    logits = torch.tensor([[-2.0, 0.3], [1.5, -0.1]])
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    got = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    for (z, y), v in zip(zip(logits.flatten().tolist(), targets.flatten().tolist()), got.flatten().tolist()):
        p = 1 / (1 + math.exp(-z))
        want = -0.25 * (1 - p) ** 2 * math.log(p) if y == 1 else -0.75 * p**2 * math.log(1 - p)
        assert v == pytest.approx(want, rel=1e-5)


def test_quality_focal_loss_matches_transcription_and_vanishes_at_the_target():
    p = torch.tensor([0.2, 0.7, 0.5])
    q = torch.tensor([0.0, 0.4, 0.5])
    got = quality_focal_loss(p, q)
    for pi, qi, v in zip(p.tolist(), q.tolist(), got.tolist()):
        want = -abs(qi - pi) ** 2 * (qi * math.log(pi) + (1 - qi) * math.log(1 - pi))
        assert v == pytest.approx(want, rel=1e-5, abs=1e-9)
    assert got[2] == 0


def test_diou_matches_segment_transcription():
    # point at 0; predicted [-1, 3], ground truth [-2, 1]
    pred, gt = torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 1.0]])
    inter = 1 - (-1)  # [-1, 1]
    union = 4 + 3 - inter
    cover = 3 - (-2)
    rho = (1.0 - (-0.5))  # centres 1 and -0.5
    tiou, tnd = diou_terms(pred, gt)
    assert float(tiou) == pytest.approx(inter / union)
    assert float(tnd) == pytest.approx(rho**2 / cover**2)
    assert float(diou_loss(pred, gt)) == pytest.approx(1 - inter / union + rho**2 / cover**2)
    # identical segments: loss 0; disjoint-looking extremes stay finite
    assert float(diou_loss(gt, gt)) == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(diou_loss(torch.zeros(1, 2), gt)).all()


# ----------------------------------------------------------------------------- network


def _tiny_model(**kw):
    torch.manual_seed(0)
    base = dict(embed_dim=32, fpn_dim=32, head_dim=32, window_size=5, branch_layers=3,
                regression_ranges=[(0, 4), (4, 8), (8, 16), (16, 1000)])
    base.update(kw)
    return ActionFormer(16, 3, **base)


@pytest.mark.parametrize("neck", ["identity", "fpn"])
def test_padding_does_not_change_outputs(neck):
    m = _tiny_model(neck=neck, use_abs_pe=True, quality_heads=True).eval()
    x = torch.randn(1, 37, 16)
    short = m(x, torch.ones(1, 37, dtype=torch.bool))
    padded_x = torch.cat([x, torch.randn(1, 27, 16) * 5], 1)  # garbage in the padding
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, :37] = True
    long = m(padded_x, mask)
    for key in ("cls_logits", "offsets", "tiou_logits", "tnd_logits"):
        for lvl, (a, b) in enumerate(zip(short[key], long[key])):
            n = int(short["masks"][lvl].sum())
            assert torch.allclose(a[0, :n], b[0, :n], atol=1e-5), (key, lvl)


def test_local_attention_equals_banded_full_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 11, 4, generator=g) for _ in range(3))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False
    got = local_attention(q, k, v, mask, window=5)
    idx = torch.arange(11)
    band = (idx[:, None] - idx[None, :]).abs() <= 2
    scores = (q @ k.transpose(-1, -2)) / 2.0
    scores = scores.masked_fill(~(band[None, None] & mask[:, None, None, :]), float("-inf"))
    want = scores.softmax(-1) @ v
    assert torch.allclose(got[0], want[0], atol=1e-5)
    assert torch.allclose(got[1, :, :8], want[1, :, :8], atol=1e-5)


def test_model_rejects_bad_options():
    with pytest.raises(ValueError, match="window_size"):
        _tiny_model(window_size=[5, 5])
    with pytest.raises(ValueError, match="fpn_dim"):
        _tiny_model(fpn_dim=16)
    with pytest.raises(ValueError, match="dataset.feature_dim"):
        _tiny_model()(torch.randn(1, 8, 7), torch.ones(1, 8, dtype=torch.bool))


# ----------------------------------------------------------------------------- method


def test_decode_turns_points_into_segments():
    m = ActionFormerMethod(_tiny_model(), ema_decay=0.0, pre_nms_topk=2)
    pts = make_points([4, 2], 2, [(0, 4), (4, 100)], torch.device("cpu"))
    out = {
        "points": pts,
        "masks": [torch.tensor([[True, True, True, False]]), torch.tensor([[True, True]])],
        "offsets": [torch.tensor([[[1.0, 2.0], [0.5, 0.5], [0.0, 0.0], [9.0, 9.0]]]),
                    torch.tensor([[[1.0, 1.0], [0.25, 0.5]]])],
    }
    scores = [torch.tensor([[[0.9, 0.0], [0.0, 0.5], [0.0001, 0.0], [1.0, 1.0]]]),  # last step padded
              torch.tensor([[[0.0, 0.0], [0.3, 0.0]]])]
    (res,) = m.decode(out, scores)
    # level 0: (x=0.5, class 0, [-0.5, 2.5]) and (x=1.5, class 1, [1.0, 2.0]); level 1: x=2.5 stride 2
    assert res["labels"].tolist() == [0, 1, 0]
    assert torch.allclose(res["scores"], torch.tensor([0.9, 0.5, 0.3]))
    assert torch.allclose(res["segments"], torch.tensor([[-0.5, 2.5], [1.0, 2.0], [2.0, 3.5]]))


def test_training_step_losses_and_normaliser():
    model = _tiny_model()
    m = ActionFormerMethod(model, ema_decay=0.5, init_loss_norm=100.0)
    batch = {
        "features": torch.randn(2, 32, 16), "mask": torch.ones(2, 32, dtype=torch.bool),
        "segments": [torch.tensor([[3.0, 9.0]]), torch.zeros(0, 2)],
        "labels": [torch.tensor([2]), torch.zeros(0, dtype=torch.long)],
    }
    losses = m.training_step(batch)
    assert set(losses) == {"loss", "cls_loss", "reg_loss"}
    n_pos = m.log_metrics()["num_pos"]
    assert n_pos > 0
    assert float(m.loss_norm) == pytest.approx(0.9 * 100 + 0.1 * n_pos)
    losses["loss"].backward()
    assert model.cls_head.finals[0].conv.weight.grad is not None
    before = [p.clone() for p in m.ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    m.on_train_step_end()
    after = list(m.ema.parameters())
    assert all(torch.allclose(a, b + 0.5, atol=1e-6) for a, b in zip(after, before))
