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


def _torchrun(nproc: int, overrides: list[str], env_extra: dict[str, str],
              script: Path = REPO / "tools" / "run.py") -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun") or None
    cmd = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--standalone", f"--nproc_per_node={nproc}", str(script), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _run_pair(tmp_path: Path, overrides: list[str], script: Path | None = None) -> tuple[dict, dict]:
    """metrics.json of a 1-process and of a 2-process run of the same config (outputs in one/, two/)."""
    from conftest import TINY_SYNTHETIC

    env = {"TALTOOLKIT_CACHE": str(tmp_path / "cache")}
    common = [*TINY_SYNTHETIC, f"dataset.cache_dir={tmp_path / 'cache'}", *overrides]
    out = {}
    for n, name in ((1, "one"), (2, "two")):
        extra = {**env, "DUMP_DIR": str(tmp_path / name / "dump")}
        proc = _torchrun(n, [*common, f"output_dir={tmp_path / name}"], extra, script or REPO / "tools" / "run.py")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert out["one"]["world_size"] == 1 and out["two"]["world_size"] == 2
    return out["one"], out["two"]


@pytest.mark.parametrize("variant", ["baseline", "case", "compiled"])
def test_two_process_case_matches_single_process(tmp_path, variant):
    common = ["method=case", "trainer.device=cpu", "trainer.progress=false", "trainer.max_epochs=3",
              "trainer.batch_size=8", "trainer.lr=1e-3"]
    if variant == "baseline":
        common += ["method.use_scc=false", "method.use_ccc=false", "method.test_foreground=attention"]
    if variant == "compiled":  # torch.compile'd network inside DDP (aot_eager: no C++ code generation)
        common += ["trainer.compile=true", "trainer.compile_backend=aot_eager"]
    m1, m2 = _run_pair(tmp_path, common)
    # Same global batches, and SCC/CCC's batch statistics (Sinkhorn's column sums, the rank
    # prior's ranks, CCC's prototypes and marginal) are taken over the global batch: only
    # float summation orders differ (~1e-7 observed for every loss term).
    assert len(m1["history"]) == len(m2["history"]) > 0  # zip would hide a run that stopped early
    for a, b in zip(m1["history"], m2["history"]):
        for key in [k for k in a if k.startswith("loss")]:
            assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a, b)
    assert m2["average_mAP"] == pytest.approx(m1["average_mAP"], abs=0.05)
    # The evaluation's inference is split over the ranks and gathered on rank 0: every test
    # video is in the predictions, with the single process's detections.
    p1 = json.loads((tmp_path / "one" / "predictions.json").read_text())["results"]
    p2 = json.loads((tmp_path / "two" / "predictions.json").read_text())["results"]
    assert list(p2) == list(p1) and len(p1) == 12
    assert [len(p2[v]) for v in p1] == [len(p1[v]) for v in p1]


