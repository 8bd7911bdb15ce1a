"""ACMNet (RMGCL/GKSA baseline, Eq. 1-4) and its losses (Eq. 5 + ACM-Net's auxiliary terms)."""
from __future__ import annotations

import math

import pytest
import torch

from taltoolkit.losses.acmnet import (
    branch_video_logits,
    feature_magnitude_loss,
    guide_loss,
    sparse_attention_loss,
    three_branch_mil_loss,
    three_branch_targets,
    topk_counts,
)
from taltoolkit.models.acmnet import ACMNet
from taltoolkit.registry import get

G = torch.Generator().manual_seed(0)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float64)


# ----------------------------------------------------------------------------- network
def test_shapes_attention_and_weighted_tcams() -> None:
    torch.manual_seed(0)
    model = ACMNet(in_dim=12, num_classes=4, hidden_dim=8).eval()
    out = model(torch.randn(3, 10, 12))
    assert out["embeddings"].shape == (3, 10, 8) and (out["embeddings"] >= 0).all()  # post-ReLU
    assert out["cam"].shape == (3, 10, 5)  # C + 1, background last
    assert out["attention"].shape == (3, 10, 3)
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(3, 10))  # Eq. 3: softmax over 3 branches
    for i, key in enumerate(("tcam_ins", "tcam_con", "tcam_back")):  # Eq. 4
        torch.testing.assert_close(out[key], out["cam"] * out["attention"][..., i : i + 1])
    # the CAM head is exposed unchanged for the memory branch's pseudo-TCAMs (Eq. 14)
    torch.testing.assert_close(model.classify(out["embeddings"]), out["cam"])


def test_layers_and_parameter_count() -> None:
    model = ACMNet(in_dim=2048, num_classes=20)
    # ACM-Net's code: embedding conv kernel 3, attention conv (att_branch) kernel 1
    assert model.embedding.kernel_size == (3,) and model.attention.kernel_size == (1,)
    n = sum(p.numel() for p in model.parameters())
    assert n == (2048 * 2048 * 3 + 2048) + (2048 * 3 * 1 + 3) + (2048 * 21 + 21)
    # RMGCL's Sec. III-B text: kernel 3
    assert ACMNet(in_dim=8, num_classes=2, hidden_dim=4, attention_kernel_size=3).attention.kernel_size == (3,)
    assert get("backbone", "acmnet").obj is ACMNet


@pytest.mark.parametrize("kernel_size,attention_kernel_size", [(1, 1), (3, 1), (3, 3)])
def test_padding_does_not_leak(kernel_size: int, attention_kernel_size: int) -> None:
    torch.manual_seed(0)
    model = ACMNet(in_dim=6, num_classes=3, hidden_dim=5, kernel_size=kernel_size,
                   attention_kernel_size=attention_kernel_size).eval()
    x = torch.randn(2, 9, 6)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    noisy = x.clone()
    noisy[1, 5:] = 1e3  # garbage in the padding
    a, b = model(x, mask), model(noisy, mask)
    alone = model(x[1:, :5])
    for key in a:
        torch.testing.assert_close(a[key][1, :5], b[key][1, :5])
        torch.testing.assert_close(a[key][0], b[key][0])
        torch.testing.assert_close(alone[key][0], a[key][1, :5])  # padded video == the video alone
    assert (a["embeddings"][1, 5:] == 0).all()


def test_dropout_only_while_training() -> None:
    torch.manual_seed(0)
    model = ACMNet(in_dim=6, num_classes=3, hidden_dim=32, dropout=0.5)
    x = torch.randn(2, 7, 6)
    model.train()
    a, b = model(x), model(x)
    assert not torch.equal(a["cam"], b["cam"])
    torch.testing.assert_close(a["embeddings"], b["embeddings"])  # no dropout on F nor the attention
    torch.testing.assert_close(a["attention"], b["attention"])
    model.eval()
    assert torch.equal(model(x)["cam"], model(x)["cam"])
    with pytest.raises(ValueError, match="in_dim"):
        model(torch.randn(1, 4, 5))


@pytest.mark.parametrize("input_dropout,attention_dropout", [(True, False), (False, True), (True, True)])
def test_activitynet_dropouts(input_dropout: bool, attention_dropout: bool) -> None:
    """ACM-Net's ActivityNet model drops the input features (so F changes) and the attention's input."""
    torch.manual_seed(0)
    model = ACMNet(in_dim=6, num_classes=3, hidden_dim=32, dropout=0.5, input_dropout=input_dropout,
                   attention_dropout=attention_dropout).train()
    x = torch.rand(2, 9, 6) + 0.5
    a, b = model(x), model(x)
    assert torch.equal(a["embeddings"], b["embeddings"]) != input_dropout
    assert torch.equal(a["attention"], b["attention"]) is False  # either dropout reaches the attention
    if not input_dropout:  # the attention alone is dropped: F is the clean embedding
        torch.testing.assert_close(a["embeddings"], model.eval()(x)["embeddings"])
    model.eval()
    ref = ACMNet(in_dim=6, num_classes=3, hidden_dim=32, dropout=0.5).eval()
    ref.load_state_dict(model.state_dict())
    for key, value in model(x).items():  # no dropout at test time: the THUMOS network's outputs
        torch.testing.assert_close(value, ref(x)[key])


def test_segment_dropout_drops_whole_steps() -> None:
    torch.manual_seed(0)
    model = ACMNet(in_dim=4, num_classes=2, hidden_dim=64, dropout=0.5)
    model.classifier.weight.data.zero_()
    model.classifier.bias.data.zero_()
    seen = []
    model.classifier.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    model.train()(torch.rand(1, 40, 4) + 1)
    dropped_all = (seen[0][0] == 0).all(-1)  # steps whose every channel is zero
    assert dropped_all.any()  # element dropout alone would practically never zero 64 channels


