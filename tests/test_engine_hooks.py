"""Trainer.fit as a loop with hooks: the events, NaN checks, metric logging, the progress bar,
checkpoint files, held-out model selection, and the trainer built from its config."""
from __future__ import annotations

import io
import json
import logging
import math
from collections import namedtuple

import pytest
import torch
from hydra.utils import instantiate

import taltoolkit
from taltoolkit.engine.hooks import HookBase, ProgressBar, split_held_out
from taltoolkit.engine.method import Stage
from taltoolkit.engine.trainer import TrainData, Trainer
from test_engine import ToyData, ToyMethod, collate, toy_data

EVENTS = ("before_train", "after_train", "before_stage", "after_stage", "before_epoch", "after_epoch",
          "before_step", "after_step")


class Recorder(HookBase):
    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattribute__(self, name: str):
        if name in EVENTS:
            return lambda state: self.events.append(name)
        return super().__getattribute__(name)


def _trainer(**kw) -> Trainer:
    return Trainer(batch_size=8, lr=1e-2, device="cpu", progress=False, **kw)


def test_fit_calls_the_hooks_around_stages_epochs_and_steps(tmp_path):
    rec = Recorder()
    _trainer().fit(ToyMethod(), toy_data(), tmp_path, hooks=[rec])
    # ToyMethod: stages of 2 and 3 epochs; 24 items in batches of 8: 3 steps per epoch.
    epoch = ["before_epoch", *["before_step", "after_step"] * 3, "after_epoch"]
    want = ["before_train",
            "before_stage", *epoch * 2, "after_stage",
            "before_stage", *epoch * 3, "after_stage",
            "after_train"]
    assert rec.events == want


def test_a_stopped_run_skips_the_unfinished_stage_end(tmp_path):
    rec = Recorder()
    result = _trainer(stop_after_epochs=3).fit(ToyMethod(), toy_data(), tmp_path, hooks=[rec])
    assert result.interrupted
    assert rec.events.count("after_stage") == 1 and rec.events.count("before_stage") == 2
    assert rec.events.count("after_epoch") == 3 and rec.events[-1] == "after_train"
    assert not (tmp_path / "checkpoints" / "inference.pt").exists()  # nothing final to save
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_a_finished_run_leaves_its_inference_weights(tmp_path):
    from taltoolkit.engine.checkpoint import load_checkpoint

    method = ToyMethod()
    _trainer().fit(method, toy_data(), tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "inference.pt", key="weights")
    assert state["_taltoolkit"]["kind"] == "inference" and state["_taltoolkit"]["method"] == "ToyMethod"
    assert all(torch.equal(v, state["method"][k]) for k, v in method.state_dict().items())


