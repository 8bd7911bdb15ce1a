"""COPL's components against direct transcriptions of the paper's equations on small inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from taltoolkit.losses.copl import (
    action_selection_loss,
    classification_loss,
    ema_update,
    inner_consistency_loss,
    outer_consistency_loss,
    selection_scores,
    selection_targets,
    snippet_contrastive_loss,
    temporal_feature_shift,
)
from taltoolkit.models.iocnet import IOCNet
from taltoolkit.pseudo.has import above_median, global_video_feature, has_attention, vote
from taltoolkit.pseudo.plri import (
    affinity_graph,
    align_clusters,
    kmeans,
    plri_confidence,
    plri_split,
    spectral_clustering,
    spectral_embedding,
)


# ----------------------------------------------------------------------------- HAS (Eq. 1-5)
def test_above_median_uses_numpy_median():
    a = torch.tensor([0.1, 0.4, 0.2, 0.3])  # median 0.25 (mean of the middle two)
    assert above_median(a).tolist() == [False, True, False, True]
    b = torch.tensor([0.5, 0.1, 0.9])  # odd: median 0.5, strictly above only
    assert above_median(b).tolist() == [False, False, True]


def test_has_keeps_top_k_of_two_branch_consistent_snippets():
    # T = 10, gamma = 5 -> k = 2. Medians: a_cs 0.25, a_ca 0.45.
    a_cs = torch.tensor([0.9, 0.8, 0.1, 0.2, 0.7, 0.1, 0.1, 0.6, 0.3, 0.2])
    a_ca = torch.tensor([0.2, 0.9, 0.1, 0.8, 0.9, 0.3, 0.4, 0.5, 0.6, 0.1])
    # High in both: steps 1 (0.8, 0.9), 4 (0.7, 0.9), 7 (0.6, 0.5), 8 (0.3, 0.6). Step 0 is high in
    # A_cs only, step 3 in A_ca only. A_c there: 0.85, 0.8, 0.55, 0.45 -> top-2 = steps 1, 4.
    out = has_attention(a_cs, a_ca, gamma=5)
    expected = torch.zeros(10)
    expected[1], expected[4] = 0.85, 0.8
    assert torch.allclose(out, expected)
    # gamma = 2 -> k = 5: all four consistent steps survive, nothing else.
    out = has_attention(a_cs, a_ca, gamma=2)
    assert torch.nonzero(out).flatten().tolist() == [1, 4, 7, 8]
    assert torch.allclose(out[[1, 4, 7, 8]], torch.tensor([0.85, 0.8, 0.55, 0.45]))


def test_has_single_branch_and_unfiltered_variants():
    a_cs = torch.tensor([0.9, 0.8, 0.1, 0.2, 0.7, 0.1, 0.1, 0.6, 0.3, 0.2])
    a_ca = torch.tensor([0.2, 0.9, 0.1, 0.8, 0.9, 0.3, 0.4, 0.5, 0.6, 0.1])
    cs = has_attention(a_cs, a_ca, gamma=5, branch="cs")  # top-2 of A_cs: steps 0, 1
    assert torch.nonzero(cs).flatten().tolist() == [0, 1] and torch.allclose(cs[[0, 1]], a_cs[[0, 1]])
    ca = has_attention(a_cs, a_ca, gamma=5, branch="ca")  # top-2 of A_ca: steps 1, 4 (0.9 each)
    assert torch.nonzero(ca).flatten().tolist() == [1, 4]
    assert torch.equal(has_attention(a_cs, a_ca, branch="none"), a_ca)
    with pytest.raises(ValueError, match="branch"):
        has_attention(a_cs, a_ca, branch="nope")


def test_has_k_is_at_least_one_and_constant_attention_falls_back():
    a = torch.full((7,), 0.5)  # nothing strictly above the median
    out = has_attention(a, a, gamma=20)  # k = max(1, 7 // 20) = 1
    assert int((out > 0).sum()) == 1 and float(out.max()) == 0.5


def test_vote_is_a_decaying_running_sum():
    alpha = 0.9
    epochs = [torch.rand(6) for _ in range(4)]
    acc = None
    for a in epochs:
        acc = vote(acc, a, alpha)
    expected = sum(alpha ** (len(epochs) - 1 - k) * a for k, a in enumerate(epochs))  # Eq. 4, newest weighted 1
    assert torch.allclose(acc, expected)


def test_global_video_feature_is_l2_normalised_attention_pooling():
    x, a = torch.rand(5, 3), torch.tensor([0.0, 1.0, 0.5, 0.0, 2.0])
    f = global_video_feature(x, a)
    direct = sum(a[t] * x[t] for t in range(5))
    assert torch.allclose(f, direct / direct.norm())


# ----------------------------------------------------------------------------- spectral clustering, PLRI
def _blobs(c=4, per=12, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 6
    y = np.repeat(np.arange(c), per)
    return centres[y] + rng.normal(size=(len(y), d)) * 0.5, y


def test_affinity_graph_is_the_paper_formula():
    from scipy.spatial.distance import cdist

    x, _ = _blobs()
    w, sigma = affinity_graph(x)
    d = cdist(x, x)
    assert sigma == pytest.approx(d.sum() / len(x) ** 2)  # sigma = (1/N^2) sum_ij d_ij
    assert np.allclose(w, np.exp(-(d**2) / (2 * sigma**2)), atol=1e-12)
    assert np.allclose(np.diag(w), 1.0)


def test_spectral_clustering_matches_scikit_learn():
    from sklearn.cluster import SpectralClustering
    from sklearn.manifold import spectral_embedding as sk_embedding
    from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

    from taltoolkit.evaluation.clustering import clustering_scores

    x, y = _blobs(c=4)
    ours, w = spectral_clustering(x, 4, seed=0)
    # The graph clustered is the paper's Gaussian graph, built here independently with
    # scikit-learn: sigma = mean distance over all N^2 pairs, w = exp(-d^2 / (2 sigma^2)).
    sigma = euclidean_distances(x).mean()
    np.testing.assert_allclose(w, rbf_kernel(x, gamma=1 / (2 * sigma**2)), rtol=1e-10, atol=1e-12)
    theirs = SpectralClustering(4, affinity="precomputed", random_state=0).fit(w).labels_
    assert clustering_scores(theirs, ours)["ari"] == 1.0  # same partition up to relabelling
    assert clustering_scores(y, ours)["ari"] == 1.0
    # Same embedding subspace (eigenvectors of near-equal eigenvalues may rotate within it).
    e_ours, e_theirs = spectral_embedding(w, 4), sk_embedding(w, n_components=4, drop_first=False, random_state=0)
    q1, q2 = np.linalg.qr(e_ours)[0], np.linalg.qr(e_theirs)[0]
    assert np.abs(q1 @ q1.T - q2 @ q2.T).max() < 1e-6


def test_kmeans_is_deterministic_in_its_seed():
    x, y = _blobs(c=3, per=10)
    a, b = kmeans(x, 3, seed=5), kmeans(x, 3, seed=5)
    assert np.array_equal(a, b)
    from taltoolkit.evaluation.clustering import clustering_scores

    assert clustering_scores(y, a)["ari"] == 1.0


def test_plri_confidence_on_a_hand_built_graph():
    # Videos 0,1,2 in cluster 0; 3,4 in cluster 1; 5 alone in cluster 2.
    w = np.array([
        [1.0, 0.9, 0.8, 0.1, 0.2, 0.3],
        [0.9, 1.0, 0.7, 0.2, 0.6, 0.1],
        [0.8, 0.7, 1.0, 0.3, 0.3, 0.5],
        [0.1, 0.2, 0.3, 1.0, 0.4, 0.2],
        [0.2, 0.6, 0.3, 0.4, 1.0, 0.1],
        [0.3, 0.1, 0.5, 0.2, 0.1, 1.0],
    ])
    labels = np.array([0, 0, 0, 1, 1, 2])
    a, b, s = plri_confidence(w, labels)
    # Video 1: own cluster mean over the others (0.9 + 0.7) / 2; other clusters: {3,4} mean 0.4,
    # {5} 0.1 -> nearest (largest similarity) 0.4.
    assert a[1] == pytest.approx(0.8) and b[1] == pytest.approx(0.4) and s[1] == pytest.approx(0.5)
    # Video 4: own (0.4) / 1; others: cluster 0 mean (0.2 + 0.6 + 0.3) / 3, cluster 2 0.1.
    assert a[4] == pytest.approx(0.4) and b[4] == pytest.approx(1.1 / 3)
    assert s[4] == pytest.approx((0.4 - 1.1 / 3) / 0.4)
    # Singleton: a = 0, so s = -1 (b > 0): always unlabelled.
    assert a[5] == 0 and s[5] == pytest.approx(-1.0)
    # As printed: |Y_I| normaliser and min over clusters.
    a_l, b_l, _ = plri_confidence(w, labels, separation="literal_min", cohesion="literal")
    assert a_l[1] == pytest.approx(1.6 / 3) and b_l[1] == pytest.approx(0.1)
    # Eq. 9-10 with delta = 0: P = {s >= 0}.
    assert plri_split(s, 0.0).tolist() == [bool(v >= 0) for v in s]
    assert plri_split(np.array([-0.01, 0.0, 0.2]), 0.0).tolist() == [False, True, True]


def test_align_clusters_recovers_a_permutation():
    prev = np.array([0, 0, 1, 1, 2, 2, 2])
    perm = np.array([2, 0, 1])  # new ids are a relabelling of prev
    new = perm[prev]
    assert np.array_equal(align_clusters(new, prev, 3), prev)


# ----------------------------------------------------------------------------- IOCNet
def test_iocnet_outputs_follow_eq_11_to_13_and_ignore_padding():
    torch.manual_seed(0)
    net = IOCNet(in_dim=8, num_classes=3, hidden_dim=6, kernel_size=3).eval()
    x = torch.rand(2, 7, 8)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    out = net(x, mask)
    assert out["cas"].shape == (2, 7, 3) and out["a_ca_m"].shape == (2, 2, 7)
    assert torch.allclose(out["a_cs"], torch.sigmoid(out["cas"].sum(-1)))  # Eq. 11
    assert torch.allclose(out["a_ca"], (out["a_ca_m"][0] + out["a_ca_m"][1]) / 2)  # Eq. 13
    # The RGB attention reads only the RGB half (Eq. 12).
    x2 = x.clone()
    x2[..., 4:] += 1.0
    assert torch.allclose(net(x2, mask)["a_ca_m"][0], out["a_ca_m"][0])
    # Padded steps never reach real ones (kernel 3 would otherwise mix them in).
    alone = net(x[1:, :5], None)
    assert torch.allclose(alone["cas"][0], out["cas"][1, :5], atol=1e-6)


# ----------------------------------------------------------------------------- losses (Eq. 14-22)
def test_selection_scores_eq14():
    cas, a = torch.randn(2, 5, 3), torch.rand(2, 2, 5)
    printed = selection_scores(cas, a, beta=1 / 3, modalities="sum")
    direct = (1 / 3) * torch.softmax(cas, -1) + (2 / 3) * (a[0] + a[1]).unsqueeze(-1)
    assert torch.allclose(printed, direct)
    # Default: the AICL code's instance selection (softmax(CAS) + A_R + A_F) / 3 at beta = 1/3.
    code = selection_scores(cas, a, beta=1 / 3)
    assert torch.allclose(code, (torch.softmax(cas, -1) + a[0].unsqueeze(-1) + a[1].unsqueeze(-1)) / 3)
    assert float(code.max()) <= 1.0
    with pytest.raises(ValueError, match="modalities"):
        selection_scores(cas, a, beta=1 / 3, modalities="max")


def test_classification_loss_eq15_is_ce_of_top_l_mean():
    torch.manual_seed(1)
    cas, h = torch.randn(2, 8, 3), torch.rand(2, 8, 3)
    y = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    loss, idx = classification_loss(cas, h, y, ratio=0.25)  # l = 2
    total = 0.0
    for b in range(2):
        logits = torch.stack([cas[b, h[b, :, c].topk(2).indices, c].mean() for c in range(3)])
        p = torch.softmax(logits, 0)
        yn = y[b] / y[b].sum()
        total += -(yn * p.log()).sum()
    assert loss.item() == pytest.approx(total.item() / 2, rel=1e-6)
    assert idx.shape == (2, 2, 3)


def test_action_selection_loss_eq16():
    torch.manual_seed(2)
    a = torch.rand(2, 2, 6)  # (M, B, T)
    idx = torch.tensor([[[0, 5], [1, 4]], [[2, 3], [3, 0]]])  # (B, l=2, C=2)
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    targets = selection_targets(idx, y, 6)
    assert targets.tolist() == [[1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0]]  # S^p: top-l of a true class
    q = 0.7
    loss = action_selection_loss(a, targets, q)
    direct = 0.0
    for m in range(2):
        per_video = []
        for b in range(2):
            pos = [t for t in range(6) if targets[b, t] == 1]
            neg = [t for t in range(6) if targets[b, t] == 0]
            lp = sum((1 - a[m, b, t] ** q) / q for t in pos) / len(pos)
            ln = sum((1 - (1 - a[m, b, t]) ** q) / q for t in neg) / len(neg)
            per_video.append(lp + ln)
        direct += sum(per_video) / 2
    assert loss.item() == pytest.approx(float(direct), rel=1e-5)


def test_inner_and_outer_consistency_eq18_to_21():
    torch.manual_seed(3)
    a_m, a_cs = torch.rand(2, 3, 5), torch.rand(3, 5)
    a_ca = a_m.mean(0)
    l_ci = inner_consistency_loss(a_m, a_cs, a_ca, mu1=5.0, mu2=0.1)
    for b in range(3):
        direct = 5.0 * F.mse_loss(a_m[0, b], a_m[1, b]) + 0.1 * F.mse_loss(a_cs[b], a_ca[b])
        assert l_ci[b].item() == pytest.approx(direct.item(), rel=1e-6)
    h_s, h_t, c_s, c_t = torch.rand(3, 5, 4), torch.rand(3, 5, 4), torch.rand(3, 5), torch.rand(3, 5)
    l_co = outer_consistency_loss(h_s, h_t, c_s, c_t)
    for b in range(3):
        direct = F.mse_loss(h_s[b], h_t[b]) + F.mse_loss(c_s[b], c_t[b])
        assert l_co[b].item() == pytest.approx(direct.item(), rel=1e-6)
    mask = torch.tensor([[True] * 3 + [False] * 2] * 3)
    l_m = outer_consistency_loss(h_s, h_t, c_s, c_t, mask)
    assert l_m[0].item() == pytest.approx((F.mse_loss(h_s[0, :3], h_t[0, :3]) + F.mse_loss(c_s[0, :3], c_t[0, :3])).item())


def _nce_ref(q, k, negs, tau):
    q, k = q / q.norm(), k / k.norm()
    logits = [float(q @ k) / tau] + [float(q @ (n / n.norm())) / tau for n in negs]
    return -logits[0] + math.log(sum(math.exp(v) for v in logits))


def test_contrastive_loss_transcription():
    torch.manual_seed(4)
    t, h = 20, 3
    emb = torch.randn(1, t, h)
    a_cs, a_ca = torch.rand(1, t), torch.rand(1, t)
    loss, valid = snippet_contrastive_loss(emb, a_cs, a_ca, ratio=0.1, temperature=0.1)  # k = 2
    med_cs, med_ca = float(np.median(a_cs.numpy())), float(np.median(a_ca.numpy()))
    hi_cs = [float(v) > med_cs for v in a_cs[0]]
    hi_ca = [float(v) > med_ca for v in a_ca[0]]
    ca = [i for i in range(t) if hi_cs[i] and hi_ca[i]]
    cb = [i for i in range(t) if not hi_cs[i] and not hi_ca[i]]
    inc = [i for i in range(t) if hi_cs[i] != hi_ca[i]]
    s = a_cs[0].tolist()

    def top(region, high):
        return sorted(region, key=lambda i: -s[i] if high else s[i])[:2]

    m = {
        "CA": emb[0, top(ca, True)], "CB": emb[0, top(cb, False)],
        "IA": emb[0, top(inc, True)], "IB": emb[0, top(inc, False)],
    }
    mean = {k: v.mean(0) for k, v in m.items()}
    direct = (
        _nce_ref(mean["IA"], mean["CA"], m["CB"], 0.1) + _nce_ref(mean["IB"], mean["CB"], m["CA"], 0.1)
        + _nce_ref(mean["CA"], mean["IA"], m["CB"], 0.1) + _nce_ref(mean["CB"], mean["IB"], m["CA"], 0.1)
    )
    assert bool(valid[0]) and loss[0].item() == pytest.approx(direct, rel=1e-5)
    # A video with identical branches has no inconsistent snippet: no loss, marked invalid.
    loss2, valid2 = snippet_contrastive_loss(emb, a_cs, a_cs.clone())
    assert not bool(valid2[0]) and loss2[0].item() == 0.0


def test_temporal_feature_shift():
    x = torch.arange(1, 1 + 2 * 5 * 8, dtype=torch.float32).reshape(2, 5, 8)
    g = torch.Generator().manual_seed(0)
    out = temporal_feature_shift(x, 4, generator=g)
    chosen = torch.randperm(8, generator=torch.Generator().manual_seed(0))[:4]
    fwd, bwd = chosen[:2].tolist(), chosen[2:].tolist()
    for d in range(8):
        if d in fwd:  # step t takes t-1; step 0 empty
            assert torch.equal(out[:, 1:, d], x[:, :-1, d]) and (out[:, 0, d] == 0).all()
        elif d in bwd:  # step t takes t+1; last step empty
            assert torch.equal(out[:, :-1, d], x[:, 1:, d]) and (out[:, -1, d] == 0).all()
        else:
            assert torch.equal(out[:, :, d], x[:, :, d])
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    assert (temporal_feature_shift(x, 4, mask)[1, 3:] == 0).all()
    with pytest.raises(ValueError, match="shift_channels"):
        temporal_feature_shift(x, 9)


def test_ema_update():
    torch.manual_seed(5)
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t0, t1, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s)
    with pytest.raises(ValueError, match="ema_decay"):
        ema_update(teacher, student, 1.5)
