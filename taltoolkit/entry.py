"""``run(cfg)``: one run from one config -- build, fit, evaluate, report.

``tools/run.py`` is a thin ``@hydra.main`` wrapper around this function; tests and research
code call it with a config from Hydra's compose API. Every object, the trainer included, is
built with ``hydra.utils.instantiate`` from a ``_target_`` and plain keyword arguments; each
target is logged so that a failing construction is easy to locate (set
``HYDRA_FULL_ERROR=1`` for Hydra's full traceback).
"""
from __future__ import annotations

import inspect
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from taltoolkit import collectives
from taltoolkit.atomicio import atomic_write_text
from taltoolkit.data.errors import CheckpointError, ConfigError, DataError, UserInputError
from taltoolkit.data.sampling import make_dataset
from taltoolkit.engine import distributed as dist_utils
from taltoolkit.engine.checkpoint import load_checkpoint
from taltoolkit.engine.evaluator import Evaluator
from taltoolkit.engine.hooks import FitResult, TrainData
from taltoolkit.engine.logger import RunLogger
from taltoolkit.engine.method import Method
from taltoolkit.engine.reporting import write_run_outputs
from taltoolkit.engine.trainer import Trainer, seed_everything
from taltoolkit.evaluation.errors import EvaluationError
from taltoolkit.evaluation.presets import get_preset, resolve_preset
from taltoolkit.jsonio import dump_json
from taltoolkit.structures import Video

log = logging.getLogger("taltoolkit")

