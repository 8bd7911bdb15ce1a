"""The guarantees of docs/reliability.md: checkpoints that are safe and verified, settings
checked before training, no silent overwrite, resume that restores model selection, and
user errors printed without a traceback."""
from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import taltoolkit
from taltoolkit.data.errors import CheckpointError, ConfigError, DataError
from taltoolkit.engine.checkpoint import checkpoint_meta, load_checkpoint, save_checkpoint
from taltoolkit.engine.method import Stage
from taltoolkit.engine.trainer import Trainer, seed_everything
from test_engine import ToyMethod, _fit, _state, toy_data

REPO = Path(__file__).resolve().parent.parent
RUN_PY = REPO / "tools" / "run.py"


# ----------------------------------------------------------------------------- checkpoint files
@pytest.fixture
def good_ckpt(tmp_path: Path) -> Path:
    _fit(tmp_path / "good", stop_after_epochs=1)
    return tmp_path / "good" / "checkpoints" / "last.ckpt"


def _bad_file(tmp_path: Path, good: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    data = good.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[kind])
    return path


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_unreadable_checkpoint_names_the_file_and_key(tmp_path, good_ckpt, kind):
    bad = _bad_file(tmp_path, good_ckpt, kind)
    for key in ("trainer.resume", "weights"):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(bad, key=key)
        assert f"{key}={bad}" in str(e.value)
    with pytest.raises(CheckpointError, match=f"trainer.resume={bad}"):
        _fit(tmp_path / "resumed", resume=str(bad))


def test_flipped_bytes_are_detected(tmp_path):
    w = torch.linspace(-1, 1, 4096)
    path = tmp_path / "x.ckpt"
    save_checkpoint(path, {"method": {"w": w}})
    assert torch.equal(load_checkpoint(path)["method"]["w"], w)
    blob = bytearray(path.read_bytes())
    at = blob.find(w.numpy().tobytes()[4000:4064])
    assert at > 0
    blob[at + 7] ^= 0x10  # one bit of one weight
    path.write_bytes(bytes(blob))
    # torch itself reads the damaged file without complaint: the stored digest is what notices.
    assert not torch.equal(torch.load(path, weights_only=True)["method"]["w"], w)
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path, key="weights")


