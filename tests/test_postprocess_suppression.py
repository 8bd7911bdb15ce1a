"""nms / batched_nms / soft_nms / nms_voting against plain greedy loops written out here."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import taltoolkit.postprocess.suppression as nms_mod
from taltoolkit.postprocess.suppression import batched_nms, nms, nms_voting, segment_iou, soft_nms, soft_nms_indices

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])




# ----------------------------------------------------------------------------- references


def ref_iou(a, b, cast=float):
    """IoU with the same arithmetic order as the library, in the precision given by ``cast``."""
    s1, e1, s2, e2 = (cast(v) for v in (a[0], a[1], b[0], b[1]))
    inter = max(cast(0), min(e1, e2) - max(s1, s2))
    union = (e1 - s1) + (e2 - s2) - inter
    return inter / union if union > 0 else cast(0)


def ref_nms(segs, scores, thr, keys=None, cast=float):
    """Textbook greedy NMS: visit by decreasing score (ties: lower index), keep unless a kept
    segment of the same key has IoU > thr (compared as a double, like torchvision's C++)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(
            (keys is not None and keys[i] != keys[j]) or not float(ref_iou(segs[i], segs[j], cast)) > thr
            for j in kept
        ):
            kept.append(i)
    return kept


def ref_nms_np(segs, scores, thr, keys=None):
    """Greedy NMS loop over segments with a numpy check against the kept ones (for large N)."""
    segs = np.asarray(segs, np.float64)
    scores = np.asarray(scores)
    keys = np.zeros(len(scores), np.int64) if keys is None else np.asarray(keys)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        same = [j for j in kept if keys[j] == keys[i]]
        if same:
            k = segs[same]
            inter = np.maximum(0.0, np.minimum(segs[i, 1], k[:, 1]) - np.maximum(segs[i, 0], k[:, 0]))
            union = (segs[i, 1] - segs[i, 0]) + (k[:, 1] - k[:, 0]) - inter
            iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
            if (iou > thr).any():
                continue
        kept.append(i)
    return kept


def ref_soft_nms(segs, scores, thr, sigma, min_score, method, keys=None):
    """Sequential Soft-NMS per key; returns [(index, score)] by decreasing score, ties by index."""
    n = len(scores)
    keys = [0] * n if keys is None else keys
    out = []
    for key in sorted(set(keys)):
        rem = {i: scores[i] for i in range(n) if keys[i] == key and (min_score is None or scores[i] >= min_score)}
        while rem:
            i = min(rem, key=lambda j: (-rem[j], j))
            out.append((i, rem.pop(i)))
            for j in list(rem):
                o = ref_iou(segs[i], segs[j])
                if method == "gaussian":
                    w = math.exp(-o * o / sigma)
                elif method == "linear":
                    w = 1 - o if o > thr else 1.0
                else:
                    w = 0.0 if o > thr else 1.0
                rem[j] *= w
                if min_score is not None and rem[j] < min_score:
                    del rem[j]
    out.sort(key=lambda t: (-t[1], t[0]))
    return out


# ----------------------------------------------------------------------------- random cases