__all__ = ["RunParts", "build", "claim_output_dir", "dump_json", "output_dir_from", "report", "run",
           "setup_logging", "start_run"]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one method on one dataset; returns the metrics written to metrics.json."""
    try:
        return _run(cfg)
    finally:
        dist_utils.cleanup()  # under torchrun: leave the process group before the process exits


def _run(cfg: DictConfig) -> dict[str, Any]:
    out_dir = output_dir_from(cfg)
    # Settings first: a bad value fails here, before the output folder is touched or data read.
    trainer: Trainer = _instantiate(cfg.trainer, "trainer", _convert_="all")
    labelled_fraction = _check_labelled_fraction(cfg.get("labelled_fraction"))
    run_config = start_run(cfg, out_dir, resuming=bool(trainer.resume))
    parts = build(cfg, trainer, labelled_fraction)
    run_logger = RunLogger.from_config(cfg.get("logger"), out_dir, cfg)
    if cfg.get("weights"):
        fit = load_weights(parts.method, cfg.weights, run_config, trainer.device)
    else:
        fit = trainer.fit(parts.method, parts.train, out_dir, parts.evaluator, seed=int(cfg.seed),
                          run_config=run_config, run_logger=run_logger)
        if fit.interrupted:
            run_logger.finish()
            return {"interrupted": True, "history": fit.history}
    evaluated = parts.evaluator.evaluate(parts.method)  # every rank predicts a share of the test videos
    return report(cfg, parts, fit, evaluated, out_dir, run_logger)


@dataclass
class RunParts:
    """What :func:`build` makes from a config."""

    dataset: Any  # a TALDataset (or anything with its interface)
    method: Method
    label_mode: str
    preset: str  # the evaluation preset's name
    subset: str  # the evaluated subset
    train: TrainData
    test_videos: list[Video]
    evaluator: Evaluator  # the test set under the preset's protocol


def start_run(cfg: DictConfig, out_dir: Path, resuming: bool) -> dict[str, Any]:
    """Claim the output folder, log to it, seed, write config.yaml; the resolved config."""
    if collectives.is_main():  # rank 0 alone: the others would see the config.yaml rank 0 writes
        claim_output_dir(out_dir, resuming=resuming, overwrite=bool(cfg.get("overwrite", False)))
    setup_logging(out_dir)
    seed_everything(int(cfg.seed))
    run_config = OmegaConf.to_container(cfg, resolve=True)
    if collectives.is_main():
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return run_config  # type: ignore[return-value]


def build(cfg: DictConfig, trainer: Trainer, labelled_fraction: float | None = None) -> RunParts:
    """The dataset, the method (with its model and memory branch), the training data in the
    method's label regime and sampling, and the test evaluator under the dataset's preset."""
    dataset = _instantiate(cfg.dataset, "dataset")
    method = build_method(cfg, dataset)
    postprocess = _instantiate(cfg.postprocess, "postprocess", _partial_=True)
    label_mode = cfg.get("label_mode") or method.label_mode
    if labelled_fraction is not None and label_mode != "semi":
        log.warning("labelled_fraction=%s is ignored: %s trains with label_mode=%s, and only label_mode=semi "
                    "(e.g. method=apl) keeps labels on a fraction of the training videos",
                    labelled_fraction, type(method).__name__, label_mode)
    ev_cfg = cfg.get("evaluation") or {}
    preset_name = ev_cfg.get("preset") or _dataset_preset(dataset, method.paradigm)
    preset = get_preset(preset_name)
    subset = ev_cfg.get("subset") or dataset.test_subset
    ground_truth = dataset.ground_truth(subset)
    _check_ground_truth(ground_truth, subset, dataset)
    train_videos = dataset.train_videos(
        label_mode=label_mode,
        # A top-level labelled_fraction wins; else the method's own default (APL: method.labelled_fraction).
        labelled_fraction=labelled_fraction if labelled_fraction is not None
        else getattr(method, "labelled_fraction", None),
        split_seed=int(cfg.get("split_seed", 0))
    )
    test_videos = dataset.test_videos()
    log.info(
        "%s: %d training videos (labels: %s), %d test videos, %d classes, features %d-d, device %s",
        dataset.name, len(train_videos), label_mode, len(test_videos), dataset.num_classes,
        dataset.feature_dim, trainer.device,
    )
    sampler = partial(make_dataset, method.sampling, num_segments=dataset.num_segments,
                      max_seq_len=dataset.max_seq_len, rule=method.sampling_rule, test_sampling=method.test_sampling)
    tiou = list(ev_cfg.get("tiou_thresholds") or preset.tiou_thresholds)
    evaluator = Evaluator(test_videos, dataset.classes, ground_truth, subset, tiou, postprocess,
                          partial(sampler, training=False), trainer.device, averages=preset.averages,
                          progress=trainer.progress)
    names = {v.name for v in train_videos}
    train = TrainData(
        train_videos, lambda videos, seed: sampler(videos, training=True, seed=seed),
        reference={v.name: v for v in dataset.all_videos() if v.name in names},
        ground_truth=lambda: dataset.ground_truth(dataset.train_subset), subset=dataset.train_subset,
    )
    return RunParts(dataset, method, label_mode, preset_name, subset, train, test_videos, evaluator)


def build_method(cfg: DictConfig, dataset: Any) -> Method:
    """The method with its model (``in_dim``/``num_classes`` from the dataset) and memory branch."""
    model = None
    if cfg.get("model") is not None:
        model = _instantiate(cfg.model, "model", in_dim=dataset.feature_dim, num_classes=dataset.num_classes)
    extra: dict[str, Any] = {}
    # memory_branch=none composes to a node without _target_ (empty, or holding a
    # method_dataset's tweaks for when the branch is on).
    if cfg.get("memory_branch") and "_target_" in cfg.memory_branch:
        extra["memory_branch"] = _memory_branch(cfg)
    return _instantiate(cfg.method, "method", model=model, **extra)


def load_weights(method: Method, path: Any, run_config: dict[str, Any], device: Any) -> FitResult:
    """Evaluation only: the weights of an earlier run (its checkpoints/inference.pt or last.ckpt)."""
    state = load_checkpoint(path, map_location=device, key="weights")
    _load_weights(method, state, path, run_config)
    method.to(device)
    log.info("evaluating the weights in %s (no training)", path)
    return FitResult(selected={"weights": str(path), "note": "evaluation only (weights=...)"})


def report(cfg: DictConfig, parts: RunParts, fit: FitResult, evaluated: tuple[dict[str, Any], Any, Any],
           out_dir: Path, run_logger: RunLogger) -> dict[str, Any]:
    """metrics.json (the test metrics and how the run got them), predictions.json, the printed
    table and the plots (rank 0); every rank returns the metrics."""
    metrics, detections, outputs = evaluated
    if collectives.is_main():
        metrics.update(
            method=type(parts.method).__name__,
            dataset=parts.dataset.name,
            label_mode=parts.label_mode,
            subset=parts.subset,
            preset=parts.preset,
            model_selection=fit.selected,
            history=fit.history,
            evaluations=fit.evaluations,
            stage_metrics=fit.stage_metrics,
            seed=int(cfg.seed),
            world_size=collectives.world_size(),
            device=str(parts.evaluator.device),
        )
        write_run_outputs(out_dir, metrics, detections, outputs, parts.test_videos, parts.dataset.classes, run_logger)
    collectives.barrier()
    run_logger.finish()
    return collectives.broadcast_object(metrics)


def _instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    target = node.get("_target_", "?")
    log.info("building %s: %s", what, target)
    try:
        return instantiate(node, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with the config path that failed
        # A constructor's own user error (a DataError naming the key) already says what to fix;
        # Hydra's InstantiationException wrapper would only bury it.
        cause: BaseException | None = e
        while cause is not None:
            if isinstance(cause, UserInputError):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise RuntimeError(
            f"could not build {what} from _target_={target}: {type(e).__name__}: {e}\n"
            "(set HYDRA_FULL_ERROR=1 for the full traceback)"
        ) from e


def output_dir_from(cfg: DictConfig) -> Path:
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - compose API without a Hydra run: fall back to ./outputs
        return Path("outputs") / "run"


def setup_logging(out_dir: Path) -> None:
    """Log to stderr and to ``out_dir/run.log`` (Hydra's own handlers are kept when present)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if int(os.environ.get("RANK", "0")) != 0:
        # Under torchrun only rank 0 writes the run's log; other ranks report warnings only.
        root.setLevel(logging.WARNING)
        return
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    for h in root.handlers:
        if not isinstance(h, logging.FileHandler) and not any(isinstance(f, ConsoleFilter) for f in h.filters):
            h.addFilter(ConsoleFilter())
    log_file = out_dir / "run.log"
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == log_file.resolve() for h in root.handlers):
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s"))
        root.addHandler(fh)
    root.setLevel(logging.INFO)


