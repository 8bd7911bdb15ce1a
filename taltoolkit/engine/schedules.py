"""Learning-rate schedules stepped once per optimizer step (``conf/trainer``'s ``scheduler`` node).

The trainer builds one per stage as ``scheduler(optimizer, epochs=E, steps_per_epoch=S)``; a
config names it as a Hydra partial whose other keys are this function's settings.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from taltoolkit.registry import register

__all__ = ["DECAYS", "per_step_schedule"]

DECAYS = ("none", "step", "cosine")


@register("scheduler", "per_step")
def per_step_schedule(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    decay: str = "none",
    warmup_epochs: int = 0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_epochs``, then ``decay``: ``none`` (constant), ``step``
    (x ``gamma`` at each of ``milestones``, in epochs) or ``cosine`` (to 0 over the epochs after
    warm-up, as ActionFormer's scheduler). Per step, so that warm-up and cosine are smooth
    within an epoch."""
    if decay not in DECAYS:
        raise ValueError(f"trainer.scheduler.decay={decay!r}; choose one of {', '.join(DECAYS)}")
    warm = warmup_epochs * steps_per_epoch
    total = max(1, epochs * steps_per_epoch)
    steps = [m * steps_per_epoch for m in milestones]

    def factor(step: int) -> float:
        f = 1.0
        if decay == "step":
            f = gamma ** sum(step >= m for m in steps)
        elif decay == "cosine":
            progress = min(1.0, max(0.0, (step - warm) / max(1, total - warm)))
            f = 0.5 * (1 + math.cos(math.pi * progress))
        if warm and step < warm:
            f *= (step + 1) / warm
        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
