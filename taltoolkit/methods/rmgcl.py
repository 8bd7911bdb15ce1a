"""RMGCL/GKSA (Zhang & Zhao; ../shared/papers/rmgcl_gksa.txt): ACM-Net baseline + cross-video memory branch.

The networks live elsewhere: the ACM-Net main branch in ``taltoolkit.models.acmnet``
(Eq. 1-4), the memory branch in ``taltoolkit.models.memory`` (Eq. 6-16), the baseline's
losses in ``taltoolkit.losses.acmnet``. This module is RMGCL's glue:

* training objective Eq. 17: ``L_cls + gamma L_ps + mu L_cont``, where L_cls is the sum of
  the three branch losses of Eq. 5, plus ACM-Net's auxiliary guide, feature-magnitude and
  sparsity terms that the published baseline uses (weights 0 give Eq. 17 as printed);
* the memory branch's warm-up through ``on_epoch_start`` (Sec. IV-B2);
* inference (Sec. III-E3): video classes from the instance branch's top-k scores, the
  attention-weighted instance CAM for the proposals, and the stored codewords T_M.

``memory_branch=None`` is the ACM-Net baseline (Table V's first row).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from taltoolkit.engine.method import Method
from taltoolkit.losses.acmnet import (
    branch_video_logits,
    feature_magnitude_loss,
    guide_loss,
    sparse_attention_loss,
    three_branch_mil_loss,
)
from taltoolkit.models.acmnet import ACMNet, weighted_tcams
from taltoolkit.models.memory import MemoryBranch
from taltoolkit.registry import register

Tensor = torch.Tensor

# Which class activation map the proposals are cut from at test time (docs/methods/rmgcl.md).
TEST_CAMS = ("main", "pseudo", "mean")


def build_memory_branch(
    memory_branch: Callable[..., MemoryBranch] | MemoryBranch | None, embed_dim: int, num_classes: int,
    background: bool,
) -> MemoryBranch | None:
    """A memory branch for a host network: built from a partial (conf/memory_branch/*.yaml) or given ready."""
    if memory_branch is None or isinstance(memory_branch, MemoryBranch):
        return memory_branch
    return memory_branch(embed_dim=embed_dim, num_classes=num_classes, background=background)


def memory_test_cam(main: Tensor, pseudo: Tensor | None, mode: str) -> Tensor:
    """Class probabilities for proposals from the main CAM and the memory branch's pseudo-CAM (both logits)."""
    if pseudo is None or mode == "main":
        return main.softmax(-1)
    if mode == "pseudo":
        return pseudo.softmax(-1)
    return 0.5 * (main.softmax(-1) + pseudo.softmax(-1))


def inference_state_with_memory(method: nn.Module, attr: str) -> dict[str, Tensor]:
    """A host's state dict in which every memory branch under ``method.<attr>`` keeps T_M only (Sec. III-E4)."""
    state = method.state_dict()
    for name, module in method.named_modules():
        if isinstance(module, MemoryBranch) and (name == attr or name.startswith(attr + ".")):
            drop = {f"{name}.{k}" for k in module.training_only_keys()}
            state = {k: v for k, v in state.items() if k not in drop}
            state.update({f"{name}.{k}": v for k, v in module.inference_state().items()})
    return state


@register("method", "rmgcl")
class RMGCL(Method):
    """ACM-Net three-branch baseline with the RMGCL + GKSA memory branch (Eq. 17)."""

    sampling = "fixed"
    label_mode = "weak"
    paradigm = "weak"

    def __init__(
        self,
        model: ACMNet,
        memory_branch: Callable[..., MemoryBranch] | MemoryBranch | None = None,
        topk_ratios: Sequence[float] = (1 / 8, 1 / 3, 1 / 3),  # Eq. 5 top-k: T/8, T/3, T/3 (ACM-Net THUMOS14)
        guide_weight: float = 2e-3,  # ACM-Net loss_lamb_1 (THUMOS14)
        feature_weight: float = 5e-5,  # ACM-Net loss_lamb_2 (THUMOS14)
        sparse_weight: float = 2e-4,  # ACM-Net loss_lamb_3 (THUMOS14)
        feature_margin: float = 50.0,  # ACM-Net feature-magnitude margin
        test_cam: str = "pseudo",  # Sec. III-E3: proposals from the pseudo-CAM, which uses the stored T_M
        teacher_weight: float = 1.0,  # Sec. III-D3: the pseudo-label teacher learns the video labels ([65])
    ) -> None:
        super().__init__()
        if test_cam not in TEST_CAMS:
            raise ValueError(f"method.test_cam={test_cam!r}; choose one of {TEST_CAMS}")
        if len(topk_ratios) != 3:
            raise ValueError(f"method.topk_ratios needs 3 values (instance, context, background), got {topk_ratios}")
        self.model = model
        self.memory = build_memory_branch(memory_branch, model.hidden_dim, model.num_classes, background=True)
        self.topk_ratios = tuple(float(r) for r in topk_ratios)
        self.guide_weight, self.feature_weight, self.sparse_weight = guide_weight, feature_weight, sparse_weight
        self.feature_margin = feature_margin
        self.test_cam = test_cam
        self.teacher_weight = teacher_weight
        self._last: dict[str, float] = {}

    def on_epoch_start(self, epoch: int) -> None:
        if self.memory is not None:
            self.memory.set_epoch(epoch)

    def training_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, mask, y = batch["features"], batch["mask"], batch["video_labels"]  # (B,T,D) (B,T) (B,C)
        out = self.model(x, mask)
        att = out["attention"]  # (B, T, 3)
        tcams = (out["tcam_ins"], out["tcam_con"], out["tcam_back"])  # (B, T, C+1) logits each
        losses = three_branch_mil_loss(tcams, y, self.topk_ratios, mask)  # Eq. 5
        total = losses["loss_ins"] + losses["loss_con"] + losses["loss_back"]  # L_cls of Eq. 17
        if self.guide_weight:
            losses["loss_guide"] = guide_loss(out["tcam_ins"], att, mask)
            total = total + self.guide_weight * losses["loss_guide"]
        if self.feature_weight:
            losses["loss_feat"] = feature_magnitude_loss(out["embeddings"], att, self.topk_ratios, mask,
                                                         self.feature_margin)
            total = total + self.feature_weight * losses["loss_feat"]
        if self.sparse_weight:
            losses["loss_sparse"] = sparse_attention_loss(att, mask)
            total = total + self.sparse_weight * losses["loss_sparse"]
        if self.memory is not None:
            # Eq. 7 thresholds the instance TCAM's probabilities; the student of Eq. 15-16 is A (Eq. 2).
            res = self.memory(out["embeddings"], out["cam"], y, mask, self.model.classify,
                              scores=out["tcam_ins"].softmax(-1))
            losses.update(res["losses"])
            total = total + res["loss"]  # gamma L_ps + mu L_cont of Eq. 17
            if self.teacher_weight and res["pseudo_tcam"] is not None:
                # The teacher of the privileged distillation (Sec. III-D3) is the shared CAM head on
                # F_fuse; it learns the same Eq. 5 task as the student, through the (fixed) attention.
                # Without it only rho D_t would train GKSA and the fusion (docs/methods/rmgcl.md).
                teacher = three_branch_mil_loss(weighted_tcams(res["pseudo_tcam"], att.detach()), y,
                                                self.topk_ratios, mask)
                losses["loss_teacher"] = sum(teacher.values())
                total = total + self.teacher_weight * losses["loss_teacher"]
            self._last = {"memory_active": float(res["active"])}
            if res["uncertainty"] is not None:
                self._last["uncertainty"] = float(res["uncertainty"][mask].mean())
        losses["loss"] = total
        return losses

    def log_metrics(self) -> dict[str, float]:
        return dict(self._last)

    def inference_state_dict(self) -> dict[str, Tensor]:
        return inference_state_with_memory(self, "memory")

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        x, mask = batch["features"], batch["mask"]
        out = self.model(x, mask)
        c = self.model.num_classes
        att = out["attention"]  # (B, T, 3)
        # Video classes: softmax of the instance branch's top-k scores, background dropped (ACM-Net).
        video = branch_video_logits(out["tcam_ins"], self.topk_ratios[0], mask).softmax(-1)[:, :c]  # (B, C)
        pseudo = None
        if self.memory is not None and self.test_cam != "main":
            res = self.memory(out["embeddings"], out["cam"], None, mask, self.model.classify)
            pseudo = res["pseudo_tcam"]  # (B, T, C+1) or None without knowledge
        # The attention-weighted instance CAM (Eq. 4), of the main CAM or of the memory's pseudo-CAM.
        probs = memory_test_cam(out["tcam_ins"], None if pseudo is None else pseudo * att[..., :1], self.test_cam)
        results = []
        for i in range(x.shape[0]):
            n = int(mask[i].sum())
            results.append({"cas": probs[i, :n, :c], "class_scores": video[i], "actionness": att[i, :n, 0]})
        return results
