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
    torch.testing.assert_close(m._test_foreground(out), 0.5 * out["attention"] + 0.5 * p_t)  # P^M
    m.test_foreground = "attention"
    torch.testing.assert_close(m._test_foreground(out), out["attention"])


@pytest.mark.parametrize(
    "switches,absent",
    [
        ({"use_scc": False, "use_ccc": False, "test_foreground": "attention"}, {"loss_s", "loss_c"}),
        ({"use_ccc": False}, {"loss_c"}),
        ({"scc_prior": "none"}, set()),
        ({"ccc_marginal": "equipartition"}, set()),
        ({"scc_labelling": "ot_hard"}, set()),
        ({"scc_labelling": "argmax"}, set()),
        ({"scc_labelling": "softmax"}, set()),
    ],
)
def test_ablation_switches_train(switches, absent):
    m = _case(**switches)
    losses = m.training_step(_batch())
    assert torch.isfinite(losses["loss"])
    assert not absent & set(losses)
    losses["loss"].backward()


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