class ConsoleFilter(logging.Filter):
    """Keeps records logged with ``extra={"console": False}`` (per-epoch rows while a progress
    bar shows the same numbers) out of the terminal; they still go to run.log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


# What a run that got as far as training or evaluating leaves in its output folder; any of
# them there means the folder holds a run. (config.yaml alone is a run that failed during
# setup: nothing of value would be replaced.)
RUN_OUTPUTS = ("metrics.json", "predictions.json", "checkpoints", "plots", "scalars.jsonl", "tensorboard", "wandb",
               "report.html")


def claim_output_dir(out_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse an output folder that holds another run's outputs, unless resuming or overwriting.

    Re-running into a finished run's folder would replace its metrics, predictions and
    checkpoints and mix two runs in one run.log. ``trainer.resume=PATH`` continues a run in
    place; ``overwrite=true`` deletes the earlier run's outputs (and starts run.log afresh).
    """
    present = [name for name in RUN_OUTPUTS if (out_dir / name).exists()]
    if not present or resuming:
        return
    if not overwrite:
        raise ConfigError(
            f"output folder {out_dir} already holds a run ({', '.join(present)}); choose another output_dir, "
            "resume it with trainer.resume=PATH/checkpoints/last.ckpt, or pass overwrite=true to replace it"
        )
    present += ["config.yaml"] if (out_dir / "config.yaml").exists() else []
    log.warning("overwrite=true: deleting the earlier run's %s in %s", ", ".join(present), out_dir)
    for name in present:
        p = out_dir / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    log_file = out_dir / "run.log"
    if log_file.is_file() and not _logged_to(log_file):
        log_file.unlink()


