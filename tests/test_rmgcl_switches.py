"""Every switch of RMGCL/GKSA (conf/memory_branch/rmgcl.yaml, conf/method/rmgcl.yaml) changes what it names.

Each test runs the same small fixed batch with the switch at its default and at another
value, with the same weights, and checks that the quantity the switch names changes (and,
where it makes the test sharper, that the quantities it does not name stay the same). A
switch that the code ignored would fail its test. Also: the dropout-free memory CAM
(``method.memory_cam=clean``), the empty-memory control, and the skipped NaN step.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch
from einops import rearrange
from omegaconf import OmegaConf

from taltoolkit import collectives as dist_utils
from taltoolkit.losses.acmnet import feature_magnitude_loss, three_branch_mil_loss
from taltoolkit.losses.memory import uncertainty_weighted_pseudo_loss
from taltoolkit.methods.rmgcl import RMGCL, memory_test_cam
from taltoolkit.models.acmnet import ACMNet
from taltoolkit.models.memory import MemoryBranch

C, D, H = 3, 10, 8
REPO_CONF = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf"


def make_branch(**kw: Any) -> MemoryBranch:
    args = {"embed_dim": H, "num_classes": C, "queue_length": 4, "num_codewords": 3, "num_heads": 2, "zeta": 0.2,
            "warmup_epochs": 0, "dropout": 0.0}
    args.update(kw)
    torch.manual_seed(0)  # the same parameters whatever the switch (where the shapes agree)
    return MemoryBranch(**args)


def make_batch(seed: int = 0, b: int = 3, t: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, D, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[-1, t - 3 :] = False
    y = torch.zeros(b, C)
    y[torch.arange(b), torch.arange(b) % C] = 1
    return x, mask, y


def make_net(dropout: float = 0.0) -> ACMNet:
    torch.manual_seed(1)
    return ACMNet(D, C, hidden_dim=H, dropout=dropout)


def two_steps(branch: MemoryBranch, net: ACMNet | None = None, seed: int = 5) -> dict[str, Any]:
    """Step 1 fills the memory, step 2 reads it; returns step 2's result (same draws for every branch)."""
    net = net or make_net()
    branch.train()
    res: dict[str, Any] = {}
    for s in (0, 1):
        x, mask, y = make_batch(s)
        out = net(x, mask)
        torch.manual_seed(seed + s)  # the branch's own dropout draws
        res = branch(out["embeddings"], out["cam"], y, mask, net.classify, scores=out["tcam_ins"].softmax(-1))
        res["net_out"], res["mask"] = out, mask
    return res


def value(t: torch.Tensor) -> float:
    return float(t.detach())


# ----------------------------------------------------------------------------- the config lists them all
def test_every_switch_of_the_config_is_tested_here() -> None:
    """A switch added to the configs without a test here fails this test."""
    branch_keys = set(OmegaConf.load(REPO_CONF / "memory_branch" / "rmgcl.yaml")) - {"_target_", "_partial_"}
    method_keys = set(OmegaConf.load(REPO_CONF / "method" / "rmgcl.yaml")["method"]) - {"_target_"}
    tested_branch = {case[0] for case in BRANCH_CASES} | {"momentum", "num_heads", "sparse_topk", "dropout",
                                                         "detach_pseudo_target", "detach_uncertainty_weight",
                                                         "distributed", "use_summarization", "aggregation",
                                                         "empty_memory_control", "warmup_epochs",
                                                         "store_background", "use_uncertainty", "use_contrastive"}
    tested_method = {"topk_segments", "branch_weights", "guide_weight", "feature_weight", "sparse_weight",
                     "feature_margin", "test_cam", "teacher_weight", "memory_cam", "skip_nonfinite", "sampling_rule",
                     "test_sampling"}
    assert branch_keys <= tested_branch, branch_keys - tested_branch
    assert method_keys <= tested_method, method_keys - tested_method


