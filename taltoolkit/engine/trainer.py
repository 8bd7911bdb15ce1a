"""The one training loop every method runs in.

:meth:`Trainer.fit` is a short loop over a method's stages, their epochs and the optimizer
steps; checkpoints, periodic evaluation, model selection, metric logging, the progress bar,
NaN checks and early stopping are hooks around it (:mod:`taltoolkit.engine.hooks`). The
trainer itself owns the device, the optional process group, the data loaders, the optimizer
and learning-rate schedule of each stage (Hydra partials, ``conf/trainer/*.yaml``), AMP and
gradient clipping, and resuming bit-identically on CPU from ``trainer.resume``.
"""
from __future__ import annotations

import logging
import math
import random
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from taltoolkit import collectives
from taltoolkit.data.errors import CheckpointError, ConfigError
from taltoolkit.engine import distributed as dist_utils
from taltoolkit.engine.batching import GlobalBatchSampler, move_batch
from taltoolkit.engine.checkpoint import load_checkpoint, set_rng_state
from taltoolkit.engine.evaluator import Evaluator
from taltoolkit.engine.feature_bank import FeatureBank, PositionsOnly
from taltoolkit.engine.hooks import (
    MODEL_SELECTIONS,
    Checkpointer,
    FitResult,
    FitState,
    History,
    HookBase,
    MetricLogger,
    ModelSelection,
    NonFiniteLoss,
    PeriodicEvaluation,
    ProgressBar,
    StopAfterEpochs,
    TrainData,
    call_hooks,
    split_held_out,
)
from taltoolkit.engine.method import Method, Stage, StageContext
from taltoolkit.engine.schedules import per_step_schedule
from taltoolkit.registry import register

log = logging.getLogger("taltoolkit")

# move_batch, GlobalBatchSampler, FitResult, TrainData and MODEL_SELECTIONS are re-exported:
# code written against this module imports them from here.
__all__ = ["MODEL_SELECTIONS", "FitResult", "GlobalBatchSampler", "TrainData", "Trainer", "move_batch",
           "seed_everything"]


