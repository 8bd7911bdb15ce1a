"""ActionFormer: label assignment, losses against direct transcriptions, masking, decoding."""
from __future__ import annotations

from functools import partial

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
import numpy as np
import torch.nn.functional as F

from taltoolkit.data.sampling import VariableLengthDataset, crop_window
from taltoolkit.engine.method import Stage
from taltoolkit.engine.trainer import Trainer
from taltoolkit.methods.actionformer import ActionFormerMethod
from taltoolkit.models.actionformer import ActionFormer, ChannelNorm, TransformerBlock, local_attention, sinusoid_encoding
from taltoolkit.structures import Video

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


def _perturb(model):
    """Every parameter away from its initial value (LayerNorm biases, which padded steps carry
    into the network, included)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def _same_real_outputs(a, b, keys=("cls_logits", "offsets")):
    for key in keys:
        for lvl, (x, y) in enumerate(zip(a[key], b[key])):
            n = int(a["masks"][lvl].sum())
            assert n == int(b["masks"][lvl].sum())
            if not torch.allclose(x[0, :n], y[0, :n], atol=1e-5):
                return False
    return True


@pytest.mark.parametrize("neck", ["identity", "fpn"])
def test_padding_content_and_extra_padding_do_not_change_outputs(neck):
    """Garbage in padded steps never reaches real ones, and padding beyond the public rule
    (every level with a padded step) changes nothing either, with trained-looking weights."""
    m = _perturb(_tiny_model(neck=neck, use_abs_pe=True, quality_heads=True, max_seq_len=64)).eval()
    x = torch.randn(1, 37, 16)
    short = m(x, torch.ones(1, 37, dtype=torch.bool))  # padded to 48 by the model (public: 64)
    assert short["cls_logits"][0].shape[1] == 48
    padded_x = torch.cat([x, torch.randn(1, 91, 16) * 5], 1)  # garbage in the padding
    mask = torch.zeros(1, 128, dtype=torch.bool)
    mask[0, :37] = True
    long = m(padded_x, mask)
    assert _same_real_outputs(short, long, ("cls_logits", "offsets", "tiou_logits", "tnd_logits"))


def test_padded_length_follows_the_public_padding():
    """The public code pads to max_seq_len (longer inputs to a multiple of its unit, here
    8 x (5 // 2) x 2 = 32); the model adds one block of 2^(levels-1) = 8 steps exactly when
    that would give every level a padded step, which gives the same outputs."""
    m = _tiny_model(max_seq_len=64)
    assert m.divisor == 8 and m.max_div_factor == 32
    assert [m.padded_length(t) for t in (37, 40, 56, 57, 64, 65, 96, 100)] == [48, 48, 64, 64, 64, 80, 96, 112]
    assert _tiny_model().padded_length(40) == 40  # max_seq_len=None: the next multiple only
    m = _perturb(m).eval()
    for t in (40, 56, 65):  # outputs equal those of the public length (64, 64, 96)
        public = 64 if t <= 64 else 96
        x = torch.randn(1, t, 16)
        mask = torch.zeros(1, public, dtype=torch.bool)
        mask[0, :t] = True
        assert _same_real_outputs(m(x, torch.ones(1, t, dtype=torch.bool)), m(F.pad(x, (0, 0, 0, public - t)), mask))
    # without the extra block, the last real step of a length-40 input reads no padded step
    x = torch.randn(1, 40, 16)
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, :40] = True
    m.max_seq_len = None
    assert not _same_real_outputs(m(x, torch.ones(1, 40, dtype=torch.bool)), m(F.pad(x, (0, 0, 0, 24)), mask))


def test_blocks_scale_both_branches_by_a_per_channel_factor_from_1e_4():
    """ActionFormer's AffineDropPath: out = pool(x) + s1 * attn(LN(x)), then + s2 * mlp(LN(out)),
    s1, s2 per channel, initialised to 1e-4 whenever drop path is on."""
    torch.manual_seed(0)
    blk = TransformerBlock(8, 2, 5, stride=2, drop_path=0.1).eval()
    assert blk.scale_attn.scale.shape == (8,) and torch.all(blk.scale_attn.scale == 1e-4)
    assert torch.all(blk.scale_mlp.scale == 1e-4)
    with torch.no_grad():
        blk.scale_attn.scale.copy_(torch.linspace(-1, 1, 8))
        blk.scale_mlp.scale.copy_(torch.linspace(2, 3, 8))
        for mod in blk.modules():  # non-trivial norms
            if isinstance(mod, torch.nn.LayerNorm):
                mod.bias.normal_()
    x, mask = torch.randn(1, 8, 12), torch.ones(1, 12, dtype=torch.bool)
    got, _ = blk(x, mask)
    attn, _ = blk.attn(blk.ln1(x), mask)
    out = blk.skip(x) + torch.linspace(-1, 1, 8)[None, :, None] * attn
    want = out + torch.linspace(2, 3, 8)[None, :, None] * blk.mlp(blk.ln2(out))
    assert torch.allclose(got, want, atol=1e-6)
    # the public code has the scales exactly when drop path is on; layer_scale_init=None: none
    assert TransformerBlock(8, 2, 5, drop_path=0.0).scale_attn is None
    assert TransformerBlock(8, 2, 5, drop_path=0.1, layer_scale_init=None).scale_mlp is None
    m = _tiny_model()
    assert all(b.scale_attn is not None for b in [*m.stem, *m.branch])


def test_absolute_position_encoding_is_scaled_by_one_over_sqrt_channels():
    """ActivityNet's absolute encoding is added after the projection, divided by sqrt(C)."""
    on = _tiny_model(use_abs_pe=True).eval()
    off = _tiny_model(use_abs_pe=False).eval()
    seen = {}
    for name, model in (("on", on), ("off", off)):
        model.stem[0].register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0]))
    x, mask = torch.randn(1, 40, 16), torch.zeros(1, 40, dtype=torch.bool)
    mask[0, :30] = True
    on(x, mask), off(x, mask)
    want = sinusoid_encoding(40, 32, torch.device("cpu")) / math.sqrt(32) * mask[:, None]
    assert torch.allclose(seen["on"] - seen["off"], want, atol=1e-6)
    # the standard table: sin at even channels, cos at odd ones, frequency 10000^(-2i/C)
    pe = sinusoid_encoding(40, 32, torch.device("cpu"))
    assert float(pe[2, 7]) == pytest.approx(math.sin(7 / 10000 ** (2 / 32)), abs=1e-6)
    assert float(pe[3, 7]) == pytest.approx(math.cos(7 / 10000 ** (2 / 32)), abs=1e-6)