# ----------------------------------------------------------------------------- memory branch switches
# (key, other value, check(default result, switched result, default branch, switched branch))
BRANCH_CASES = [
    ("queue_length", 1, lambda r0, r1, b0, b1: b1.memory.shape[1] == 1 and int(b1.memory_count.max()) == 1
     and int(b0.memory_count.max()) > 1),
    ("zeta", 0.6, lambda r0, r1, b0, b1: r1["regional"][1].numel() < r0["regional"][1].numel()),
    ("num_codewords", 5, lambda r0, r1, b0, b1: b1.knowledge()[0].shape[0] == 5 and b0.knowledge()[0].shape[0] == 3),
    ("temperature", 0.5, lambda r0, r1, b0, b1: value(r1["losses"]["loss_ncl"]) != value(r0["losses"]["loss_ncl"])
     and value(r1["losses"]["loss_pseudo"]) == value(r0["losses"]["loss_pseudo"])),
    ("ncl_lambda", 0.9, lambda r0, r1, b0, b1: value(r1["losses"]["loss_ncl"]) != value(r0["losses"]["loss_ncl"])
     and value(r1["losses"]["loss_pseudo"]) == value(r0["losses"]["loss_pseudo"])),
    ("ncl_q", 0.7, lambda r0, r1, b0, b1: value(r1["losses"]["loss_ncl"]) != value(r0["losses"]["loss_ncl"])
     and value(r1["losses"]["loss_pseudo"]) == value(r0["losses"]["loss_pseudo"])),
    ("ncl_reduction", "sum", lambda r0, r1, b0, b1: value(r1["losses"]["loss_ncl"]) != value(r0["losses"]["loss_ncl"])
     and value(r1["losses"]["loss_pseudo"]) == value(r0["losses"]["loss_pseudo"])),
    ("rho", 0.5, lambda r0, r1, b0, b1: value(r1["losses"]["loss_pseudo"]) != value(r0["losses"]["loss_pseudo"])
     and value(r1["losses"]["loss_ncl"]) == value(r0["losses"]["loss_ncl"])),
    ("pseudo_weight", 0.3, lambda r0, r1, b0, b1: value(r1["loss"]) != value(r0["loss"])
     and value(r1["losses"]["loss_pseudo"]) == value(r0["losses"]["loss_pseudo"])
     and value(r1["loss"]) == pytest.approx(0.3 * value(r1["losses"]["loss_pseudo"])
                                            + 0.1 * value(r1["losses"]["loss_ncl"]))),
    ("contrastive_weight", 0.7, lambda r0, r1, b0, b1: value(r1["loss"]) != value(r0["loss"])
     and value(r1["losses"]["loss_ncl"]) == value(r0["losses"]["loss_ncl"])
     and value(r1["loss"]) == pytest.approx(value(r1["losses"]["loss_pseudo"])
                                            + 0.7 * value(r1["losses"]["loss_ncl"]))),
]


@pytest.mark.parametrize("key,other,check", BRANCH_CASES, ids=[c[0] for c in BRANCH_CASES])
def test_branch_switch_changes_what_it_names(key: str, other: Any, check) -> None:
    b0, b1 = make_branch(), make_branch(**{key: other})
    r0, r1 = two_steps(b0), two_steps(b1)
    assert value(r0["losses"]["loss_ncl"]) > 0  # the memory is read on step 2
    assert check(r0, r1, b0, b1)


def test_momentum_is_eq8_on_the_slot_it_overwrites() -> None:
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(1, H, generator=g), torch.randn(1, H, generator=g)
    stored = {}
    for alpha in (0.99, 0.5):
        branch = make_branch(queue_length=1, momentum=alpha)
        branch.update_memory(f1, torch.tensor([0]))  # a fresh slot stores the feature as it is
        branch.update_memory(f2, torch.tensor([0]))  # the full queue's oldest slot: Eq. 8
        torch.testing.assert_close(branch.memory[0, 0], (1 - alpha) * f1[0] + alpha * f2[0])
        stored[alpha] = branch.memory[0, 0].clone()
    assert not torch.allclose(stored[0.99], stored[0.5])


def test_num_heads_and_sparse_topk_change_the_summary() -> None:
    base = make_branch(queue_length=6)
    two_steps(base)
    for kw in ({"num_heads": 4}, {"sparse_topk": 1}):
        other = make_branch(queue_length=6, **kw)
        other.load_state_dict(base.state_dict())  # same weights and memory: only the switch differs
        base.eval(), other.eval()
        t0, t1 = base.knowledge()[0], other.knowledge()[0]
        assert not torch.allclose(t0, t1), kw
        if "sparse_topk" in kw:
            assert other.summarizer.cross_attn.topk == 1 and base.summarizer.cross_attn.topk == 6


def test_dropout_switch_is_the_branch_dropout() -> None:
    b0, b1 = make_branch(dropout=0.0), make_branch(dropout=0.5)
    r0, r1 = two_steps(b0), two_steps(b1)
    assert not torch.allclose(r0["fused"], r1["fused"])  # training: GKSA / FFN dropout applies
    for b in (b0, b1):
        b.eval()
    x, mask, _ = make_batch(2)
    net = make_net().eval()
    out = net(x, mask)
    f0 = b0(out["embeddings"], out["cam"], None, mask, net.classify)["fused"]
    f1 = b1(out["embeddings"], out["cam"], None, mask, net.classify)["fused"]
    torch.testing.assert_close(f0, f1)  # eval: no dropout, the same weights and memory


