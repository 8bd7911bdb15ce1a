"""Trainer options every method must honour without changing what it learns:
``trainer.features_on_device`` (batches gathered from a feature bank on the training device)
and ``trainer.compile`` (torch.compile of the backbone networks, checkpoint keys unchanged)."""
from __future__ import annotations

import pytest
import torch

import taltoolkit
from test_amp import METHODS


def _pair(compose, tiny_overrides, tmp_path, name: str, option: str, extra: list[str] = ()) -> tuple[dict, dict]:
    runs = []
    for on in (False, True):
        out = tmp_path / f"{option}_{on}"
        overrides = [o.replace(str(tmp_path / "run"), str(out)) for o in tiny_overrides]
        cfg = compose([*METHODS[name], "trainer.max_epochs=2", f"trainer.{option}={str(on).lower()}", *extra,
                       *overrides])
        torch._dynamo.reset()
        runs.append(taltoolkit.run(cfg))
    return runs[0], runs[1]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_features_on_device_trains_like_the_loader(compose, tiny_overrides, name, tmp_path):
    """A float32 bank holds the features the loader reads; only the gathered batch's memory
    layout differs, which moves summation orders (~3e-8 relative observed). (The default
    float16 bank rounds the inputs: ~1e-4 relative in COPL's and APL's losses.)"""
    loader, bank = _pair(compose, tiny_overrides, tmp_path, name, "features_on_device",
                         ["trainer.features_on_device_dtype=float32"])
    for a, b in zip(loader["history"], bank["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
    assert bank["average_mAP"] == pytest.approx(loader["average_mAP"], abs=0.5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_compiled_networks_train_like_eager(compose, tiny_overrides, name, tmp_path):
    # aot_eager runs TorchDynamo's capture and AOTAutograd (graph breaks, guards, dynamic shapes,
    # the compiled backward) without inductor's C++ code generation, which takes ~30 s per
    # network on 2 CPU cores; the inductor test below covers that path for one method.
    eager, compiled = _pair(compose, tiny_overrides, tmp_path, name, "compile", ["trainer.compile_backend=aot_eager"])
    for a, b in zip(eager["history"], compiled["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6), (a, b)
    assert compiled["average_mAP"] == pytest.approx(eager["average_mAP"], abs=0.5)


def test_inductor_compiles_case_and_keeps_checkpoint_keys(compose, tiny_overrides, tmp_path):
    eager, compiled = _pair(compose, tiny_overrides, tmp_path, "case", "compile")  # default backend: inductor
    for a, b in zip(eager["history"], compiled["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    k1 = torch.load(tmp_path / "compile_False" / "checkpoints" / "inference.pt", weights_only=False)["method"]
    k2 = torch.load(tmp_path / "compile_True" / "checkpoints" / "inference.pt", weights_only=False)["method"]
    assert sorted(k1) == sorted(k2) and any(k.startswith("model.") for k in k2)  # no "_orig_mod." prefix
