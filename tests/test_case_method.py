"""CASE's own glue: ablation switches, the warm-up, Q^C state, clustering-assisted testing."""
from __future__ import annotations

import pytest
import torch

from taltoolkit.methods.case import CASE
from taltoolkit.models.wtal import TwoStreamWTAL


def _batch(b=4, t=24, d=16, g=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.zeros(b, g)
    y[torch.arange(b), torch.arange(b) % g] = 1
    return {"features": torch.rand(b, t, d, generator=gen), "mask": torch.ones(b, t, dtype=torch.bool), "video_labels": y}


def _case(**kw):
    torch.manual_seed(0)
    return CASE(TwoStreamWTAL(16, 3, hidden_dim=8, num_clusters=4), **kw)


def test_warmup_selects_topk_from_tcas_only(monkeypatch):
    batch = _batch()
    m = _case(attention_warmup_epochs=2)
    seen = []
    orig = CASE._combined_scores

    def spy(self, out, fg):
        seen.append(fg.abs().sum().item())
        return orig(self, out, fg)

    monkeypatch.setattr(CASE, "_combined_scores", spy)
    m.on_epoch_start(0)
    m.training_step(batch)
    m.on_epoch_start(2)
    m.training_step(batch)
    assert seen[0] == 0.0  # warm-up: attention excluded from the top-k score
    assert seen[-1] > 0.0  # afterwards: T-CAS calibrated by attention, as in the paper


def test_paper_default_has_no_warmup():
    assert _case().attention_warmup_epochs == 0


def test_cluster_fb_updates_and_drives_test_foreground():
    batch = _batch()
    m = _case()
    before = m.cluster_fb.clone()
    losses = m.training_step(batch)
    assert {"loss", "loss_v", "loss_a", "loss_s", "loss_c"} <= set(losses)
    assert not torch.equal(before, m.cluster_fb)
    torch.testing.assert_close(m.cluster_fb.sum(-1), torch.ones(4))  # rows of Q^C are distributions
    out = m.model(batch["features"], batch["mask"])
    p_t = out["cluster_logits"].softmax(-1) @ m.cluster_fb[:, 0]  # P^T = P^S Q^C_fg
    torch.testing.assert_close(m._transformed_foreground(out), p_t)
    # Public code: every stream's P^A and P^T enter the calibration on their own.
    torch.testing.assert_close(m._test_foreground(out), torch.cat([out["attention"], p_t]))
    m.test_fusion = "weighted"
    torch.testing.assert_close(m._test_foreground(out), 0.5 * out["attention"] + 0.5 * p_t)  # P^M (Sec. 4.3)
    m.test_foreground = "attention"
    torch.testing.assert_close(m._test_foreground(out), out["attention"])
    m.test_foreground = "transformed"
    torch.testing.assert_close(m._test_foreground(out), p_t)


@pytest.mark.parametrize(
    "switches,absent",
    [
        ({"use_scc": False, "use_ccc": False, "test_foreground": "attention"}, {"loss_s", "loss_c"}),
        ({"use_ccc": False}, {"loss_c"}),
    ],
)
def test_table3_switches_drop_their_losses(switches, absent):
    m = _case(**switches)
    before = m.cluster_fb.clone()
    losses = m.training_step(_batch())
    assert torch.isfinite(losses["loss"]) and not absent & set(losses)
    assert torch.equal(before, m.cluster_fb)  # without CCC, Q^C is never learnt
    losses["loss"].backward()


def _cluster_inputs(n=60, k=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen) * 5, torch.rand(n, generator=gen)


def test_scc_labelling_switches_make_the_labels_they_name():
    """Table 4: OT soft / OT hard / argmax of the predictions / softmax of the predictions."""
    logits, att = _cluster_inputs()
    soft = _case()._cluster_targets(logits, att)
    torch.testing.assert_close(soft.sum(-1), torch.ones(len(logits)))
    assert ((soft > 1e-3) & (soft < 1 - 1e-3)).any()  # soft labels
    hard = _case(scc_labelling="ot_hard")._cluster_targets(logits, att)
    torch.testing.assert_close(hard, torch.nn.functional.one_hot(soft.argmax(-1), 4).float())
    arg = _case(scc_labelling="argmax")._cluster_targets(logits, att)
    torch.testing.assert_close(arg, torch.nn.functional.one_hot(logits.argmax(-1), 4).float())
    assert not torch.equal(arg, hard)  # OT rebalances some snippets away from their argmax
    sm = _case(scc_labelling="softmax")._cluster_targets(logits, att)
    torch.testing.assert_close(sm, (logits / 0.5).softmax(-1))
    # OT spreads the batch over the clusters (equipartition, Eq. 10); the softmax does not.
    mild = logits * 0.1
    m = _case(scc_prior="none")
    ot_mass = m._cluster_targets(mild, att).sum(0)
    sm_mass = _case(scc_labelling="softmax")._cluster_targets(mild, att).sum(0)
    assert ot_mass.std() < 0.2 * sm_mass.std()


def test_scc_prior_switch_applies_the_rank_prior():
    """Table 5 line 2: Eq. 12's rank prior moves Q^S; with a sharp prior, towards the snippets' rank position."""
    logits, att = _cluster_inputs()
    plain = _case(scc_prior="none")._cluster_targets(logits, att)
    ranked = _case()._cluster_targets(logits, att)
    assert not torch.allclose(plain, ranked)
    m = _case(sigma=0.05)
    m.cluster_fb.copy_(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.05, 0.95]]))
    sharp = m._cluster_targets(torch.zeros_like(logits), att)
    # The most foreground snippets go to the clusters whose 1 - Q^C_fg is nearest their rank.
    top = att.argsort(descending=True)[:5]
    assert (sharp[top].argmax(-1) == 0).all()