@pytest.mark.parametrize("key", ["detach_pseudo_target", "detach_uncertainty_weight"])
def test_detach_switches_change_the_gradients_they_name(key: str) -> None:
    grads = {}
    for flag in (True, False):
        branch = make_branch(**{key: flag})
        net = make_net()
        net.zero_grad(), branch.zero_grad()
        res = two_steps(branch, net)
        res["losses"]["loss_pseudo"].backward()
        if key == "detach_pseudo_target":
            # the CE target A_hat: its gradient reaches the fusion FFN only through the target
            # (D_t reaches it either way); compare the fusion's gradients
            grads[flag] = branch.fusion[0].weight.grad.clone()
        else:
            grads[flag] = net.classifier.weight.grad.clone()  # through exp(-D_t) into the main CAM
        value_ = value(res["losses"]["loss_pseudo"])
        grads[(flag, "v")] = value_
    assert grads[(True, "v")] == pytest.approx(grads[(False, "v")])  # the value is the same ...
    assert not torch.allclose(grads[True], grads[False])  # ... the gradient is not


def test_distributed_switch_gathers_every_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist_utils, "is_distributed", lambda: True)
    monkeypatch.setattr(dist_utils, "all_gather_rows", lambda x: torch.cat([x, x]))  # a second rank, same rows
    counts = {}
    for flag in (True, False):
        branch = make_branch(distributed=flag)
        branch.update_memory(torch.randn(2, H), torch.tensor([0, C]))
        counts[flag] = int(branch.memory_count.sum())
    assert counts == {True: 4, False: 2}


def test_summarization_aggregation_and_contrastive_switches() -> None:
    r0, b0 = None, make_branch()
    r0 = two_steps(b0)
    raw = make_branch(use_summarization=False)
    r_raw = two_steps(raw)
    assert raw.summarizer is None and b0.summarizer is not None
    t_m, _ = raw.knowledge()
    torch.testing.assert_close(t_m, rearrange(raw.memory, "r q h -> (r q) h"))  # Eq. 12 over the raw memory
    par = make_branch(aggregation="parametric")
    r_par = two_steps(par)
    assert par.aggregator is not None and not torch.allclose(r_par["fused"], r0["fused"])
    off = make_branch(use_contrastive=False)
    r_off = two_steps(off)
    assert value(r_off["losses"]["loss_ncl"]) == 0 and value(r0["losses"]["loss_ncl"]) > 0
    assert int(off.memory_count.sum()) == int(b0.memory_count.sum())  # the memory is still built
    assert not torch.allclose(r_raw["fused"], r0["fused"])


def test_warmup_background_and_uncertainty_switches() -> None:
    late = make_branch(warmup_epochs=1)
    r_late = two_steps(late)
    assert not r_late["active"] and int(late.memory_count.sum()) == 0
    late.set_epoch(1)
    assert two_steps(late)["active"]
    nobg = make_branch(store_background=False)
    two_steps(nobg)
    base = make_branch()
    r0 = two_steps(base)
    assert int(nobg.memory_count[C]) == 0 and int(base.memory_count[C]) > 0  # the background row
    plain = make_branch(use_uncertainty=False)
    r_plain = two_steps(plain)
    out = r_plain["net_out"]
    ce = uncertainty_weighted_pseudo_loss(out["cam"], r_plain["pseudo_tcam"], r_plain["mask"], use_uncertainty=False)
    torch.testing.assert_close(r_plain["losses"]["loss_pseudo"], ce)
    assert value(r0["losses"]["loss_pseudo"]) != pytest.approx(value(ce))


