"""The training loop's concerns as small hook objects.

:meth:`Trainer.fit <taltoolkit.engine.trainer.Trainer.fit>` is a loop over stages, epochs
and steps; everything else it does is a hook called around them, in the order the hooks are
listed::

    before_train
      before_stage                 (each stage, also when a run resumes into it)
        before_epoch
          before_step, after_step  (each optimizer step)
        after_epoch
      after_stage                  (after the stage's last epoch)
    after_train

Each call receives the loop's :class:`FitState`. A new concern (an EMA of the weights,
early stopping, another logger) is one more :class:`HookBase` subclass passed to
``fit(hooks=[...])``; the hooks here are what every run has (:meth:`Trainer.default_hooks`).
"""
from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np
import torch
from tqdm.auto import tqdm

from taltoolkit import collectives
from taltoolkit.engine.checkpoint import checkpoint_meta, rng_state, save_checkpoint
from taltoolkit.engine.evaluator import Evaluator
from taltoolkit.engine.method import Method, Stage
from taltoolkit.structures import Video

log = logging.getLogger("taltoolkit")

MODEL_SELECTIONS = ("last", "held_out", "test")

__all__ = [
    "MODEL_SELECTIONS",
    "Checkpointer",
    "FitResult",
    "FitState",
    "History",
    "HookBase",
    "MetricLogger",
    "ModelSelection",
    "NonFiniteLoss",
    "PeriodicEvaluation",
    "ProgressBar",
    "StopAfterEpochs",
    "TrainData",
    "call_hooks",
    "format_row",
    "split_held_out",
]


# --------------------------------------------------------------------------- what the loop holds
@dataclass
class TrainData:
    """What a run trains on.

    ``videos`` are the label-viewed training videos; ``make_dataset(videos, seed)`` returns a
    dataset over them and its collate (the method's sampler). ``reference`` maps each training
    video's name to its full-label record, for metrics only (a stage's
    :class:`~taltoolkit.engine.method.StageContext`, the held-out evaluation);
    ``ground_truth()`` returns the training subset's ground truth (ActivityNet ``database``
    form), read only when ``trainer.model_selection=held_out``, and ``subset`` names it.
    """

    videos: list[Any]
    make_dataset: Callable[[list[Any], int], tuple[torch.utils.data.Dataset, Callable]]
    reference: dict[str, Video] = field(default_factory=dict)
    ground_truth: Callable[[], dict[str, Any]] | None = None
    subset: str = "train"


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # periodic evaluations
    selected: dict[str, Any] = field(default_factory=dict)  # which weights the final evaluation used
    stage_metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return self.selected.get("weights") == "interrupted"


@dataclass
class FitState:
    """The loop's state, which every hook reads and some write."""

    method: Method
    stages: list[Stage]
    stage_epochs: list[int]  # epochs of each stage
    result: FitResult = field(default_factory=FitResult)
    stage_index: int = 0
    first_epoch: int = 0  # of this stage: > 0 when a run resumed inside it
    epoch: int = 0  # within the stage, from 0
    global_step: int = 0  # optimizer steps since the run began (continues on resume)
    losses: dict[str, float] = field(default_factory=dict)  # the last step's loss terms
    lr: float = 0.0  # the last step's learning rate
    # The best weights so far (model selection held_out/test); they travel with the
    # checkpoint, so a resumed run selects among every epoch's weights.
    best: dict[str, Any] = field(default_factory=lambda: {"score": -math.inf, "state": None, "where": None})
    evaluation: dict[str, Any] | None = None  # a periodic evaluation's test metrics, until logged
    stop: bool = False  # a hook asks the loop to stop after this epoch
    bar_on_screen: bool = False  # a progress bar shows the epoch: its row goes to run.log only
    resume: dict[str, Any] | None = None  # the trainer.resume checkpoint
    train_videos: list[Any] = field(default_factory=list)  # a stage may narrow them (APL's set_train_videos)
    # Built by the trainer at each stage's start:
    dataset: Any = None  # the stage's training dataset
    loader: Any = None  # its DataLoader (GlobalBatchSampler)
    bank: Any = None  # FeatureBank under trainer.features_on_device
    params: list[torch.nn.Parameter] = field(default_factory=list)  # what the optimizer updates
    module: Any = None  # the method, or its DistributedDataParallel wrapper
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None  # torch.amp.GradScaler (enabled for float16 autocast only)

    @property
    def stage(self) -> Stage:
        return self.stages[self.stage_index]

    @property
    def epochs(self) -> int:
        return self.stage_epochs[self.stage_index]

    @property
    def is_last_epoch(self) -> bool:
        """The run's last epoch: the last stage's last."""
        return self.stage_index == len(self.stages) - 1 and self.epoch == self.epochs - 1

    @property
    def stage_finished(self) -> bool:
        """This stage's last epoch ran in this process."""
        return self.epochs > self.first_epoch and self.epoch == self.epochs - 1