def test_ccc_marginal_switch_sets_the_column_marginal():
    """Table 5 line 3: Q^C's column sums follow the batch's F&B share (Eq. 13) or are equal (Eq. 9)."""
    batch = _batch()
    m = _case()
    m.training_step(batch)
    emp = m.cluster_fb.sum(0) / m.cluster_fb.sum()
    e = _case(ccc_marginal="equipartition")
    e.training_step(batch)
    equi = e.cluster_fb.sum(0) / e.cluster_fb.sum()
    # Three Sinkhorn iterations end on the cluster rows, so the F&B columns are near, not at, their targets.
    torch.testing.assert_close(equi, torch.tensor([0.5, 0.5]), atol=0.02, rtol=0)
    # Q^A marks floor(24 / 8) = 3 of 24 steps per video: beta^C = (0.125, 0.875).
    torch.testing.assert_close(emp, torch.tensor([0.125, 0.875]), atol=0.05, rtol=0)


def test_bad_switches_name_the_option():
    with pytest.raises(ValueError, match="scc_prior"):
        _case(scc_prior="gauss")
    with pytest.raises(ValueError, match="use_scc"):
        _case(use_scc=False, use_ccc=True)
    with pytest.raises(ValueError, match="num_clusters"):
        CASE(TwoStreamWTAL(16, 3, num_clusters=0))


def test_predict_shapes_and_probabilities():
    m = _case()
    batch = _batch()
    batch["mask"][1, 20:] = False
    outs = m.predict(batch)
    assert len(outs) == 4 and outs[1]["cas"].shape == (20, 3)
    assert torch.allclose(outs[0]["class_scores"].sum(), torch.tensor(1.0))
    assert (outs[0]["cas"] >= 0).all() and (outs[0]["cas"] <= 1).all()


def _case_with_memory(**kw):
    from functools import partial

    from taltoolkit.models.memory import MemoryBranch

    torch.manual_seed(0)
    branch = partial(MemoryBranch, queue_length=8, num_codewords=3, num_heads=2, zeta=0.75, warmup_epochs=0)
    return CASE(TwoStreamWTAL(16, 3, hidden_dim=8, num_clusters=4), memory_branch=branch, **kw)


@pytest.mark.parametrize("mode", ["calibrated", "softmax"])
def test_memory_gating_on_case_uses_attention_calibrated_scores(monkeypatch, mode):
    """Eq. 7's zeta gates CASE's attention-calibrated T-CAS (classes) and 1 - P^A (background) per step."""
    from taltoolkit.models.memory import MemoryBranch

    m = _case_with_memory(memory_scores=mode)
    seen = []
    orig = MemoryBranch._selection_scores

    def spy(self, tcam, scores, background_scores):  # noqa: ANN001, ANN202
        sel = orig(self, tcam, scores, background_scores)
        seen.append((tcam.detach(), sel))
        return sel

    monkeypatch.setattr(MemoryBranch, "_selection_scores", spy)
    batch = _batch()
    m.on_epoch_start(0)
    m.training_step(batch)
    out = m.model(batch["features"], batch["mask"])
    for s, (tcam, sel) in enumerate(seen):
        att = out["attention"][s].detach()
        torch.testing.assert_close(sel[..., -1], 1 - att)  # background row
        fused = (out["cas"].detach().softmax(-1).mean(0) + out["attention"].detach().sum(0).unsqueeze(-1)) / 3
        cls = fused if mode == "calibrated" else tcam.softmax(-1)
        torch.testing.assert_close(sel[..., :-1], cls)


def test_memory_gating_stores_actions_only_where_attention_agrees():
    """A step whose class softmax is sure but whose attention says background passes zeta = 0.75 only
    with the plain softmax; with the calibrated scores it goes to the background row instead."""
    from taltoolkit.models.memory import MemoryBranch

    branch = MemoryBranch(4, 2, queue_length=8, num_codewords=2, num_heads=1, zeta=0.75, warmup_epochs=0, background=False)
    tcam = torch.tensor([[[6.0, -6.0], [6.0, -6.0]]])  # (1, 2, 2): class 0 sure at both steps
    att = torch.tensor([[0.95, 0.05]])  # step 0 foreground, step 1 background
    calibrated = branch._selection_scores(tcam, (tcam.softmax(-1) + att.unsqueeze(-1)) / 2, 1 - att)
    plain = branch._selection_scores(tcam, None, 1 - att)
    assert calibrated[0, 0, 0] > 0.75 and calibrated[0, 1, 0] < 0.75 and calibrated[0, 1, 2] > 0.75
    assert plain[0, 1, 0] > 0.75  # the background step would be stored as class 0