class NaNAt(ToyMethod):
    """Its third step's loss is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def training_step(self, batch):
        out = super().training_step(batch)
        self.steps += 1
        if self.steps == 3:
            out["loss"] = out["loss"] * float("nan")
            out["loss_extra"] = torch.tensor(1.5)
        return out


def test_a_non_finite_loss_stops_the_run_naming_each_term(tmp_path):
    with pytest.raises(FloatingPointError, match=r"stage 'warmup' epoch 0: loss=nan, loss_extra=1\.5"):
        _trainer().fit(NaNAt(), toy_data(), tmp_path)


class Diagnosed(ToyMethod):
    """Two loss terms, an epoch diagnostic and stage metrics (nested, and a list that is not a number)."""

    def training_step(self, batch):
        out = super().training_step(batch)
        return {"loss_ce": out["loss"].detach(), "loss": out["loss"]}

    def log_metrics(self):
        return {"H": 0.25}

    def stage_metrics(self):
        return {"purity": 0.5, "clusters": {"nmi": 0.3}, "sizes": [1, 2]}


class FixedEvaluator:
    """Periodic evaluations with known numbers; ``on`` gives the held-out one."""

    def __init__(self, score: float = 35.0, calls: list | None = None) -> None:
        self.score, self.calls = score, calls if calls is not None else []

    def evaluate(self, method):
        self.calls.append("evaluate")
        return {"tiou_thresholds": [0.3, 0.5], "mAP": [40.0, 30.0], "average_mAP": self.score,
                "averages": {"avg(0.3:0.5)": self.score}}, {}, []

    def predict(self, method, videos):
        return [{} for _ in videos]

    def on(self, videos, ground_truth, subset):
        self.calls.append(("on", [v.name for v in videos], ground_truth, subset))
        return FixedEvaluator(12.0, self.calls)


class ListLogger:
    def __init__(self) -> None:
        self.calls: list[tuple[dict, int]] = []

    def log(self, data, step=None):
        self.calls.append((dict(data), step))

    def tags(self, prefix: str) -> list[tuple[int, dict]]:
        return [(step, {k: v for k, v in d.items() if k.startswith(prefix)}) for d, step in self.calls
                if any(k.startswith(prefix) for k in d)]


def test_metric_logger_sends_every_step_epoch_evaluation_and_stage(tmp_path):
    logger = ListLogger()
    result = _trainer(eval_every=1).fit(Diagnosed(), toy_data(), tmp_path, evaluator=FixedEvaluator(),
                                        run_logger=logger)
    steps = logger.tags("train/")
    assert [s for s, _ in steps] == list(range(1, 16))  # one call per optimizer step, step = global step
    assert all(set(d) == {"train/loss_ce", "train/loss", "train/lr"} for _, d in steps)
    assert steps[0][1]["train/lr"] == pytest.approx(1e-2) and steps[-1][1]["train/lr"] == pytest.approx(5e-3)
    epochs = logger.tags("epoch/")
    assert [s for s, _ in epochs] == [3, 6, 9, 12, 15]
    for (_, d), row in zip(epochs, result.history):
        assert d["epoch/seconds"] == row["seconds"] > 0 and d["epoch/H"] == 0.25
        assert d["epoch/loss"] == pytest.approx(row["loss"])
    # The epoch's mean loss is the mean of the steps' values that were logged.
    assert result.history[0]["loss"] == pytest.approx(sum(d["train/loss"] for _, d in steps[:3]) / 3)
    evals = logger.tags("eval/")
    assert [s for s, _ in evals] == [3, 6, 9, 12]  # every epoch but the run's last
    assert evals[0][1] == {"eval/mAP@0.30": 40.0, "eval/mAP@0.50": 30.0, "eval/average_mAP": 35.0,
                           "eval/avg(0.3:0.5)": 35.0}
    stages = logger.tags("warmup/") + logger.tags("main/")
    assert stages == [(6, {"warmup/purity": 0.5, "warmup/clusters/nmi": 0.3}),
                      (15, {"main/purity": 0.5, "main/clusters/nmi": 0.3})]
    assert [e["test_average_mAP"] for e in result.evaluations] == [35.0] * 4  # metrics.json as before


def test_progress_in_a_log_file_is_a_few_plain_lines(tmp_path):
    stream = io.StringIO()  # not a terminal
    data = TrainData(list(range(64)), lambda videos, seed: (ToyData(len(videos), seed), collate))
    _trainer().fit(ToyMethod(), data, tmp_path, hooks=[ProgressBar(stream, min_interval_s=0.0)])
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3 * 5  # a quarter, half and three quarters of each of the 5 epochs
    assert lines[0].startswith("warmup (1/2) epoch 1/2: step 2/8, loss ")
    assert lines[-1].startswith("main (2/2) epoch 3/3: step 6/8, loss ") and lines[-1].endswith(" steps/s")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_progress_on_a_terminal_is_a_bar_and_the_epoch_rows_go_to_the_log_file_only(tmp_path):
    stream = Terminal()
    # A handler of this test's own: pytest's capture handlers may carry entry.ConsoleFilter
    # (a run earlier in the session installed it), which drops exactly the records looked for.
    handler, logger = Records(), logging.getLogger("taltoolkit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        _trainer().fit(ToyMethod(), toy_data(), tmp_path, hooks=[ProgressBar(stream, min_interval_s=0.0)])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert "\r" in stream.getvalue() and "warmup (1/2) epoch 1/2" in stream.getvalue()
    assert "loss=" in stream.getvalue() and "step/s" in stream.getvalue()
    rows = [r for r in handler.records if " epoch " in r.getMessage() and "stage=" in r.getMessage()]
    assert len(rows) == 5 and all(r.console is False for r in rows)


def test_trainer_progress_false_shows_no_bar(tmp_path, capsys):
    trainer = _trainer()
    assert not any(isinstance(h, ProgressBar) for h in trainer.default_hooks(
        trainer.start(ToyMethod(), []), None, tmp_path))
    trainer.progress = True
    assert any(isinstance(h, ProgressBar) for h in trainer.default_hooks(
        trainer.start(ToyMethod(), []), None, tmp_path))


Vid = namedtuple("Vid", "name label")


def test_held_out_selection_splits_in_the_engine(tmp_path):
    seen: list[list[str]] = []

    class Recording(ToyMethod):
        def on_stage_start(self, stage, context):
            super().on_stage_start(stage, context)
            seen.append(sorted(context.reference_videos))

    videos = [Vid(f"v{i}", "weak") for i in range(20)]
    full = {v.name: Vid(v.name, "full") for v in videos}
    calls: list = []
    data = TrainData(videos, lambda vs, seed: (ToyData(len(vs), seed), collate), reference=full,
                     ground_truth=lambda: {"gt": "training"}, subset="training")
    result = _trainer(model_selection="held_out", held_out_fraction=0.2).fit(
        Recording(), data, tmp_path, evaluator=FixedEvaluator(calls=calls), seed=3)
    (on,) = [c for c in calls if c[0] == "on"]
    _, held, ground_truth, subset = on
    kept, held_full = split_held_out(data, 0.2, seed=3)
    assert held == [v.name for v in held_full] and len(held) == 4
    assert ground_truth == {"gt": "training"} and subset == "training"
    assert seen == [sorted(v.name for v in kept.videos)] * 2 and not set(held) & set(seen[0])
    assert all(full[n] is kept.reference[n] for n in kept.reference)  # full-label records, not the weak ones
    assert result.selected["weights"] == "best on held_out"
    assert [e["held_out_average_mAP"] for e in result.evaluations] == [12.0]


def test_selection_without_an_evaluator_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="model_selection=test.*evaluator"):
        _trainer(model_selection="test").fit(ToyMethod(), toy_data(), tmp_path)


def test_the_trainer_is_built_from_its_config_with_the_keys_methods_override(compose):
    cfg = compose(["method=actionformer", "trainer.lr=3e-4", "trainer.warmup_epochs=2", "trainer.device=cpu"])
    trainer = instantiate(cfg.trainer, _convert_="all")
    assert isinstance(trainer, Trainer) and trainer.max_epochs == 20  # actionformer_synthetic's schedule
    net = torch.nn.Linear(2, 2)
    opt = trainer.build_optimizer(list(net.parameters()), Stage())
    assert type(opt) is torch.optim.AdamW
    assert opt.param_groups[0]["lr"] == 3e-4 and opt.param_groups[0]["weight_decay"] == 0.05
    sched = trainer.build_scheduler(opt, epochs=10, steps_per_epoch=4)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(40):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(3e-4 / 8) and lrs[7] == pytest.approx(3e-4)  # 2 warm-up epochs of 4 steps
    assert lrs[8] > lrs[20] > lrs[39] and lrs[40] == pytest.approx(0.0, abs=1e-12)  # cosine to 0
    rmgcl = compose(["method=rmgcl", "trainer.device=cpu"])  # method_dataset: trainer.milestones=[70]
    assert rmgcl.trainer.scheduler.milestones == [70] and rmgcl.trainer.scheduler.decay == "step"
    trainer = instantiate(rmgcl.trainer, _convert_="all")
    opt = trainer.build_optimizer(list(net.parameters()), Stage())
    sched = trainer.build_scheduler(opt, epochs=100, steps_per_epoch=1)
    for _ in range(70):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4 * 0.1)


def test_a_run_logs_its_scalars_and_keeps_metrics_json(compose, tiny_overrides, tmp_path):
    from taltoolkit.engine.logger import read_scalars

    metrics = taltoolkit.run(compose(["method=case", "trainer.max_epochs=2", "trainer.eval_every=1",
                                      *tiny_overrides]))
    run = tmp_path / "run"
    scalars = read_scalars(run / "scalars.jsonl")
    for tag in ("train/loss", "train/loss_v", "train/loss_c", "train/lr", "epoch/seconds", "epoch/H(Q^C)",
                "eval/mAP@0.50", "eval/average_mAP"):
        assert tag in scalars, tag
    assert len(scalars["train/loss"]) == 6 and [s for s, _ in scalars["epoch/seconds"]] == [3, 6]
    assert scalars["eval/average_mAP"] == [(3, pytest.approx(metrics["evaluations"][0]["test_average_mAP"]))]
    saved = json.loads((run / "metrics.json").read_text())
    assert {"average_mAP", "mAP", "history", "evaluations", "stage_metrics", "model_selection", "preset",
            "world_size", "device"} <= set(saved)
    assert [r["epoch"] for r in saved["history"]] == [0, 1] and math.isfinite(saved["history"][-1]["loss"])