# ----------------------------------------------------------------------------- the empty-memory control
def test_empty_memory_control_keeps_the_path_and_drops_the_memory() -> None:
    full, ctrl = make_branch(), make_branch(empty_memory_control=True)
    r_full, r_ctrl = two_steps(full), two_steps(ctrl)
    assert int(full.memory_count.sum()) > 0 and int(ctrl.memory_count.sum()) == 0  # never filled
    assert value(r_ctrl["losses"]["loss_ncl"]) == 0 and value(r_full["losses"]["loss_ncl"]) > 0
    emb = r_ctrl["net_out"]["embeddings"]
    mask = r_ctrl["mask"]
    # F' = 0: F_fuse = FFN([0, F]) and the pseudo-TCAM is the shared head on it
    expected = ctrl.fusion(torch.cat([torch.zeros_like(emb), emb], -1)) * mask[..., None]
    torch.testing.assert_close(r_ctrl["fused"], expected)
    assert r_ctrl["pseudo_tcam"] is not None and value(r_ctrl["losses"]["loss_pseudo"]) > 0
    assert not torch.allclose(r_full["fused"], r_ctrl["fused"])
    # at test time the control still predicts its pseudo-CAM, and its inference weights load
    ctrl.eval()
    net = make_net().eval()
    x, mask, _ = make_batch(3)
    out = net(x, mask)
    res = ctrl(out["embeddings"], out["cam"], None, mask, net.classify)
    assert res["active"] and res["pseudo_tcam"] is not None
    fresh = make_branch(empty_memory_control=True)
    fresh.load_state_dict(ctrl.inference_state())  # strict: no memory bank in the inference weights
    fresh.eval()
    torch.testing.assert_close(fresh(out["embeddings"], out["cam"], None, mask, net.classify)["pseudo_tcam"],
                               res["pseudo_tcam"])


def test_empty_memory_control_in_the_rmgcl_method() -> None:
    net = make_net()
    method = RMGCL(net, memory_branch=make_branch(empty_memory_control=True)).train()
    x, mask, y = make_batch(0)
    for _ in range(2):
        losses = method.training_step({"features": x, "mask": mask, "video_labels": y})
    assert value(losses["loss_ncl"]) == 0 and value(losses["loss_teacher"]) > 0 and value(losses["loss_pseudo"]) > 0
    assert int(method.memory.memory_count.sum()) == 0


# ----------------------------------------------------------------------------- method switches
def make_method(net_dropout: float = 0.0, branch: bool = False, **kw: Any) -> RMGCL:
    net = make_net(net_dropout)
    return RMGCL(net, memory_branch=make_branch() if branch else None, **kw).train()


def step(method: RMGCL, seed: int = 0, draws: int = 11) -> dict[str, torch.Tensor]:
    x, mask, y = make_batch(seed, t=24)
    torch.manual_seed(draws)
    return method.training_step({"features": x, "mask": mask, "video_labels": y})


def test_topk_segments_and_branch_weights() -> None:
    base, other = make_method(), make_method(topk_segments=(4, 2, 6))
    l0, l1 = step(base), step(other)
    x, mask, y = make_batch(0, t=24)
    out = other.model(x, mask)
    ref = three_branch_mil_loss([out["tcam_ins"], out["tcam_con"], out["tcam_back"]], y, (4, 2, 6), mask)
    for k in ("loss_ins", "loss_con", "loss_back"):
        torch.testing.assert_close(l1[k], ref[k])
        assert value(l0[k]) != value(l1[k])
    torch.testing.assert_close(l1["loss_feat"], feature_magnitude_loss(out["embeddings"], out["attention"], (4, 2, 6),
                                                                       mask))
    w = make_method(branch_weights=(5.0, 1.0, 2.0))
    lw = step(w)
    aux = 2e-3 * lw["loss_guide"] + 5e-5 * lw["loss_feat"] + 2e-4 * lw["loss_sparse"]
    torch.testing.assert_close(lw["loss"], 5 * lw["loss_ins"] + lw["loss_con"] + 2 * lw["loss_back"] + aux)


@pytest.mark.parametrize("key,term", [("guide_weight", "loss_guide"), ("feature_weight", "loss_feat"),
                                      ("sparse_weight", "loss_sparse")])
def test_auxiliary_weights(key: str, term: str) -> None:
    l0 = step(make_method())
    off = step(make_method(**{key: 0.0}))
    assert term in l0 and term not in off
    weight = {"guide_weight": 2e-3, "feature_weight": 5e-5, "sparse_weight": 2e-4}[key]
    torch.testing.assert_close(l0["loss"] - off["loss"], weight * l0[term])


def test_feature_margin() -> None:
    l0, l1 = step(make_method()), step(make_method(feature_margin=5.0))
    assert value(l0["loss_feat"]) != value(l1["loss_feat"])
    assert value(l0["loss_ins"]) == value(l1["loss_ins"])


def test_teacher_weight() -> None:
    on, off = make_method(branch=True), make_method(branch=True, teacher_weight=0.0)
    for _ in range(2):
        l_on, l_off = step(on), step(off)
    assert "loss_teacher" in l_on and "loss_teacher" not in l_off
    torch.testing.assert_close(l_on["loss"] - l_off["loss"], l_on["loss_teacher"])