@register("trainer", "trainer")
class Trainer:
    """Runs a :class:`Method`'s stages. Constructor keys are the ``trainer`` config keys.

    ``optimizer`` is a partial taking ``(params, lr=, weight_decay=)`` (default Adam);
    ``scheduler`` a partial taking ``(optimizer, epochs=, steps_per_epoch=)`` (default
    :func:`~taltoolkit.engine.schedules.per_step_schedule` with ``warmup_epochs``,
    ``milestones`` and ``lr_gamma``, which the config's scheduler node reads from these keys).
    """

    def __init__(
        self,
        max_epochs: int = 10,
        batch_size: int = 16,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        warmup_epochs: int = 0,
        milestones: Sequence[int] = (),
        lr_gamma: float = 0.1,
        grad_clip: float = 0.0,
        eval_every: int = 0,
        device: str = "auto",
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        features_on_device: bool = False,
        features_on_device_dtype: str = "float16",
        compile: bool = False,  # noqa: A002 - the config key users expect
        compile_mode: str = "default",
        compile_backend: str = "inductor",
        num_workers: int = 0,
        model_selection: str = "last",
        held_out_fraction: float = 0.1,
        checkpoint_every: int = 1,
        resume: str | None = None,
        stop_after_epochs: int | None = None,
        progress: bool = True,
        drop_last: bool = True,
    ) -> None:
        # Every setting is checked here, before any data is read or any epoch runs: a bad value
        # would otherwise surface as a ZeroDivisionError mid-run or as an untrained model.
        if model_selection not in MODEL_SELECTIONS:
            raise ConfigError(f"trainer.model_selection={model_selection!r}; choose one of {MODEL_SELECTIONS}")
        if amp_dtype not in ("bfloat16", "float16"):
            raise ConfigError(f"trainer.amp_dtype={amp_dtype!r}; choose bfloat16 or float16")
        _check_int("max_epochs", max_epochs, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("checkpoint_every", checkpoint_every, 1)
        _check_int("eval_every", eval_every, 0, "(0 = no periodic evaluation)")
        _check_int("warmup_epochs", warmup_epochs, 0)
        _check_int("num_workers", num_workers, 0)
        if stop_after_epochs is not None:
            _check_int("stop_after_epochs", stop_after_epochs, 1, "(or null)")
        for i, m in enumerate(milestones):
            _check_int(f"milestones[{i}]", m, 0)
        _check_float("lr", lr, low=0.0, low_open=True)
        _check_float("weight_decay", weight_decay, low=0.0)
        _check_float("lr_gamma", lr_gamma, low=0.0, low_open=True)
        _check_float("grad_clip", grad_clip, low=0.0, note="(0 = no clipping)")
        _check_float("held_out_fraction", held_out_fraction, low=0.0, low_open=True, high=1.0)
        self.max_epochs, self.batch_size = max_epochs, batch_size
        self.lr, self.weight_decay = lr, weight_decay
        self.optimizer = optimizer if optimizer is not None else partial(torch.optim.Adam, betas=(0.9, 0.999))
        self.scheduler = scheduler if scheduler is not None else partial(
            per_step_schedule, warmup_epochs=warmup_epochs, milestones=list(milestones), gamma=lr_gamma)
        _check_partials(self.optimizer, self.scheduler, lr, weight_decay)
        self.grad_clip = grad_clip
        self.eval_every = eval_every
        self.device = dist_utils.resolve_device(device)
        # bfloat16 autocast also runs on CPU (no loss scaling needed); float16 needs CUDA's GradScaler.
        if amp and amp_dtype == "float16" and self.device.type != "cuda":
            raise ValueError(f"trainer.amp=true with amp_dtype=float16 needs CUDA (device is {self.device}); "
                             "use trainer.amp_dtype=bfloat16 on CPU")
        self.amp = amp
        self.amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[amp_dtype]
        self.features_on_device = features_on_device
        if features_on_device_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"trainer.features_on_device_dtype={features_on_device_dtype!r}; "
                             "choose float16, bfloat16 or float32")
        self.features_on_device_dtype = getattr(torch, features_on_device_dtype)
        self.compile, self.compile_mode, self.compile_backend = compile, compile_mode, compile_backend
        self.num_workers = num_workers
        self.model_selection = model_selection
        self.held_out_fraction = held_out_fraction
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.stop_after_epochs = stop_after_epochs
        self.progress = progress
        self.drop_last = drop_last
        self.distributed = dist_utils.init_distributed(self.device)

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        method: Method,
        data: TrainData,
        out_dir: str | Path,
        evaluator: Evaluator | None = None,
        seed: int = 0,
        run_config: dict[str, Any] | None = None,
        run_logger: Any = None,
        hooks: Sequence[HookBase] = (),
    ) -> FitResult:
        """Train ``method`` through its stages on ``data``; checkpoints go to ``out_dir/checkpoints``.

        ``evaluator`` runs inference for the stages' hooks (``StageContext.predict``), the
        periodic evaluation on the test set (reported; used for selection only under
        ``model_selection=test``) and, on the held-out training videos, model selection;
        ``run_config`` (the resolved config) is recorded in every checkpoint; ``run_logger``
        (``log(values, step)``) receives the numbers of :class:`~taltoolkit.engine.hooks.MetricLogger`;
        ``hooks`` run after the default ones (:meth:`default_hooks`).
        """
        data, selection = self.model_selection_for(data, evaluator, seed)
        state = self.start(method, data.videos)
        hooks = [*self.default_hooks(state, selection, Path(out_dir), run_logger, run_config), *hooks]
        call_hooks(hooks, "before_train", state)
        for state.stage_index in range(state.stage_index, len(state.stages)):
            self.start_stage(state, data, evaluator, seed)
            call_hooks(hooks, "before_stage", state)
            for state.epoch in range(state.first_epoch, state.epochs):
                self.train_epoch(state, hooks)
                if state.stop:
                    break
            if state.stage_finished:
                call_hooks(hooks, "after_stage", state)
            if state.stop:
                break
        call_hooks(hooks, "after_train", state)
        return state.result

    def train_epoch(self, state: FitState, hooks: Sequence[HookBase]) -> None:
        state.method.train()
        state.method.on_epoch_start(state.epoch)
        if hasattr(state.dataset, "set_epoch"):
            state.dataset.set_epoch(state.epoch)
        state.loader.batch_sampler.set_epoch(state.epoch)
        call_hooks(hooks, "before_epoch", state)
        for batch in state.loader:
            call_hooks(hooks, "before_step", state)
            self.step(state, batch)
            call_hooks(hooks, "after_step", state)
        call_hooks(hooks, "after_epoch", state)

    def step(self, state: FitState, batch: dict[str, Any]) -> None:
        """One optimizer step; ``state.losses`` gets the step's loss terms as floats."""
        batch = move_batch(batch, self.device)
        if state.bank is not None:
            batch["features"] = state.bank.gather(batch["index"], batch["positions"], batch["mask"])
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            losses = state.module(batch)  # the method's training_step (through DDP when distributed)
        opt = state.optimizer
        state.lr = opt.param_groups[0]["lr"]
        opt.zero_grad(set_to_none=True)
        state.scaler.scale(losses["loss"]).backward()
        if self.grad_clip > 0:
            state.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(state.params, self.grad_clip)
        state.scaler.step(opt)
        state.scaler.update()
        state.scheduler.step()
        state.method.on_train_step_end()
        state.losses = {k: float(v.detach()) for k, v in losses.items()}
        state.global_step += 1

    # ------------------------------------------------------------------ around the loop
    def default_hooks(self, state: FitState, selection: ModelSelection, out_dir: Path, run_logger: Any = None,
                      run_config: dict[str, Any] | None = None) -> list[HookBase]:
        """What every run has, in the order they are called (docs/architecture.md)."""
        hooks: list[HookBase] = [NonFiniteLoss()]
        if self.progress and collectives.is_main():
            hooks.append(ProgressBar())
        hooks.append(History(self.batch_size, self.distributed, self.device))
        hooks.append(PeriodicEvaluation(self.eval_every, selection))
        if self.stop_after_epochs is not None:
            hooks.append(StopAfterEpochs(self.stop_after_epochs))
        hooks.append(selection)
        if run_logger is not None:
            hooks.append(MetricLogger(run_logger))
        hooks.append(Checkpointer(out_dir / "checkpoints", self.checkpoint_every, type(state.method).__name__,
                                  run_config, state.stage_epochs))
        return hooks

    def model_selection_for(self, data: TrainData, evaluator: Evaluator | None,
                            seed: int) -> tuple[TrainData, ModelSelection]:
        """The selection hook; under ``held_out`` the training data without the held-out videos."""
        if self.model_selection != "last" and evaluator is None:
            raise ConfigError(f"trainer.model_selection={self.model_selection} evaluates during training and needs "
                              "an evaluator; pass fit(evaluator=...) or use model_selection=last")
        if self.model_selection != "held_out":
            return data, ModelSelection(self.model_selection, evaluator)
        if data.ground_truth is None:
            raise ConfigError("trainer.model_selection=held_out needs the training subset's ground truth "
                              "(TrainData.ground_truth)")
        data, held = split_held_out(data, self.held_out_fraction, seed)
        log.info("model selection on %d held-out training videos (trainer.model_selection=held_out)", len(held))
        assert evaluator is not None
        return data, ModelSelection("held_out", evaluator, evaluator.on(held, data.ground_truth(), data.subset))

    def start(self, method: Method, train_videos: list[Any]) -> FitState:
        """The state before the first stage: the method on the device (compiled if asked),
        or, with ``trainer.resume``, the checkpoint's weights, history and RNG states."""
        method.to(self.device)
        if self.compile:
            self.compile_networks(method)
        stages = method.stages()
        state = FitState(method, stages, [st.epochs if st.epochs is not None else self.max_epochs for st in stages],
                         train_videos=train_videos)
        if self.resume:
            ckpt = state.resume = self._load_resume(method, state.stage_epochs)
            state.stage_index = ckpt["stage_index"]
            state.global_step = int(ckpt.get("global_step", 0))
            state.result.history = ckpt.get("history", [])
            state.result.evaluations = ckpt.get("evaluations", [])
            state.result.stage_metrics = ckpt.get("stage_metrics", [])
            if ckpt.get("best"):
                state.best.update(ckpt["best"])
            set_rng_state(ckpt["rng"])
            log.info("resumed from %s at stage %d epoch %d", self.resume, ckpt["stage_index"], ckpt["epoch"])
        return state

    def start_stage(self, state: FitState, data: TrainData, evaluator: Evaluator | None, seed: int) -> None:
        """The method's ``on_stage_start``, then the stage's data loader, optimizer and schedule."""
        si, method = state.stage_index, state.method
        resumed = state.resume is not None and si == state.resume["stage_index"] and state.resume["epoch"] > 0
        state.first_epoch = state.resume["epoch"] if resumed else 0
        predict = None if evaluator is None else evaluator.predict
        context = StageContext(
            train_videos=state.train_videos,
            device=self.device,
            # Every rank needs the outputs; each predicts 1/N of the videos (rank-order shards).
            predict=lambda v: collectives.shard_and_gather(list(v), lambda part: _require(predict)(method, part)),
            stage_index=si,
            # A stage may narrow the training videos for itself and the stages after it (APL).
            set_train_videos=lambda v: setattr(state, "train_videos", v),
            resumed=resumed,
            reference_videos=dict(data.reference),
        )
        method.on_stage_start(state.stage, context)
        state.dataset, collate = data.make_dataset(state.train_videos, seed + 7919 * si)
        state.bank = None
        if self.features_on_device:
            state.bank = FeatureBank(state.train_videos, self.device, dtype=self.features_on_device_dtype)
            state.dataset = PositionsOnly(state.dataset)
            log.info("features on %s: %.1f MB", self.device, state.bank.nbytes / 2**20)
        state.loader = self.make_train_loader(state.dataset, collate, seed=seed + 7919 * si)
        state.params = [p for p in method.parameters() if p.requires_grad]
        if not state.params:
            raise RuntimeError(f"stage {state.stage.name!r} of {type(method).__name__} has no trainable parameter")
        state.module = method if not self.distributed else nn.parallel.DistributedDataParallel(
            method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=True)
        no_decay = method.no_weight_decay_parameters() if hasattr(method, "no_weight_decay_parameters") else []
        state.optimizer = self.build_optimizer(state.params, state.stage, no_decay)
        state.scheduler = self.build_scheduler(state.optimizer, state.epochs, max(1, len(state.loader)))
        state.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        if resumed:
            state.optimizer.load_state_dict(state.resume["optimizer"])
            state.scheduler.load_state_dict(state.resume["scheduler"])

    # ------------------------------------------------------------------ optimisation
    def build_optimizer(self, params: list[nn.Parameter], stage: Stage,
                        no_decay: Sequence[nn.Parameter] = ()) -> torch.optim.Optimizer:
        """The stage's optimizer (``Stage.options`` may set its ``lr`` and ``weight_decay``).

        ``no_decay`` (a method's ``no_weight_decay_parameters()``, e.g. ActionFormer's norms,
        biases and scales as its public code) go in a second group with weight decay 0."""
        lr = stage.options.get("lr", self.lr)
        wd = stage.options.get("weight_decay", self.weight_decay)
        exempt = {id(p) for p in no_decay}
        groups: list[Any] = params
        if exempt:
            groups = [g for g in ({"params": [p for p in params if id(p) not in exempt]},
                                  {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}) if g["params"]]
        return self.optimizer(groups, lr=lr, weight_decay=wd)

    def build_scheduler(self, opt: torch.optim.Optimizer, epochs: int, steps_per_epoch: int) -> Any:
        """The stage's learning-rate schedule, stepped after every optimizer step."""
        return self.scheduler(opt, epochs=epochs, steps_per_epoch=steps_per_epoch)

    # ------------------------------------------------------------------ data and networks
    def make_train_loader(self, dataset: torch.utils.data.Dataset, collate: Callable, seed: int) -> DataLoader:
        sampler = GlobalBatchSampler(len(dataset), self.batch_size, shuffle=True, drop_last=self.drop_last, seed=seed)  # type: ignore[arg-type]
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers)

    def compile_networks(self, method: Method) -> None:
        """``torch.compile`` the method's backbone networks in place (``nn.Module.compile``: the
        state-dict keys and checkpoints stay as without it). Shapes that vary (evaluation's
        whole videos, ActionFormer's crops) are compiled dynamic after the first change."""
        nets = method.networks()
        if not nets:
            log.warning("trainer.compile=true: %s names no network to compile; running eagerly", type(method).__name__)
        for net in nets:
            net.compile(mode=self.compile_mode, backend=self.compile_backend)
        log.info("compiled %d network(s) with torch.compile (backend %s, mode %s)",
                 len(nets), self.compile_backend, self.compile_mode)

    def _load_resume(self, method: Method, stage_epochs: list[int]) -> dict[str, Any]:
        """The ``trainer.resume`` checkpoint, checked against this run, loaded into ``method``."""
        state = load_checkpoint(self.resume, map_location=self.device, key="trainer.resume")
        meta = state.get("_taltoolkit", {})
        where = f"trainer.resume={self.resume}"
        if meta.get("kind") != "resume":
            raise CheckpointError(f"{where} is an inference checkpoint (weights only, no optimizer or RNG state); "
                                  "resume from the run's checkpoints/last.ckpt, or evaluate it with weights=PATH")
        this = type(method).__name__
        if meta.get("method") != this:
            raise CheckpointError(f"{where} was written by method {meta.get('method')} but this run builds {this}; "
                                  f"resume with the method that wrote it, or point trainer.resume at a {this} run")
        saved_epochs = list(meta.get("stage_epochs") or [])
        if state["stage_index"] >= len(stage_epochs):
            if saved_epochs != stage_epochs:
                raise ConfigError(
                    f"{where} is the checkpoint of a finished run (its stages trained {saved_epochs} epochs) and "
                    f"this config asks for {stage_epochs}. A finished run cannot be extended: its learning-rate "
                    "schedules ended and the next stages' hooks would not run as in one longer run. Start a new "
                    "run with the longer schedule (e.g. trainer.max_epochs=N), or evaluate its weights with "
                    "weights=PATH"
                )
            log.warning("%s is the checkpoint of a finished run: nothing left to train; evaluating its weights",
                        where)
        elif saved_epochs and saved_epochs != stage_epochs:
            log.warning("%s was written with stage epochs %s; this run uses %s, so the remaining learning-rate "
                        "schedule differs from the interrupted run's", where, saved_epochs, stage_epochs)
        try:
            method.load_state_dict(state["method"])
        except RuntimeError as e:
            raise CheckpointError(f"{where}: its weights do not fit this run's {this} network ({_first_line(e)}); "
                                  "resume with the config the checkpoint was written with") from None
        method.load_extra_state(state.get("method_extra", {}))
        return state


