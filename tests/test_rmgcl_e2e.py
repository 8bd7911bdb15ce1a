"""RMGCL/GKSA end to end: the method, its baseline, the memory branch on CASE, inference weights."""
from __future__ import annotations

import json
import math

import pytest
import torch

import taltoolkit
from taltoolkit.methods.rmgcl import RMGCL

# Tiny memory so that the branch is on after one epoch and its queue fills; zeta 0 because
# no class probability of a few-step run passes the paper's 0.75.
TINY_MEMORY = [
    "memory_branch.zeta=0.0",
    "memory_branch.warmup_epochs=1",
    "memory_branch.queue_length=16",
    "memory_branch.num_codewords=4",
    "memory_branch.num_heads=2",
    "model.hidden_dim=32",
]


def _rename(overrides, tmp_path, name):
    return [o.replace(str(tmp_path / "run"), str(tmp_path / name)) for o in overrides]


def test_rmgcl_run_writes_the_run_directory_and_inference_weights(compose, tiny_overrides, tmp_path):
    cfg = compose(["method=rmgcl", "trainer.max_epochs=3", *TINY_MEMORY, *tiny_overrides])
    assert cfg.trainer.max_epochs == 3 and cfg.postprocess._target_.endswith("acmnet.acmnet_proposals")
    metrics = taltoolkit.run(cfg)
    run = tmp_path / "run"
    for f in ("config.yaml", "metrics.json", "predictions.json", "checkpoints/last.ckpt", "checkpoints/inference.pt"):
        assert (run / f).is_file(), f
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["method"] == "RMGCL" and saved["average_mAP"] == pytest.approx(metrics["average_mAP"])
    hist = saved["history"]
    assert hist[0]["memory_active"] == 0 and hist[0]["loss_ncl"] == 0  # warm-up epoch
    assert hist[-1]["memory_active"] == 1 and hist[-1]["loss_ncl"] > 0 and hist[-1]["loss_pseudo"] > 0
    assert "loss_teacher" not in hist[0] and hist[-1]["loss_teacher"] > 0  # the pseudo-label teacher learns too
    assert {"loss_ins", "loss_con", "loss_back", "loss_guide", "loss_feat", "loss_sparse"} <= set(hist[-1])

    # The training checkpoint carries the memory bank (resume); the inference weights only T_M.
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    inference = torch.load(run / "checkpoints" / "inference.pt", weights_only=False)["method"]
    assert "memory.memory" in last and int(last["memory.memory_count"].sum()) > 0
    assert not any(k.startswith(("memory.memory", "memory.summarizer")) for k in inference)
    assert bool(inference["memory.summary_mask"].any())

    # Evaluating the inference weights (no memory bank) reproduces the full checkpoint's mAP
    # exactly, for the main CAM and for the pseudo-CAM that reads T_M; the latter is the
    # default, so it is also the training run's own evaluation.
    assert metrics["average_mAP"] > 0  # otherwise the equalities below would hold vacuously
    for test_cam in ("main", "pseudo"):
        ev = compose(["method=rmgcl", f"method.test_cam={test_cam}", f"weights={run / 'checkpoints' / 'last.ckpt'}",
                      *TINY_MEMORY, *_rename(tiny_overrides, tmp_path, f"full_{test_cam}")])
        trained = taltoolkit.run(ev)
        if test_cam == "pseudo":
            assert trained["mAP"] == metrics["mAP"]
        ev = compose(["method=rmgcl", f"method.test_cam={test_cam}", f"weights={run / 'checkpoints' / 'inference.pt'}",
                      *TINY_MEMORY, *_rename(tiny_overrides, tmp_path, f"eval_{test_cam}")])
        again = taltoolkit.run(ev)
        assert again["mAP"] == trained["mAP"], test_cam
        assert again["model_selection"]["note"].startswith("evaluation only")


def test_rmgcl_baseline_has_no_memory(compose, tiny_overrides):
    from hydra.utils import instantiate

    cfg = compose(["method=rmgcl", "memory_branch=none", "trainer.max_epochs=1", *tiny_overrides])
    metrics = taltoolkit.run(cfg)
    assert "loss_ncl" not in metrics["history"][-1] and "loss_ins" in metrics["history"][-1]
    model = instantiate(cfg.model, in_dim=32, num_classes=5)
    assert instantiate(cfg.method, model=model).memory is None


def test_memory_branch_on_case_end_to_end(compose, tiny_overrides, tmp_path):
    cfg = compose(["method=case", "memory_branch=rmgcl", "trainer.max_epochs=3", *TINY_MEMORY[:-1],
                   "memory_branch.num_heads=4", *tiny_overrides])
    metrics = taltoolkit.run(cfg)
    last = metrics["history"][-1]
    assert {"loss_v", "loss_a", "loss_s", "loss_c", "loss_ncl", "loss_pseudo"} <= set(last)
    assert last["loss_ncl"] > 0 and last["loss_pseudo"] > 0 and last["loss_teacher"] > 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    assert {"memory.0.memory", "memory.1.memory"} <= set(state)  # one memory per stream
    inference = torch.load(tmp_path / "run" / "checkpoints" / "inference.pt", weights_only=False)["method"]
    assert "memory.0.memory" not in inference and "memory.1.summary" in inference
    # The inference weights (no memory bank) evaluate exactly as the trained run did.
    ev = compose(["method=case", "memory_branch=rmgcl", *TINY_MEMORY[:-1],
                  "memory_branch.num_heads=4", f"weights={tmp_path / 'run' / 'checkpoints' / 'inference.pt'}",
                  *_rename(tiny_overrides, tmp_path, "eval")])
    again = taltoolkit.run(ev)
    assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-9)