# ----------------------------------------------------------------------------- Eq. 5
def test_three_branch_targets() -> None:
    y = torch.tensor([[1.0, 0, 1], [0, 0, 0]])
    t = three_branch_targets(y)
    assert t.shape == (3, 2, 4)
    torch.testing.assert_close(t[0, 0], torch.tensor([0.5, 0, 0.5, 0]))  # y^ins = [y, 0]
    torch.testing.assert_close(t[1, 0], torch.tensor([1 / 3, 0, 1 / 3, 1 / 3]))  # y^con = [y, 1]
    torch.testing.assert_close(t[2, 0], torch.tensor([0.0, 0, 0, 1]))  # y^back = [0, 1]
    assert t[0, 1].sum() == 0  # no label: no target, no NaN


def test_topk_counts_are_acmnet_floor() -> None:
    lengths = torch.tensor([750, 23, 7, 1])
    # ACM-Net: max(T // k, 1); rounding T / k would give 94, 3, 1, 1 for k = 8
    assert topk_counts(lengths, 8).tolist() == [93, 2, 1, 1]
    assert topk_counts(lengths, 3).tolist() == [250, 7, 2, 1]
    with pytest.raises(ValueError, match="divisor"):
        topk_counts(lengths, 0.5)


def test_mil_loss_matches_loops() -> None:
    b, t, c = 2, 23, 3
    tcams = [randn(b, t, c + 1) for _ in range(3)]
    y = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 17:] = False
    divisors = (8, 3, 2)
    got = three_branch_mil_loss(tcams, y, divisors, mask)
    targets = [
        [list(y[i].tolist()) + [0.0] for i in range(b)],
        [list(y[i].tolist()) + [1.0] for i in range(b)],
        [[0.0] * c + [1.0] for _ in range(b)],
    ]
    for m, name in enumerate(("ins", "con", "back")):
        total = 0.0
        for i in range(b):
            n = int(mask[i].sum())
            k = max(1, n // divisors[m])  # ACM-Net: max(T // k, 1)
            logits = [
                sum(sorted(tcams[m][i, :n, j].tolist(), reverse=True)[:k]) / k for j in range(c + 1)
            ]  # top-k MIL
            lse = math.log(sum(math.exp(v) for v in logits))
            tgt = targets[m][i]
            total += -sum(tgt[j] / sum(tgt) * (logits[j] - lse) for j in range(c + 1))  # Eq. 5
        assert abs(float(got[f"loss_{name}"]) - total / b) < 1e-10, name


def test_branch_video_logits_never_pick_padding() -> None:
    tcam = randn(1, 8, 2)
    mask = torch.tensor([[True] * 4 + [False] * 4])
    tcam[0, 4:] = 100.0
    v = branch_video_logits(tcam, 2, mask)
    torch.testing.assert_close(v[0], tcam[0, :4].topk(2, dim=0).values.mean(0))


# ----------------------------------------------------------------------------- auxiliary terms
def test_auxiliary_losses_match_loops() -> None:
    b, t, c, h = 2, 10, 3, 4
    tcam_ins = randn(b, t, c + 1)
    att = randn(b, t, 3).softmax(-1)
    emb = randn(b, t, h).abs() * 20
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 7:] = False
    divisors = (4, 3, 2)
    guide, sparse, ref_feat = 0.0, 0.0, 0.0
    for i in range(b):
        n = int(mask[i].sum())
        for s in range(n):
            bg = tcam_ins[i, s].softmax(-1)[-1]
            guide += abs(1 - float(bg) - float(att[i, s, 0]))
            sparse += float(att[i, s, 0] + att[i, s, 1]) / 2  # ACM-Net: mean over the two branches
        norms = []
        for m in range(3):
            k = max(1, n // divisors[m])
            top = sorted(range(n), key=lambda s: -float(att[i, s, m]))[:k]
            norms.append(float(sum(emb[i, s] for s in top).div(k).norm()))
        l1 = max(0.0, 50 - norms[0] + norms[1])
        l2 = max(0.0, 50 - norms[1] + norms[2])
        ref_feat += (l1 + l2 + norms[2]) ** 2
    assert abs(float(guide_loss(tcam_ins, att, mask)) - guide / b) < 1e-10
    assert abs(float(sparse_attention_loss(att, mask)) - sparse / b) < 1e-10
    assert abs(float(feature_magnitude_loss(emb, att, divisors, mask)) - ref_feat / b) < 1e-8


def test_guide_loss_does_not_train_attention() -> None:
    tcam = randn(1, 5, 3).requires_grad_()
    att = randn(1, 5, 3).softmax(-1).requires_grad_()
    guide_loss(tcam, att).backward()
    assert tcam.grad is not None and att.grad is None


def test_baseline_trains_end_to_end() -> None:
    torch.manual_seed(0)
    model = ACMNet(in_dim=6, num_classes=3, hidden_dim=8, dropout=0.0)
    x, y = torch.randn(4, 16, 6), torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn() -> torch.Tensor:
        out = model(x)
        cls = three_branch_mil_loss([out["tcam_ins"], out["tcam_con"], out["tcam_back"]], y)
        return (
            sum(cls.values())
            + 2e-3 * guide_loss(out["tcam_ins"], out["attention"])
            + 5e-5 * feature_magnitude_loss(out["embeddings"], out["attention"])
            + 2e-4 * sparse_attention_loss(out["attention"])
        )

    first = float(loss_fn().detach())
    for _ in range(30):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert float(loss_fn().detach()) < first
