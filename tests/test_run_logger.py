"""RunLogger: scalars logged by tag come back by tag from scalars.jsonl, TensorBoard's event
files and the offline wandb run, for every logger config."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from taltoolkit.data.errors import ConfigError
from taltoolkit.engine import logger as logger_mod
from taltoolkit.engine.logger import RunLogger, read_scalars

# What the training loop logs: per optimizer step, per epoch and per evaluation.
STEPS = [
    ({"train/loss": 2.5, "train/loss_a": np.float32(1.5), "train/lr": 1e-3}, 1),
    ({"train/loss": 2.0, "train/loss_a": torch.tensor(1.25), "train/lr": 5e-4}, 2),
    ({"epoch/seconds": 3.0, "eval/mAP@0.50": 12.5, "eval/average_mAP": 10.0}, 2),
    ({"train/loss": 1.5, "train/lr": 2.5e-4, "note": "not a scalar", "vec": [1, 2]}, 3),
]
EXPECTED = {
    "train/loss": [(1, 2.5), (2, 2.0), (3, 1.5)],
    "train/loss_a": [(1, 1.5), (2, 1.25)],
    "train/lr": [(1, 1e-3), (2, 5e-4), (3, 2.5e-4)],
    "epoch/seconds": [(2, 3.0)],
    "eval/mAP@0.50": [(2, 12.5)],
    "eval/average_mAP": [(2, 10.0)],
}


def _logger_cfg(compose, name: str):
    return compose(["method=case", f"logger={name}"])


def _log_all(lg: RunLogger) -> None:
    for data, step in STEPS:
        lg.log(data, step=step)
    lg.finish()


def _close(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return len(a) == len(b) and all(sa == sb and math.isclose(va, vb, rel_tol=1e-6) for (sa, va), (sb, vb) in zip(a, b))


def _assert_scalars(found: dict[str, list[tuple[int, float]]]) -> None:
    assert set(found) == set(EXPECTED), sorted(found)
    for tag, want in EXPECTED.items():
        assert _close(found[tag], want), (tag, found[tag], want)


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("name", ["none", "tensorboard", "wandb", "all"])
def test_logger_config_writes_every_backend_it_names(compose, name, tmp_path, monkeypatch):
    from wandb_offline import wandb_history

    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _logger_cfg(compose, name)
    lg = RunLogger.from_config(cfg.logger, tmp_path, cfg)
    _log_all(lg)

    _assert_scalars(read_scalars(tmp_path / "scalars.jsonl"))  # always kept in the run folder
    has_tb = (tmp_path / "tensorboard").is_dir()
    has_wandb = (tmp_path / "wandb").is_dir()
    assert has_tb == (name in ("tensorboard", "all"))
    assert has_wandb == (name in ("wandb", "all"))
    if has_tb:
        assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
        _assert_scalars(tensorboard_scalars(tmp_path / "tensorboard"))
    if has_wandb:
        assert list((tmp_path / "wandb").glob("offline-run-*")), "the wandb run must be offline by default"
        _assert_scalars(wandb_history(tmp_path / "wandb"))


def test_scalars_jsonl_keeps_nan_last_value_per_step_and_survives_a_torn_line(tmp_path):
    lg = RunLogger(scalars_path=tmp_path / "scalars.jsonl")
    lg.log({"train/loss": float("nan")}, step=1)
    lg.log({"train/loss": 3.0}, step=2)
    lg.log({"train/loss": 2.0}, step=2)  # a resumed run logs the step again: the last value wins
    lg.log({"eval/average_mAP": 7.0})  # step None: the last step logged
    with open(tmp_path / "scalars.jsonl", "a") as f:
        f.write('{"step": 3, "values": {"train/lo')  # killed while writing
    got = read_scalars(tmp_path)
    assert math.isnan(got["train/loss"][0][1]) and got["train/loss"][0][0] == 1
    assert got["train/loss"][1:] == [(2, 2.0)]
    assert got["eval/average_mAP"] == [(2, 7.0)]
    # Every line is strict JSON (NaN written as null), readable by any JSON tool.
    import json

    for line in (tmp_path / "scalars.jsonl").read_text().splitlines()[:-1]:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_fresh_run_starts_new_curves_and_a_resumed_run_appends(compose, tmp_path):
    cfg = _logger_cfg(compose, "tensorboard")
    lg = RunLogger.from_config(cfg.logger, tmp_path, cfg)
    lg.log({"train/loss": 5.0}, step=1)
    lg.log({"train/loss": 4.0}, step=2)
    lg.finish()
    resumed = OmegaConf.merge(cfg, {"trainer": {"resume": str(tmp_path / "checkpoints" / "last.ckpt")}})
    lg = RunLogger.from_config(resumed.logger, tmp_path, resumed)
    lg.log({"train/loss": 3.5}, step=2)  # the resumed run repeats step 2
    lg.log({"train/loss": 3.0}, step=3)
    lg.finish()
    want = [(1, 5.0), (2, 3.5), (3, 3.0)]
    assert read_scalars(tmp_path)["train/loss"] == want
    assert tensorboard_scalars(tmp_path / "tensorboard")["train/loss"] == want  # purged from step 2 on

    lg = RunLogger.from_config(cfg.logger, tmp_path, cfg)  # not resuming: the earlier curves go
    lg.log({"train/loss": 9.0}, step=1)
    lg.finish()
    assert read_scalars(tmp_path)["train/loss"] == [(1, 9.0)]
    assert tensorboard_scalars(tmp_path / "tensorboard")["train/loss"] == [(1, 9.0)]


def test_missing_tensorboard_package_names_the_fix(compose, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    cfg = _logger_cfg(compose, "tensorboard")
    with pytest.raises(ConfigError, match=r"pip install .*tensorboard.*logger=none"):
        RunLogger.from_config(cfg.logger, tmp_path, cfg)
    assert not (tmp_path / "scalars.jsonl").exists()


def test_only_the_main_rank_logs(compose, tmp_path, monkeypatch):
    from taltoolkit.engine import distributed

    monkeypatch.setattr(distributed, "is_main", lambda: False)
    cfg = _logger_cfg(compose, "all")
    lg = RunLogger.from_config(cfg.logger, tmp_path, cfg)
    lg.log({"train/loss": 1.0}, step=1)
    lg.finish()
    assert list(tmp_path.iterdir()) == []


def test_wandb_never_receives_a_decreasing_step(tmp_path, caplog):
    sent: list[tuple[dict, int]] = []

    class FakeRun:
        def log(self, data, step=None):  # noqa: ANN001, ANN202
            sent.append((dict(data), step))

        def finish(self):  # noqa: ANN202
            pass

    lg = RunLogger(FakeRun(), scalars_path=tmp_path / "scalars.jsonl")
    lg.log({"train/loss": 1.0}, step=5)
    with caplog.at_level("WARNING", logger="taltoolkit"):
        lg.log({"epoch/seconds": 2.0}, step=1)  # e.g. an epoch index logged as a step
    assert sent == [({"train/loss": 1.0}, 5)]
    assert any("must not decrease" in r.message for r in caplog.records)
    assert read_scalars(tmp_path)["epoch/seconds"] == [(1, 2.0)]  # kept where it can be


def test_scalar_value_accepts_numbers_and_one_element_arrays_only():
    assert logger_mod.scalar_value(True) == 1.0
    assert logger_mod.scalar_value(np.float16(0.5)) == 0.5
    assert logger_mod.scalar_value(np.array([2.0])) == 2.0
    assert logger_mod.scalar_value(torch.tensor([[3.0]])) == 3.0
    for v in ("1.0", None, [1.0], np.zeros(2), torch.zeros(2)):
        assert logger_mod.scalar_value(v) is None