def test_memory_branch_refused_by_a_method_without_one(compose, tiny_overrides):
    cfg = compose(["method=case", "memory_branch=rmgcl", *tiny_overrides])
    cfg.method._target_ = "taltoolkit.engine.method.Method"
    with pytest.raises(ValueError, match="cannot carry a memory branch"):
        taltoolkit.run(cfg)


def test_rmgcl_activitynet_values_compose(compose):
    cfg = compose(["method=rmgcl", "dataset=activitynet13", "dataset.root=/nowhere"])
    assert list(cfg.method.topk_segments) == [2, 10, 10] and cfg.trainer.batch_size == 64
    assert list(cfg.method.branch_weights) == [5.0, 1.0, 1.0] and cfg.model.input_dropout and cfg.model.attention_dropout
    assert cfg.memory_branch.num_codewords == 200 and cfg.postprocess.nms_threshold == 0.9
    assert cfg.dataset.num_segments == 75


def test_rmgcl_rejects_bad_options():
    from taltoolkit.models.acmnet import ACMNet

    with pytest.raises(ValueError, match="test_cam"):
        RMGCL(ACMNet(8, 2, hidden_dim=8), test_cam="bogus")
    with pytest.raises(ValueError, match="topk_segments"):
        RMGCL(ACMNet(8, 2, hidden_dim=8), topk_segments=(8, 3))
    with pytest.raises(ValueError, match="topk_segments"):
        RMGCL(ACMNet(8, 2, hidden_dim=8), topk_segments=(0.125, 3, 3))
    with pytest.raises(ValueError, match="memory_cam"):
        RMGCL(ACMNet(8, 2, hidden_dim=8), memory_cam="bogus")


def test_rmgcl_on_thumos14_config_in_a_real_layout(compose, tmp_path):
    """dataset=thumos14 dataset.root=DIR (per-video split rgb/flow layout) with the real ground truth."""
    import numpy as np

    from conftest import thumos14_layout_overrides

    metrics = taltoolkit.run(compose([
        "method=rmgcl", *thumos14_layout_overrides(tmp_path, "split"), "dataset.num_segments=64", "trainer.max_epochs=2", "trainer.device=cpu",
        "trainer.progress=false", f"output_dir={tmp_path / 'run'}", "postprocess.upsample=1", *TINY_MEMORY,
    ]))
    assert metrics["dataset"] == "thumos14" and metrics["preset"] == "thumos14_weak"
    assert sum(metrics["num_ground_truth"].values()) == 3358
    assert np.isfinite(metrics["average_mAP"]) and metrics["history"][-1]["memory_active"] == 1


def test_rmgcl_builds_its_datasets_with_acmnet_sampling(compose, tiny_overrides, monkeypatch, tmp_path):
    """method.sampling_rule / method.test_sampling reach the datasets the entry point builds:
    ACM-Net's random_sample while training, and test videos longer than num_segments resampled."""
    import taltoolkit.entry as entry

    seen = []
    original = entry.make_dataset

    def spy(*args, **kw):
        seen.append((kw["training"], kw["rule"], kw["test_sampling"]))
        return original(*args, **kw)

    monkeypatch.setattr(entry, "make_dataset", spy)  # what the entry point builds its datasets with
    base = ["method=rmgcl", "memory_branch=none", "trainer.max_epochs=1", *tiny_overrides]
    taltoolkit.run(compose(base))
    assert {s[1:] for s in seen} == {("acmnet", "longer")} and {s[0] for s in seen} == {True, False}
    seen.clear()
    taltoolkit.run(compose(["method=rmgcl", "memory_branch=none", "trainer.max_epochs=1", "method.sampling_rule=bins",
                            "method.test_sampling=native", *_rename(tiny_overrides, tmp_path, "other")]))
    assert {s[1:] for s in seen} == {("bins", "native")}


def test_resampled_test_video_times_are_acmnets_t_factor():
    """A test video of 1000 steps (THUMOS14: 16 frames at 25 fps) resampled to 750: the seconds
    per upsampled step equal ACM-Net's t_factor = 16 * vid_len / (25 * 20 * 750)."""
    import numpy as np

    from taltoolkit.data.sampling import evaluation_indices

    idx = evaluation_indices(1000, 750, "longer")
    # ACM-Net's uniform_sample: floor(arange(750) * 1000 / 750)
    assert len(idx) == 750 and np.array_equal(idx, np.floor(np.arange(750) * (1000 / 750)).astype(int))
    assert len(evaluation_indices(600, 750, "longer")) == 600  # shorter videos stay native
    step_scale = 1000 / len(idx)  # the evaluator's step_s multiplier for this video
    assert (16 / 25) * step_scale / 20 == pytest.approx((16 * 1000) / (25 * 20 * 750), rel=1e-12)


def test_a_nan_step_is_skipped_by_the_training_loop(compose, tiny_overrides, monkeypatch):
    """ACM-Net's loop skips a step whose loss is NaN; the engine's loop runs on (and logs it)."""
    import taltoolkit.methods.rmgcl as rmgcl_module

    calls = []
    original = rmgcl_module.guide_loss

    def nan_once(*args, **kw):
        calls.append(1)
        value = original(*args, **kw)
        return value * float("nan") if len(calls) == 1 else value

    monkeypatch.setattr(rmgcl_module, "guide_loss", nan_once)
    metrics = taltoolkit.run(compose(["method=rmgcl", "memory_branch=none", "trainer.max_epochs=2", *tiny_overrides]))
    hist = metrics["history"]
    assert hist[0]["skipped_steps"] == 1 and hist[1]["skipped_steps"] == 0
    assert all(math.isfinite(h["loss"]) for h in hist)
