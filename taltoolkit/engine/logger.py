"""Run scalars: ``RunLogger.log(data, step)`` keeps every scalar in the run directory and
forwards it to TensorBoard and/or wandb.

What goes where (the ``logger`` config group, ``conf/logger/*.yaml``):

- always, on the main rank: ``<run>/scalars.jsonl``, one JSON line per ``log`` call,
  ``{"step": int, "time": unix seconds, "values": {tag: float or null}}`` (null: a value that
  was NaN or infinite), appended as it is logged. Plots and ``report.html`` draw training
  curves from it without TensorBoard; :func:`read_scalars` reads it back.
- ``logger=tensorboard``: event files under ``<run>/tensorboard/``
  (``tensorboard --logdir <run>/tensorboard``).
- ``logger=wandb``: a wandb run under ``<run>/wandb/``, offline unless ``logger.mode=online``.
- ``logger=all``: TensorBoard and wandb together.

Tags are ``group/name`` (``train/loss``, ``train/lr``, ``epoch/seconds``, ``eval/mAP@0.50``);
``step`` is the global optimizer step and must not decrease within a run (wandb drops
earlier steps; the same values stay in scalars.jsonl and TensorBoard). ``step=None`` means
"the last step logged". Only the main process of a torchrun job logs.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("taltoolkit")

SCALARS_FILE = "scalars.jsonl"
TENSORBOARD_DIR = "tensorboard"

__all__ = ["RunLogger", "SCALARS_FILE", "TENSORBOARD_DIR", "read_scalars", "scalar_value"]


class RunLogger:
    """Fans each ``log(data, step)`` call out to scalars.jsonl, TensorBoard and wandb.

    ``RunLogger()`` logs nothing (other ranks, tests); :meth:`from_config` builds the run's.
    """

    def __init__(
        self,
        run: Any = None,
        *,
        scalars_path: Path | None = None,
        tensorboard_dir: Path | None = None,
        flush_secs: float = 10.0,
        resuming: bool = False,
    ) -> None:
        self.run = run  # a wandb run, or None
        self.scalars_path = scalars_path
        self.tensorboard_dir = tensorboard_dir
        self.flush_secs = flush_secs
        self.resuming = resuming
        self._writer: Any = None  # torch SummaryWriter, opened at the first log
        self._last_step: int | None = None
        self._wandb_step: int | None = None
        self._warned_wandb_step = False

    @classmethod
    def from_config(cls, cfg: DictConfig | None, out_dir: Path, full_cfg: DictConfig) -> "RunLogger":
        """The run's logger: ``cfg`` is the ``logger`` node, ``full_cfg`` the whole run config
        (sent to wandb as the run's config; ``trainer.resume`` says whether the run continues
        an earlier one in ``out_dir``, whose scalars are then kept and appended to)."""
        from taltoolkit.engine import distributed as dist_utils

        if not dist_utils.is_main():
            return cls(None)
        cfg = cfg if cfg is not None else OmegaConf.create({})
        out_dir = Path(out_dir)
        trainer = full_cfg.get("trainer") if full_cfg is not None else None
        resuming = bool(trainer.get("resume")) if trainer is not None else False
        use_tb, use_wandb = bool(cfg.get("tensorboard", False)), bool(cfg.get("wandb", False))
        if use_tb:
            _require_tensorboard()  # before training: a missing package must not cost a run
        scalars_path = out_dir / SCALARS_FILE
        tb_dir = out_dir / TENSORBOARD_DIR if use_tb else None
        if not resuming:
            # A fresh run in a folder that held a failed or overwritten one: its curves would
            # mix with this run's (claim_output_dir has already refused a finished run's folder).
            if scalars_path.exists():
                scalars_path.unlink()
            if (out_dir / TENSORBOARD_DIR).is_dir():
                shutil.rmtree(out_dir / TENSORBOARD_DIR)
        run = _wandb_run(cfg, out_dir, full_cfg) if use_wandb else None
        if tb_dir is not None:
            log.info("TensorBoard event files in %s (tensorboard --logdir %s)", tb_dir, tb_dir)
        return cls(run, scalars_path=scalars_path, tensorboard_dir=tb_dir,
                   flush_secs=float(cfg.get("flush_secs", 10.0)), resuming=resuming)

    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalars (floats, ints, numpy or one-element torch values) under their tags;
        other values are skipped."""
        values = {str(k): v for k, v in ((k, scalar_value(v)) for k, v in data.items()) if v is not None}
        if step is None:
            step = self._last_step if self._last_step is not None else 0
        step = int(step)
        self._last_step = step if self._last_step is None else max(self._last_step, step)
        if not values:
            return
        now = time.time()
        if self.scalars_path is not None:
            line = json.dumps({"step": step, "time": round(now, 3),
                               "values": {k: (v if math.isfinite(v) else None) for k, v in values.items()}})
            self.scalars_path.parent.mkdir(parents=True, exist_ok=True)
            # Appended and closed per call: a crash loses at most the line being written, and
            # a reader (plots of a run still training) sees every completed line.
            with open(self.scalars_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        if self.tensorboard_dir is not None:
            writer = self._tensorboard_writer(step)
            for tag, v in values.items():
                writer.add_scalar(tag, v, global_step=step, walltime=now)
        if self.run is not None:
            self._log_wandb(values, step)

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.run is not None:
            self.run.finish()
            self.run = None

    def _tensorboard_writer(self, first_step: int) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # Resuming: TensorBoard drops the earlier run's events from this step on, which the
            # resumed run logs again (scalars.jsonl readers keep the last value per step).
            purge = first_step if self.resuming else None
            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=purge,
                                         flush_secs=int(max(1, self.flush_secs)))
        return self._writer

    def _log_wandb(self, values: dict[str, float], step: int) -> None:
        if self._wandb_step is not None and step < self._wandb_step:
            if not self._warned_wandb_step:
                log.warning("wandb: step %d after step %d is not sent to wandb (wandb steps must not decrease); "
                            "it stays in scalars.jsonl and TensorBoard", step, self._wandb_step)
                self._warned_wandb_step = True
            return
        self._wandb_step = step
        self.run.log(values, step=step)


