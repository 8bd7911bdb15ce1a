"""Sweeps: one summary table (mean +/- std over seeds) at the end of every Hydra multirun.

``python tools/run.py -m method=case seed=0,1,2 method.use_ccc=true,false`` runs six jobs;
when the last one ends, :class:`SweepSummary` (a Hydra callback, ``conf/config.yaml``) reads
every job's ``metrics.json``, groups the jobs by their overrides without ``seed=``, and writes
``summary.json`` and ``summary.csv`` into the sweep directory and prints the table. The same
function works on any folder of finished runs: ``python -m taltoolkit.engine.sweep DIR``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from taltoolkit.atomicio import atomic_write_text
from taltoolkit.tables import format_table

log = logging.getLogger("taltoolkit")

SEED_KEYS = ("seed",)


def _job_overrides(job_dir: Path) -> list[str]:
    f = job_dir / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return []
    return [str(o) for o in OmegaConf.load(f)]


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    # Sample standard deviation (ddof = 1), the convention of papers' "mean +/- std over seeds".
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarize_runs(sweep_dir: str | Path, write: bool = True) -> list[dict[str, Any]]:
    """Group finished runs under ``sweep_dir`` by their overrides (seed excluded) -> rows of mean/std.

    Each row: ``setting`` (the overrides, seed removed), ``n`` (runs), ``seeds``,
    ``average_mAP`` / ``average_mAP_std``, and ``mAP@t`` / ``mAP@t_std`` for every tIoU
    threshold the runs share (percent, as metrics.json stores them). Runs that did not finish
    (no metrics.json, or an interrupted run) are listed in the log and left out.
    """
    sweep_dir = Path(sweep_dir)
    jobs = []
    for metrics_file in sorted(sweep_dir.rglob("metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        if "average_mAP" not in metrics:
            log.warning("sweep summary: %s has no average_mAP; left out", metrics_file)
            continue
        jobs.append((metrics_file.parent, metrics, _job_overrides(metrics_file.parent)))
    # A setting is what varies between jobs: overrides shared by every job (the sweep's fixed
    # arguments) and the seed are left out of its name.
    common = set.intersection(*(set(o) for _, _, o in jobs)) if jobs else set()
    groups: dict[str, list[dict[str, Any]]] = {}
    for job, metrics, overrides in jobs:
        setting = " ".join(
            o for o in overrides if o not in common and o.split("=", 1)[0].lstrip("+~") not in SEED_KEYS
        )
        groups.setdefault(setting, []).append({"metrics": metrics, "seed": metrics.get("seed"), "dir": str(job)})
    rows = []
    for setting, runs in sorted(groups.items()):
        row: dict[str, Any] = {"setting": setting or "(all runs)", "n": len(runs),
                               "seeds": [r["seed"] for r in runs]}
        row["average_mAP"], row["average_mAP_std"] = _mean_std([float(r["metrics"]["average_mAP"]) for r in runs])
        shared = set.intersection(*(set(map(str, r["metrics"].get("tiou_thresholds", []))) for r in runs))
        for t in runs[0]["metrics"].get("tiou_thresholds", []):
            if str(t) not in shared:
                continue
            vals = [float(r["metrics"]["mAP"][r["metrics"]["tiou_thresholds"].index(t)]) for r in runs]
            row[f"mAP@{t:g}"], row[f"mAP@{t:g}_std"] = _mean_std(vals)
        row["runs"] = [r["dir"] for r in runs]
        rows.append(row)
    if write and rows:
        atomic_write_text(sweep_dir / "summary.json", json.dumps(rows, indent=2))
        columns = [k for k in rows[0] if k != "runs"]
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (" ".join(map(str, r[k])) if isinstance(r.get(k), list) else r.get(k)) for k in columns})
        atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The summary as a fixed-width table: one line per setting, mean +/- std of the average mAP."""
    if not rows:
        return "(no finished runs)"
    body = [[r["setting"], r["n"], f"{r['average_mAP']:.2f} ± {r['average_mAP_std']:.2f}"] for r in rows]
    return format_table(["setting", "n", "avg mAP %"], body, align="<>>")


def pin_job_resources(cfg: Any) -> None:
    """Give each job of a parallel local sweep its own share of the machine.

    Under ``hydra/launcher=joblib`` with ``n_jobs`` parallel jobs, each job gets
    ``cores // n_jobs`` torch threads (``threads=N`` overrides; it also applies to single
    runs) and, with ``trainer.device=auto`` on a machine with several GPUs, GPU
    ``job.num % count``. Outside Hydra (tests, notebooks) only ``threads`` applies.
    """
    import torch  # here, not at the top: summarising a sweep (the callback, python -m ...) needs no torch

    threads = cfg.get("threads")
    launcher_jobs = None
    try:
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN and "joblib" in str(hc.launcher.get("_target_", "")):
            n = hc.launcher.get("n_jobs") or -1
            launcher_jobs = (os.cpu_count() or 1) if n < 0 else int(n)
            job_num = int(hc.job.num)
            if torch.cuda.is_available() and torch.cuda.device_count() > 1 and cfg.trainer.device == "auto":
                cfg.trainer.device = f"cuda:{job_num % torch.cuda.device_count()}"
    except ValueError:  # HydraConfig not set: not launched by Hydra
        pass
    if threads is None and launcher_jobs:
        threads = max(1, (os.cpu_count() or 1) // launcher_jobs)
    if threads:
        torch.set_num_threads(int(threads))
        log.info("torch threads: %d", int(threads))


class SweepSummary(Callback):  # type: ignore[misc,valid-type]
    """Hydra callback: summarise the sweep directory when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarize_runs(sweep_dir)
        print(f"\nSweep summary ({sweep_dir}):\n{format_summary(rows)}\n"
              f"written: {sweep_dir / 'summary.csv'}, {sweep_dir / 'summary.json'}")


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 2:
        sys.exit("usage: python -m taltoolkit.engine.sweep SWEEP_DIR")
    print(format_summary(summarize_runs(sys.argv[1])))