def random_case(seed: int, max_n: int = 120):
    """Segments on a coarse grid (so ties, duplicates, nesting, zero length and IoU exactly
    at the threshold all happen), integer-valued scores (many ties), 3 labels, 2 groups."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, max_n))
    start = rng.integers(0, 40, n) / 2
    length = rng.integers(0, 16, n) / 2
    length[rng.random(n) < 0.1] = 0.0  # zero-length
    segs = np.stack([start, start + length], 1)
    if n > 4:  # exact duplicates and a nested family
        segs[1] = segs[0]
        segs[3] = [segs[2, 0] + 0.5, segs[2, 1] + 0.5] if length[2] else segs[3]
    scores = rng.integers(0, 6, n).astype(np.float64)
    labels = rng.integers(0, 3, n)
    groups = rng.integers(0, 2, n)
    return segs, scores, labels, groups


THRESHOLDS = [0.0, 0.25, 0.5, 0.7, 1.0]


@pytest.mark.parametrize("device", DEVICES)
def test_nms_matches_greedy_loop(device):
    for seed in range(300):
        segs, scores, labels, groups = random_case(seed)
        thr = THRESHOLDS[seed % len(THRESHOLDS)]
        s_t = torch.tensor(segs, dtype=torch.float64, device=device)
        c_t = torch.tensor(scores, dtype=torch.float64, device=device)
        got = nms(s_t, c_t, thr)
        assert got.dtype == torch.long and got.device.type == device
        assert got.tolist() == ref_nms(segs.tolist(), scores.tolist(), thr), (seed, thr)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_matches_greedy_loop(device):
    for seed in range(300):
        segs, scores, labels, groups = random_case(seed)
        thr = THRESHOLDS[seed % len(THRESHOLDS)]
        s_t = torch.tensor(segs, device=device)
        c_t = torch.tensor(scores, device=device)
        l_t = torch.tensor(labels, device=device)
        g_t = torch.tensor(groups, device=device)
        got = batched_nms(s_t, c_t, l_t, thr)
        assert got.tolist() == ref_nms(segs.tolist(), scores.tolist(), thr, labels.tolist()), (seed, thr)
        got = batched_nms(s_t, c_t, l_t, thr, groups=g_t)
        keys = list(zip(groups.tolist(), labels.tolist()))
        assert got.tolist() == ref_nms(segs.tolist(), scores.tolist(), thr, keys), (seed, thr)


@pytest.mark.parametrize("device", DEVICES)
def test_nms_many_blocks_and_chunks(device, monkeypatch):
    # Small blocks and pair budget force the cross-block path and its chunking on small inputs.
    monkeypatch.setattr(nms_mod, "_BLOCK", 16)
    monkeypatch.setattr(nms_mod, "_PAIR_BUDGET", 64)
    for seed in range(24):
        rng = np.random.default_rng(1000 + seed)
        n = int(rng.integers(50, 400))
        start = rng.random(n) * 100
        segs = np.stack([start, start + rng.random(n) * 20], 1)
        if seed % 4 == 0:
            segs = np.round(segs)  # ties in starts and IoU on the threshold
        scores = rng.random(n) if seed % 3 else rng.integers(0, 4, n).astype(float)
        labels = rng.integers(0, 4, n)
        thr = [0.0, 0.1, 0.5, 0.8][seed % 4]
        s_t, c_t = torch.tensor(segs, device=device), torch.tensor(scores, device=device)
        assert nms(s_t, c_t, thr).tolist() == ref_nms_np(segs, scores, thr), seed
        got = batched_nms(s_t, c_t, torch.tensor(labels, device=device), thr).tolist()
        assert got == ref_nms_np(segs, scores, thr, labels), seed


def test_nms_large_matches_loop():
    rng = np.random.default_rng(7)
    n = 2000  # several default-size blocks
    start = rng.random(n) * 500
    segs = np.stack([start, start + rng.random(n) * 30 + 0.1], 1)
    scores = rng.random(n)
    for thr in (0.3, 0.7):
        assert nms(torch.tensor(segs), torch.tensor(scores), thr).tolist() == ref_nms_np(segs, scores, thr)


def test_suppression_chain_converges():
    # Sliding windows with decreasing scores: every segment overlaps its successor, the
    # longest possible suppression chain for the fixed-point iteration.
    n = 600
    s = torch.arange(n, dtype=torch.float64)
    segs = torch.stack([s, s + 10], 1)
    scores = -s
    assert nms(segs, scores, 0.5).tolist() == ref_nms_np(segs.numpy(), scores.numpy(), 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_threshold_is_compared_as_double(device):
    # IoU = 1/10. In float32 that is 0.1f = 0.10000000149 > 0.1, so torchvision's C++
    # (float IoU vs double threshold) suppresses; in float64 it equals 0.1 and does not.
    segs = [[0.0, 10.0], [9.0, 10.0]]
    scores = [1.0, 0.5]
    f32 = nms(torch.tensor(segs, dtype=torch.float32, device=device), torch.tensor(scores, device=device), 0.1)
    f64 = nms(torch.tensor(segs, dtype=torch.float64, device=device), torch.tensor(scores, device=device), 0.1)
    assert f32.tolist() == [0] == ref_nms(segs, scores, 0.1, cast=np.float32)
    assert f64.tolist() == [0, 1] == ref_nms(segs, scores, 0.1)


def test_float32_random_matches_float32_reference():
    for seed in range(60):
        segs, scores, labels, _ = random_case(seed, max_n=60)
        segs = segs.astype(np.float32) * np.float32(1.3)  # non-dyadic products
        thr = [0.1, 0.3, 0.7][seed % 3]
        got = nms(torch.tensor(segs), torch.tensor(scores, dtype=torch.float32), thr)
        assert got.tolist() == ref_nms(segs.tolist(), scores.tolist(), thr, cast=np.float32), seed


@pytest.mark.parametrize("device", DEVICES)
def test_degenerate_inputs(device):
    empty = nms(torch.zeros(0, 2, device=device), torch.zeros(0, device=device), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.long and empty.device.type == device
    assert batched_nms(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).numel() == 0
    same = torch.tensor([[1.0, 3.0]] * 5, device=device)
    # identical segments with equal scores: the lowest index survives
    assert nms(same, torch.ones(5, device=device), 0.5).tolist() == [0]
    assert nms(same, torch.tensor([1.0, 3, 3, 2, 0], device=device), 0.99).tolist() == [1]
    # zero-length segments (also identical ones) never suppress or get suppressed
    zero = torch.tensor([[2.0, 2.0], [2.0, 2.0], [1.0, 3.0]], device=device)
    assert nms(zero, torch.tensor([3.0, 2.0, 1.0], device=device), 0.0).tolist() == [0, 1, 2]
    # threshold 1 keeps everything, threshold 0 drops every strict overlap
    segs = torch.tensor([[0.0, 4.0], [3.0, 5.0], [4.0, 6.0]], device=device)
    sc = torch.tensor([3.0, 2.0, 1.0], device=device)
    assert nms(segs, sc, 1.0).tolist() == [0, 1, 2]
    assert nms(segs, sc, 0.0).tolist() == [0, 2]  # [4, 6] only touches [0, 4]
    # integer coordinates are accepted
    assert nms(torch.tensor([[0, 4], [1, 4]]), torch.tensor([1.0, 2.0]), 0.5).tolist() == [1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(torch.zeros(1, 2), torch.zeros(1), -0.1)
    with pytest.raises(ValueError, match="shape"):
        nms(torch.zeros(3), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        nms(torch.zeros(2, 2), torch.tensor([1.0, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="method"):
        soft_nms(torch.zeros(1, 2), torch.ones(1), method="cubic")


def test_segment_iou():
    a = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 3.0], [1.0, 1.0], [5.0, 6.0]])
    expected = [[1 / 3, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert torch.allclose(segment_iou(a, b), torch.tensor(expected, dtype=torch.float32))


# ----------------------------------------------------------------------------- Soft-NMS


def _check_soft(got_idx, got_sc, ref, ctx):
    assert got_idx.tolist() == [i for i, _ in ref], ctx
    np.testing.assert_allclose(got_sc.cpu().numpy(), [s for _, s in ref], rtol=1e-12, atol=1e-15, err_msg=str(ctx))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
def test_soft_nms_matches_sequential_loop(device, method):
    for seed in range(70):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(0, 70))
        start = rng.random(n) * 30
        length = rng.random(n) * 8
        length[rng.random(n) < 0.1] = 0.0
        segs = np.stack([start, start + length], 1)
        if n > 3:
            segs[1] = segs[0]  # duplicates with equal scores test the index tie-break
        scores = rng.random(n)
        if n > 3:
            scores[1] = scores[0]
        labels = rng.integers(0, 3, n)
        thr = [0.0, 0.3, 0.6][seed % 3]
        min_score = [1e-3, 0.05, None][seed % 3 if method != "hard" else 0]
        sigma = [0.5, 0.3][seed % 2]
        s_t, c_t = torch.tensor(segs, device=device), torch.tensor(scores, device=device)
        for keys in (None, labels):
            k_t = None if keys is None else torch.tensor(keys, device=device)
            idx, sc = soft_nms_indices(s_t, c_t, k_t, thr, sigma, min_score, method)
            ref = ref_soft_nms(segs.tolist(), scores.tolist(), thr, sigma, min_score, method,
                               None if keys is None else keys.tolist())
            _check_soft(idx, sc, ref, (seed, method, keys is None))


def test_soft_nms_negative_scores_without_floor():
    # With min_score=None negative scores take part (OIC scores can be negative) and a decay
    # raises them towards 0; the result must still be the sequential one.
    for seed in range(40):
        rng = np.random.default_rng(500 + seed)
        n = int(rng.integers(1, 60))
        start = rng.random(n) * 20
        segs = np.stack([start, start + rng.random(n) * 6], 1)
        scores = rng.random(n) - 0.5
        method = ["gaussian", "linear"][seed % 2]
        idx, sc = soft_nms_indices(torch.tensor(segs), torch.tensor(scores), None, 0.2, 0.5, None, method)
        _check_soft(idx, sc, ref_soft_nms(segs.tolist(), scores.tolist(), 0.2, 0.5, None, method), seed)


def test_soft_nms_groups_and_top_k():
    rng = np.random.default_rng(3)
    n = 200
    start = rng.random(n) * 50
    segs = np.stack([start, start + rng.random(n) * 10], 1)
    scores = rng.random(n)
    labels = rng.integers(0, 3, n)
    groups = rng.integers(0, 4, n)
    t = {k: torch.tensor(v) for k, v in dict(s=segs, c=scores, l=labels, g=groups).items()}
    idx, sc = soft_nms_indices(t["s"], t["c"], t["l"], groups=t["g"], top_k=5)
    for g in range(4):
        m = groups == g
        sub = np.flatnonzero(m)
        ref = ref_soft_nms(segs[m].tolist(), scores[m].tolist(), 0.5, 0.5, 1e-3, "gaussian", labels[m].tolist())
        # top_k per (group, label) then per group, by decreasing score
        per_label: dict[int, int] = {}
        capped = []
        for i, s in ref:
            lab = labels[sub[i]]
            per_label[lab] = per_label.get(lab, 0) + 1
            if per_label[lab] <= 5:
                capped.append((sub[i], s))
        capped = capped[:5]
        got = [(i, s) for i, s in zip(idx.tolist(), sc.tolist()) if groups[i] == g]
        assert [i for i, _ in got] == [i for i, _ in capped]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in capped], rtol=1e-12)
    assert sc.tolist() == sorted(sc.tolist(), reverse=True)


def test_soft_nms_hard_equals_nms_and_wrapper():
    segs, scores, labels, _ = random_case(11, max_n=200)
    s_t, c_t, l_t = torch.tensor(segs), torch.tensor(scores + 1.0), torch.tensor(labels)
    idx, _ = soft_nms_indices(s_t, c_t, l_t, 0.4, method="hard")
    assert sorted(idx.tolist()) == sorted(batched_nms(s_t, c_t, l_t, 0.4).tolist())
    out_s, out_c, out_l = soft_nms(s_t, c_t, l_t, 0.4, top_k=7)
    idx, sc = soft_nms_indices(s_t, c_t, l_t, 0.4, top_k=7)
    assert torch.equal(out_s, s_t[idx]) and torch.equal(out_c, sc) and torch.equal(out_l, l_t[idx])
    assert len(out_c) == 7
    _, _, none_labels = soft_nms(s_t, c_t)
    assert none_labels is None
    empty = soft_nms(torch.zeros(0, 2), torch.zeros(0))
    assert empty[0].shape == (0, 2) and empty[1].shape == (0,)


def test_soft_nms_gaussian_by_hand():
    # Two segments with IoU 0.5: the second is multiplied by exp(-0.25 / sigma).
    segs = torch.tensor([[0.0, 2.0], [1.0, 2.0], [5.0, 6.0]], dtype=torch.float64)
    idx, sc = soft_nms_indices(segs, torch.tensor([0.9, 0.8, 0.1], dtype=torch.float64), sigma=0.5)
    assert idx.tolist() == [0, 1, 2]
    assert sc.tolist() == pytest.approx([0.9, 0.8 * math.exp(-0.25 / 0.5), 0.1])


# ----------------------------------------------------------------------------- voting


@pytest.mark.parametrize("device", DEVICES)
def test_voting_by_hand(device):
    cands = torch.tensor([[0.0, 10.0], [1.0, 11.0], [5.0, 15.0]], dtype=torch.float64, device=device)
    scores = torch.tensor([0.9, 0.6, 0.5], dtype=torch.float64, device=device)
    kept = cands[:1]
    # IoU with [1, 11] is 9/11 >= 0.75 (weight 0.6 * 9/11); [5, 15] has 1/3 and does not vote.
    # start = (0.9 * 0 + 5.4/11 * 1) / (0.9 + 5.4/11) = 6/17, end = 176/17.
    out = nms_voting(kept, cands, scores, 0.75)
    assert out.tolist()[0] == pytest.approx([6 / 17, 176 / 17], rel=1e-12)
    # with labels the other-label candidate does not vote -> unchanged
    out = nms_voting(kept, cands, scores, 0.75, labels=torch.tensor([0], device=device),
                     all_labels=torch.tensor([0, 1, 0], device=device))
    assert out.tolist()[0] == [0.0, 10.0]
    # a kept segment with no voter stays as it is
    out = nms_voting(torch.tensor([[100.0, 101.0]], device=device), cands, scores, 0.5)
    assert out.tolist() == [[100.0, 101.0]]
    assert nms_voting(torch.zeros(0, 2), cands.cpu(), scores.cpu(), 0.5).shape == (0, 2)


def test_the_package_gives_the_functions_not_the_module():
    """``from taltoolkit.postprocess import nms`` is the function (the module is ``suppression``)."""
    import taltoolkit.postprocess as pp

    assert pp.nms is nms and callable(pp.nms)
    assert pp.soft_nms is soft_nms and pp.batched_nms is batched_nms
    keep = pp.nms(torch.tensor([[0.0, 2.0], [0.1, 2.0], [5.0, 6.0]]), torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]