class _Payload:
    """Unpickling this creates a file: the stand-in for arbitrary code in a crafted checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch_save", "plain_pickle"])
def test_crafted_pickle_is_refused_not_run(tmp_path, writer):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    payload = {"method": _Payload(marker), "stage_index": 0}
    if writer == "torch_save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil, key="weights")
    with pytest.raises(CheckpointError, match="refused"):
        _fit(tmp_path / "resumed", resume=str(evil))
    assert not marker.exists()


def test_checkpoints_load_with_weights_only_and_record_method(tmp_path, compose, tiny_overrides):
    metrics = taltoolkit.run(compose(["method=case", "trainer.max_epochs=1", *tiny_overrides]))
    assert metrics["method"] == "CASE"
    for name, kind in (("last.ckpt", "resume"), ("inference.pt", "inference")):
        raw = torch.load(tmp_path / "run" / "checkpoints" / name, weights_only=True)
        assert raw["_taltoolkit"]["method"] == "CASE" and raw["_taltoolkit"]["kind"] == kind
        assert raw["_taltoolkit"]["config"]["method"]["_target_"] == "taltoolkit.methods.case.CASE"
        assert len(raw["_sha256"]) == 64


def test_weights_of_another_method_names_both_methods(tmp_path, compose, tiny_overrides):
    other = tmp_path / "apl.pt"
    save_checkpoint(other, {"method": {"model.x": torch.zeros(3)}, "method_extra": {}},
                    checkpoint_meta("inference", method="APL", config={"method": {"_target_": "taltoolkit.methods.apl.APL"}}))
    with pytest.raises(CheckpointError) as e:
        taltoolkit.run(compose(["method=case", f"weights={other}", *tiny_overrides]))
    msg = str(e.value)
    assert "APL" in msg and "CASE" in msg and f"weights={other}" in msg
    assert "Missing key" not in msg


def test_weights_missing_file_names_weights(tmp_path, compose, tiny_overrides):
    with pytest.raises(CheckpointError) as e:
        taltoolkit.run(compose(["method=case", f"weights={tmp_path / 'nope.pt'}", *tiny_overrides]))
    assert f"weights={tmp_path / 'nope.pt'}" in str(e.value) and "trainer.resume" not in str(e.value)


def test_crafted_weights_refused_by_a_run(tmp_path, compose, tiny_overrides):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"method": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        taltoolkit.run(compose(["method=case", f"weights={evil}", *tiny_overrides]))
    assert not marker.exists()


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("override,key", [
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.batch_size=-4", "trainer.batch_size"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("trainer.max_epochs=-2", "trainer.max_epochs"),
    ("trainer.checkpoint_every=0", "trainer.checkpoint_every"),
    ("labelled_fraction=1.5", "labelled_fraction"),
])
def test_bad_settings_fail_before_anything_runs(tmp_path, compose, tiny_overrides, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        taltoolkit.run(compose(["method=case", *tiny_overrides, override]))  # after: tiny_overrides sets batch_size
    assert not (tmp_path / "run").exists()  # no output folder, no data read, no epoch run


@pytest.mark.parametrize("kwargs", [dict(eval_every=-1), dict(lr=0.0), dict(lr=float("nan")), dict(grad_clip=-1.0),
                                    dict(held_out_fraction=1.0), dict(warmup_epochs=-1), dict(stop_after_epochs=0),
                                    dict(max_epochs=2.5), dict(batch_size=True), dict(amp_dtype="fp8")])
def test_trainer_rejects_values_that_cannot_work(kwargs):
    (key,) = kwargs
    with pytest.raises(ConfigError, match=f"trainer.{key}"):
        Trainer(device="cpu", **kwargs)


def test_labelled_fraction_unused_by_the_method_warns(compose, tiny_overrides, caplog):
    with caplog.at_level(logging.WARNING, logger="taltoolkit"):
        taltoolkit.run(compose(["method=case", "labelled_fraction=0.5", "trainer.max_epochs=1", *tiny_overrides]))
    assert any("labelled_fraction=0.5 is ignored" in r.getMessage() and "CASE" in r.getMessage()
               for r in caplog.records)


def test_test_subset_without_instances_fails_before_training(tmp_path, compose):
    import numpy as np

    from taltoolkit.data.writers import write_layout
    from taltoolkit.structures import Video

    rng = np.random.default_rng(0)
    videos = []
    for i in range(6):
        subset = "validation" if i < 4 else "test"
        segs = np.array([[1.0, 3.0]]) if subset == "validation" else np.zeros((0, 2))
        labels = np.array([i % 2]) if subset == "validation" else np.zeros(0, np.int64)
        vl = np.zeros(2, np.float32)
        vl[labels] = 1
        videos.append(Video(f"v{i}", rng.random((20, 8)).astype(np.float32), 20 * 0.64, 25.0, 0.64, subset=subset,
                            segments=segs, labels=labels, video_labels=vl))
    root = write_layout(videos, ["a", "b"], tmp_path / "ds", "split")
    cfg = compose(["method=case", "dataset=thumos14", "dataset.name=tiny", f"dataset.root={root}",
                   "dataset.layout=split", f"dataset.annotations={root / 'gt.json'}", "dataset.feature_dim=8",
                   "dataset.split_folders={validation: validation, test: test}", "dataset.num_segments=16",
                   "trainer.batch_size=2", "trainer.device=cpu", "trainer.progress=false",
                   f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(DataError, match="'test'.*no ground-truth instance"):
        taltoolkit.run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- resume
class ScoredMethod(ToyMethod):
    """The "evaluation" score of each epoch is fixed, so the best epoch is known: warmup 1."""

    SCORES = {("warmup", 0): 5.0, ("warmup", 1): 9.0, ("main", 0): 3.0, ("main", 1): 1.0, ("main", 2): 2.0}

    def on_stage_start(self, stage, context):
        super().on_stage_start(stage, context)
        self.where = [stage.name, 0]

    def on_epoch_start(self, epoch):
        self.where[1] = epoch


class ScoreTable:
    """An evaluator whose mAP is ScoredMethod's fixed score of the epoch the method is at."""

    def evaluate(self, method):
        return {"average_mAP": ScoredMethod.SCORES[tuple(method.where)]}, {}, []

    def predict(self, method, videos):
        return []


def _fit_selected(tmp: Path, **kw):
    seed_everything(0)
    method = ScoredMethod()
    trainer = Trainer(batch_size=8, lr=1e-2, device="cpu", progress=False, eval_every=1, model_selection="test", **kw)
    result = trainer.fit(method, toy_data(), tmp, evaluator=ScoreTable())
    return method, result


@pytest.mark.parametrize("stop_after", [2, 3, 4])
def test_resume_selects_the_epoch_the_uninterrupted_run_selects(tmp_path, stop_after):
    full, full_res = _fit_selected(tmp_path / "full")
    assert full_res.selected["stage"] == "warmup" and full_res.selected["epoch"] == 1
    _, part = _fit_selected(tmp_path / "part", stop_after_epochs=stop_after)
    assert part.selected["weights"] == "interrupted"
    resumed, res = _fit_selected(tmp_path / "resumed", resume=str(tmp_path / "part" / "checkpoints" / "last.ckpt"))
    assert res.selected == full_res.selected
    for k, v in _state(full).items():
        assert torch.equal(v, _state(resumed)[k]), k