def test_test_cam_chooses_the_cam_of_the_proposals() -> None:
    method = make_method(branch=True)
    for _ in range(2):
        step(method)
    method.eval()
    x, mask, _ = make_batch(1, t=24)
    cams = {}
    for mode in ("main", "pseudo", "mean"):
        method.test_cam = mode
        cams[mode] = torch.as_tensor(method.predict({"features": x, "mask": mask})[0]["cas"])
    out = method.model(x, mask)
    torch.testing.assert_close(cams["main"], out["tcam_ins"].softmax(-1)[0, :, :C])
    pseudo = method.memory(out["embeddings"], out["cam"], None, mask, method.model.classify)["pseudo_tcam"]
    torch.testing.assert_close(cams["pseudo"], memory_test_cam(out["tcam_ins"], pseudo * out["attention"][..., :1],
                                                               "pseudo")[0, :, :C])
    torch.testing.assert_close(cams["mean"], 0.5 * (cams["main"] + cams["pseudo"]))
    assert not torch.allclose(cams["main"], cams["pseudo"])


def test_memory_cam_clean_is_the_head_without_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the 0.7 dropout, the training CAM of most steps is the head's bias alone; "clean"
    hands the memory terms (Eq. 6-7 selection, Eq. 15-16 student) the same head on the
    embeddings without dropout."""
    seen: dict[str, Any] = {}
    original = MemoryBranch.forward

    def spy(self, embeddings, tcam, video_labels, mask, classify, scores=None, **kw):  # noqa: ANN001, ANN202
        seen.update(tcam=tcam.detach().clone(), scores=scores.detach().clone(), emb=embeddings.detach().clone())
        return original(self, embeddings, tcam, video_labels, mask, classify, scores=scores, **kw)

    monkeypatch.setattr(MemoryBranch, "forward", spy)
    results = {}
    for mode in ("dropout", "clean"):
        method = make_method(net_dropout=0.7, branch=True, memory_cam=mode)
        losses = step(method, draws=3)
        out_att = method.model.eval()(*make_batch(0, t=24)[:2])["attention"]
        method.model.train()
        clean = method.model.classify(seen["emb"])
        results[mode] = (seen["tcam"], losses)
        if mode == "clean":
            torch.testing.assert_close(seen["tcam"], clean)
            torch.testing.assert_close(seen["scores"], (clean * out_att[..., :1]).softmax(-1))
        else:
            # segment dropout: most steps' CAM is the head's bias alone
            bias_only = (seen["tcam"] - method.model.classifier.bias).abs().amax(-1) < 1e-6
            assert bias_only.float().mean() > 0.4
            assert not torch.allclose(seen["tcam"], clean)
    # the memory terms see different student CAMs; the baseline's own losses are the same draws
    assert value(results["clean"][1]["loss_pseudo"]) != value(results["dropout"][1]["loss_pseudo"])
    assert value(results["clean"][1]["loss_ins"]) == value(results["dropout"][1]["loss_ins"])


def test_skip_nonfinite_leaves_weights_and_optimizer_state(monkeypatch: pytest.MonkeyPatch) -> None:
    import taltoolkit.methods.rmgcl as rmgcl_module

    monkeypatch.setattr(rmgcl_module, "guide_loss", lambda *a, **k: torch.tensor(float("nan")))
    for skip in (True, False):
        method = make_method(skip_nonfinite=skip)
        before = {k: v.clone() for k, v in method.state_dict().items()}
        opt = torch.optim.Adam(method.parameters(), lr=1e-2, weight_decay=5e-5)
        losses = step(method)
        if not skip:
            assert not torch.isfinite(losses["loss"])  # the trainer's check stops the run
            continue
        assert set(losses) == {"loss"} and float(losses["loss"].detach()) == 0
        opt.zero_grad(set_to_none=True)  # as the trainer does
        losses["loss"].backward()
        opt.step()
        assert all(p.grad is None for p in method.parameters()) and not opt.state
        assert all(torch.equal(v, method.state_dict()[k]) for k, v in before.items())
        assert method.log_metrics()["skipped_steps"] == 1
        method.on_epoch_start(1)
        assert method.log_metrics()["skipped_steps"] == 0


def test_skip_nonfinite_does_not_skip_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    import taltoolkit.methods.rmgcl as rmgcl_module

    monkeypatch.setattr(rmgcl_module, "guide_loss", lambda *a, **k: torch.tensor(float("nan")))
    monkeypatch.setattr(dist_utils, "is_distributed", lambda: True)
    losses = step(make_method())
    assert not torch.isfinite(losses["loss"])  # skipping one rank would stall the others' all-reduce
