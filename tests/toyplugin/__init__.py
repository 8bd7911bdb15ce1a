"""A sixth method added from outside the package, by following docs/architecture.md's
walk-throughs ("Adding a loss", "Adding a method"): ToyMIL, a one-branch WTAL method.

- a loss (:func:`cas_smoothness`): a plain function, shapes in its docstring, a test
  against a hand computation (tests/test_toy_method.py);
- a backbone (:class:`ToyCAS`) and a method (:class:`ToyMIL`), each registered;
- their configs in ``tests/toyplugin/conf`` (``model/toy_cas.yaml``, ``method/toy_mil.yaml``),
  which Hydra finds with ``hydra.searchpath=[file://tests/toyplugin/conf]``.

The package is importable as ``toyplugin`` when ``tests/`` is on ``sys.path`` (pytest puts it
there), which is what the configs' ``_target_`` say.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from taltoolkit.engine.method import Method
from taltoolkit.losses.mil import topk_mil_indices, topk_mil_pool, video_ce_loss
from taltoolkit.registry import register

Tensor = torch.Tensor

__all__ = ["ToyCAS", "ToyMIL", "cas_smoothness"]


def cas_smoothness(cas: Tensor, mask: Tensor) -> Tensor:
    """Mean squared change of the class activations between consecutive real steps.

    Shapes: cas (B, T, C) probabilities; mask (B, T) bool, True = real step -> scalar. A pair
    counts when both of its steps are real; no pair anywhere gives 0 (attached to the graph).
    """
    pairs = (mask[:, 1:] & mask[:, :-1]).to(cas.dtype)  # (B, T-1)
    diff = (cas[:, 1:] - cas[:, :-1]).pow(2).mean(-1)  # (B, T-1)
    return (diff * pairs).sum() / pairs.sum().clamp_min(1.0)


@register("backbone", "toy_cas")
class ToyCAS(nn.Module):
    """A temporal convolution and a 1x1 classifier: class activation logits per step."""

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int = 32, kernel_size: int = 3) -> None:
        super().__init__()
        self.embed = nn.Conv1d(in_dim, hidden_dim, kernel_size, padding=kernel_size // 2)
        self.classify = nn.Conv1d(hidden_dim, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, D), mask (B, T) -> logits (B, T, C), zero at padded steps."""
        h = torch.relu(self.embed(x.transpose(1, 2)))  # (B, H, T)
        return self.classify(h).transpose(1, 2) * mask.unsqueeze(-1)  # (B, T, C)


@register("method", "toy_mil")
class ToyMIL(Method):
    """Top-k MIL on one class activation sequence, plus :func:`cas_smoothness` (weight ``smooth_weight``)."""

    sampling = "fixed"
    label_mode = "weak"
    paradigm = "weak"

    def __init__(self, model: ToyCAS, topk_ratio: float = 0.125, smooth_weight: float = 0.1) -> None:
        super().__init__()
        self.model, self.topk_ratio, self.smooth_weight = model, topk_ratio, smooth_weight
        self._last: dict[str, float] = {}

    def training_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, mask = batch["features"], batch["mask"]  # (B, T, D), (B, T)
        logits = self.model(x, mask)  # (B, T, C)
        idx, counts = topk_mil_indices(logits, ratio=self.topk_ratio, mask=mask, return_counts=True)  # (B, k, C)
        loss_mil = video_ce_loss(topk_mil_pool(logits, idx, counts), batch["video_labels"])
        loss_smooth = cas_smoothness(logits.softmax(-1), mask)
        # A diagnostic the engine logs per epoch (epoch/cas_max): how peaked the CAS is.
        self._last = {"cas_max": float(logits.detach().softmax(-1).amax(-1)[mask].mean())}
        return {"loss_mil": loss_mil, "loss_smooth": loss_smooth, "loss": loss_mil + self.smooth_weight * loss_smooth}

    def log_metrics(self) -> dict[str, float]:
        return dict(self._last)

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        x, mask = batch["features"], batch["mask"]
        logits = self.model(x, mask)  # (B, T, C)
        idx, counts = topk_mil_indices(logits, ratio=self.topk_ratio, mask=mask, return_counts=True)
        scores = topk_mil_pool(logits, idx, counts).softmax(-1)  # (B, C)
        cas = logits.softmax(-1)  # (B, T, C)
        return [{"cas": cas[i, : int(mask[i].sum())], "class_scores": scores[i]} for i in range(x.shape[0])]
