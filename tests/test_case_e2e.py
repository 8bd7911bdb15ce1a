"""CASE end to end through the same composition tools/run.py uses."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import taltoolkit
from taltoolkit.evaluation.presets import get_preset

REPO = Path(__file__).resolve().parent.parent


def test_tiny_case_run_writes_the_run_directory(compose, tiny_overrides, tmp_path):
    cfg = compose(["method=case", "trainer.max_epochs=2", *tiny_overrides])
    metrics = taltoolkit.run(cfg)
    run = tmp_path / "run"
    for f in ("config.yaml", "run.log", "metrics.json", "predictions.json", "checkpoints/last.ckpt"):
        assert (run / f).is_file(), f
    assert list((run / "plots").glob("*.png"))
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["tiou_thresholds"] == list(get_preset("thumos14_weak").tiou_thresholds)
    assert len(saved["mAP"]) == 7 and np.isfinite(saved["average_mAP"])
    assert saved["average_mAP"] == pytest.approx(metrics["average_mAP"])
    assert saved["model_selection"]["weights"] == "last"
    assert {"loss_v", "loss_a", "loss_s", "loss_c"} <= set(saved["history"][-1])
    preds = json.loads((run / "predictions.json").read_text())
    assert set(preds) >= {"version", "results", "external_data"}
    # The eval CLI reads what the run wrote and agrees with it.
    gt = run / "gt.json"
    gt.write_text(json.dumps({"database": _ground_truth(cfg)}))
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "eval.py"), str(gt), str(run / "predictions.json"),
         "--subset", "test", "--preset", "thumos14_weak", "--out", str(run / "cli.json")],
        capture_output=True, text=True, check=True,
    )
    cli = json.loads((run / "cli.json").read_text())
    assert cli["mAP"] == pytest.approx(saved["mAP"], abs=1e-9), out.stdout


def _ground_truth(cfg):
    from hydra.utils import instantiate

    return instantiate(cfg.dataset).ground_truth("test")


def test_case_checkpoint_holds_cluster_assignment(compose, tiny_overrides, tmp_path):
    import torch

    cfg = compose(["method=case", "trainer.max_epochs=1", *tiny_overrides])
    taltoolkit.run(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    q_c = state["method"]["cluster_fb"]
    assert q_c.shape == (16, 2)
    assert not torch.allclose(q_c, torch.full_like(q_c, 1 / 16))  # updated by training (Q^C)


def test_case_resume_ends_identical(compose, tiny_overrides, tmp_path):
    import torch

    full = compose(["method=case", "trainer.max_epochs=3", *tiny_overrides])
    full_metrics = taltoolkit.run(full)
    part_over = [o.replace(str(tmp_path / "run"), str(tmp_path / "part")) for o in tiny_overrides]
    part = compose(["method=case", "trainer.max_epochs=3", "trainer.stop_after_epochs=2", *part_over])
    assert taltoolkit.run(part)["interrupted"]
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    res_over = [o.replace(str(tmp_path / "run"), str(tmp_path / "resumed")) for o in tiny_overrides]
    resumed = compose(["method=case", "trainer.max_epochs=3", f"trainer.resume={ckpt}", *res_over])
    res_metrics = taltoolkit.run(resumed)
    assert res_metrics["mAP"] == full_metrics["mAP"]
    a = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_baseline_switches_compose(compose, tiny_overrides):
    cfg = compose(["method=case", "method.use_scc=false", "method.use_ccc=false",
                   "method.test_foreground=attention", "trainer.max_epochs=1", *tiny_overrides])
    metrics = taltoolkit.run(cfg)
    assert "loss_s" not in metrics["history"][-1]


def test_method_is_required_and_lists_choices():
    out = subprocess.run([sys.executable, str(REPO / "tools" / "run.py")], capture_output=True, text=True)
    assert out.returncode != 0
    assert "method" in out.stderr and "case" in out.stderr
    out = subprocess.run([sys.executable, str(REPO / "tools" / "run.py"), "method=nope"], capture_output=True, text=True)
    assert out.returncode != 0 and "case" in out.stderr


@pytest.mark.parametrize("layout", ["wtalc", "split", "concat"])
def test_case_on_thumos14_config_in_each_real_layout(compose, tmp_path, layout):
    """dataset=thumos14 dataset.root=DIR on features written in each real layout with the real GT."""
    from conftest import thumos14_layout_overrides

    over = [
        "method=case", *thumos14_layout_overrides(tmp_path, layout), "dataset.num_segments=64", "trainer.max_epochs=1", "trainer.batch_size=16",
        "trainer.device=cpu", "trainer.progress=false", f"output_dir={tmp_path / 'run'}",
        "postprocess.upsample=1", "postprocess.cas_thresholds=[0.3,0.6]",
    ]
    metrics = taltoolkit.run(compose(over))
    assert metrics["dataset"] == "thumos14"
    assert sum(metrics["num_ground_truth"].values()) == 3358  # every real THUMOS14 test instance counts
    assert np.isfinite(metrics["average_mAP"])


def test_wandb_logger_is_opt_in_and_offline(compose, tiny_overrides, tmp_path, monkeypatch):
    import wandb  # a dependency (setup.cfg): an import error must fail, not skip

    assert wandb
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    assert compose(["method=case"]).logger.wandb is False  # off by default
    cfg = compose(["method=case", "logger=wandb", "trainer.max_epochs=1", *tiny_overrides])
    assert cfg.logger.mode == "offline"
    taltoolkit.run(cfg)
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "no offline wandb run was written"


@pytest.mark.parametrize("selection", ["held_out", "test"])
def test_model_selection_is_explicit_and_recorded(compose, tiny_overrides, selection, caplog):
    cfg = compose(["method=case", "trainer.max_epochs=2", "trainer.eval_every=1",
                   f"trainer.model_selection={selection}", *tiny_overrides])
    with caplog.at_level("INFO", logger="taltoolkit"):
        metrics = taltoolkit.run(cfg)
    chosen = metrics["model_selection"]
    assert chosen["weights"] == f"best on {selection}"
    assert "epoch" in chosen
    assert all("test_average_mAP" in e for e in metrics["evaluations"])
    if selection == "test":
        assert any("MODEL SELECTED ON THE TEST SET" in r.message for r in caplog.records)
    else:
        assert all("held_out_average_mAP" in e for e in metrics["evaluations"])
        assert any("held-out training videos" in r.message for r in caplog.records)


def test_case_memory_branch_fills_class_rows_through_the_zeta_gate(compose, tiny_overrides, tmp_path):
    """End to end: with the memory on from epoch 0, CASE's calibrated scores pass zeta = 0.75 at
    action steps once the network has learnt a little, so the memory holds action-class
    features, not only background (easier tiny data and lr 1e-3 so that 30 epochs suffice)."""
    import torch

    cfg = compose(["method=case", "memory_branch=rmgcl", "trainer.max_epochs=30", "memory_branch.warmup_epochs=0",
                   "method.attention_warmup_epochs=0", *tiny_overrides, "trainer.lr=1e-3", "dataset.difficulty=0.5"])
    taltoolkit.run(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    counts = [v for k, v in state.items() if k.endswith("memory_count")]
    assert len(counts) == 2  # one memory per stream
    for count in counts:
        assert count[-1] > 0  # background row
        assert count[:-1].sum() > 0  # action classes passed the gate
