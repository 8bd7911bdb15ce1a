"""Every method trains and predicts under bfloat16 autocast (trainer.amp=true; on CPU here, CUDA in use)."""
from __future__ import annotations

import math

import pytest

import taltoolkit

ACTIONFORMER_TINY = ["model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.window_size=5"]
METHODS = {
    "case": ["method=case"],
    "case+memory": ["method=case", "memory_branch=rmgcl", "memory_branch.warmup_epochs=1", "memory_branch.zeta=0.0",
                    "memory_branch.queue_length=16", "memory_branch.num_codewords=4", "memory_branch.num_heads=4"],
    "rmgcl": ["method=rmgcl", "memory_branch.warmup_epochs=1", "memory_branch.zeta=0.0", "memory_branch.queue_length=16",
              "memory_branch.num_codewords=4", "memory_branch.num_heads=2", "model.hidden_dim=32"],
    "copl": ["method=copl", "method.iterations=2", "method.shift_channels=8", "model.hidden_dim=16"],
    "copl_weak": ["method=copl_weak", "method.shift_channels=8", "model.hidden_dim=16"],
    "actionformer": ["method=actionformer", *ACTIONFORMER_TINY],
    "apl": ["method=apl", "labelled_fraction=0.25", *ACTIONFORMER_TINY, "method.icd_hidden=32", "method.acp_epochs=1",
            "method.supervised_epochs=1", "method.semi_epochs=1", "method.acp_frames=8", "method.tau_neg=0.0"],
}


@pytest.mark.parametrize("name", sorted(METHODS))
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

    cfg = compose([*METHODS[name], "trainer.max_epochs=2", "trainer.amp=true", "trainer.amp_dtype=bfloat16",
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
