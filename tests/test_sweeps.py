"""Hydra multiruns through tools/run.py: basic and joblib launchers, the summary table, experiments."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from methods_table import METHODS, overrides
from taltoolkit.engine.sweep import format_summary, summarize_runs

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "dataset.num_train=16", "dataset.num_test=8", "dataset.num_classes=4", "dataset.feature_dim=16",
    "dataset.max_steps=48", "dataset.num_segments=32", "dataset.max_seq_len=48",
    "trainer.max_epochs=1", "trainer.batch_size=8", "trainer.progress=false", "trainer.device=cpu",
]


def _multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TALTOOLKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "run.py"), "-m", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}",
         *overrides],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )


def _check_summary(tmp_path: Path, out: subprocess.CompletedProcess, settings: int, seeds: int) -> list[dict]:
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "sweep"
    rows = json.loads((sweep / "summary.json").read_text())
    assert len(rows) == settings and all(r["n"] == seeds for r in rows)
    with open(sweep / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == settings
    assert "Sweep summary" in out.stdout
    for r in rows:  # the mean is the mean of the runs' own numbers
        runs = [json.loads((Path(d) / "metrics.json").read_text())["average_mAP"] for d in r["runs"]]
        assert r["average_mAP"] == pytest.approx(sum(runs) / len(runs))
    return rows


def test_basic_launcher_sweep_over_seeds_and_a_switch(tmp_path):
    out = _multirun(tmp_path, "method=case", "seed=0,1", "method.test_foreground=attention,fused")
    rows = _check_summary(tmp_path, out, settings=2, seeds=2)
    assert sorted(r["setting"] for r in rows) == ["method.test_foreground=attention", "method.test_foreground=fused"]


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    out = _multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=case", "seed=0,1")
    _check_summary(tmp_path, out, settings=1, seeds=2)
    logs = sorted((tmp_path / "sweep").glob("*/run.log"))
    assert len(logs) == 2 and all("torch threads: " in p.read_text() for p in logs)


def test_submitit_local_launcher_and_the_slurm_config(tmp_path, compose):
    # submitit's local executor runs the same code path as SLURM jobs (pickled job, own process).
    out = _multirun(tmp_path, "hydra/launcher=submitit_local", "method=case", "seed=0,1")
    _check_summary(tmp_path, out, settings=1, seeds=2)
    cfg = compose(["method=case", "hydra/launcher=slurm"])  # composes without a cluster
    assert cfg.method._target_.endswith("CASE")
    out = subprocess.run([sys.executable, str(REPO / "tools" / "run.py"), "hydra/launcher=slurm", "method=case",
                          "--cfg", "hydra"], capture_output=True, text=True, timeout=120)
    assert "SlurmLauncher" in out.stdout and "gpus_per_node: 1" in out.stdout


def test_experiment_config_is_a_ready_sweep(tmp_path):
    out = _multirun(tmp_path, "experiment=rmgcl_ablation", "seed=0",  # the command line replaces the experiment's seeds
                    "++memory_branch.warmup_epochs=0", "++memory_branch.queue_length=8", "++memory_branch.num_codewords=2",
                    "++memory_branch.num_heads=2", "model.hidden_dim=16")
    rows = _check_summary(tmp_path, out, settings=3, seeds=1)
    assert {r["setting"] for r in rows} == {"memory_branch=none", "memory_branch=rmgcl", "memory_branch=rmgcl_empty_memory"}


def test_summary_of_hand_made_runs(tmp_path):
    for i, (setting, seed, avg) in enumerate([("a=1", 0, 10.0), ("a=1", 1, 20.0), ("a=2", 0, 5.0)]):
        job = tmp_path / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- {setting}\n- seed={seed}\n")
        (job / "metrics.json").write_text(json.dumps(
            {"average_mAP": avg, "mAP": [avg + 1, avg - 1], "tiou_thresholds": [0.3, 0.5], "seed": seed}))
    rows = summarize_runs(tmp_path)
    assert [r["setting"] for r in rows] == ["a=1", "a=2"]
    a1 = next(r for r in rows if r["setting"] == "a=1")
    assert a1["n"] == 2 and a1["average_mAP"] == 15.0 and a1["average_mAP_std"] == pytest.approx(7.0710678)
    assert a1["mAP@0.3"] == 16.0 and a1["mAP@0.5"] == 14.0
    assert "a=2" in format_summary(rows) and (tmp_path / "summary.csv").is_file()


@pytest.mark.parametrize("name,keys", [
    ("case_table6", {"method.test_foreground", "seed"}),
    ("case_ablation", {"ablation", "seed"}),
    ("rmgcl_ablation", {"memory_branch", "seed"}),
    ("apl_label_fractions", {"ablation", "labelled_fraction", "seed"}),
    ("apl_table2", {"ablation", "seed"}),
    ("copl_fig4", {"ablation", "seed"}),
])
def test_every_experiment_composes_for_each_sweep_point(compose, name, keys):
    """Each ready sweep composes, and every point of its grid composes too (as Hydra would launch it)."""
    import itertools

    cfg = compose([f"experiment={name}"])
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()} if "hydra" in cfg else None
    if params is None:  # compose() drops the hydra node: read the file instead
        from omegaconf import OmegaConf

        raw = OmegaConf.load(REPO / "conf" / "experiment" / f"{name}.yaml")
        params = {k: str(v).split(",") for k, v in raw.hydra.sweeper.params.items()}
    assert set(params) == keys
    for point in itertools.product(*[[f"{k}={v}" for v in vals] for k, vals in params.items()]):
        compose([f"experiment={name}", *point])


@pytest.mark.parametrize("line,expected", [
    ("copl_baseline", ("none", False, False)),
    ("copl_has", ("both", True, False)),
    ("copl_plri", ("none", False, True)),
    ("copl_full", ("both", True, True)),
])
def test_copl_fig4_lines_set_the_components(compose, line, expected):
    m = compose(["method=copl", f"ablation={line}"]).method
    assert (m.has_branch, m.use_vote, m.use_plri) == expected


@pytest.mark.parametrize("line,expected", [
    ("apl_labelled_only", (0, False, False, False, False)),
    ("apl_baseline", (1, False, False, False, False)),
    ("apl_alqa", (1, True, True, False, False)),
    ("apl_alqa_icd", (1, True, True, True, False)),
    ("apl_full", (1, True, True, True, True)),
])
def test_apl_table2_lines_set_the_components(compose, line, expected):
    cfg = compose(["method=apl", f"ablation={line}"])
    m = cfg.method
    assert (m.rounds, m.use_alqa, cfg.model.quality_heads, m.use_icd, m.use_acp) == expected
    assert m.selection == ("fixed" if line == "apl_baseline" else "adaptive")


@pytest.mark.parametrize("line,expected", [
    ("case_baseline", (False, False, "attention")),
    ("case_scc", (True, False, "attention")),
    ("case_scc_ccc", (True, True, "attention")),
    ("case_full", (True, True, "fused")),
])
def test_case_table3_lines_set_the_components(compose, line, expected):
    m = compose(["method=case", f"ablation={line}"]).method
    assert (m.use_scc, m.use_ccc, m.test_foreground) == expected
    assert compose(["method=case", f"ablation={line}", "method.use_ccc=false"]).method.use_ccc is False  # CLI wins


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_as_a_seed_sweep(tmp_path, method):
    out = _multirun(tmp_path, "seed=0,1", *overrides(method))
    rows = _check_summary(tmp_path, out, settings=1, seeds=2)
    assert sorted(rows[0]["seeds"]) == [0, 1]


def test_summary_files_are_written_atomically(tmp_path, monkeypatch):
    """A summary re-written while someone reads it (or a crash mid-write) never leaves a
    half-written file: the new text goes to a temporary sibling that is renamed over it."""

    for i, avg in enumerate([10.0, 20.0]):
        job = tmp_path / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={i}\n")
        (job / "metrics.json").write_text(json.dumps({"average_mAP": avg, "mAP": [avg], "tiou_thresholds": [0.5]}))
    old = os.umask(0o027)
    try:
        summarize_runs(tmp_path)
    finally:
        os.umask(old)
    before = {n: (tmp_path / n).read_bytes() for n in ("summary.json", "summary.csv")}
    assert {(tmp_path / n).stat().st_mode & 0o777 for n in before} == {0o640}
    (tmp_path / "1" / "metrics.json").write_text(json.dumps({"average_mAP": 30.0, "mAP": [30.0], "tiou_thresholds": [0.5]}))

    def crash(src, dst):
        raise OSError("disk full")

    import taltoolkit.atomicio as atomicio  # the one atomic writer every output goes through

    monkeypatch.setattr(atomicio.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        summarize_runs(tmp_path)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before  # the previous summary, whole
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