class HookBase:
    """One concern of the training loop; override the events it needs."""

    def before_train(self, state: FitState) -> None:
        pass

    def after_train(self, state: FitState) -> None:
        pass

    def before_stage(self, state: FitState) -> None:
        pass

    def after_stage(self, state: FitState) -> None:
        pass

    def before_epoch(self, state: FitState) -> None:
        pass

    def after_epoch(self, state: FitState) -> None:
        pass

    def before_step(self, state: FitState) -> None:
        pass

    def after_step(self, state: FitState) -> None:
        pass


def call_hooks(hooks: Sequence[HookBase], event: str, state: FitState) -> None:
    for hook in hooks:
        getattr(hook, event)(state)


def format_row(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


# --------------------------------------------------------------------------- the hooks
class NonFiniteLoss(HookBase):
    """Stops the run at the first step whose loss is NaN or infinite, naming every term (the
    checkpoint on disk is the last one written before it)."""

    def after_step(self, state: FitState) -> None:
        if not math.isfinite(state.losses["loss"]):
            raise FloatingPointError(
                f"non-finite loss in stage {state.stage.name!r} epoch {state.epoch}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in state.losses.items())
            )


class History(HookBase):
    """One row per epoch in ``result.history`` (the stage, the epoch's first learning rate,
    the mean of every loss term over the global batch, the method's ``log_metrics()``,
    seconds and videos per second), logged as it ends; the method's ``stage_metrics()`` at
    each stage's end."""

    def __init__(self, batch_size: int, distributed: bool = False, device: torch.device | str = "cpu") -> None:
        self.batch_size, self.distributed, self.device = batch_size, distributed, torch.device(device)
        self._sums: dict[str, float] = {}
        self._steps, self._t0, self._lr = 0, 0.0, 0.0

    def before_epoch(self, state: FitState) -> None:
        self._sums, self._steps, self._t0 = {}, 0, time.perf_counter()
        self._lr = state.optimizer.param_groups[0]["lr"]  # the rate of the epoch's first step

    def after_step(self, state: FitState) -> None:
        for k, v in state.losses.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._steps += 1

    def after_epoch(self, state: FitState) -> None:
        sums = self._sums
        if self.distributed and sums:
            # Log the global batch's losses, not rank 0's share.
            keys = sorted(sums)
            total = collectives.all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64,
                                                            device=self.device))
            sums = {k: float(v) / collectives.world_size() for k, v in zip(keys, total.tolist())}
        row: dict[str, Any] = {"stage": state.stage.name, "epoch": state.epoch, "lr": self._lr}
        row.update({k: v / max(1, self._steps) for k, v in sums.items()})
        row.update(state.method.log_metrics())
        row["seconds"] = time.perf_counter() - self._t0
        row["videos_per_s"] = self._steps * self.batch_size / max(row["seconds"], 1e-9)
        state.result.history.append(row)
        # With a progress bar on screen the row goes to run.log only (entry.ConsoleFilter).
        log.info("%s epoch %d: %s", state.stage.name, state.epoch, format_row(row),
                 extra={"console": not state.bar_on_screen})

    def after_stage(self, state: FitState) -> None:
        state.result.stage_metrics.append({"stage": state.stage.name, **state.method.stage_metrics()})


