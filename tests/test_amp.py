"""Every method trains and predicts under bfloat16 autocast (trainer.amp=true; on CPU here, CUDA in use)."""
from __future__ import annotations

import math

import pytest

import taltoolkit
from methods_table import every_run, overrides


@pytest.mark.parametrize("name", every_run())
def test_method_trains_under_bfloat16_autocast(compose, tiny_overrides, name):
    import torch
    from torch import nn
    from torch.nn.modules.module import register_module_forward_hook

    # Record what the training forward passes compute in: finite losses alone would also
    # hold with trainer.amp ignored.
    dtypes: set[torch.dtype] = set()

    def record(module: nn.Module, args, output) -> None:  # noqa: ANN001
        if module.training and isinstance(module, (nn.Linear, nn.Conv1d)) and isinstance(output, torch.Tensor):
            dtypes.add(output.dtype)

    cfg = compose([*overrides(name), "trainer.max_epochs=2", "trainer.amp=true", "trainer.amp_dtype=bfloat16",
                   *tiny_overrides])
    handle = register_module_forward_hook(record)
    try:
        metrics = taltoolkit.run(cfg)
    finally:
        handle.remove()
    assert torch.bfloat16 in dtypes, dtypes  # the layers ran under bfloat16 autocast
    assert metrics["history"]
    assert all(math.isfinite(row["loss"]) for row in metrics["history"])
    assert math.isfinite(metrics["average_mAP"])


def test_float16_on_cpu_is_a_clear_error():
    from taltoolkit.engine.trainer import Trainer

    with pytest.raises(ValueError, match="bfloat16 on CPU"):
        Trainer(device="cpu", amp=True, amp_dtype="float16")
