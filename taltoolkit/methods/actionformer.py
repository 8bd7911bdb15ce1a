"""ActionFormer (Zhang, Wu and Li, ECCV 2022), fully supervised, on the shared engine.

The network is :class:`taltoolkit.models.actionformer.ActionFormer`; label assignment and
losses are in :mod:`taltoolkit.losses.detection`. This module is the glue: targets for every
pyramid point, the focal + DIoU objective normalised by a running count of positives,
an optional EMA copy of the network for inference, and decoding of every level's points into
scored segments for the ``segment_nms`` post-processor. Values follow the paper and its
public configuration (THUMOS14 unless a config says otherwise); each default names its source.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from taltoolkit import collectives
from taltoolkit.engine.method import Method, Stage, StageContext
from taltoolkit.losses.detection import assign_targets, diou_loss, sigmoid_focal_loss
from taltoolkit.models.actionformer import ActionFormer, no_weight_decay_parameters
from taltoolkit.registry import register


@register("method", "actionformer")
class ActionFormerMethod(Method):
    """ActionFormer: anchor-free one-stage detector; focal classification + DIoU regression."""

    sampling = "variable"
    label_mode = "full"
    paradigm = "full"

    def __init__(
        self,
        model: ActionFormer,
        center_radius: float = 1.5,  # train_cfg.center_sample_radius (paper Sec. 3.3, config)
        # train_cfg.loss_weight: L = L_cls + loss_weight * L_reg (paper Eq. 3, lambda_reg = 1); <= 0 balances
        # automatically as the code does: loss_weight = L_cls / max(L_reg, 0.01), without gradient.
        loss_weight: float = 1.0,
        focal_alpha: float = 0.25,  # sigmoid focal loss (RetinaNet defaults, as the code)
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,  # train_cfg.label_smoothing (THUMOS 0; ActivityNet 0.1)
        init_loss_norm: float = 100.0,  # train_cfg.init_loss_norm (THUMOS config)
        loss_norm_momentum: float = 0.9,  # EMA of the number of positives (code)
        ema_decay: float = 0.999,  # the code evaluates an EMA of the weights; 0 disables it
        pre_nms_thresh: float = 0.001,  # test_cfg.pre_nms_thresh, applied per level as the code
        pre_nms_topk: int = 2000,  # test_cfg.pre_nms_topk (THUMOS config), per level as the code
        # As the code's make_optimizer: no weight decay on biases, norm weights and the learnable
        # scales. False decays every parameter (this library's rule before, kept to reproduce
        # runs made with it).
        weight_decay_split: bool = True,
    ) -> None:
        super().__init__()
        if model is None:
            raise ValueError("method=actionformer needs a model: use model=actionformer (conf/model/actionformer.yaml)")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"method.ema_decay={ema_decay} must be in [0, 1); 0 disables the EMA")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"method.label_smoothing={label_smoothing} must be in [0, 1)")
        self.model = model
        self.num_classes = model.num_classes
        self.center_radius = center_radius
        self.loss_weight = loss_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.label_smoothing = label_smoothing
        self.loss_norm_momentum = loss_norm_momentum
        self.ema_decay = ema_decay
        self.pre_nms_thresh, self.pre_nms_topk = pre_nms_thresh, int(pre_nms_topk)
        self.weight_decay_split = bool(weight_decay_split)
        # Running count of positives (a buffer, so a resumed run continues the same EMA).
        self.register_buffer("loss_norm", torch.tensor(float(init_loss_norm)))
        self.ema: ActionFormer | None = None
        if ema_decay > 0:
            self.ema = copy.deepcopy(model)
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self._last: dict[str, float] = {}

    def no_weight_decay_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the trainer puts in a group without weight decay (empty: decay all)."""
        if not self.weight_decay_split:
            return []
        return [p for p in no_weight_decay_parameters(self) if p.requires_grad]  # not the EMA copy

    # ------------------------------------------------------------------ targets
    @staticmethod
    def flat(levels: list[Tensor]) -> Tensor:
        """Concatenate per-level (B, T_l, ...) tensors along points -> (B, P, ...)."""
        return torch.cat(levels, 1)

    def targets(self, out: dict[str, Any], batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-point targets of a batch: cls (B, P, C), reg (B, P, 2), positive (B, P), valid (B, P)."""
        points = out["points"]
        cls_t, reg_t, pos = [], [], []
        for segs, labels in zip(batch["segments"], batch["labels"]):
            c, r, p = assign_targets(points, segs, labels, self.num_classes, self.center_radius)
            cls_t.append(c)
            reg_t.append(r)
            pos.append(p)
        valid = self.flat(out["masks"])  # (B, P)
        pos_t = torch.stack(pos) & valid
        return torch.stack(cls_t), torch.stack(reg_t), pos_t, valid

    def update_loss_norm(self, num_pos: Tensor) -> Tensor:
        """ActionFormer's normaliser: EMA of max(#positives, 1) over training steps."""
        with torch.no_grad():
            m = self.loss_norm_momentum
            self.loss_norm.mul_(m).add_((1 - m) * num_pos.clamp(min=1).to(self.loss_norm))
        return self.loss_norm.clone()

    def smooth(self, cls_t: Tensor) -> Tensor:
        if self.label_smoothing <= 0:
            return cls_t
        return cls_t * (1 - self.label_smoothing) + self.label_smoothing / (self.num_classes + 1)

    def on_stage_start(self, stage: Stage, context: StageContext) -> None:
        levels = {v.label_level for v in context.train_videos}
        if levels - {"full"}:
            raise ValueError(
                f"method=actionformer trains on instance labels but the training videos have label levels "
                f"{sorted(levels)}: use label_mode=full, or method=apl for label_mode=semi "
                "(method.rounds=0 trains on the labelled videos only)"
            )

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        out = self.model(batch["features"], batch["mask"])
        cls_t, reg_t, pos, valid = self.targets(out, batch)
        logits = self.flat(out["cls_logits"])  # (B, P, C)
        offsets = self.flat(out["offsets"])  # (B, P, 2)
        # Under torchrun: the EMA counts the global batch's positives, and each rank's share of
        # the sum is scaled by the world size, since DDP averages the ranks' gradients; the loss
        # (and its gradient) is then the single process's S / N of the same global batch.
        num_pos = collectives.all_reduce_sum(pos.sum().float())
        norm = self.update_loss_norm(num_pos) / collectives.world_size()
        cls_loss = sigmoid_focal_loss(logits[valid], self.smooth(cls_t[valid]), self.focal_alpha, self.focal_gamma)
        cls_loss = cls_loss.sum() / norm
        if bool(pos.any()):
            reg_loss = diou_loss(offsets[pos], reg_t[pos]).sum() / norm
        else:
            reg_loss = offsets.sum() * 0.0  # keeps the graph (DDP) when a crop has no positive
        self._last = {"num_pos": float(num_pos)}
        weight = self.loss_weight
        if weight <= 0:  # the code's automatic balance (its loss_weight = -1)
            weight = cls_loss.detach() / max(float(reg_loss.detach()), 0.01)
        return {"loss": cls_loss + weight * reg_loss, "cls_loss": cls_loss, "reg_loss": reg_loss}

    def on_train_step_end(self) -> None:
        if self.ema is None:
            return
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters()):
                e.lerp_(p.detach(), 1.0 - self.ema_decay)
            for e, b in zip(self.ema.buffers(), self.model.buffers()):
                e.copy_(b)

    def log_metrics(self) -> dict[str, float]:
        return dict(self._last)

    # ------------------------------------------------------------------ inference
    def inference_network(self) -> ActionFormer:
        return self.ema if self.ema is not None else self.model

    def point_scores(self, out: dict[str, Any]) -> list[Tensor]:
        """Per-level scores (B, T_l, C) in [0, 1] that rank detections: the class probabilities."""
        return [torch.sigmoid(c) for c in out["cls_logits"]]

    @torch.no_grad()
    def decode(self, out: dict[str, Any], scores: list[Tensor]) -> list[dict[str, Tensor]]:
        """Every level's points -> candidate segments (grid coordinates), scores and labels per video.

        As ActionFormer's inference: per level keep scores above ``pre_nms_thresh``, then the
        ``pre_nms_topk`` best (point, class) pairs; a point ``x`` of stride ``s`` with
        distances ``(l, r)`` is the segment ``[x - l s, x + r s]``. Padded steps never enter.
        """
        b = scores[0].shape[0]
        results = []
        for i in range(b):
            segs, scs, labs = [], [], []
            start = 0
            for lvl, sc in enumerate(scores):
                t_l = sc.shape[1]
                pts = out["points"][start:start + t_l]  # (T_l, 4)
                start += t_l
                valid = out["masks"][lvl][i]  # (T_l,)
                s = sc[i].masked_fill(~valid[:, None], 0.0).flatten()  # (T_l * C,)
                keep = torch.nonzero(s > self.pre_nms_thresh).squeeze(1)
                if keep.numel() > self.pre_nms_topk:
                    keep = keep[torch.topk(s[keep], self.pre_nms_topk).indices]
                pt_idx, cls_idx = keep // sc.shape[-1], keep % sc.shape[-1]
                off = out["offsets"][lvl][i, pt_idx]  # (K, 2)
                x, stride = pts[pt_idx, 0], pts[pt_idx, 3]
                segs.append(torch.stack([x - off[:, 0] * stride, x + off[:, 1] * stride], 1))
                scs.append(s[keep])
                labs.append(cls_idx)
            results.append({"segments": torch.cat(segs), "scores": torch.cat(scs), "labels": torch.cat(labs)})
        return results

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.inference_network()(batch["features"], batch["mask"])
        return self.decode(out, self.point_scores(out))
