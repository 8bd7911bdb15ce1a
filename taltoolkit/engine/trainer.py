"""The one training loop every method runs in.

Responsibilities: device, optional process group, data loaders, optimizer and scheduler
per stage, AMP, gradient clipping, periodic evaluation, atomic checkpoints with RNG state
so that ``trainer.resume`` continues bit-identically on CPU, and explicit model selection.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from taltoolkit.data.errors import CheckpointError, ConfigError
from taltoolkit.engine import distributed as dist_utils
from taltoolkit.engine.feature_bank import FeatureBank, PositionsOnly
from taltoolkit.engine.checkpoint import checkpoint_meta, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from taltoolkit.engine.method import Method, Stage, StageContext
from taltoolkit.structures import Video

log = logging.getLogger("taltoolkit")

MODEL_SELECTIONS = ("last", "held_out", "test")


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch on ``device``: tensors and lists of tensors (per-video segments) move."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            out[k] = [t.to(device, non_blocking=True) for t in v]
        else:
            out[k] = v
    return out


class GlobalBatchSampler(Sampler[list[int]]):
    """Seeded per-epoch shuffle cut into global batches; each rank takes its slice.

    Every rank draws the same permutation, so with W ranks the union of the ranks' batches
    is exactly the batch a single process would see with the same global batch size.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last, self.seed = n, batch_size, shuffle, drop_last, seed
        self.epoch = 0
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        if batch_size % self.world:
            raise ValueError(f"trainer.batch_size={batch_size} must be divisible by the {self.world} processes")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size and len(batches) > 1:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self._global_batches():
            per = math.ceil(len(b) / self.world)
            part = b[self.rank * per : (self.rank + 1) * per]
            if part:
                yield part

    def __len__(self) -> int:
        return len(self._global_batches())


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # periodic evaluations
    selected: dict[str, Any] = field(default_factory=dict)  # which weights the final evaluation used
    stage_metrics: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Runs a :class:`Method`'s stages. Constructor keys are the ``trainer`` config keys."""

    def __init__(
        self,
        max_epochs: int = 10,
        batch_size: int = 16,
        optimizer: str = "adam",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: Sequence[float] = (0.9, 0.999),
        momentum: float = 0.9,
        scheduler: str = "none",
        milestones: Sequence[int] = (),
        lr_gamma: float = 0.1,
        warmup_epochs: int = 0,
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
        if optimizer not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"trainer.optimizer={optimizer!r}; choose adam, adamw or sgd")
        if scheduler not in ("none", "step", "cosine"):
            raise ConfigError(f"trainer.scheduler={scheduler!r}; choose none, step or cosine")
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
        _check_float("momentum", momentum, low=0.0)
        _check_float("lr_gamma", lr_gamma, low=0.0, low_open=True)
        _check_float("grad_clip", grad_clip, low=0.0, note="(0 = no clipping)")
        _check_float("held_out_fraction", held_out_fraction, low=0.0, low_open=True, high=1.0)
        if len(betas) != 2:
            raise ConfigError(f"trainer.betas={list(betas)} must be two numbers, e.g. [0.9, 0.999]")
        for i, b in enumerate(betas):
            _check_float(f"betas[{i}]", b, low=0.0, high=1.0)
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.momentum = momentum
        self.scheduler_name = scheduler
        self.milestones = list(milestones)
        self.lr_gamma = lr_gamma
        self.warmup_epochs = warmup_epochs
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

    # ------------------------------------------------------------------ optimisation
    def build_optimizer(self, params: list[nn.Parameter], stage: Stage,
                        no_decay: Sequence[nn.Parameter] = ()) -> torch.optim.Optimizer:
        """``no_decay`` (a method's ``no_weight_decay_parameters()``, e.g. ActionFormer's norms,
        biases and scales as its public code) go in a second group with weight decay 0."""
        lr = stage.options.get("lr", self.lr)
        wd = stage.options.get("weight_decay", self.weight_decay)
        exempt = {id(p) for p in no_decay}
        groups: list[Any] = params
        if exempt:
            groups = [g for g in ({"params": [p for p in params if id(p) not in exempt]},
                                  {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}) if g["params"]]
        if self.optimizer_name == "adam":
            return torch.optim.Adam(groups, lr=lr, betas=self.betas, weight_decay=wd)
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(groups, lr=lr, betas=self.betas, weight_decay=wd)
        return torch.optim.SGD(groups, lr=lr, momentum=self.momentum, weight_decay=wd)

    def build_scheduler(self, opt: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):  # noqa: ANN201
        """Per-step schedule so that warm-up and cosine decay are smooth within an epoch."""
        warm = self.warmup_epochs * steps_per_epoch
        total = max(1, epochs * steps_per_epoch)
        milestones = [m * steps_per_epoch for m in self.milestones]

        def factor(step: int) -> float:
            f = 1.0
            if self.scheduler_name == "step":
                f = self.lr_gamma ** sum(step >= m for m in milestones)
            elif self.scheduler_name == "cosine":
                progress = min(1.0, max(0.0, (step - warm) / max(1, total - warm)))
                f = 0.5 * (1 + math.cos(math.pi * progress))
            if warm and step < warm:
                f *= (step + 1) / warm
            return f

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    # ------------------------------------------------------------------ data
    def make_train_loader(self, dataset: torch.utils.data.Dataset, collate: Callable, seed: int) -> DataLoader:
        sampler = GlobalBatchSampler(len(dataset), self.batch_size, shuffle=True, drop_last=self.drop_last, seed=seed)  # type: ignore[arg-type]
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers)


    # ------------------------------------------------------------------ the loop
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

    def fit(
        self,
        method: Method,
        train_videos: list[Video],
        make_train_dataset: Callable[[list[Video], int], tuple[torch.utils.data.Dataset, Callable]],
        predict_videos: Callable[[Method, list[Video]], list[dict[str, Any]]],
        evaluate: Callable[[Method], dict[str, Any]] | None,
        out_dir: Path,
        seed: int = 0,
        select_evaluate: Callable[[Method], dict[str, Any]] | None = None,
        reference_videos: dict[str, Video] | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> FitResult:
        """Train ``method`` through its stages.

        ``make_train_dataset(videos, seed)`` returns a dataset and its collate;
        ``predict_videos(method, videos)`` runs inference (for stage hooks);
        ``evaluate(method)`` returns a metrics dict with ``average_mAP`` (periodic evaluation
        on the test set, reported but never used for selection unless
        ``model_selection=test``); ``select_evaluate`` evaluates on the held-out split;
        ``reference_videos`` (name -> full-label record) reach the method's stage hooks for
        metrics against hidden labels (:class:`StageContext`); ``run_config`` (the resolved
        config) is recorded in every checkpoint beside the method's name.
        """
        method.to(self.device)
        if self.compile:
            self.compile_networks(method)
        out_dir = Path(out_dir)
        ckpt_path = out_dir / "checkpoints" / "last.ckpt"
        result = FitResult()
        stages = method.stages()
        stage_epochs = [st.epochs if st.epochs is not None else self.max_epochs for st in stages]
        self._meta = {"method": type(method).__name__, "config": run_config, "stage_epochs": stage_epochs}
        # The best weights so far (model_selection held_out/test) travel with the checkpoint, so
        # a resumed run selects among every epoch's weights, not only those after the resume.
        best: dict[str, Any] = {"score": -math.inf, "state": None, "where": None}
        start_stage, start_epoch, resume_state = 0, 0, None
        if self.resume:
            resume_state = self._load_resume(method, stage_epochs)
            start_stage, start_epoch = resume_state["stage_index"], resume_state["epoch"]
            result.history = resume_state.get("history", [])
            result.evaluations = resume_state.get("evaluations", [])
            result.stage_metrics = resume_state.get("stage_metrics", [])
            if resume_state.get("best"):
                best.update(resume_state["best"])
            set_rng_state(resume_state["rng"])
            log.info("resumed from %s at stage %d epoch %d", self.resume, start_stage, start_epoch)

        videos = {"current": train_videos}

        def set_train_videos(v: list[Video]) -> None:
            videos["current"] = v

        total_epochs_run = 0
        for si, stage in enumerate(stages):
            if si < start_stage:
                continue
            epochs = stage_epochs[si]
            first_epoch = start_epoch if si == start_stage else 0
            context = StageContext(
                train_videos=videos["current"],
                device=self.device,
                # Every rank needs the outputs; each predicts 1/N of the videos (rank-order shards).
                predict=lambda v: dist_utils.shard_and_gather(list(v), lambda part: predict_videos(method, part)),
                stage_index=si,
                set_train_videos=set_train_videos,
                resumed=resume_state is not None and si == start_stage and first_epoch > 0,
                reference_videos=dict(reference_videos or {}),
            )
            method.on_stage_start(stage, context)
            dataset, collate = make_train_dataset(videos["current"], seed + 7919 * si)
            bank = None
            if self.features_on_device:
                bank = FeatureBank(videos["current"], self.device, dtype=self.features_on_device_dtype)
                dataset = PositionsOnly(dataset)
                log.info("features on %s: %.1f MB", self.device, bank.nbytes / 2**20)
            loader = self.make_train_loader(dataset, collate, seed=seed + 7919 * si)
            params = [p for p in method.parameters() if p.requires_grad]
            if not params:
                raise RuntimeError(f"stage {stage.name!r} of {type(method).__name__} has no trainable parameter")
            train_module: nn.Module = method
            if self.distributed:
                train_module = nn.parallel.DistributedDataParallel(
                    method,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    find_unused_parameters=True,
                )
            no_decay = method.no_weight_decay_parameters() if hasattr(method, "no_weight_decay_parameters") else []
            opt = self.build_optimizer(params, stage, no_decay)
            sched = self.build_scheduler(opt, epochs, max(1, len(loader)))
            scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
            if resume_state is not None and si == start_stage and first_epoch > 0:
                opt.load_state_dict(resume_state["optimizer"])
                sched.load_state_dict(resume_state["scheduler"])

            bar = _progress(range(first_epoch, epochs), self.progress and dist_utils.is_main(), f"{stage.name}")
            for epoch in bar:
                method.train()
                method.on_epoch_start(epoch)
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)
                loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
                sums: dict[str, float] = {}
                n_steps, t0 = 0, time.perf_counter()
                epoch_lr = opt.param_groups[0]["lr"]  # the rate of the epoch's first step (the log shows it)
                for batch in loader:
                    batch = move_batch(batch, self.device)
                    if bank is not None:
                        batch["features"] = bank.gather(batch["index"], batch["positions"], batch["mask"])
                    with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                        losses = train_module(batch)
                    loss = losses["loss"]
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"non-finite loss in stage {stage.name!r} epoch {epoch}: "
                            + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                        )
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if self.grad_clip > 0:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(params, self.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    method.on_train_step_end()
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                    n_steps += 1
                if self.distributed and sums:
                    # Log the global batch's losses, not rank 0's half.
                    keys = sorted(sums)
                    t = dist_utils.all_reduce_sum(
                        torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device))
                    sums = {k: float(v) / dist_utils.world_size() for k, v in zip(keys, t.tolist())}
                row = {"stage": stage.name, "epoch": epoch, "lr": epoch_lr}
                row.update({k: v / max(1, n_steps) for k, v in sums.items()})
                row.update(method.log_metrics())
                row["seconds"] = time.perf_counter() - t0
                row["videos_per_s"] = n_steps * self.batch_size / max(row["seconds"], 1e-9)
                result.history.append(row)
                # With a progress bar on screen the row goes to run.log only (entry.ConsoleFilter).
                bar_shown = hasattr(bar, "set_postfix")
                if bar_shown:
                    bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}")
                log.info("%s epoch %d: %s", stage.name, epoch, _fmt_row(row), extra={"console": not bar_shown})
                total_epochs_run += 1

                is_last_epoch = si == len(stages) - 1 and epoch == epochs - 1
                if self.eval_every and (epoch + 1) % self.eval_every == 0 and not is_last_epoch:
                    self._periodic_eval(method, evaluate, select_evaluate, result, best, stage, epoch)
                if epoch == epochs - 1:
                    result.stage_metrics.append({"stage": stage.name, **method.stage_metrics()})
                stopping = self.stop_after_epochs is not None and total_epochs_run >= self.stop_after_epochs
                if epoch == epochs - 1:
                    # At a stage's end the next stage starts afresh (its hook runs, new optimizer).
                    self._save(ckpt_path, method, opt, sched, si + 1, 0, result, best)
                elif (epoch + 1) % self.checkpoint_every == 0 or stopping:
                    self._save(ckpt_path, method, opt, sched, si, epoch + 1, result, best)
                if stopping:
                    log.warning("stopping after %d epochs (trainer.stop_after_epochs)", total_epochs_run)
                    result.selected = {"weights": "interrupted"}
                    return result

        if self.model_selection == "last":
            result.selected = {"weights": "last", "note": "final weights; no selection"}
        else:
            self._periodic_eval(method, evaluate, select_evaluate, result, best, stages[-1], -1)
            method.load_state_dict(best["state"])
            result.selected = {"weights": f"best on {self.model_selection}", **best["where"]}
            if self.model_selection == "test":
                log.warning(
                    "MODEL SELECTED ON THE TEST SET (trainer.model_selection=test): the reported mAP is "
                    "optimistic and not comparable to papers that select on held-out data"
                )
        return result

    def _periodic_eval(self, method, evaluate, select_evaluate, result, best, stage, epoch) -> None:  # noqa: ANN001
        entry: dict[str, Any] = {"stage": stage.name, "epoch": epoch}
        if evaluate is not None:
            metrics = evaluate(method)
            entry["test_average_mAP"] = metrics.get("average_mAP")
        if self.model_selection == "held_out" and select_evaluate is not None:
            entry["held_out_average_mAP"] = select_evaluate(method)["average_mAP"]
        result.evaluations.append(entry)
        log.info("evaluation: %s", _fmt_row(entry))
        if self.model_selection != "last":
            key = "test_average_mAP" if self.model_selection == "test" else "held_out_average_mAP"
            score = entry.get(key)
            if score is not None and score > best["score"]:
                best.update(score=score, state=copy.deepcopy(method.state_dict()), where=dict(entry))
        method.train()

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

    def _save(self, path: Path, method: Method, opt, sched, stage_index: int, epoch: int, result: FitResult,  # noqa: ANN001
              best: dict[str, Any]) -> None:
        if not dist_utils.is_main():
            return
        save_checkpoint(
            path,
            {
                "method": method.state_dict(),
                "method_extra": method.extra_state(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": rng_state(),
                "stage_index": stage_index,
                "epoch": epoch,
                "history": result.history,
                "evaluations": result.evaluations,
                "stage_metrics": result.stage_metrics,
                "best": best if best["state"] is not None else None,
            },
            checkpoint_meta("resume", **getattr(self, "_meta", {})),
        )


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


def _progress(it, enabled: bool, desc: str):  # noqa: ANN001, ANN202
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit="epoch", dynamic_ncols=True, leave=False)


def _fmt_row(row: dict[str, Any]) -> str:
    parts = []
    for k, v in row.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