def test_weight_decay_split_exempts_norms_biases_and_scales():
    model = _tiny_model(neck="fpn", quality_heads=True)
    m = ActionFormerMethod(model, ema_decay=0.5)
    names = {id(p): n for n, p in m.named_parameters()}
    exempt = {names[id(p)] for p in m.no_weight_decay_parameters()}
    for n, p in m.model.named_parameters():
        module = m.model.get_submodule(n.rsplit(".", 1)[0]) if "." in n else m.model
        is_norm = isinstance(module, torch.nn.LayerNorm)
        want = n.endswith("bias") or (is_norm and n.endswith("weight")) or n.endswith(".scale") or n == "scales"
        assert (f"model.{n}" in exempt) == want, n
    assert any(n.endswith("scale_attn.scale") for n in exempt)
    # the trainer puts them in a group without decay
    trainer = Trainer(optimizer=partial(torch.optim.AdamW), weight_decay=0.05, device="cpu", progress=False)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = trainer.build_optimizer(params, Stage(), m.no_weight_decay_parameters())
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in m.no_weight_decay_parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)
    # weight_decay_split=False: one group, every parameter decayed (the earlier rule)
    old = ActionFormerMethod(_tiny_model(), ema_decay=0.0, weight_decay_split=False)
    assert old.no_weight_decay_parameters() == []
    assert len(trainer.build_optimizer(list(old.parameters()), Stage(), []).param_groups) == 1


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
    scores = [torch.tensor([[[0.9, 0.0], [0.0, 0.5], [0.2, 0.0005], [1.0, 1.0]]]),  # last step padded
              torch.tensor([[[0.0, 0.0], [0.3, 0.0]]])]
    (res,) = m.decode(out, scores)
    # top 2 per level (0.2 is level 0's third; 0.0005 is under pre_nms_thresh): level 0 gives
    # (x=0.5, class 0, [-0.5, 2.5]) and (x=1.5, class 1, [1.0, 2.0]); level 1 x=2.5 stride 2
    # (a top 2 over both levels would keep only 0.9 and 0.5; no top-k would add the 0.2)
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


def test_auto_loss_weight_balances_as_the_public_code():
    """loss_weight <= 0: L = L_cls + (L_cls / max(L_reg, 0.01)) L_reg, the ratio without gradient."""
    model = _tiny_model()
    batch = {
        "features": torch.randn(1, 32, 16), "mask": torch.ones(1, 32, dtype=torch.bool),
        "segments": [torch.tensor([[3.0, 9.0]])], "labels": [torch.tensor([1])],
    }
    out = ActionFormerMethod(model, ema_decay=0.0, loss_weight=-1.0).training_step(batch)
    cls, reg = float(out["cls_loss"].detach()), float(out["reg_loss"].detach())
    assert float(out["loss"].detach()) == pytest.approx(cls + cls / max(reg, 0.01) * reg, rel=1e-6)


# ----------------------------------------------------------------------------- crops

# THUMOS14 I3D timing: 16-frame windows every 4 frames at 30 fps; ActionFormer's feature offset
# is 0.5 * 16 / 4 = 2 steps.
FPS, STRIDE, FRAMES = 30.0, 4, 16
STEP_S, OFFSET_S = STRIDE / FPS, (FRAMES / 2 - STRIDE / 2) / FPS


