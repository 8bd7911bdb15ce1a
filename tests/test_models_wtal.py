"""TwoStreamWTAL: output shapes, the paper's parameter count, stream split, masking."""
from __future__ import annotations

import pytest
import torch

from taltoolkit.models.wtal import TwoStreamWTAL
from taltoolkit.registry import get


def test_shapes_two_streams() -> None:
    model = TwoStreamWTAL(in_dim=32, num_classes=5, hidden_dim=8, num_clusters=4)
    out = model(torch.randn(3, 11, 32), torch.ones(3, 11, dtype=torch.bool))
    assert out["cas"].shape == (2, 3, 11, 5)
    assert out["attention"].shape == (2, 3, 11)
    assert ((out["attention"] > 0) & (out["attention"] < 1)).all()
    assert out["cluster_logits"].shape == (2, 3, 11, 4)
    assert out["embeddings"].shape == (2, 3, 11, 8)
    assert (out["embeddings"] >= 0).all()  # post-ReLU


def test_single_stream_and_no_clusters() -> None:
    model = TwoStreamWTAL(in_dim=12, num_classes=3, hidden_dim=8, num_clusters=0, streams=1)
    out = model(torch.randn(2, 7, 12))
    assert out["cas"].shape == (1, 2, 7, 3) and out["attention"].shape == (1, 2, 7)
    assert out["cluster_logits"] is None and out["embeddings"].shape == (1, 2, 7, 8)
    assert not any("cluster" in n for n, _ in model.named_parameters())


def test_streams_see_their_own_half() -> None:
    # RGB = features[..., :D/2] feeds stream 0 only, flow = features[..., D/2:] stream 1 only.
    torch.manual_seed(0)
    model = TwoStreamWTAL(in_dim=16, num_classes=3, hidden_dim=8, num_clusters=2).eval()
    x = torch.randn(1, 5, 16)
    y = x.clone()
    y[..., 8:] += 1.0  # change flow only
    a, b = model(x), model(y)
    torch.testing.assert_close(a["cas"][0], b["cas"][0])
    assert not torch.allclose(a["cas"][1], b["cas"][1])


def test_parameter_count_matches_table1() -> None:
    model = TwoStreamWTAL(in_dim=2048, num_classes=20, num_clusters=16)
    n = sum(p.numel() for p in model.parameters())
    # per stream: 2 x (1024*512 + 512) encoders + (512*20 + 20) + (512 + 1) + 512*16 cosine prototypes
    assert n == 2 * (2 * (1024 * 512 + 512) + 512 * 20 + 20 + 512 + 1 + 512 * 16) == 2_137_130
    assert round(n / 1e6, 2) == 2.14 and abs(n / 1e6 - 2.13) < 0.01  # Table 1: 2.13 M


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("kernel_size", [1, 3, 4])
def test_padding_does_not_leak(kernel_size: int) -> None:
    torch.manual_seed(0)
    model = TwoStreamWTAL(in_dim=8, num_classes=3, hidden_dim=6, kernel_size=kernel_size, num_clusters=2).eval()
    x = torch.randn(2, 9, 8)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    noisy = x.clone()
    noisy[1, 5:] = 1e3  # garbage in the padding
    a, b = model(x, mask), model(noisy, mask)
    for key in ("cas", "attention", "cluster_logits", "embeddings"):
        assert a[key].shape[2] == 9  # T preserved for odd and even kernels
        torch.testing.assert_close(a[key][:, 1, :5], b[key][:, 1, :5])
        torch.testing.assert_close(a[key][:, 0], b[key][:, 0])
    # a video padded on its own equals the same video alone
    alone = model(x[1:, :5])
    torch.testing.assert_close(alone["cas"][:, 0], a["cas"][:, 1, :5])


def test_dropout_and_errors() -> None:
    model = TwoStreamWTAL(in_dim=8, num_classes=3, hidden_dim=64, num_clusters=2, dropout=0.5)
    x = torch.randn(1, 6, 8)
    model.train()
    assert not torch.equal(model(x)["embeddings"], model(x)["embeddings"])
    model.eval()
    assert torch.equal(model(x)["embeddings"], model(x)["embeddings"])
    with pytest.raises(ValueError, match="streams"):
        TwoStreamWTAL(in_dim=7, num_classes=3)
    with pytest.raises(ValueError, match="in_dim"):
        model(torch.randn(1, 6, 10))


def test_registered() -> None:
    assert get("backbone", "two_stream_wtal").obj is TwoStreamWTAL


def test_classify_reproduces_the_cas_from_cls_embeddings():
    import torch

    from taltoolkit.models.wtal import TwoStreamWTAL

    torch.manual_seed(0)
    net = TwoStreamWTAL(in_dim=16, num_classes=3, hidden_dim=8, num_clusters=4).eval()
    out = net(torch.randn(2, 5, 16))
    assert out["cls_embeddings"].shape == (2, 2, 5, 8)
    for s in range(2):
        torch.testing.assert_close(net.classify(out["cls_embeddings"][s], s), out["cas"][s])


def test_cluster_head_is_the_public_codes_cosine_head() -> None:
    """Logits = 10 cos(E, prototype): bounded by 10, blind to the embedding's norm, unit prototypes, no bias."""
    torch.manual_seed(0)
    model = TwoStreamWTAL(in_dim=16, num_classes=3, hidden_dim=8, num_clusters=4)
    head = model.branches[0].cluster_head
    assert not any("bias" in n for n, _ in head.named_parameters())
    x = torch.rand(2, 10, 16)
    out = model(x)
    emb = out["embeddings"][0]  # (B, T, H)
    w = torch.nn.functional.normalize(head.prototypes.weight, dim=1)
    ref = 10 * torch.nn.functional.normalize(emb, dim=-1) @ w.T
    torch.testing.assert_close(out["cluster_logits"][0], ref)
    assert out["cluster_logits"].abs().max() <= 10 + 1e-5
    torch.testing.assert_close(head.prototypes.weight.norm(dim=1), torch.ones(4))  # renormalised in place
    torch.testing.assert_close(head(emb * 7.0), out["cluster_logits"][0])  # scale-free in the embedding
    linear = TwoStreamWTAL(in_dim=16, num_classes=3, hidden_dim=8, num_clusters=4, cluster_head="linear")
    assert isinstance(linear.branches[0].cluster_head, torch.nn.Linear) and linear.branches[0].cluster_head.bias is not None
