"""Every method config (conf/method/*.yaml) and the overrides that make it a seconds-long run
on tiny synthetic data (conftest.TINY_SYNTHETIC, test_sweeps.TINY): the one table the per-method
tests share. A new method gets a line here, and every test parametrized over the table covers it."""
from __future__ import annotations

ACTIONFORMER_TINY = ["model.embed_dim=16", "model.fpn_dim=16", "model.head_dim=16", "model.window_size=5"]

METHODS: dict[str, list[str]] = {
    "case": [],
    "rmgcl": ["memory_branch.warmup_epochs=0", "memory_branch.queue_length=8", "memory_branch.num_codewords=4",
              "memory_branch.num_heads=2", "model.hidden_dim=32", "memory_branch.zeta=0.0"],
    "copl": ["method.iterations=1", "method.shift_channels=4", "model.hidden_dim=16"],
    "copl_weak": ["method.shift_channels=4", "model.hidden_dim=16"],
    "actionformer": ACTIONFORMER_TINY,
    # 32 wide and a quarter labelled: with narrower networks the compiled and eager runs'
    # thresholded pseudo-labels part on round-off (tests/test_trainer_options.py compares them).
    "apl": ["model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.window_size=5",
            "labelled_fraction=0.25", "method.icd_hidden=32", "method.acp_epochs=1", "method.supervised_epochs=1",
            "method.semi_epochs=1", "method.acp_frames=8", "method.tau_neg=0.0"],
}

# Methods with a plug-in (memory_branch=rmgcl on CASE), for tests that cover every combination.
VARIANTS: dict[str, list[str]] = {
    "case+memory": ["method=case", "memory_branch=rmgcl", "memory_branch.warmup_epochs=0", "memory_branch.zeta=0.0",
                    "memory_branch.queue_length=8", "memory_branch.num_codewords=4", "memory_branch.num_heads=4"],
}


def overrides(name: str) -> list[str]:
    """The overrides of a method (``case``) or a variant (``case+memory``) of the table."""
    if name in VARIANTS:
        return list(VARIANTS[name])
    return [f"method={name}", *METHODS[name]]


def every_run() -> list[str]:
    """The table's methods and variants, sorted."""
    return sorted([*METHODS, *VARIANTS])
