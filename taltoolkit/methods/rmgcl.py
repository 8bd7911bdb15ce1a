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

``memory_branch=None`` is the ACM-Net baseline (Table V's first row). Its defaults are
those of ACM-Net's public code (docs/methods/rmgcl.md lists every remaining difference):
top-k counts ``max(T // k, 1)``, the training sampler (``sampling_rule="acmnet"``), test
videos longer than ``dataset.num_segments`` resampled to it (``test_sampling="longer"``),
and a step whose loss is not finite skipped rather than fatal (``skip_nonfinite``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from taltoolkit import collectives
from taltoolkit.engine.method import Method
from taltoolkit.losses.acmnet import (
    branch_video_logits,
    feature_magnitude_loss,
    guide_loss,
    sparse_attention_loss,
    three_branch_mil_loss,
)
from taltoolkit.models.acmnet import ACMNet, weighted_tcams
from taltoolkit.models.memory import (  # noqa: F401 - TEST_CAMS and inference_state_with_memory are part of this module's API
    TEST_CAMS,
    MemoryBranch,
    build_memory_branch,
    inference_state_with_memory,
    memory_test_cam,
)
from taltoolkit.registry import register

Tensor = torch.Tensor

# Which main-branch CAM the memory terms read (Eq. 6-7 selection, Eq. 15-16 student):
# "dropout" the training CAM, computed from the dropped-out embeddings as ACM-Net trains its
# head; "clean" the same head on the embeddings without dropout (what inference sees).
MEMORY_CAMS = ("dropout", "clean")


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
        topk_segments: Sequence[int] = (8, 3, 3),  # Eq. 5 top-k max(T // k, 1): ACM-Net THUMOS14 8, 3, 3
        branch_weights: Sequence[float] = (1.0, 1.0, 1.0),  # ACM-Net: 1, 1, 1 THUMOS14; 5, 1, 1 ActivityNet
        guide_weight: float = 2e-3,  # ACM-Net loss_lamb_1 (THUMOS14)
        feature_weight: float = 5e-5,  # ACM-Net loss_lamb_2 (THUMOS14)
        sparse_weight: float = 2e-4,  # ACM-Net loss_lamb_3 (THUMOS14)
        feature_margin: float = 50.0,  # ACM-Net feature-magnitude margin
        test_cam: str = "pseudo",  # Sec. III-E3: proposals from the pseudo-CAM, which uses the stored T_M
        teacher_weight: float = 1.0,  # Sec. III-D3: the pseudo-label teacher learns the video labels ([65])
        memory_cam: str = "dropout",  # the CAM Eq. 6-7 and 15-16 read: the training CAM (after dropout) | clean
        skip_nonfinite: bool = True,  # ACM-Net skips the update of a step whose loss is NaN
        sampling_rule: str = "acmnet",  # training sampler of ACM-Net's code (data.sampling.SAMPLING_RULES)
        test_sampling: str = "longer",  # ACM-Net resamples test videos longer than num_segments to it
    ) -> None:
        super().__init__()
        if test_cam not in TEST_CAMS:
            raise ValueError(f"method.test_cam={test_cam!r}; choose one of {TEST_CAMS}")
        if memory_cam not in MEMORY_CAMS:
            raise ValueError(f"method.memory_cam={memory_cam!r}; choose one of {MEMORY_CAMS}")
        if len(topk_segments) != 3 or any(int(k) != k or k < 1 for k in topk_segments):
            raise ValueError(
                f"method.topk_segments needs 3 positive integers k (instance, context, background; top-k = "
                f"max(T // k, 1)), got {list(topk_segments)}")
        if len(branch_weights) != 3:
            raise ValueError(f"method.branch_weights needs 3 values (instance, context, background), got {branch_weights}")
        self.model = model
        self.memory = build_memory_branch(memory_branch, model.hidden_dim, model.num_classes, background=True)
        self.topk_segments = tuple(int(k) for k in topk_segments)
        self.branch_weights = tuple(float(w) for w in branch_weights)
        self.guide_weight, self.feature_weight, self.sparse_weight = guide_weight, feature_weight, sparse_weight
        self.feature_margin = feature_margin
        self.test_cam = test_cam
        self.teacher_weight = teacher_weight
        self.memory_cam = memory_cam
        self.skip_nonfinite = skip_nonfinite
        # Read by the entry point to build the datasets (Method.sampling_rule / test_sampling).
        self.sampling_rule = sampling_rule
        self.test_sampling = test_sampling
        self._last: dict[str, float] = {}
        self._skipped = 0

    def on_epoch_start(self, epoch: int) -> None:
        self._skipped = 0
        if self.memory is not None:
            self.memory.set_epoch(epoch)

    def _can_skip(self, device: torch.device) -> bool:
        """Whether a step can be skipped by returning a loss that reaches no parameter.

        Under torchrun the other ranks' gradient all-reduce would wait for this rank, and
        float16 autocast's GradScaler refuses a step without gradients: there the trainer's
        error on a non-finite loss stands.
        """
        if not self.skip_nonfinite or collectives.is_distributed():
            return False
        try:
            fp16 = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.float16
        except (AttributeError, TypeError, RuntimeError):  # older torch: no per-device query
            fp16 = False
        return not fp16

    def training_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, mask, y = batch["features"], batch["mask"], batch["video_labels"]  # (B,T,D) (B,T) (B,C)
        out = self.model(x, mask)
        att = out["attention"]  # (B, T, 3)
        tcams = (out["tcam_ins"], out["tcam_con"], out["tcam_back"])  # (B, T, C+1) logits each
        losses = three_branch_mil_loss(tcams, y, self.topk_segments, mask)  # Eq. 5
        w_ins, w_con, w_back = self.branch_weights
        total = w_ins * losses["loss_ins"] + w_con * losses["loss_con"] + w_back * losses["loss_back"]  # L_cls
        if self.guide_weight:
            losses["loss_guide"] = guide_loss(out["tcam_ins"], att, mask)
            total = total + self.guide_weight * losses["loss_guide"]
        if self.feature_weight:
            losses["loss_feat"] = feature_magnitude_loss(out["embeddings"], att, self.topk_segments, mask,
                                                         self.feature_margin)
            total = total + self.feature_weight * losses["loss_feat"]
        if self.sparse_weight:
            losses["loss_sparse"] = sparse_attention_loss(att, mask)
            total = total + self.sparse_weight * losses["loss_sparse"]
        if self.memory is not None:
            # The student of Eq. 15-16 is A (Eq. 2); Eq. 7 thresholds the instance TCAM's
            # probabilities. While training, ACM-Net's A comes from dropped-out embeddings
            # (p = 0.7: most steps see the head's bias alone); "clean" reads the same head on
            # the embeddings without dropout.
            cam = out["cam"] if self.memory_cam == "dropout" else self.model.classify(out["embeddings"])
            res = self.memory(out["embeddings"], cam, y, mask, self.model.classify,
                              scores=weighted_tcams(cam, att)[0].softmax(-1))
            losses.update(res["losses"])
            total = total + res["loss"]  # gamma L_ps + mu L_cont of Eq. 17
            if self.teacher_weight and res["pseudo_tcam"] is not None:
                # The teacher of the privileged distillation (Sec. III-D3) is the shared CAM head on
                # F_fuse; it learns the same Eq. 5 task as the student, through the (fixed) attention.
                # Without it only rho D_t would train GKSA and the fusion (docs/methods/rmgcl.md).
                teacher = three_branch_mil_loss(weighted_tcams(res["pseudo_tcam"], att.detach()), y,
                                                self.topk_segments, mask)
                losses["loss_teacher"] = sum(teacher.values())
                total = total + self.teacher_weight * losses["loss_teacher"]
            self._last = {"memory_active": float(res["active"])}
            if res["uncertainty"] is not None:
                self._last["uncertainty"] = float(res["uncertainty"][mask].mean())
        if not torch.isfinite(total) and self._can_skip(total.device):
            # ACM-Net's loop skips backward and the optimizer step when the loss is NaN. A fresh
            # leaf as the loss reaches no parameter: after the trainer's zero_grad(set_to_none)
            # every gradient stays None, and Adam/SGD leave such parameters (and their state) alone.
            self._skipped += 1
            return {"loss": torch.zeros((), device=total.device, requires_grad=True)}
        losses["loss"] = total
        return losses

    def log_metrics(self) -> dict[str, float]:
        return {**self._last, "skipped_steps": float(self._skipped)}

    def inference_state_dict(self) -> dict[str, Tensor]:
        return inference_state_with_memory(self, "memory")

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        x, mask = batch["features"], batch["mask"]
        out = self.model(x, mask)
        c = self.model.num_classes
        att = out["attention"]  # (B, T, 3)
        # Video classes: softmax of the instance branch's top-k scores, background dropped (ACM-Net).
        video = branch_video_logits(out["tcam_ins"], self.topk_segments[0], mask).softmax(-1)[:, :c]  # (B, C)
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