def _video(t: int, grid_segments: list[list[float]]) -> Video:
    segs = np.asarray(grid_segments, np.float64)
    return Video("v", np.zeros((t, 2), np.float32), OFFSET_S + t * STEP_S, FPS, STEP_S, OFFSET_S, "train",
                 OFFSET_S + segs * STEP_S, np.arange(len(segs)) % 3, np.ones(3, np.float32))


def _truncate_transcription(grid: np.ndarray, st: int, length: int, f: float, thresh: float = 0.5):
    """ActionFormer's truncate_feats for a given window start, in its coordinates, where step k
    sits at k (the library's k + 0.5): segments against [st - f, st + length + f]."""
    seg = grid - 0.5
    left = np.maximum(st - f, seg[:, 0])
    right = np.minimum(st + length + f, seg[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.clip(right - left, 0.0, None) / np.abs(seg[:, 1] - seg[:, 0])  # 0 / 0 = nan: dropped
    keep = ratio >= thresh
    return np.stack([left[keep], right[keep]], 1) - st + 0.5, np.nonzero(keep)[0]


def test_crops_widen_the_window_by_the_feature_offset_as_truncate_feats():
    f = 0.5 * FRAMES / STRIDE  # 2 steps
    grid = [[1.0, 5.0], [18.0, 24.0], [30.0, 41.0], [55.0, 62.0], [70.0, 70.0], [77.5, 86.0], [90.0, 99.5]]
    v = _video(100, grid)
    ds = VariableLengthDataset([v], max_seq_len=40, training=True, crop_ratio=(0.9, 1.0), seed=0)
    beyond = 0
    for epoch in range(40):
        ds.set_epoch(epoch)
        item = ds[0]
        st, length = int(item["positions"][0]), len(item["positions"])
        assert length == 40
        want, kept = _truncate_transcription(v.to_steps(v.segments), st, length, f)
        np.testing.assert_allclose(item["segments"], want, atol=1e-4)
        assert item["labels"].tolist() == v.labels[kept].tolist()
        beyond += int(((item["segments"] < 0) | (item["segments"] > length)).any())
    assert beyond > 5  # the margin matters in these crops
    # library grid margins: offset_s / step_s = f - 0.5 before, f + 0.5 after
    assert OFFSET_S / STEP_S == pytest.approx(f - 0.5)


def test_uncut_videos_keep_every_segment_unclipped():
    """truncate_feats returns a video it does not cut as it is (even an instance running past
    the features); a cut never keeps a zero-length instance."""
    v = _video(30, [[-1.0, 4.0], [10.0, 10.0], [25.0, 33.0]])
    ds = VariableLengthDataset([v], max_seq_len=40, training=True, crop_ratio=(1.0, 1.0), seed=0)
    item = ds[0]
    np.testing.assert_allclose(item["segments"], v.to_steps(v.segments), atol=1e-5)
    assert item["labels"].tolist() == [0, 1, 2]
    rng = np.random.default_rng(0)
    for _ in range(20):
        st, ed, kept = crop_window(30, v.to_steps(v.segments), 20, rng, margin=(1.5, 2.5))
        assert ed - st == 20 and 1 not in kept.tolist()
    # margin=None: the earlier rule (the window itself; a zero-length instance inside counts)
    st, ed, kept = crop_window(30, np.array([[10.0, 10.0]]), 30, rng, crop_ratio=None)
    assert (st, ed) == (0, 30) and kept.tolist() == [0]


def test_heads_read_the_neck_norm_bias_at_padded_steps():
    """The public necks do not re-mask after their LayerNorm: the heads' first convolution
    reads the norm's bias one step past the last real step."""
    m = _tiny_model(max_seq_len=64).eval()
    with torch.no_grad():
        for norm in m.neck_norm:
            norm.bias.fill_(0.5)
    seen = []
    m.cls_head.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    out = m(torch.randn(1, 37, 16), torch.ones(1, 37, dtype=torch.bool))
    assert torch.allclose(seen[0][0, :, 37:], torch.full_like(seen[0][0, :, 37:], 0.5))
    assert out["features"][0][0, 37:].abs().sum() == 0  # the returned features stay masked


@pytest.mark.parametrize("affine", [True, False])
def test_channel_norm_is_layer_norm_over_channels(affine):
    # ChannelNorm computes along the channel axis of (B, C, T) by hand; torch's LayerNorm on
    # the transposed tensor is the reference (float64, so only the formula can differ).
    torch.manual_seed(0)
    norm = ChannelNorm(6, elementwise_affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-1, 1)
    x = torch.randn(3, 6, 11, dtype=torch.float64) * 4 + 2
    want = torch.nn.functional.layer_norm(x.transpose(1, 2), (6,), norm.weight, norm.bias, norm.eps).transpose(1, 2)
    got = norm(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous()