def _logged_to(path: Path) -> bool:
    """Whether a handler already writes ``path`` (Hydra's own job log can be run.log)."""
    return any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve()
               for h in logging.getLogger().handlers)


def _check_labelled_fraction(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ConfigError(f"labelled_fraction={value!r} must be a number in (0, 1]: the fraction of training "
                          "videos that keep their labels under label_mode=semi (e.g. labelled_fraction=0.1)")
    return float(value)


def _check_ground_truth(ground_truth: dict[str, Any], subset: str, dataset: Any) -> None:
    """An evaluation subset without ground truth would fail only after training: fail now."""
    n = sum(len(v.get("annotations", [])) for v in ground_truth.values())
    if n == 0:
        source = getattr(getattr(dataset, "annotations", None), "source", "") or "the annotations"
        raise DataError(
            f"evaluation subset {subset!r} of {source} has {len(ground_truth)} video(s) and no ground-truth "
            "instance, so nothing could be evaluated after training; set dataset.test_subset (or "
            "evaluation.subset) to an annotated subset"
        )


def _load_weights(method: Any, state: dict[str, Any], path: Any, run_config: dict[str, Any]) -> None:
    """Load ``weights=`` into ``method``; a checkpoint of another method or network is named as such."""
    meta = state.get("_taltoolkit", {})
    this = type(method).__name__
    saved_cfg = meta.get("config") or {}
    if meta.get("method") != this:
        theirs = (saved_cfg.get("method") or {}).get("_target_", "?")
        ours = (run_config.get("method") or {}).get("_target_", "?")
        raise CheckpointError(
            f"weights={path} holds weights of method {meta.get('method')} ({theirs}) but this run builds {this} "
            f"({ours}); pass the method the checkpoint was written with, or weights of a {this} run"
        )
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as e:
        diffs = _config_differences(saved_cfg, run_config, ("model", "method", "memory_branch",
                                                             "dataset.feature_dim", "dataset.num_classes"))
        detail = "; settings that differ (checkpoint vs this run): " + ", ".join(diffs[:8]) if diffs else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"weights={path}: its {this} network does not fit this run's ({first[:200]}){detail}; evaluate it with "
            "the config it was trained with (its run folder's config.yaml)"
        ) from None
    method.load_extra_state(state.get("method_extra", {}))


def _config_differences(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                out.update(flat(v, f"{prefix}.{k}"))
            return out
        return {prefix: node}

    def get(cfg: dict[str, Any], dotted: str) -> Any:
        node: Any = cfg
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    out = []
    for key in keys:
        fa, fb = flat(get(a, key), key), flat(get(b, key), key)
        for k in sorted(set(fa) | set(fb)):
            if fa.get(k) != fb.get(k):
                out.append(f"{k}={fa.get(k)!r} vs {fb.get(k)!r}")
    return out


def _memory_branch(cfg: DictConfig) -> Any:
    """The memory branch partial for methods that can carry one (``memory_branch=rmgcl``)."""
    target = cfg.method.get("_target_")
    if target is None or "memory_branch" not in inspect.signature(get_object(target)).parameters:
        raise ValueError(
            f"memory_branch={cfg.memory_branch.get('_target_')} was given but method {target} cannot carry a "
            "memory branch; methods that can: method=rmgcl, method=case (or drop memory_branch=...)"
        )
    return _instantiate(cfg.memory_branch, "memory_branch", _partial_=True)


def _dataset_preset(dataset: Any, paradigm: str) -> str:
    """The evaluation preset the dataset names (``dataset.evaluation_preset``) for ``paradigm``."""
    try:
        return resolve_preset(getattr(dataset, "evaluation_preset", None), paradigm, f"dataset {dataset.name!r}")
    except EvaluationError as e:
        raise ConfigError(str(e)) from None
