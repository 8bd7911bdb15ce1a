"""The training loop: determinism, resume equality, atomic checkpoints, batch sharding."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from functools import partial

from taltoolkit.engine.checkpoint import atomic_write_bytes, load_checkpoint
from taltoolkit.engine.method import Method, Stage
from taltoolkit.engine.schedules import per_step_schedule
from taltoolkit.engine.trainer import GlobalBatchSampler, TrainData, Trainer, seed_everything


class ToyData(torch.utils.data.Dataset):
    """Items whose noise depends on (seed, epoch, index), like the real samplers."""

    def __init__(self, n: int = 24, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch * 100 + i)
        return {"x": self.x[i] + 0.1 * torch.randn(8, generator=g), "y": self.y[i], "index": i}


def collate(items):
    return {
        "x": torch.stack([it["x"] for it in items]),
        "y": torch.stack([it["y"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }


class ToyMethod(Method):
    """Two stages, dropout (uses the global RNG), a buffer updated each step, extra state."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
        self.register_buffer("running", torch.zeros(2))
        self.stage_starts: list[str] = []
        self.pseudo = 0

    def stages(self):
        return [Stage("warmup", epochs=2), Stage("main", epochs=3, options={"lr": 5e-3})]

    def on_stage_start(self, stage, context):
        self.stage_starts.append(stage.name)
        if not context.resumed:
            self.pseudo += 1

    def training_step(self, batch):
        logits = self.net(batch["x"])
        loss = nn.functional.cross_entropy(logits, batch["y"])
        with torch.no_grad():
            self.running.mul_(0.9).add_(0.1 * logits.softmax(-1).mean(0))
        return {"loss": loss}

    def extra_state(self):
        return {"pseudo": self.pseudo}

    def load_extra_state(self, state):
        self.pseudo = state["pseudo"]


def toy_data(reference=None) -> TrainData:
    return TrainData(list(range(24)), lambda videos, seed: (ToyData(len(videos), seed), collate),
                     reference=reference or {})


def _fit(tmp: Path, **trainer_kw):
    seed_everything(0)
    method = ToyMethod()
    trainer = Trainer(batch_size=8, lr=1e-2, device="cpu", progress=False,
                      scheduler=partial(per_step_schedule, decay="cosine"), **trainer_kw)
    result = trainer.fit(method, toy_data(), tmp)
    return method, result


def _state(m: nn.Module):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_deterministic_on_cpu(tmp_path):
    a, _ = _fit(tmp_path / "a")
    b, _ = _fit(tmp_path / "b")
    for k, v in _state(a).items():
        assert torch.equal(v, _state(b)[k]), k


@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_resume_equals_uninterrupted(tmp_path, stop_after):
    full, full_res = _fit(tmp_path / "full")
    part, part_res = _fit(tmp_path / "part", stop_after_epochs=stop_after)
    assert part_res.selected["weights"] == "interrupted"
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    resumed, res = _fit(tmp_path / "resumed", resume=str(ckpt))
    for k, v in _state(full).items():
        assert torch.equal(v, _state(resumed)[k]), f"{k} differs after resuming at epoch {stop_after}"
    assert resumed.pseudo == full.pseudo == 2  # stage-start state is restored, not recomputed
    assert [r["loss"] for r in res.history] == pytest.approx([r["loss"] for r in full_res.history], abs=0)
    assert len(res.history) == 5


def test_checkpoint_contents(tmp_path):
    _fit(tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert {"method", "optimizer", "scheduler", "rng", "stage_index", "epoch", "method_extra"} <= set(state)
    assert state["stage_index"] == 2 and state["epoch"] == 0  # past the last stage
    assert "running" in state["method"]


def test_missing_checkpoint_names_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainer.resume"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.ckpt"

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(target, boom)
    assert not target.exists()
    assert os.listdir(tmp_path) == []
    atomic_write_bytes(target, lambda f: f.write(b"ok"))
    assert target.read_bytes() == b"ok"


def test_failed_overwrite_keeps_previous_file(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_bytes(target, lambda f: f.write(b"old"))
    with pytest.raises(ValueError):
        atomic_write_bytes(target, lambda f: (f.write(b"new-partial"), (_ for _ in ()).throw(ValueError("x"))))
    assert target.read_bytes() == b"old"


def test_global_batch_sampler_shards_the_same_global_batches():
    single = GlobalBatchSampler(30, 8, shuffle=True, drop_last=True, seed=3)
    single.set_epoch(2)
    global_batches = list(single)
    shards = []
    for r in range(2):
        s = GlobalBatchSampler(30, 8, shuffle=True, drop_last=True, seed=3)
        s.rank, s.world = r, 2
        s.set_epoch(2)
        shards.append(list(s))
    assert len(shards[0]) == len(shards[1]) == len(global_batches) == 3
    for g, a, b in zip(global_batches, *shards):
        assert a + b == g and len(a) == len(b) == 4


def test_bad_trainer_options():
    with pytest.raises(ValueError, match="model_selection"):
        Trainer(model_selection="best")
    with pytest.raises(ValueError, match="trainer.optimizer"):
        Trainer(optimizer="lamb")  # not a partial
    with pytest.raises(ValueError, match="trainer.optimizer.*beta"):
        Trainer(optimizer=partial(torch.optim.Adam, betas=(1.5, 0.999)))
    with pytest.raises(ValueError, match="trainer.scheduler.decay"):
        Trainer(scheduler=partial(per_step_schedule, decay="linear"))


def test_feature_bank_gathers_what_the_loader_would():
    import numpy as np

    from taltoolkit.data.sampling import make_dataset
    from taltoolkit.engine.feature_bank import FeatureBank, PositionsOnly
    from taltoolkit.structures import Video

    rng = np.random.default_rng(0)
    videos = [
        Video(f"v{i}", rng.random((t, 6)).astype(np.float32), duration=t * 0.64, fps=25.0, step_s=0.64,
              video_labels=np.eye(3, dtype=np.float32)[i % 3])
        for i, t in enumerate([5, 12, 9, 30])
    ]
    ds, collate = make_dataset("fixed", videos, training=True, seed=1, num_segments=8)
    bank = FeatureBank(videos, torch.device("cpu"), dtype=torch.float32)
    for sampling in ("fixed", "variable"):
        ds, collate = make_dataset(sampling, videos, training=True, seed=1, num_segments=8, max_seq_len=10)
        ds.set_epoch(3)
        full = collate([ds[i] for i in range(4)])
        light = PositionsOnly(ds)
        light.set_epoch(3)
        lb = collate([light[i] for i in range(4)])
        assert lb["features"].shape[-1] == 0
        got = bank.gather(lb["index"], lb["positions"], lb["mask"])
        assert torch.equal(got, full["features"]), sampling


def test_stage_context_carries_reference_videos(tmp_path):
    seen = []

    class Capture(ToyMethod):
        def on_stage_start(self, stage, context):
            seen.append(dict(context.reference_videos))

    trainer = Trainer(batch_size=8, lr=1e-2, device="cpu", progress=False)
    trainer.fit(Capture(), toy_data(reference={"a": "full-a"}), tmp_path)
    assert seen == [{"a": "full-a"}, {"a": "full-a"}]
