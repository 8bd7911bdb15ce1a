"""Two CPU processes (gloo) under torchrun give the run a single process gives."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _torchrun(nproc: int, overrides: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun") or None
    cmd = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--standalone", f"--nproc_per_node={nproc}", str(REPO / "tools" / "run.py"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("variant", ["baseline", "case"])
def test_two_process_case_matches_single_process(tmp_path, variant):
    from conftest import TINY_SYNTHETIC

    common = [
        "method=case", *TINY_SYNTHETIC, f"dataset.cache_dir={tmp_path / 'cache'}", "trainer.device=cpu",
        "trainer.progress=false", "trainer.max_epochs=3", "trainer.batch_size=8", "trainer.lr=1e-3",
    ]
    if variant == "baseline":
        common += ["method.use_scc=false", "method.use_ccc=false", "method.test_foreground=attention"]
    env = {"TALTOOLKIT_CACHE": str(tmp_path / "cache")}
    one = _torchrun(1, [*common, f"output_dir={tmp_path / 'one'}"], env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(2, [*common, f"output_dir={tmp_path / 'two'}"], env)
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["world_size"] == 2 and m1["world_size"] == 1
    # Same global batches: the per-epoch losses agree. They are not bit-identical because
    # per-rank batch statistics (the GCE's positive/negative counts, CCC's prototypes) are
    # computed on each rank's half of the batch.
    for a, b in zip(m1["history"], m2["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3 if variant == "baseline" else 5e-3), (a, b)
    assert m2["average_mAP"] == pytest.approx(m1["average_mAP"], abs=5.0)


def test_two_process_rmgcl_matches_single_process(tmp_path):
    """The memory bank gathers every rank's regional features, so both runs build the same memory."""
    from conftest import TINY_SYNTHETIC

    common = [
        "method=rmgcl", *TINY_SYNTHETIC, f"dataset.cache_dir={tmp_path / 'cache'}", "trainer.device=cpu",
        "trainer.progress=false", "trainer.max_epochs=3", "trainer.batch_size=8", "trainer.lr=1e-3",
        "model.dropout=0", "model.hidden_dim=32", "memory_branch.dropout=0", "memory_branch.warmup_epochs=1",
        "memory_branch.queue_length=16", "memory_branch.num_codewords=4", "memory_branch.num_heads=2",
        "memory_branch.zeta=0.0",
    ]
    env = {"TALTOOLKIT_CACHE": str(tmp_path / "cache")}
    one = _torchrun(1, [*common, f"output_dir={tmp_path / 'one'}"], env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(2, [*common, f"output_dir={tmp_path / 'two'}"], env)
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["world_size"] == 2
    assert m1["history"][-1]["loss_ncl"] > 0  # the memory was used
    for a, b in zip(m1["history"], m2["history"]):
        for key in ("loss_ins", "loss_con", "loss_back", "loss_pseudo", "loss_ncl"):
            assert b[key] == pytest.approx(a[key], rel=2e-2, abs=1e-6), (key, a, b)
    c1 = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    c2 = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    assert torch.equal(c1["memory.memory_count"], c2["memory.memory_count"])
    # Same slots filled in the same order; values differ only as far as the weights do.
    torch.testing.assert_close(c1["memory.memory"], c2["memory.memory"], rtol=5e-2, atol=2e-3)