def _require(predict: Callable | None) -> Callable:
    if predict is None:
        raise RuntimeError("a stage asked to predict (StageContext.predict) but fit() was given no evaluator")
    return predict


def _check_partials(optimizer: Callable, scheduler: Callable, lr: float, weight_decay: float) -> None:
    """Build the optimizer and schedule once on a stand-in parameter, so that a bad setting in
    their config nodes (betas out of range, an unknown decay) fails before any data is read."""
    try:
        opt = optimizer([nn.Parameter(torch.zeros(1))], lr=lr, weight_decay=weight_decay)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trainer.optimizer cannot be built ({type(e).__name__}: {_first_line(e)}); it must be a "
                          "partial taking (params, lr=, weight_decay=), e.g. {_target_: torch.optim.AdamW, "
                          "_partial_: true}") from None
    try:
        scheduler(opt, epochs=1, steps_per_epoch=1)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trainer.scheduler cannot be built ({type(e).__name__}: {_first_line(e)}); it must be a "
                          "partial taking (optimizer, epochs=, steps_per_epoch=)") from None


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _check_int(key: str, value: Any, low: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"trainer.{key}={value!r} must be an integer >= {low}{' ' + note if note else ''}; "
                          f"set trainer.{key}=N")


def _check_float(key: str, value: Any, low: float, low_open: bool = False, high: float | None = None,
                 note: str = "") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bounds = f"{'>' if low_open else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise ConfigError(f"trainer.{key}={value!r} must be a finite number {bounds}{' ' + note if note else ''}")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
