"""RMGCL/GKSA memory branch: memory update (Eq. 8), warm-up gating, GKSA shapes (Eq. 10-14),
ablation switches, inference without the memory bank, gradients, and use with CASE's network."""
from __future__ import annotations

import inspect
import math

import pytest
import torch
from einops import rearrange

from taltoolkit.losses.memory import uncertainty_weighted_pseudo_loss
from taltoolkit.models.acmnet import ACMNet
from taltoolkit.models.memory import MemoryBranch, _Attention
from taltoolkit.models.wtal import TwoStreamWTAL
from taltoolkit.registry import get

C, D, H = 3, 10, 8


def small_branch(**kw) -> MemoryBranch:
    args = {"embed_dim": H, "num_classes": C, "queue_length": 4, "num_codewords": 3, "num_heads": 2, "zeta": 0.2,
            "warmup_epochs": 0}
    args.update(kw)
    return MemoryBranch(**args)


def batch(b: int = 3, t: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, D, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[-1, t - 3 :] = False
    y = torch.zeros(b, C)
    y[torch.arange(b), torch.arange(b) % C] = 1
    return x, mask, y


def run(branch: MemoryBranch, net: ACMNet, x, mask, y, **kw):
    out = net(x, mask)
    res = branch(
        out["embeddings"], out["cam"], y, mask, net.classify, scores=out["tcam_ins"].softmax(-1), **kw
    )
    return out, res


def test_registered_and_paper_defaults() -> None:
    assert get("branch", "rmgcl").obj is MemoryBranch
    p = inspect.signature(MemoryBranch).parameters
    defaults = {k: v.default for k, v in p.items()}
    assert defaults["queue_length"] == 500 and defaults["momentum"] == 0.99 and defaults["zeta"] == 0.75
    assert defaults["num_codewords"] == 40 and defaults["warmup_epochs"] == 50
    assert defaults["ncl_lambda"] == 0.5 and defaults["ncl_q"] == 0.2 and defaults["rho"] == 0.001
    assert defaults["aggregation"] == "nonparametric"
    assert defaults["pseudo_weight"] == 1.0 and defaults["contrastive_weight"] == 0.1  # gamma, mu of Eq. 17
    assert all(defaults[k] for k in ("use_contrastive", "use_summarization", "use_uncertainty", "background"))
    branch = small_branch()
    assert branch.memory.shape == (C + 1, 4, H)  # (C+1, q, D), background row last
    assert not branch.memory.requires_grad and "memory" not in dict(branch.named_parameters())


# ----------------------------------------------------------------------------- Eq. 6-8 in the branch
def hand_batch(values: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (1, 4, 2) whose steps are [v0, v1, v2, v3] * (1, 1), and hand-set scores.

    step 0: class 0 confident; step 1: class 1 confident (the video is not labelled with it);
    steps 2-3: background confident.
    """
    emb = torch.tensor(values).view(1, 4, 1).expand(1, 4, 2).clone()
    scores = torch.full((1, 4, C + 1), 0.05)
    scores[0, 0, 0] = scores[0, 1, 1] = scores[0, 2, C] = scores[0, 3, C] = 0.85
    return emb, scores


def test_memory_update_momentum_on_hand_built_values() -> None:
    branch = MemoryBranch(embed_dim=2, num_classes=C, queue_length=2, num_codewords=2, num_heads=1, momentum=0.75,
                          warmup_epochs=0)  # zeta = 0.75 (paper)
    branch.train()
    head = torch.nn.Linear(2, C + 1)
    y = torch.tensor([[1.0, 0, 0]])
    tcam = torch.zeros(1, 4, C + 1)

    def step(values: list[float]) -> None:
        emb, scores = hand_batch(values)
        branch(emb, tcam, y, None, head, scores=scores)

    step([4.0, 9.0, 1.0, 3.0])
    mem = branch.memory[..., 0]
    assert mem[0].tolist() == [4.0, 0.0]  # class 0: step 0 (Eq. 6-7), stored as it is
    assert mem[1].tolist() == [0.0, 0.0]  # class 1 is not a label of the video: filtered
    assert mem[C].tolist() == [2.0, 0.0]  # background row: mean of steps 2-3
    assert branch.memory_count.tolist() == [1, 0, 0, 1]
    step([8.0, 9.0, 5.0, 5.0])
    assert branch.memory[0, :, 0].tolist() == [4.0, 8.0] and branch.memory[C, :, 0].tolist() == [2.0, 5.0]
    step([0.0, 9.0, 6.0, 6.0])
    # queues full: Eq. 8 on the oldest slot, m <- (1 - alpha) m + alpha beta
    assert branch.memory[0, :, 0].tolist() == [0.25 * 4.0 + 0.75 * 0.0, 8.0]
    assert branch.memory[C, :, 0].tolist() == [0.25 * 2.0 + 0.75 * 6.0, 5.0]
    assert branch.memory_ptr.tolist() == [1, 0, 0, 1] and branch.memory_count.tolist() == [2, 0, 0, 2]
    assert branch.memory[1:C].abs().sum() == 0


def test_background_storage_switch() -> None:
    branch = MemoryBranch(embed_dim=2, num_classes=C, queue_length=2, num_codewords=2, num_heads=1,
                          warmup_epochs=0, store_background=False)
    branch.train()
    emb, scores = hand_batch([4.0, 9.0, 1.0, 3.0])
    branch(emb, torch.zeros(1, 4, C + 1), torch.tensor([[1.0, 0, 0]]), None, torch.nn.Linear(2, C + 1), scores=scores)
    assert branch.memory_count.tolist() == [1, 0, 0, 0]


def test_background_scores_override() -> None:
    # a separate background probability (e.g. ACM-Net's background attention) selects the
    # background features instead of the TCAM's background column
    branch = MemoryBranch(embed_dim=2, num_classes=C, queue_length=2, num_codewords=2, num_heads=1, warmup_epochs=0)
    branch.train()
    emb, scores = hand_batch([4.0, 9.0, 1.0, 3.0])
    bg = torch.tensor([[0.0, 0.9, 0.0, 0.0]])
    branch(emb, torch.zeros(1, 4, C + 1), torch.tensor([[1.0, 0, 0]]), None, torch.nn.Linear(2, C + 1),
           scores=scores, background_scores=bg)
    assert branch.memory[C, 0, 0] == 9.0


# ----------------------------------------------------------------------------- warm-up
def test_warmup_gating(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net, branch = ACMNet(D, C, hidden_dim=H, dropout=0.0), small_branch(warmup_epochs=2)
    x, mask, y = batch()
    net.train(), branch.train()
    read = []
    original = MemoryBranch.knowledge
    monkeypatch.setattr(MemoryBranch, "knowledge", lambda self: read.append(1) or original(self))
    for epoch in (0, 1):
        branch.set_epoch(epoch)
        _, res = run(branch, net, x, mask, y)
        assert not res["active"] and res["fused"] is None and res["pseudo_tcam"] is None
        assert all(float(v) == 0 and not v.requires_grad for v in res["losses"].values())
        assert branch.memory_count.sum() == 0 and branch.memory.abs().sum() == 0  # not filled during warm-up
    assert not read  # ... nor read
    branch.set_epoch(2)
    _, first = run(branch, net, x, mask, y)
    assert first["active"] and read and branch.memory_count.sum() > 0
    assert float(first["losses"]["loss_ncl"].detach()) == 0  # nothing stored before this batch
    _, second = run(branch, net, x, mask, y)
    assert float(second["losses"]["loss_ncl"].detach()) != 0 and float(second["losses"]["loss_pseudo"].detach()) > 0


def test_eval_without_knowledge_is_inactive() -> None:
    branch = small_branch().eval()
    net = ACMNet(D, C, hidden_dim=H).eval()
    x, mask, _ = batch()
    _, res = run(branch, net, x, mask, None)
    assert not res["active"] and res["fused"] is None
    assert branch.compress() is branch.summary and not branch.summary_mask.any()  # nothing to compress


# ----------------------------------------------------------------------------- GKSA
@pytest.mark.parametrize("b,t,h,n,heads", [(1, 5, 4, 1, 1), (2, 9, 8, 3, 2), (4, 16, 12, 7, 3)])
@pytest.mark.parametrize("aggregation", ["nonparametric", "parametric"])
def test_gksa_shapes(b: int, t: int, h: int, n: int, heads: int, aggregation: str) -> None:
    torch.manual_seed(0)
    net = ACMNet(D, C, hidden_dim=h, dropout=0.0)
    branch = MemoryBranch(h, C, queue_length=3, num_codewords=n, num_heads=heads, zeta=0.2, warmup_epochs=0,
                          aggregation=aggregation)
    x = torch.randn(b, t, D)
    mask = torch.ones(b, t, dtype=torch.bool)
    y = torch.ones(b, C)
    for _ in range(2):
        _, res = run(branch, net, x, mask, y)
    assert res["fused"].shape == (b, t, h)
    assert res["pseudo_tcam"].shape == (b, t, C + 1)
    assert res["uncertainty"].shape == (b, t)
    t_m, valid = branch.knowledge()
    assert t_m.shape == (n, h) and valid.all()
    assert branch.summary.shape == (n, h)
    assert all(torch.isfinite(v) for v in res["losses"].values())


def test_nonparametric_aggregation_is_eq12() -> None:
    branch = small_branch()
    f, t_m = torch.randn(2, 5, H), torch.randn(3, H)
    ref = torch.softmax(f @ t_m.T / math.sqrt(H), -1) @ t_m  # Eq. 12
    torch.testing.assert_close(branch.aggregate(f, t_m, torch.ones(3, dtype=torch.bool)), ref)
    valid = torch.tensor([True, False, True])
    ref = torch.softmax(f @ t_m[valid].T / math.sqrt(H), -1) @ t_m[valid]
    torch.testing.assert_close(branch.aggregate(f, t_m, valid), ref)
    assert branch.aggregator is None and not any("aggregator" in k for k in branch.state_dict())


def test_parametric_aggregation_trains() -> None:
    torch.manual_seed(0)
    net, branch = ACMNet(D, C, hidden_dim=H, dropout=0.0), small_branch(aggregation="parametric")
    x, mask, y = batch()
    for _ in range(2):
        _, res = run(branch, net, x, mask, y)
    res["losses"]["loss_pseudo"].backward()
    assert branch.aggregator is not None and branch.aggregator.q_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="aggregation"):
        small_branch(aggregation="mean")


def test_sparse_cross_attention_keeps_topk_keys() -> None:
    torch.manual_seed(0)
    att = _Attention(4, 1, topk=1)
    q, k, v = torch.randn(3, 4), torch.randn(6, 4), torch.randn(6, 4)
    scores = att.q_proj(q) @ att.k_proj(k).T
    expected = att.out_proj(att.v_proj(v)[scores.argmax(-1)])  # one key per query
    torch.testing.assert_close(att(q, k, v), expected)
    valid = torch.tensor([False, True, True, False, False, False])  # masked keys are never kept
    masked = scores.masked_fill(~valid, float("-inf"))
    torch.testing.assert_close(att(q, k, v, valid), att.out_proj(att.v_proj(v)[masked.argmax(-1)]))
    assert att(q, k, v, torch.zeros(6, dtype=torch.bool)).abs().sum() == 0  # no key: no message
    dense = _Attention(4, 1, topk=0)
    dense.load_state_dict(att.state_dict())
    full = (dense.q_proj(q) @ dense.k_proj(k).T / 2).softmax(-1) @ dense.v_proj(v)
    torch.testing.assert_close(dense(q, k, v), dense.out_proj(full))


def test_without_summarization_aggregates_the_raw_memory() -> None:
    torch.manual_seed(0)
    net, branch = ACMNet(D, C, hidden_dim=H, dropout=0.0), small_branch(use_summarization=False)
    x, mask, y = batch()
    _, first = run(branch, net, x, mask, y)
    assert first["active"] and torch.isfinite(first["fused"]).all()  # empty memory: F' = 0
    _, res = run(branch, net, x, mask, y)
    assert branch.summarizer is None
    t_m, valid = branch.knowledge()
    torch.testing.assert_close(t_m, rearrange(branch.memory, "r q h -> (r q) h"))
    assert valid.tolist() == rearrange(branch.memory_valid(), "r q -> (r q)").tolist()
    assert res["fused"].shape == (3, 12, H)


# ----------------------------------------------------------------------------- ablations
def test_ablation_switches() -> None:
    torch.manual_seed(0)
    net = ACMNet(D, C, hidden_dim=H, dropout=0.0)
    x, mask, y = batch()
    branch = small_branch(use_contrastive=False, use_uncertainty=False)
    for _ in range(2):
        out, res = run(branch, net, x, mask, y)
    assert float(res["losses"]["loss_ncl"]) == 0.0 and branch.memory_count.sum() > 0  # memory still built
    ref = uncertainty_weighted_pseudo_loss(out["cam"], res["pseudo_tcam"], mask, use_uncertainty=False)
    torch.testing.assert_close(res["losses"]["loss_pseudo"], ref)
    for kw in ({"queue_length": 7}, {"num_codewords": 5}):
        b = small_branch(**kw)
        assert b.memory.shape[1] == b.queue_length and b.summary.shape[0] == b.num_codewords


def test_weighted_loss_is_the_branch_share_of_eq17() -> None:
    torch.manual_seed(0)
    net = ACMNet(D, C, hidden_dim=H, dropout=0.0)
    x, mask, y = batch()
    branch = small_branch(pseudo_weight=0.7, contrastive_weight=0.3)
    for _ in range(2):  # the second step contrasts against a non-empty memory
        _, res = run(branch, net, x, mask, y)
    losses = res["losses"]
    assert float(losses["loss_ncl"]) > 0 and float(losses["loss_pseudo"]) > 0
    torch.testing.assert_close(res["loss"], 0.7 * losses["loss_pseudo"] + 0.3 * losses["loss_ncl"])


def test_update_can_be_left_to_the_caller() -> None:
    torch.manual_seed(0)
    net, branch = ACMNet(D, C, hidden_dim=H, dropout=0.0), small_branch()
    x, mask, y = batch()
    _, res = run(branch, net, x, mask, y, update=False)
    assert branch.memory_count.sum() == 0
    branch.update_memory(*res["regional"])
    assert int(branch.memory_count.sum()) == res["regional"][1].numel()


# ----------------------------------------------------------------------------- gradients
def test_gradients_reach_embeddings_not_memory() -> None:
    torch.manual_seed(0)
    net, branch = ACMNet(D, C, hidden_dim=H, dropout=0.0), small_branch()
    x, mask, y = batch()
    run(branch, net, x, mask, y)  # fill the memory
    for name in ("loss_ncl", "loss_pseudo"):
        out = net(x, mask)
        emb = out["embeddings"]
        emb.retain_grad()
        res = branch(emb, out["cam"], y, mask, net.classify, scores=out["tcam_ins"].softmax(-1), update=False)
        net.zero_grad(), branch.zero_grad()
        res["losses"][name].backward()
        assert emb.grad is not None and emb.grad.abs().sum() > 0, name
        assert net.embedding.weight.grad.abs().sum() > 0, name
        assert branch.memory.grad is None and not branch.memory.requires_grad
        if name == "loss_pseudo":
            # GKSA learns through Eq. 16 (via D_t), and the shared head through both TCAMs
            assert branch.summarizer.codewords.grad.abs().sum() > 0
            assert branch.fusion[0].weight.grad.abs().sum() > 0
            assert net.classifier.weight.grad.abs().sum() > 0
    assert not branch.memory.requires_grad  # enqueued features are detached


def test_backward_after_update_in_forward() -> None:
    # forward enqueues after computing the losses; the memory is replaced, not written in
    # place, so this step's backward (which read the old memory) still works
    torch.manual_seed(0)
    net, branch = ACMNet(D, C, hidden_dim=H, dropout=0.0), small_branch()
    x, mask, y = batch()
    run(branch, net, x, mask, y)
    before = branch.memory
    _, res = run(branch, net, x, mask, y)
    assert branch.memory is not before
    (res["losses"]["loss_ncl"] + res["losses"]["loss_pseudo"]).backward()


# ----------------------------------------------------------------------------- inference
def test_inference_without_memory_bank_is_identical() -> None:
    torch.manual_seed(0)
    net, branch = ACMNet(D, C, hidden_dim=H), small_branch()
    x, mask, _ = batch()
    opt = torch.optim.Adam([*net.parameters(), *branch.parameters()], lr=1e-3)
    for seed in range(3):
        xs, ms, ys = batch(seed=seed)
        _, res = run(branch, net, xs, ms, ys)
        opt.zero_grad()
        (res["losses"]["loss_ncl"] + res["losses"]["loss_pseudo"]).backward()
        opt.step()
    net.eval(), branch.eval()
    _, ref = run(branch, net, x, mask, None)
    state = branch.inference_state()
    assert "memory" not in state and "memory_count" not in state
    assert not any(k.startswith("summarizer.") for k in state)
    assert state["summary"].shape == (3, H) and bool(state["summary_mask"].all())
    fresh = small_branch()
    fresh.load_state_dict(state)  # strict: only training-only keys may be missing
    fresh.eval()
    assert fresh.memory_count.sum() == 0
    _, got = run(fresh, net, x, mask, None)
    assert got["active"]
    assert torch.equal(got["fused"], ref["fused"]) and torch.equal(got["pseudo_tcam"], ref["pseudo_tcam"])
    # a state without a stored T_M and without the memory is incomplete: strict loading fails
    bad = {k: v for k, v in small_branch().state_dict().items() if k != "memory"}
    with pytest.raises(RuntimeError, match="memory"):
        small_branch().load_state_dict(bad)


def test_training_state_round_trips_memory() -> None:
    torch.manual_seed(0)
    net, branch = ACMNet(D, C, hidden_dim=H, dropout=0.0), small_branch()
    x, mask, y = batch()
    run(branch, net, x, mask, y)
    fresh = small_branch()
    fresh.load_state_dict(branch.state_dict())
    assert torch.equal(fresh.memory, branch.memory) and torch.equal(fresh.memory_ptr, branch.memory_ptr)


def test_input_validation() -> None:
    branch = small_branch()
    with pytest.raises(ValueError, match="tcam"):
        branch(torch.randn(1, 4, H), torch.randn(1, 4, C), torch.ones(1, C), None, lambda f: f)
    with pytest.raises(ValueError, match="embed_dim"):
        branch(torch.randn(1, 4, H + 1), torch.randn(1, 4, C + 1), torch.ones(1, C), None, lambda f: f)
    with pytest.raises(ValueError, match="num_heads"):
        small_branch(num_heads=3)


# ----------------------------------------------------------------------------- CASE's network
def test_plugs_onto_case_two_stream_network() -> None:
    """T-CAS without a background column: background features from low-attention steps."""
    torch.manual_seed(0)
    g = 4
    model = TwoStreamWTAL(in_dim=2 * D, num_classes=g, hidden_dim=H, num_clusters=2).eval()
    branches = [MemoryBranch(H, g, queue_length=4, num_codewords=3, num_heads=2, zeta=0.3, warmup_epochs=0,
                             background=False) for _ in range(2)]
    x = torch.randn(2, 10, 2 * D)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    y = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 1]])
    for _ in range(2):
        out = model(x, mask)
        total = 0.0
        for s, (stream, branch) in enumerate(zip(model.branches, branches)):
            branch.train()
            xs = rearrange(x[..., s * D : (s + 1) * D] * mask[..., None], "b t d -> b d t")
            emb = rearrange(torch.relu(stream.cls_encoder(xs)), "b h t -> b t h") * mask[..., None]

            def classify(f: torch.Tensor, head=stream.classifier) -> torch.Tensor:
                return rearrange(head(rearrange(f, "b t h -> b h t")), "b g t -> b t g")

            torch.testing.assert_close(classify(emb), out["cas"][s])  # the shared T-CAS head
            combined = (out["cas"][s].softmax(-1) + out["attention"][s][..., None]) / 2  # CASE's calibrated T-CAS
            res = branch(emb, out["cas"][s], y, mask, classify, scores=combined,
                         background_scores=1 - out["attention"][s])
            assert res["pseudo_tcam"].shape == (2, 10, g) and res["fused"].shape == (2, 10, H)
            total = total + res["losses"]["loss_ncl"] + res["losses"]["loss_pseudo"]
        model.zero_grad()
        total.backward()
    assert model.branches[0].cls_encoder.weight.grad.abs().sum() > 0
    assert all(b.memory_count[g] > 0 for b in branches)  # background row filled from 1 - attention
    with pytest.raises(ValueError, match="tcam"):  # a C+1 TCAM is refused when background=False
        branches[0](emb, torch.randn(2, 10, g + 1), y, mask, classify)


def test_evaluation_summarises_the_memory_once_until_training_changes_it() -> None:
    torch.manual_seed(0)
    net, branch = ACMNet(D, C, hidden_dim=H, dropout=0.0), small_branch()
    x, mask, y = batch()
    run(branch, net, x, mask, y)  # fills the memory
    calls = []
    branch.summarizer.register_forward_hook(lambda *a: calls.append(1))
    branch.eval()
    first = run(branch, net, x, mask, y)[1]["pseudo_tcam"]
    second = run(branch, net, x, mask, y)[1]["pseudo_tcam"]
    assert len(calls) == 1 and torch.equal(first, second)  # T_M computed once for both videos
    branch.train()
    run(branch, net, x, mask, y)  # a training step (memory update, weights may change)
    calls.clear()
    branch.eval()
    run(branch, net, x, mask, y)
    assert len(calls) == 1  # re-summarised after training
    branch.load_state_dict(branch.state_dict())
    calls.clear()
    run(branch, net, x, mask, y)
    assert len(calls) == 1  # and after loading weights