def test_case_without_global_batch_statistics_differs(tmp_path):
    """The control for the test above: with ``method.global_batch=false`` each rank's half of
    the batch has its own Sinkhorn, prototypes and ranks, and the full CASE loss moves."""
    from conftest import TINY_SYNTHETIC

    common = [
        "method=case", *TINY_SYNTHETIC, f"dataset.cache_dir={tmp_path / 'cache'}", "trainer.device=cpu",
        "trainer.progress=false", "trainer.max_epochs=1", "trainer.batch_size=8", "trainer.lr=1e-3",
        "trainer.eval_every=0",
    ]
    env = {"TALTOOLKIT_CACHE": str(tmp_path / "cache")}
    losses = {}
    for n, extra in ((1, []), (2, ["method.global_batch=false"])):
        out = tmp_path / f"run{n}"
        proc = _torchrun(n, [*common, *extra, f"output_dir={out}"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses[n] = json.loads((out / "metrics.json").read_text())["history"][0]
    assert losses[2]["loss_v"] == pytest.approx(losses[1]["loss_v"], rel=1e-5)  # per-video terms still agree
    assert abs(losses[2]["loss_c"] - losses[1]["loss_c"]) > 1e-4 * abs(losses[1]["loss_c"])


def test_two_process_rmgcl_matches_single_process(tmp_path):
    """The memory bank gathers every rank's regional features, so both runs build the same memory."""
    m1, m2 = _run_pair(tmp_path, [
        "method=rmgcl", "trainer.device=cpu", "trainer.progress=false", "trainer.max_epochs=3", "trainer.batch_size=8",
        "trainer.lr=1e-3", "model.dropout=0", "model.hidden_dim=32", "memory_branch.dropout=0",
        "memory_branch.warmup_epochs=1", "memory_branch.queue_length=16", "memory_branch.num_codewords=4",
        "memory_branch.num_heads=2", "memory_branch.zeta=0.0",
    ])
    assert m1["history"][-1]["loss_ncl"] > 0  # the memory was used
    assert len(m1["history"]) == len(m2["history"]) > 0  # zip would hide a run that stopped early
    for a, b in zip(m1["history"], m2["history"]):
        # Eq. 9 is averaged over the global batch's anchors (ranks hold different numbers of
        # them): only summation orders differ (~1e-6 observed).
        for key in [k for k in a if k.startswith("loss")]:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)
    c1 = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    c2 = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    assert torch.equal(c1["memory.memory_count"], c2["memory.memory_count"])
    # Same slots filled in the same order with the same features, up to float round-off.
    torch.testing.assert_close(c1["memory.memory"], c2["memory.memory"], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- ActionFormer, APL

AF_TINY = [
    *["model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.window_size=5"],
    # Dropout and drop-path draw from the global RNG, which is seeded alike on every rank: the
    # ranks' halves would get masks other than the single process's masks of the whole batch.
    "model.dropout=0", "model.drop_path=0",
    # Evaluation and pseudo-labelling use the EMA network: with ~10 steps, 0.99 would keep it
    # at its initialisation; 0.5 makes the mAP (and APL's pseudo-labels) reflect training.
    "method.ema_decay=0.5",
    "trainer.progress=false", "trainer.device=cpu", "trainer.batch_size=8",
]


def test_two_process_actionformer_matches_single_process(tmp_path):
    """Random crops are seeded by (seed, epoch, video index), not by rank, so the 2 ranks' crops
    are the single process's; the positive-count normaliser counts the global batch."""
    m1, m2 = _run_pair(tmp_path, [
        "method=actionformer", *AF_TINY, "trainer.max_epochs=4", "trainer.warmup_epochs=1", "trainer.lr=2e-3",
    ])
    assert len(m1["history"]) == len(m2["history"]) == 4
    for a, b in zip(m1["history"], m2["history"]):
        # The normaliser is the same EMA of the global batch's positive count on both runs,
        # so the only differences are float summation orders (the rank halves, DDP's gradient
        # all-reduce), amplified a little by AdamW over 12 steps: ~1e-7 observed.
        assert b["num_pos"] == a["num_pos"], (a, b)
        for key in ("loss", "cls_loss", "reg_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a, b)
    c1 = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    c2 = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=False)["method"]
    assert torch.equal(c1["loss_norm"], c2["loss_norm"])  # the EMA of the global positive counts
    for k in c1:
        # The key projection's bias (and its LayerNorm's) shifts every logit of a query alike,
        # which the softmax ignores: its true gradient is 0, and AdamW turns the round-off left
        # in it into steps of ~lr * |noise| / eps (3e-5 observed). Everything else: ~3e-8.
        gradient_free = ".attn.k.bias" in k or ".attn.k_norm.bias" in k
        torch.testing.assert_close(c2[k], c1[k], rtol=1e-3, atol=1e-3 if gradient_free else 1e-6, msg=k)
    assert m2["average_mAP"] == pytest.approx(m1["average_mAP"], abs=0.05)


_APL_DUMP = '''
"""tools/run.py, and each rank writes the pseudo-labels it trains on to $DUMP_DIR/rank<R>.json."""
import json, os, runpy, sys
from pathlib import Path

from taltoolkit.methods.apl import APL

_start = APL.on_stage_start


def on_stage_start(self, stage, context):
    _start(self, stage, context)
    if stage.options.get("phase") == "semi":
        d = Path(os.environ["DUMP_DIR"])
        d.mkdir(parents=True, exist_ok=True)
        (d / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(self._pseudo, sort_keys=True))


APL.on_stage_start = on_stage_start
sys.argv[0] = RUN_PY
runpy.run_path(RUN_PY, run_name="__main__")
'''

APL_TINY = [
    "method=apl", "labelled_fraction=0.25", *AF_TINY,
    "method.icd_hidden=32", "method.acp_epochs=1", "method.supervised_epochs=2", "method.semi_epochs=2",
    "method.acp_frames=8", "method.tau_neg=0.0",  # a 4-epoch model scores low; keep every prediction in play
]


@pytest.mark.parametrize("variant", ["detector", "full"])
def test_two_process_apl_matches_single_process(tmp_path, variant):
    """Every rank predicts the whole unlabelled list with the same (DDP-synchronised) weights, so
    every rank trains on the same pseudo-labels.

    ``detector`` (ACP and ICD off): ALQA losses, adaptive selection and the semi stage.
    ``full``: also ACP's pre-training and fine-tuning contrasts and ICD's pairs, which are sets
    over the batch: gathered across the ranks, with the random draws keyed by the videos. Both
    match the single process to float tolerance, pseudo-labels included.
    """
    script = tmp_path / "run_dump.py"
    script.write_text(f"RUN_PY = {str(REPO / 'tools' / 'run.py')!r}\n{_APL_DUMP}")
    extra = ["method.use_acp=false", "method.use_icd=false"] if variant == "detector" else []
    m1, m2 = _run_pair(tmp_path, [*APL_TINY, *extra], script)
    ranks = [json.loads((tmp_path / "two" / "dump" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # bit-identical pseudo-labels on both ranks
    assert sum(len(labels) for _, labels in ranks[0].values()) > 0
    stages = [r["stage"] for r in m1["history"]]
    assert stages == [r["stage"] for r in m2["history"]]
    s1 = next(s for s in m1["stage_metrics"] if s["stage"] == "semi")
    s2 = next(s for s in m2["stage_metrics"] if s["stage"] == "semi")
    assert s2["num_final"] == sum(len(labels) for _, labels in ranks[0].values())
    keys = ["loss", "loss_det", "cls_loss", "reg_loss", "locq_loss"]
    if variant == "full":
        assert stages == ["acp_pretrain", "supervised", "supervised", "semi", "semi"]
        assert "loss_icd" in m2["history"][-1] and m2["history"][-1]["pseudo_videos"] > 0
        keys += ["loss_conc", "loss_conf", "loss_icd"]
    else:
        assert stages == ["supervised", "supervised", "semi", "semi"]
    assert len(m1["history"]) == len(m2["history"]) > 0  # zip would hide a run that stopped early
    for a, b in zip(m1["history"], m2["history"]):
        # Global positive counts (labelled and pseudo-labelled apart) normalise both runs
        # alike, so as for ActionFormer only summation order differs (~1e-7 observed).
        if a["stage"] != "acp_pretrain":
            assert (b["num_pos"], b["pseudo_videos"]) == (a["num_pos"], a["pseudo_videos"]), (a, b)
        for key in keys:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a, b)
    # Pseudo-labelling saw the same weights up to ~1e-7: the same selections, the same counts.
    for key in ("num_candidates_nms", "num_positive", "num_candidate", "num_final", "num_eliminated", "num_mined"):
        assert s2[key] == s1[key], key
    assert s2["tau_pos"] == pytest.approx(s1["tau_pos"], rel=1e-4)
    for part in ("before_icd", "pseudo_quality"):
        assert s2[part] == pytest.approx(s1[part], rel=1e-4, abs=1e-6), part
    one = json.loads((tmp_path / "one" / "dump" / "rank0.json").read_text())
    assert one.keys() == ranks[0].keys()
    for name, (segs, labels) in one.items():
        assert ranks[0][name][1] == labels
        torch.testing.assert_close(torch.tensor(ranks[0][name][0]), torch.tensor(segs), rtol=1e-4, atol=1e-4)
    assert m2["average_mAP"] == pytest.approx(m1["average_mAP"], abs=0.05)