class OpenEnded(ToyMethod):
    def stages(self):
        return [Stage("main", epochs=None)]  # trainer.max_epochs


def _fit_open(tmp: Path, **kw):
    seed_everything(0)
    method = OpenEnded()
    trainer = Trainer(batch_size=8, lr=1e-2, device="cpu", progress=False, **kw)
    return trainer.fit(method, toy_data(), tmp)


def test_resuming_a_finished_run_with_more_epochs_says_why_not(tmp_path, caplog):
    _fit_open(tmp_path / "run", max_epochs=2)
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"finished run.*\[2\].*\[4\]"):
        _fit_open(tmp_path / "more", max_epochs=4, resume=ckpt)
    with caplog.at_level(logging.WARNING, logger="taltoolkit"):
        res = _fit_open(tmp_path / "same", max_epochs=2, resume=ckpt)
    assert len(res.history) == 2 and any("nothing left to train" in r.getMessage() for r in caplog.records)


def test_resume_refuses_another_methods_checkpoint(tmp_path, good_ckpt):
    with pytest.raises(CheckpointError, match="ToyMethod.*OpenEnded"):
        _fit_open(tmp_path / "other", max_epochs=2, resume=str(good_ckpt))


# ----------------------------------------------------------------------------- output folders
def test_finished_run_folder_is_refused(tmp_path, compose, tiny_overrides):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"average_mAP": 42.0}')
    with pytest.raises(ConfigError, match="already holds a run.*overwrite=true"):
        taltoolkit.run(compose(["method=case", "trainer.max_epochs=1", *tiny_overrides]))
    assert (run / "metrics.json").read_text() == '{"average_mAP": 42.0}'
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json"]


def test_overwrite_replaces_the_earlier_run_and_modes_follow_the_umask(tmp_path, compose, tiny_overrides):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "stale.ckpt").write_bytes(b"old")
    (run / "metrics.json").write_text('{"average_mAP": 42.0}')
    (run / "run.log").write_text("a line of the earlier run\n")
    old = os.umask(0o027)
    try:
        taltoolkit.run(compose(["method=case", "trainer.max_epochs=1", "overwrite=true", *tiny_overrides]))
    finally:
        os.umask(old)
    assert not (run / "checkpoints" / "stale.ckpt").exists()
    assert json.loads((run / "metrics.json").read_text())["average_mAP"] != 42.0
    assert "earlier run" not in (run / "run.log").read_text()
    outputs = ["config.yaml", "metrics.json", "predictions.json", "checkpoints/last.ckpt", "checkpoints/inference.pt"]
    assert {f: (run / f).stat().st_mode & 0o777 for f in outputs} == {f: 0o640 for f in outputs}


def test_resume_into_its_own_folder_is_allowed(tmp_path, compose, tiny_overrides):
    first = taltoolkit.run(compose(["method=case", "trainer.max_epochs=2", "trainer.stop_after_epochs=1",
                                    *tiny_overrides]))
    assert first["interrupted"]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    metrics = taltoolkit.run(compose(["method=case", "trainer.max_epochs=2", f"trainer.resume={ckpt}",
                                      *tiny_overrides]))
    assert len(metrics["history"]) == 2


# ----------------------------------------------------------------------------- tools/run.py
_FROZEN_CLOCK = """
import datetime, runpy, sys
import hydra.core.utils

class Frozen(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2000, 1, 1, 0, 0, 0)

hydra.core.utils.datetime = Frozen  # both runs start "in the same second"
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_py(tmp_path: Path, args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TALTOOLKIT_CACHE": str(tmp_path / "cache"), **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", _FROZEN_CLOCK, str(RUN_PY), *args], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)


def test_runs_started_in_the_same_second_get_distinct_folders(tmp_path):
    for _ in range(2):
        # batch_size=0 stops each run right after Hydra made its folder.
        proc = _run_py(tmp_path, ["method=case", "trainer.batch_size=0"])
        assert proc.returncode == 2, proc.stderr
    folders = sorted((tmp_path / "outputs" / "case" / "synthetic").iterdir())
    assert len(folders) == 2 and all(f.name.startswith("2000-01-01_00-00-00") for f in folders)


def test_user_errors_print_the_message_alone(tmp_path):
    args = ["method=case", "dataset=thumos14", f"dataset.root={tmp_path / 'no_such_folder'}"]
    proc = _run_py(tmp_path, args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no_such_folder" in errors[0] and "dataset.root" in errors[0]
    assert len(proc.stderr.strip().splitlines()) <= 6, proc.stderr
    full = _run_py(tmp_path, args, {"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr and "DataError" in full.stderr