class ModelSelection(HookBase):
    """Which weights the run ends with (``trainer.model_selection``).

    ``last``: the final ones. ``held_out``: the epoch with the best mAP on the held-out
    training videos (:func:`split_held_out`). ``test``: the best on the test set, logged
    loudly and recorded in metrics.json. :meth:`evaluate` is the one evaluation every
    periodic and final evaluation goes through: the test mAP (reported), the held-out mAP
    under ``held_out``, and the best weights so far.
    """

    def __init__(self, mode: str = "last", test: Evaluator | None = None, held_out: Evaluator | None = None) -> None:
        if mode not in MODEL_SELECTIONS:
            raise ValueError(f"trainer.model_selection={mode!r}; choose one of {MODEL_SELECTIONS}")
        self.mode, self.test, self.held_out = mode, test, held_out

    def evaluate(self, state: FitState, stage: str, epoch: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"stage": stage, "epoch": epoch}
        if self.test is not None:
            metrics = self.test.evaluate(state.method)[0]
            entry["test_average_mAP"] = metrics.get("average_mAP")
            state.evaluation = metrics
        if self.mode == "held_out" and self.held_out is not None:
            entry["held_out_average_mAP"] = self.held_out.evaluate(state.method)[0]["average_mAP"]
            state.evaluation = {**(state.evaluation or {}), "held_out_average_mAP": entry["held_out_average_mAP"]}
        state.result.evaluations.append(entry)
        log.info("evaluation: %s", format_row(entry))
        if self.mode != "last":
            key = "test_average_mAP" if self.mode == "test" else "held_out_average_mAP"
            score = entry.get(key)
            if score is not None and score > state.best["score"]:
                state.best.update(score=score, state=copy.deepcopy(state.method.state_dict()), where=dict(entry))
        state.method.train()
        return entry

    def after_train(self, state: FitState) -> None:
        if state.stop:
            return  # interrupted: nothing to select yet
        if self.mode == "last":
            state.result.selected = {"weights": "last", "note": "final weights; no selection"}
            return
        self.evaluate(state, state.stages[-1].name, -1)
        state.method.load_state_dict(state.best["state"])
        state.result.selected = {"weights": f"best on {self.mode}", **state.best["where"]}
        if self.mode == "test":
            log.warning(
                "MODEL SELECTED ON THE TEST SET (trainer.model_selection=test): the reported mAP is "
                "optimistic and not comparable to papers that select on held-out data"
            )


def split_held_out(data: TrainData, fraction: float, seed: int) -> tuple[TrainData, list[Video]]:
    """``data`` without a seeded ``fraction`` of its videos, and those videos' full-label records."""
    videos = data.videos
    rng = np.random.default_rng(seed + 12345)
    held = set(rng.choice(len(videos), max(1, int(round(len(videos) * fraction))), replace=False).tolist())
    kept = [v for i, v in enumerate(videos) if i not in held]
    names = {v.name for v in kept}
    held_full = [data.reference[v.name] for i, v in enumerate(videos) if i in held]
    reference = {k: v for k, v in data.reference.items() if k in names}
    return TrainData(kept, data.make_dataset, reference, data.ground_truth, data.subset), held_full


class PeriodicEvaluation(HookBase):
    """Every ``every`` epochs (``trainer.eval_every``; 0: never) but the run's last, which the
    run evaluates anyway: :meth:`ModelSelection.evaluate`."""

    def __init__(self, every: int, selection: ModelSelection) -> None:
        self.every, self.selection = every, selection

    def after_epoch(self, state: FitState) -> None:
        if self.every and (state.epoch + 1) % self.every == 0 and not state.is_last_epoch:
            self.selection.evaluate(state, state.stage.name, state.epoch)


