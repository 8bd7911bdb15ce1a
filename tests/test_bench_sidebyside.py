"""tools/bench.py ``evalstages`` / ``sidebyside`` and tools/official_adapters.py.

The code paths run here without the public codes (tiny THUMOS-timed synthetic data, a few
test videos): the stage-split evaluation returns every stage, the library's training step
runs through the real ``Trainer.step``, the batches and test items are laid out as the
public loops read them, and the adapters' environment is undone on exit. The side-by-side
runs themselves are optional tests, skipped unless ``CASE_OFFICIAL_DIR``,
``ACMNET_OFFICIAL_DIR`` or ``ACTIONFORMER_OFFICIAL_DIR`` points at a checkout (the public
evaluators need pandas: ``TALTOOLKIT_OFFICIAL_SITE`` may name a folder that has it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench  # noqa: E402
import official_adapters as oa  # noqa: E402

from taltoolkit.evaluation.stages import STAGES  # noqa: E402


def _args(method: str, **kw) -> argparse.Namespace:  # noqa: ANN003
    base = dict(method=method, train_videos=6, test_videos=3, feature_dim=32, max_seq_len=256, batch_size=2,
                threads=1, train_epochs=0, weights=None, save_weights=None, repeat=1, seed=0, device="cpu",
                override=[], official=None, official_site=None, steps=1, nms_videos=1, outputs=True, out=None)
    if method == "actionformer":  # a small network: the test checks the plumbing, not the paper's size
        base["override"] = ["model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.window_size=9"]
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(scope="module")
def case_parts():  # noqa: ANN201
    args = _args("case")
    return args, *bench.build_library(args)


def test_evaluation_split_by_stage_returns_every_stage(case_parts, tmp_path: Path) -> None:
    args, cfg, trainer, parts = case_parts
    secs, metrics = bench.time_evaluation_stages(parts.evaluator, parts.method, str(tmp_path),
                                                 classes=list(parts.dataset.classes))
    assert set(STAGES) | {"other", "total"} <= set(secs)
    assert all(v >= 0 for v in secs.values())
    # CASE's path goes through every stage; plots and results only when an output folder is given.
    for name in ("prediction", "clustering_assisted", "proposals", "nms", "mAP", "results_writing", "plots"):
        assert secs[name] > 0, name
    assert sum(v for k, v in secs.items() if k != "total") == pytest.approx(secs["total"], rel=1e-6)
    assert (tmp_path / "predictions.json").is_file()
    # The stages do not change the result: the same metrics as a plain evaluation.
    assert metrics == parts.evaluator.evaluate(parts.method)[0]


def test_library_training_step_goes_through_the_trainer(case_parts) -> None:
    args, cfg, trainer, parts = case_parts
    batches, official = bench._training_batches(args, parts, trainer)
    assert len(batches) == 1 and batches[0]["features"].shape[0] == 2
    x, y = official[0]  # CASE's loop reads (features (B, T, D), labels (B, C))
    assert x is batches[0]["features"] and y is batches[0]["video_labels"]
    step = bench.library_step_runner(trainer, parts.method)
    before = [p.detach().clone() for p in parts.method.parameters()]
    step(batches[0])
    assert any(not torch.equal(a, p) for a, p in zip(before, parts.method.parameters()))


def test_official_test_items_per_method(case_parts) -> None:
    args, cfg, trainer, parts = case_parts
    items, library = bench._official_items(args, parts)
    assert len(items) == len(library) == len(parts.test_videos)
    data, label, _, names, steps = items[0]  # inference_case's order
    video = parts.test_videos[0]
    assert data.shape == (1, 750, 32) and label.shape == (1, len(parts.dataset.classes))
    assert names == [video.name] and int(steps[0]) == video.num_steps
    assert torch.equal(library[0]["features"], data)
    args_acm = _args("acmnet")
    acm_items, _ = bench._official_items(args_acm, parts)
    name, data2, _, vid_len, duration = acm_items[0]  # main_thu.test's order
    assert name == [video.name] and int(vid_len[0]) == video.num_steps and float(duration[0]) == video.duration
    af_items, _ = bench._official_items(_args("actionformer"), parts)
    d = af_items[0][0]
    assert d["feats"].shape == (32, data.shape[1]) and d["video_id"] == video.name


def test_actionformer_batches_are_video_dicts() -> None:
    args = _args("actionformer")
    cfg, trainer, parts = bench.build_library(args)
    batches, official = bench._training_batches(args, parts, trainer)
    b, videos = batches[0], official[0]
    assert len(videos) == b["features"].shape[0]
    for i, v in enumerate(videos):
        n = int(b["mask"][i].sum())
        assert v["feats"].shape == (32, n)
        # ActionFormer's point j is the library's grid coordinate j + 0.5.
        assert torch.allclose(v["segments"] + 0.5, torch.as_tensor(np.asarray(b["segments"][i])).to(v["segments"].dtype))
        assert v["labels"].dtype == torch.long


def test_official_gt_file(tmp_path: Path) -> None:
    gt = {"database": {"a": {"subset": "validation", "duration": 10.0,
                             "annotations": [{"label": "Y", "segment": [1.0, 2.0]}]},
                       "b": {"subset": "validation_test", "duration": 5.0,
                             "annotations": [{"label": "X", "segment": [0.5, 1.0]}]}}}
    path = oa.write_official_gt(gt, ["X", "Y"], tmp_path / "gt.json", "validation_test")
    out = json.loads(path.read_text())
    assert out["database"]["b"]["subset"] == "test" and out["database"]["a"]["subset"] == "validation"
    assert out["database"]["a"]["annotations"][0]["label_id"] == 1
    assert gt["database"]["b"]["subset"] == "validation_test"  # the input is not modified


def test_official_dir_checks_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CASE_OFFICIAL_DIR", raising=False)
    with pytest.raises(SystemExit, match="CASE_OFFICIAL_DIR"):
        oa.official_dir("case")
    with pytest.raises(SystemExit, match="not a checkout"):
        oa.official_dir("case", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "case_model.py").write_text("")
    monkeypatch.setenv("CASE_OFFICIAL_DIR", str(tmp_path))
    assert oa.official_dir("case") == tmp_path.resolve()


def test_official_environment_is_undone(tmp_path: Path) -> None:
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "__init__.py").write_text("MARK = 'official'\n")
    path_before = list(sys.path)
    cuda, cpu = torch.Tensor.cuda, torch.Tensor.cpu
    with oa.official_environment(tmp_path, site=str(tmp_path / "site")):
        import utils  # noqa: F401 - the checkout's top-level package

        assert sys.modules["utils"].MARK == "official"
        assert np.float is float  # type: ignore[attr-defined]
        t = torch.ones(2)
        assert t.cuda() is t and t.cpu() is not t and torch.equal(t.cpu(), t)
        assert sys.path[-1] == str(tmp_path / "site")  # appended: the environment's packages stay first
    assert sys.path == path_before
    assert "utils" not in sys.modules or getattr(sys.modules["utils"], "MARK", None) != "official"
    assert not hasattr(np, "float") and torch.Tensor.cuda is cuda and torch.Tensor.cpu is cpu


# ----------------------------------------------------------------------------- with the public codes


@pytest.mark.parametrize("method", ["case", "acmnet", "actionformer"])
def test_side_by_side_with_the_public_code(method: str, tmp_path: Path) -> None:
    if not os.environ.get(oa.ENV_VARS[method]):
        pytest.skip(f"set {oa.ENV_VARS[method]} to a checkout of the public {method} code")
    out = tmp_path / "sbs.json"
    argv = ["sidebyside", "--method", method, "--train-videos", "6", "--test-videos", "3", "--feature-dim", "32",
            "--steps", "1", "--repeat", "1", "--nms-videos", "1", "--out", str(out)]
    if method == "actionformer":
        argv += ["model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32",
                 "model.window_size=9"]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    for what in ("evaluation", "training_step"):
        assert set(report["seconds"][what]) == {"library", "official"}
        assert all(v > 0 for v in report["seconds"][what].values())
    if method == "actionformer":
        assert len(report["nms"]["ms_per_video"]) == 4
    if method == "acmnet":  # the same network and post-processing: the same mAP
        np.testing.assert_allclose(report["mAP_percent"]["library"], report["mAP_percent"]["official"], atol=1e-9)
