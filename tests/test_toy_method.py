"""The sixth method, added from outside the package by following docs/architecture.md
(tests/toyplugin): its loss, the registry's checks, and one epoch end to end."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import taltoolkit
from taltoolkit.registry import list_components
from test_registry import check_component_has_conf, check_conf_target, conf_targets
from toyplugin import ToyCAS, ToyMIL, cas_smoothness

PLUGIN_CONF = Path(__file__).resolve().parent / "toyplugin" / "conf"
SEARCHPATH = f"hydra.searchpath=[file://{PLUGIN_CONF}]"


def test_cas_smoothness_by_hand():
    cas = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.5, 0.5]]])  # (1, 4, 2)
    mask = torch.tensor([[True, True, True, False]])
    # Real pairs (0, 1) and (1, 2): mean over classes of the squared change is 1 and 0.
    assert float(cas_smoothness(cas, mask)) == pytest.approx(0.5)
    assert float(cas_smoothness(cas, torch.zeros(1, 4, dtype=torch.bool))) == 0.0


def test_the_toy_method_passes_the_registry_checks():
    plugin = [c for c in list_components() if c.target.startswith("toyplugin.")]
    assert {(c.kind, c.name) for c in plugin} == {("backbone", "toy_cas"), ("method", "toy_mil")}
    assert {c.obj for c in plugin} == {ToyCAS, ToyMIL}
    targets = conf_targets(PLUGIN_CONF)
    assert len(targets) == 2
    for component in plugin:
        check_component_has_conf(component, targets)
    for where, target, node in targets:
        check_conf_target(where, target, node, list_components(), package="toyplugin.")


def test_the_toy_method_trains_end_to_end_for_one_epoch(compose, tiny_overrides, tmp_path):
    from taltoolkit.engine.logger import read_scalars

    cfg = compose([SEARCHPATH, "method=toy_mil", "trainer.max_epochs=1", *tiny_overrides])
    assert cfg.method._target_ == "toyplugin.ToyMIL" and cfg.model._target_ == "toyplugin.ToyCAS"
    metrics = taltoolkit.run(cfg)
    assert metrics["method"] == "ToyMIL" and metrics["preset"] == "thumos14_weak"  # the dataset's preset, weak
    (row,) = metrics["history"]
    assert {"loss", "loss_mil", "loss_smooth", "cas_max"} <= set(row) and math.isfinite(row["loss"])
    assert 0.0 <= metrics["average_mAP"] <= 100.0 and len(metrics["mAP"]) == 7
    run = tmp_path / "run"
    assert (run / "checkpoints" / "inference.pt").is_file() and (run / "predictions.json").is_file()
    scalars = read_scalars(run / "scalars.jsonl")
    assert len(scalars["train/loss_mil"]) == 3 and "epoch/cas_max" in scalars