class StopAfterEpochs(HookBase):
    """Stops the run after ``epochs`` epochs of this process, as if interrupted
    (``trainer.stop_after_epochs``, to test resuming): the last checkpoint is written and
    nothing is selected."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.done = epochs, 0

    def after_epoch(self, state: FitState) -> None:
        self.done += 1
        state.stop = state.stop or self.done >= self.epochs

    def after_train(self, state: FitState) -> None:
        if state.stop:
            log.warning("stopping after %d epochs (trainer.stop_after_epochs)", self.done)
            state.result.selected = {"weights": "interrupted"}


class Checkpointer(HookBase):
    """``checkpoints/last.ckpt`` every ``every`` epochs, when the run stops early and at each
    stage's end (weights, method state, optimizer, scheduler, RNG states, where to continue,
    history and the best weights so far), so that ``trainer.resume`` continues bit-identically
    on CPU; ``checkpoints/inference.pt`` (``method.inference_state_dict()``) once training ends.
    Rank 0 writes; every file is written atomically."""

    def __init__(self, folder: Path, every: int, method: str, config: dict[str, Any] | None,
                 stage_epochs: list[int]) -> None:
        self.folder, self.every = Path(folder), every
        self.method, self.config, self.stage_epochs = method, config, stage_epochs

    def after_epoch(self, state: FitState) -> None:
        if state.epoch == state.epochs - 1:
            return  # a stage's end is saved after the stage (its metrics included)
        if (state.epoch + 1) % self.every == 0 or state.stop:
            self.save(state, state.stage_index, state.epoch + 1)

    def after_stage(self, state: FitState) -> None:
        # The next stage starts afresh (its on_stage_start runs, a new optimizer).
        self.save(state, state.stage_index + 1, 0)

    def after_train(self, state: FitState) -> None:
        if state.stop or not collectives.is_main():
            return
        save_checkpoint(self.folder / "inference.pt",
                        {"method": state.method.inference_state_dict(), "method_extra": state.method.extra_state()},
                        checkpoint_meta("inference", method=self.method, config=self.config))

    def save(self, state: FitState, stage_index: int, epoch: int) -> None:
        if not collectives.is_main():
            return
        save_checkpoint(
            self.folder / "last.ckpt",
            {
                "method": state.method.state_dict(),
                "method_extra": state.method.extra_state(),
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "rng": rng_state(),
                "stage_index": stage_index,
                "epoch": epoch,
                "global_step": state.global_step,
                "history": state.result.history,
                "evaluations": state.result.evaluations,
                "stage_metrics": state.result.stage_metrics,
                "best": state.best if state.best["state"] is not None else None,
            },
            checkpoint_meta("resume", method=self.method, config=self.config, stage_epochs=self.stage_epochs),
        )


class MetricLogger(HookBase):
    """Sends the run's numbers to a logger with ``log(values, step)`` (``engine.logger.RunLogger``),
    ``step`` being the optimizer step:

    - per step: ``train/<term>`` for every loss term ``training_step`` returns, ``train/lr``;
    - per epoch: ``epoch/<key>`` for the epoch's row (``epoch/seconds``, ``epoch/videos_per_s``,
      the mean loss terms, the method's ``log_metrics()``) and, after a periodic evaluation,
      ``eval/mAP@<tIoU>``, ``eval/average_mAP``, the preset's averages and under held-out
      selection ``eval/held_out_average_mAP``;
    - per stage: ``<stage>/<metric>`` for the numbers of the method's ``stage_metrics()``
      (COPL's clustering scores per iteration, APL's pseudo-label statistics).

    Per-step values are this process's (rank 0's share of the batch under torchrun); the
    epoch's means are over every rank.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def after_step(self, state: FitState) -> None:
        self.logger.log({**{f"train/{k}": v for k, v in state.losses.items()}, "train/lr": state.lr},
                        step=state.global_step)

    def after_epoch(self, state: FitState) -> None:
        row = state.result.history[-1]
        values = {f"epoch/{k}": v for k, v in row.items() if k not in ("stage", "epoch")}
        self.logger.log({**_numbers(values), **self._evaluation(state)}, step=state.global_step)

    def after_stage(self, state: FitState) -> None:
        metrics = {k: v for k, v in state.result.stage_metrics[-1].items() if k != "stage"}
        self.logger.log(_numbers(metrics, f"{state.stage.name}/"), step=state.global_step)

    def after_train(self, state: FitState) -> None:
        values = self._evaluation(state)  # the final evaluation of model selection
        if values:
            self.logger.log(values, step=state.global_step)

    @staticmethod
    def _evaluation(state: FitState) -> dict[str, float]:
        metrics, state.evaluation = state.evaluation, None
        if not metrics:
            return {}
        out = {f"eval/mAP@{t:.2f}": m for t, m in zip(metrics.get("tiou_thresholds", []), metrics.get("mAP", []))}
        for key in ("average_mAP", "held_out_average_mAP"):
            if metrics.get(key) is not None:
                out[f"eval/{key}"] = metrics[key]
        out.update({f"eval/{k}": v for k, v in (metrics.get("averages") or {}).items()})
        return _numbers(out)


