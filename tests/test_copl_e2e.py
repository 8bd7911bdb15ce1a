"""COPL end to end through the same composition tools/run.py uses, and HAS + PLRI on CASE's outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import taltoolkit

# 3 iterations x 2 epochs on the tiny synthetic set; c = 8 of the 32 feature channels.
COPL = ["method=copl", "trainer.max_epochs=2", "method.shift_channels=8", "model.hidden_dim=16"]


def _moved(overrides, tmp_path, name):
    return [o.replace(str(tmp_path / "run"), str(tmp_path / name)) for o in overrides]


def test_copl_runs_every_iteration_and_reports_clustering(compose, tiny_overrides, tmp_path, caplog):
    with caplog.at_level("INFO", logger="taltoolkit"):
        metrics = taltoolkit.run(compose([*COPL, *tiny_overrides]))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["label_mode"] == "none" and saved["preset"] == "thumos14_unsup"
    assert np.isfinite(saved["average_mAP"]) and saved["average_mAP"] == pytest.approx(metrics["average_mAP"])
    stages = saved["stage_metrics"]
    assert [s["stage"] for s in stages] == ["iter1", "iter2", "iter3"]
    for s in stages:
        assert {"purity", "nmi", "ari", "accuracy", "p_purity"} <= set(s)
        assert 0 <= s["purity"] <= 1 and -1 <= s["ari"] <= 1
        assert s["num_p"] + s["num_u"] == 24
    assert "final_purity" in stages[-1]  # diagnostic clustering of the trained model
    assert {r["stage"] for r in saved["history"]} == {"iter1", "iter2", "iter3"}
    assert {"loss_cls", "loss_asl", "loss_ci", "loss_c", "loss_co", "loss_p", "loss_u"} <= set(saved["history"][-1])
    assert sum("clustering: purity=" in r.message for r in caplog.records) == 3
    # each clustering's cluster-against-class matrix is plotted into the run's plots/
    assert len(stages[0]["cluster_assignment"]["clusters"]) == 24
    for name in ("iter1", "iter2", "iter3", "final"):
        assert (tmp_path / "run" / "plots" / f"clusters_{name}.png").stat().st_size > 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    extra = state["method_extra"]
    assert len(extra["pseudo"]) == 24 and set(extra["pseudo"].values()) <= set(range(5))
    assert sorted(state["method"]["cluster_to_class"].tolist()) == list(range(5))  # a permutation


def test_copl_resumes_mid_iteration_without_reclustering(compose, tiny_overrides, tmp_path, caplog):
    full = taltoolkit.run(compose([*COPL, *tiny_overrides]))
    # Stop after 3 epochs: iteration 1's two epochs and the first epoch of iteration 2.
    part = taltoolkit.run(compose([*COPL, "trainer.stop_after_epochs=3", *_moved(tiny_overrides, tmp_path, "part")]))
    assert part["interrupted"]
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["stage_index"] == 1  # inside iteration 2
    caplog.clear()
    with caplog.at_level("INFO", logger="taltoolkit"):
        resumed = taltoolkit.run(compose([*COPL, f"trainer.resume={ckpt}", *_moved(tiny_overrides, tmp_path, "res")]))
    messages = [r.message for r in caplog.records]
    assert any("iter2: resumed; pseudo-labels restored" in m for m in messages)
    assert not any(m.startswith("iter2 clustering") for m in messages)
    assert resumed["mAP"] == full["mAP"]
    assert resumed["stage_metrics"] == full["stage_metrics"]
    a = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "res" / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    assert a["method_extra"]["pseudo"] == b["method_extra"]["pseudo"]


def test_copl_weak_trains_once_on_video_labels(compose, tiny_overrides, tmp_path):
    metrics = taltoolkit.run(compose(["method=copl_weak", "trainer.max_epochs=2", "method.shift_channels=8",
                                      "model.hidden_dim=16", *tiny_overrides]))
    assert metrics["label_mode"] == "weak" and metrics["preset"] == "thumos14_weak"
    assert {r["stage"] for r in metrics["history"]} == {"train"}
    assert metrics["history"][-1]["loss_u"] == 0.0  # every video is in P
    assert np.isfinite(metrics["average_mAP"])


def test_copl_weak_without_labels_and_oversized_shift_are_clear_errors(compose, tiny_overrides):
    cfg = compose(["method=copl_weak", "label_mode=none", "trainer.max_epochs=1", "method.shift_channels=8",
                   "model.hidden_dim=16", *tiny_overrides])
    with pytest.raises(ValueError, match="label_mode=weak"):
        taltoolkit.run(cfg)
    with pytest.raises(RuntimeError, match="shift_channels"):
        taltoolkit.run(compose(["method=copl", "trainer.max_epochs=1", *tiny_overrides]))  # c = 512 > D = 32


def test_has_and_plri_wrap_case_attention():
    """HAS + spectral clustering + PLRI on CASE's two-branch network (TwoStreamWTAL) outputs."""
    from taltoolkit.data.synthetic import generate_synthetic
    from taltoolkit.models.wtal import TwoStreamWTAL
    from taltoolkit.pseudo.has import global_video_feature, has_attention
    from taltoolkit.pseudo.plri import plri_confidence, plri_split, spectral_clustering

    videos, _ = generate_synthetic("thumos", num_videos=16, num_classes=4, feature_dim=16, max_steps=60, seed=1)
    videos = [v for v in videos if v.subset == "validation"]
    torch.manual_seed(0)
    case_net = TwoStreamWTAL(in_dim=16, num_classes=4, hidden_dim=8, num_clusters=0).eval()
    feats = []
    with torch.no_grad():
        for v in videos:
            x = torch.as_tensor(v.features).unsqueeze(0)  # (1, T, D)
            out = case_net(x)
            a_cs = torch.sigmoid(out["cas"].mean(0)[0].sum(-1))  # Eq. 11's f_sum over CASE's T-CAS
            a_ca = out["attention"].mean(0)[0]  # CASE's class-agnostic attention, streams averaged
            a_has = has_attention(a_cs, a_ca, gamma=4)
            assert 0 < int((a_has > 0).sum()) <= max(1, v.num_steps // 4)
            feats.append(global_video_feature(x[0], a_has))
    f = torch.stack(feats)
    assert torch.allclose(f.norm(dim=1), torch.ones(len(videos)))
    labels, w = spectral_clustering(f, 4)
    assert labels.shape == (len(videos),) and set(labels.tolist()) <= set(range(4))
    _, _, s = plri_confidence(w, labels)
    in_p = plri_split(s, 0.0)
    assert np.all((s >= -1) & (s <= 1)) and in_p.dtype == bool and in_p.tolist() == (s >= 0).tolist()


@pytest.mark.parametrize("layout", ["wtalc", "split", "concat"])
def test_copl_on_thumos14_config_in_real_layouts(compose, tmp_path, layout):
    """method=copl dataset=thumos14 dataset.root=DIR on features written in real layouts with the real GT."""
    from conftest import thumos14_layout_overrides

    over = [
        "method=copl", *thumos14_layout_overrides(tmp_path, layout), "dataset.num_segments=64", "trainer.max_epochs=1", "trainer.batch_size=16",
        "trainer.device=cpu", "trainer.progress=false", f"output_dir={tmp_path / 'run'}", "method.iterations=2",
        "method.shift_channels=4", "model.hidden_dim=8", "postprocess.upsample=1", "postprocess.cas_thresholds=[0.3,0.6]",
    ]
    metrics = taltoolkit.run(compose(over))
    assert metrics["dataset"] == "thumos14" and metrics["preset"] == "thumos14_unsup"
    assert sum(metrics["num_ground_truth"].values()) == 3358
    assert [s["num_p"] + s["num_u"] for s in metrics["stage_metrics"]] == [200, 200]  # every training video clustered
    assert np.isfinite(metrics["average_mAP"])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_cluster_like_one(tmp_path):
    """Under torchrun every rank predicts every training video, so the clustering is the same;
    the P / U losses are means over the global batch, so training is the same too."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from conftest import TINY_SYNTHETIC

    run_py = Path(__file__).resolve().parent.parent / "tools" / "run.py"
    common = [*COPL, *TINY_SYNTHETIC, f"dataset.cache_dir={tmp_path / 'cache'}", "trainer.device=cpu",
              "trainer.progress=false", "trainer.batch_size=8", "method.iterations=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TALTOOLKIT_CACHE": str(tmp_path / "cache")}
    launcher = [shutil.which("torchrun")] if shutil.which("torchrun") else [sys.executable, "-m", "torch.distributed.run"]
    out = {}
    for n in (1, 2):
        cmd = [*launcher, "--standalone", f"--nproc_per_node={n}", str(run_py), *common, f"output_dir={tmp_path / str(n)}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[n] = json.loads((tmp_path / str(n) / "metrics.json").read_text())
    assert out[2]["world_size"] == 2
    # Iteration 1 clusters the same initial model's outputs: identical.
    assert out[2]["stage_metrics"][0] == out[1]["stage_metrics"][0]
    # Training on sharded batches averages the P and U losses over the global batch's P and U
    # videos, so the losses match to float round-off (~1e-7 observed) and iteration 2 clusters
    # the same way.
    assert len(out[1]["history"]) == len(out[2]["history"]) > 0  # zip would hide a run that stopped early
    for a, b in zip(out[1]["history"], out[2]["history"]):
        for key in [k for k in a if k.startswith("loss")]:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (key, a, b)
    s1, s2 = out[1]["stage_metrics"][1], out[2]["stage_metrics"][1]
    assert s2["num_p"] + s2["num_u"] == 24
    for key in s1:
        assert s2[key] == (pytest.approx(s1[key], rel=1e-4) if isinstance(s1[key], float) else s1[key]), key
    assert out[2]["average_mAP"] == pytest.approx(out[1]["average_mAP"], abs=0.05)


def test_trained_copl_finds_the_hidden_actions(compose, tiny_overrides, tmp_path):
    """A short unsupervised run must learn actionness: after training, the teacher's class-agnostic
    attention correlates with the (never seen) action mask of the training videos, and HAS picks
    action snippets, clearly better than the same IOCNet untrained (trainer.lr=1e-12), which a COPL
    that does not learn from its pseudo-labels would not beat. (delta = 0: on this tiny set the
    synthetic default's delta = -0.05 keeps every video in P and the attention inverts, the
    failure docs/methods/copl.md measures on seed 2.)"""
    over = ["method=copl", "trainer.max_epochs=10", "method.shift_channels=8", "model.hidden_dim=32", "method.gamma=8",
            *tiny_overrides, "trainer.batch_size=4", "dataset.difficulty=0.3", "dataset.feature_dim=64",
            "dataset.num_classes=3", "method.delta=0.0"]
    trained = taltoolkit.run(compose([*over, "trainer.lr=2e-3"]))["stage_metrics"][-1]
    untrained = taltoolkit.run(compose([*_moved(over, tmp_path, "untrained"), "trainer.lr=1e-12"]))["stage_metrics"][-1]
    assert trained["final_corr_a_ca"] > untrained["final_corr_a_ca"] + 0.1
    assert trained["final_has_precision"] > untrained["final_has_precision"] + 0.1
    assert trained["final_has_precision"] > trained["action_rate"] + 0.15