def scalar_value(v: Any) -> float | None:
    """``v`` as a float when it is one number (bool, int, float, numpy scalar or one-element
    array/tensor); None otherwise (strings, lists, None)."""
    if v is None or isinstance(v, (str, bytes)):
        return None
    if isinstance(v, (bool, int, float)):
        return float(v)
    size = getattr(v, "size", None)
    numel = getattr(v, "numel", None)
    n = numel() if callable(numel) else size
    if n == 1 and hasattr(v, "item"):
        try:
            return float(v.item())
        except (TypeError, ValueError):
            return None
    return None


def read_scalars(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` sorted by step from a scalars.jsonl (or the run folder holding it).

    A step logged twice (a resumed run repeats the steps after its checkpoint) keeps its last
    value; NaN/inf were written as null and come back as NaN; a truncated last line (a run
    killed while writing) is skipped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SCALARS_FILE
    by_tag: dict[str, dict[int, float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = int(rec.get("step", 0))
            for tag, v in (rec.get("values") or {}).items():
                by_tag.setdefault(tag, {})[step] = float("nan") if v is None else float(v)
    return {tag: sorted(steps.items()) for tag, steps in by_tag.items()}


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs the package
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        from taltoolkit.data.errors import ConfigError

        raise ConfigError('logger=tensorboard needs the tensorboard package: pip install "taltoolkit[tensorboard]" '
                          "(or pip install tensorboard), or use logger=none (scalars.jsonl is written either way)"
                          ) from None


def _wandb_run(cfg: DictConfig, out_dir: Path, full_cfg: DictConfig) -> Any:
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is the optional extra taltoolkit[wandb]
        from taltoolkit.data.errors import ConfigError

        raise ConfigError('logger=wandb needs the wandb package: pip install "taltoolkit[wandb]" (or wandb), '
                          "or use logger=none") from None
    mode = cfg.get("mode", "offline")  # offline unless the user asks for online
    run = wandb.init(
        project=cfg.get("project", "taltoolkit"),
        mode=mode,
        dir=str(out_dir),
        config=OmegaConf.to_container(full_cfg, resolve=True),  # type: ignore[arg-type]
        name=cfg.get("name"),
    )
    where = getattr(run, "dir", None) or out_dir
    log.info("wandb run %s (mode=%s) in %s%s", run.id, mode, where,
             f" (upload it later: wandb sync {Path(where).parent})" if mode == "offline" else "")
    return run