def _numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The real numbers among ``values`` (nested dicts flattened with ``/``) as floats."""
    out: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)):
            out[f"{prefix}{k}"] = float(v)
    return out


class ProgressBar(HookBase):
    """A bar per epoch over its optimizer steps, showing the stage (COPL's iteration, APL's
    phase), the epoch, the running mean loss and the rate.

    On a terminal it is a tqdm bar, redrawn at most every ``min_interval_s`` (default 0.1 s),
    that clears itself at the epoch's end (the epoch's row then goes to run.log only). When the
    stream is not a terminal (a log file) it writes plain lines instead of carriage returns: at
    a quarter, half and three quarters of the epoch, each at least ``min_interval_s`` (default
    10 s) after the previous one, so a fast epoch shows its row alone. ``stream``: stderr.
    """

    def __init__(self, stream: TextIO | None = None, min_interval_s: float | None = None) -> None:
        self.stream = stream
        self.min_interval_s = min_interval_s
        self._bar: Any = None
        self._sum, self._steps, self._total = 0.0, 0, 0
        self._t0 = self._last_line = 0.0
        self._marks: list[int] = []

    def _describe(self, state: FitState) -> str:
        stage = state.stage.name if len(state.stages) == 1 else \
            f"{state.stage.name} ({state.stage_index + 1}/{len(state.stages)})"
        return f"{stage} epoch {state.epoch + 1}/{state.epochs}"

    def before_epoch(self, state: FitState) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        self._sum, self._steps, self._total = 0.0, 0, len(state.loader)
        self._t0 = self._last_line = time.perf_counter()
        isatty = getattr(stream, "isatty", None)
        state.bar_on_screen = bool(isatty and isatty())
        if state.bar_on_screen:
            self._bar = tqdm(total=self._total, desc=self._describe(state), unit="step", leave=False,
                             dynamic_ncols=True, file=stream,
                             mininterval=0.1 if self.min_interval_s is None else self.min_interval_s)
        else:
            self._bar = None
            self._marks = sorted({math.ceil(self._total * q / 4) for q in (1, 2, 3)} - {0, self._total})

    def after_step(self, state: FitState) -> None:
        self._sum += state.losses.get("loss", math.nan)
        self._steps += 1
        running = self._sum / self._steps
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{running:.4f}", refresh=False)
            self._bar.update(1)
            return
        now = time.perf_counter()
        min_interval = 10.0 if self.min_interval_s is None else self.min_interval_s
        if self._steps in self._marks and now - self._last_line >= min_interval:
            stream = self.stream if self.stream is not None else sys.stderr
            rate = self._steps / max(now - self._t0, 1e-9)
            stream.write(f"{self._describe(state)}: step {self._steps}/{self._total}, loss {running:.4f}, "
                         f"{rate:.2f} steps/s\n")
            stream.flush()
            self._last_line = now

    def after_epoch(self, state: FitState) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
