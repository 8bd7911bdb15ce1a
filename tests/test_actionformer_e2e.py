"""ActionFormer end to end through the composition tools/run.py uses."""
from __future__ import annotations

import json

import numpy as np
import pytest

import taltoolkit
from taltoolkit.evaluation.presets import get_preset

TINY_MODEL = ["model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.window_size=5"]


def test_tiny_actionformer_run_writes_the_run_directory(compose, tiny_overrides, tmp_path):
    cfg = compose(["method=actionformer", "label_mode=full", "trainer.max_epochs=2", *TINY_MODEL, *tiny_overrides])
    assert cfg.trainer.optimizer._target_ == "torch.optim.AdamW" and cfg.trainer.scheduler.decay == "cosine"
    metrics = taltoolkit.run(cfg)
    run = tmp_path / "run"
    for f in ("config.yaml", "metrics.json", "predictions.json", "checkpoints/last.ckpt"):
        assert (run / f).is_file(), f
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["tiou_thresholds"] == list(get_preset("thumos14_full").tiou_thresholds)
    assert saved["label_mode"] == "full"
    assert np.isfinite(saved["average_mAP"]) and saved["average_mAP"] == pytest.approx(metrics["average_mAP"])
    assert {"cls_loss", "reg_loss", "num_pos"} <= set(saved["history"][-1])
    preds = json.loads((run / "predictions.json").read_text())["results"]
    assert preds and all(len(v) <= 200 for v in preds.values())  # postprocess.max_seg_num
    # the warm-up raised the learning rate during epoch 0 (2 warm-up epochs on the synthetic config)
    assert saved["history"][0]["lr"] < 5e-4


def test_actionformer_resume_ends_identical(compose, tiny_overrides, tmp_path):
    import torch

    common = ["method=actionformer", "trainer.max_epochs=3", *TINY_MODEL]
    full = taltoolkit.run(compose([*common, *tiny_overrides]))
    part_over = [o.replace(str(tmp_path / "run"), str(tmp_path / "part")) for o in tiny_overrides]
    assert taltoolkit.run(compose([*common, "trainer.stop_after_epochs=2", *part_over]))["interrupted"]
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    res_over = [o.replace(str(tmp_path / "run"), str(tmp_path / "resumed")) for o in tiny_overrides]
    resumed = taltoolkit.run(compose([*common, f"trainer.resume={ckpt}", *res_over]))
    assert resumed["mAP"] == full["mAP"]
    a = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    assert "loss_norm" in a and any(k.startswith("ema.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_actionformer_on_thumos14_config_in_the_concat_layout(compose, tmp_path):
    """dataset=thumos14 dataset.root=DIR on per-video features (ActionFormer's layout) with the real GT."""
    from conftest import thumos14_layout_overrides

    over = [
        "method=actionformer", *thumos14_layout_overrides(tmp_path, "concat"), "dataset.max_seq_len=256",
        "trainer.max_epochs=1", "trainer.batch_size=16", "trainer.device=cpu", "trainer.progress=false",
        f"output_dir={tmp_path / 'run'}", *TINY_MODEL,
        # an untrained detector scores every point near its prior: fewer candidates keep Soft-NMS quick
        "method.pre_nms_topk=100", "postprocess.max_seg_num=50",
        "model.branch_layers=2", "model.regression_ranges=[[0,4],[4,8],[8,10000]]",  # 3 levels: quicker
    ]
    metrics = taltoolkit.run(compose(over))
    assert metrics["dataset"] == "thumos14" and metrics["preset"] == "thumos14_full"
    assert sum(metrics["num_ground_truth"].values()) == 3358  # every real THUMOS14 test instance counts
    assert np.isfinite(metrics["average_mAP"])


@pytest.mark.parametrize("dataset,expect", [
    ("thumos14", {"max_seq_len": 2304, "window": 19, "lr": 1e-4, "epochs": 35, "smoothing": 0.0, "batch": 2,
                  "loss_norm": 100.0}),
    ("activitynet13", {"max_seq_len": 192, "window": [7, 7, 7, 7, 7, -1], "lr": 1e-3, "epochs": 15, "smoothing": 0.1,
                       "batch": 16, "loss_norm": 200.0}),
])
def test_paper_settings_per_dataset(compose, dataset, expect):
    cfg = compose(["method=actionformer", f"dataset={dataset}"])
    assert cfg.dataset.max_seq_len == expect["max_seq_len"]
    assert cfg.model.window_size == expect["window"]
    assert cfg.trainer.lr == expect["lr"] and cfg.trainer.max_epochs == expect["epochs"]
    assert cfg.trainer.warmup_epochs == 5 and cfg.trainer.weight_decay == 0.05
    assert cfg.method.label_smoothing == expect["smoothing"]
    assert cfg.postprocess._target_.endswith("segment_postprocess")
    # the public train_cfg: dropout 0, drop path 0.1 (with AffineDropPath's 1e-4 scales)
    assert cfg.model.dropout == 0.0 and cfg.model.drop_path == 0.1 and cfg.model.layer_scale_init == 1e-4
    assert cfg.model.max_seq_len == expect["max_seq_len"]  # the network pads as the public code
    assert cfg.model.use_abs_pe == (dataset == "activitynet13")
    # test_cfg.pre_nms_topk per level in decode, no second top-k across levels before NMS
    assert cfg.method.pre_nms_topk == 2000 and cfg.postprocess.pre_nms_topk is None
    assert cfg.method.weight_decay_split  # make_optimizer's decay / no-decay groups
    assert cfg.trainer.batch_size == expect["batch"] and cfg.trainer.grad_clip == 1.0
    assert cfg.method.ema_decay == 0.999 and cfg.method.init_loss_norm == expect["loss_norm"]


def test_apl_candidates_follow_actionformer(compose):
    cfg = compose(["method=apl"])
    assert cfg.method.pre_nms_topk == 2000 and cfg.postprocess.pre_nms_topk is None
    assert cfg.model.layer_scale_init == 1e-4 and cfg.model.dropout == 0.0


@pytest.mark.parametrize("method", ["actionformer", "apl"])
def test_activitynet13_config_in_the_concat_layout(compose, tmp_path, method):
    """dataset=activitynet13 on per-video features written in the concat layout (small generated
    set with its own gt.json, ActivityNet subset names), evaluated with the ActivityNet preset."""
    from taltoolkit.data.synthetic import generate_synthetic
    from taltoolkit.data.writers import write_layout

    videos, classes = generate_synthetic("anet", num_videos={"training": 24, "validation": 12}, num_classes=5,
                                         feature_dim=16, seed=0)
    root = tmp_path / "anet"
    write_layout(videos, classes, root, "concat", name="anet", feature_stride=16, snippet_frames=16, fps=25.0)
    over = [
        f"method={method}", "dataset=activitynet13", f"dataset.root={root}", "dataset.layout=concat",
        f"dataset.annotations={root / 'gt.json'}", "dataset.feature_dim=16", "dataset.feature_stride=16",
        "dataset.fps=25.0", "trainer.max_epochs=1", "trainer.batch_size=8", "trainer.device=cpu",
        "trainer.progress=false", f"output_dir={tmp_path / 'run'}", *TINY_MODEL,
    ]
    if method == "apl":
        over += ["labelled_fraction=0.5", "method.acp_epochs=1", "method.icd_hidden=16", "method.acp_frames=8"]
    metrics = taltoolkit.run(compose(over))
    assert metrics["dataset"] == "activitynet13" and metrics["preset"] == "activitynet"
    assert metrics["tiou_thresholds"][0] == 0.5 and metrics["tiou_thresholds"][-1] == 0.95
    assert sum(metrics["num_ground_truth"].values()) == sum(len(v.labels) for v in videos if v.subset == "validation")
    assert np.isfinite(metrics["average_mAP"])
    if method == "apl":
        assert list((root / "splits").glob("*.json"))  # the seeded semi split file beside the features
