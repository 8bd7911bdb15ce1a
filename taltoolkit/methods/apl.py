"""APL: Adaptive Pseudo-label Learning for semi-supervised TAL (Zhou, Williams and Rahmani,
ECCV 2024; ../shared/papers/apl.txt), on this toolkit's ActionFormer.

Stages (Fig. 1), each a :class:`~taltoolkit.engine.method.Stage` the engine runs and
checkpoints:

1. ``acp_pretrain`` (``use_acp``): ACP (Sec. 3.3) on every training video, no labels used:
   coarse (2-means within a video) and fine (``acp_fine_clusters``-means across the batch)
   InfoNCE (Eq. 11) on the upsampled, concatenated FPN features.
2. ``supervised``: the labelled videos only (``context.set_train_videos``): detection loss
   (ALQA's Eq. 3-5 with ``use_alqa``, else ActionFormer's focal + DIoU), ``lambda_acp`` x ACP
   with ground-truth frame labels, and the ICD loss (Eq. 8) on labelled instances.
3. ``semi`` (``rounds`` times): pseudo-label the unlabelled videos with the current network
   (``context.predict``): Soft-NMS through the shared post-processor, ALQA's adaptive split
   (Eq. 6) or the fixed threshold of Table 2's baseline, ICD refinement (EAP / MPP), then train
   on labelled + pseudo-labelled videos with Eq. 12 (``beta`` on the unlabelled part).

Pseudo-label quality against the hidden ground truth (Fig. 3(c)) goes to ``stage_metrics``;
the pseudo-labels themselves go to the checkpoint (``extra_state``) so a resumed semi stage
trains on the same ones. Choices the paper leaves open are marked "choice" and listed in
docs/methods/apl.md.
"""
from __future__ import annotations

import dataclasses
import logging
import zlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from taltoolkit.data.sampling import keyed_generator
from taltoolkit.engine import distributed as dist_utils
from taltoolkit.engine.method import Stage, StageContext
from taltoolkit.losses.contrastive import (
    kmeans,
    pyramid_to_input,
    sample_partition_frames,
    set_infonce,
)
from taltoolkit.losses.detection import (
    diou_loss,
    diou_terms,
    quality_focal_loss,
    sigmoid_focal_loss,
)
from taltoolkit.methods.actionformer import ActionFormerMethod
from taltoolkit.models.actionformer import ActionFormer
from taltoolkit.postprocess.proposals import segment_postprocess
from taltoolkit.pseudo.apl import (
    ConsistencyDiscriminator,
    adaptive_split,
    fixed_split,
    icd_loss,
    icd_refine,
    icd_similarity,
    instance_features,
    joint_score,
    pseudo_label_quality,
)
from taltoolkit.registry import register
from taltoolkit.structures import Video

log = logging.getLogger("taltoolkit")

SELECTIONS = ("adaptive", "fixed")


@register("method", "apl")
class APL(ActionFormerMethod):
    """APL: ALQA joint scores, adaptive selection, ICD refinement and ACP pre-training on ActionFormer."""

    sampling = "variable"
    label_mode = "semi"
    paradigm = "semi"

    def __init__(
        self,
        model: ActionFormer,
        # ActionFormer's own options (conf/method/actionformer.yaml)
        center_radius: float = 1.5,
        loss_weight: float = 1.0,  # lambda_reg of Eq. 12 = ActionFormer's default
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
        init_loss_norm: float = 100.0,
        loss_norm_momentum: float = 0.9,
        ema_decay: float = 0.999,
        pre_nms_thresh: float = 0.001,
        pre_nms_topk: int = 2000,
        # ALQA (Sec. 3.1)
        use_alqa: bool = True,  # Table 2 "+ALQA"; false: ActionFormer's classification score and loss
        lambda_locq: float = 0.1,  # Eq. 12
        joint_eps: float = 1e-3,  # Eq. 4-5 "small positive value" (choice)
        qfl_beta: float = 2.0,  # Eq. 5 focal exponent on soft labels (QFL, ref. [17]) (choice)
        selection: str = "adaptive",  # Eq. 6 ("adaptive") | fixed threshold (Table 2 baseline, Fig. 3(c))
        tau_neg: float = 0.15,  # Eq. 6
        std_factor: float = 1.0,  # tau_pos = mean + std_factor * std (choice: the paper gives no formula)
        fixed_threshold: float = 0.3,  # Table 2 baseline / Fig. 3(c) "fixed"
        # ICD (Sec. 3.2)
        use_icd: bool = True,  # Table 2 "+ICD"
        use_eap: bool = True,  # Table 4: eliminate ambiguous positives
        use_mpp: bool = True,  # Table 4: mine potential positives
        tau_icd: float = 0.3,  # Fig. 3(a)
        sigma_icd: float = 0.7,  # Fig. 3(b)
        icd_hidden: int = 512,  # MLP width (choice)
        icd_pairs: int = 4,  # partners drawn per anchor and set (choice)
        # ACP (Sec. 3.3)
        use_acp: bool = True,  # Table 2 "+ACP": pre-training stage and lambda_acp term
        acp_coarse: bool = True,  # Table 5 L_conc
        acp_fine: bool = True,  # Table 5 L_conf
        lambda_acp: float = 0.1,  # Eq. 12
        acp_temperature: float = 0.1,  # varsigma of Eq. 11 (choice: value in the supplementary)
        acp_frames: int = 32,  # N partitions per video (choice)
        acp_fine_clusters: int | None = None,  # B of the fine contrast; None: the batch size (choice)
        acp_epochs: int = 5,  # pre-training epochs (choice)
        # Schedule and Eq. 12
        beta: float = 2.0,  # Eq. 12 weight of the unlabelled loss
        supervised_epochs: int | None = None,  # None: trainer.max_epochs
        semi_epochs: int | None = None,  # None: trainer.max_epochs
        rounds: int = 1,  # pseudo-labelling rounds (Fig. 1: one); 0 = labelled-only ActionFormer
        # Soft-NMS on the unlabelled predictions (the shared post-processor, ActionFormer's test values)
        pseudo_iou_threshold: float = 0.1,
        pseudo_sigma: float = 0.5,
        pseudo_min_score: float = 0.001,
        pseudo_max_seg_num: int = 200,
        labelled_fraction: float = 0.2,  # the semi split's default (Sec. 4: 10 / 20 / 40 / 60 %); labelled_fraction=F wins
    ) -> None:
        super().__init__(model, center_radius, loss_weight, focal_alpha, focal_gamma, label_smoothing,
                         init_loss_norm, loss_norm_momentum, ema_decay, pre_nms_thresh, pre_nms_topk)
        if selection not in SELECTIONS:
            raise ValueError(f"method.selection={selection!r}; choose adaptive (Eq. 6) or fixed (Table 2 baseline)")
        if use_alqa and not model.quality_heads:
            raise ValueError("method.use_alqa=true needs the tIoU/tND heads: set model.quality_heads=true "
                             "(conf/method/apl.yaml does) or method.use_alqa=false")
        if use_acp and not (acp_coarse or acp_fine):
            raise ValueError("method.use_acp=true with acp_coarse=false and acp_fine=false has no loss; "
                             "turn one on or set method.use_acp=false")
        if rounds < 0:
            raise ValueError(f"method.rounds={rounds} must be >= 0")
        self.use_alqa, self.lambda_locq, self.joint_eps, self.qfl_beta = use_alqa, lambda_locq, joint_eps, qfl_beta
        self.selection, self.tau_neg, self.std_factor, self.fixed_threshold = selection, tau_neg, std_factor, fixed_threshold
        self.use_icd, self.use_eap, self.use_mpp = use_icd, use_eap, use_mpp
        self.tau_icd, self.sigma_icd, self.icd_pairs = tau_icd, sigma_icd, icd_pairs
        self.use_acp, self.acp_coarse, self.acp_fine = use_acp, acp_coarse, acp_fine
        self.lambda_acp, self.acp_temperature, self.acp_frames = lambda_acp, acp_temperature, acp_frames
        self.acp_fine_clusters, self.acp_epochs = acp_fine_clusters, acp_epochs
        self.beta = beta
        if not 0 < labelled_fraction <= 1:
            raise ValueError(f"method.labelled_fraction={labelled_fraction} must be in (0, 1]")
        self.labelled_fraction = labelled_fraction
        self.supervised_epochs, self.semi_epochs, self.rounds = supervised_epochs, semi_epochs, rounds
        # pre_nms_topk already applied per level in decode (ActionFormer has no global top-k)
        self.nms_options = {"iou_threshold": pseudo_iou_threshold, "sigma": pseudo_sigma, "min_score": pseudo_min_score,
                            "max_seg_num": pseudo_max_seg_num, "pre_nms_topk": None, "nms_method": "soft",
                            "multiclass": True, "voting_thresh": 0.0}
        self.icd = ConsistencyDiscriminator(model.in_dim, icd_hidden) if use_icd else None
        self._phase = "supervised"
        self._stage_key, self._epoch = 0, 0  # with the seed and the videos, they key ACP's and ICD's draws
        self._all: list[Video] | None = None
        self._pseudo: dict[str, tuple[list, list]] = {}  # video -> (segments in seconds, labels)
        self._stage_metrics: dict[str, Any] = {}
        self._saved_metrics: dict[str, Any] = {}

    # ------------------------------------------------------------------ stages
    def stages(self) -> list[Stage]:
        out = []
        if self.use_acp:
            out.append(Stage("acp_pretrain", self.acp_epochs, {"phase": "acp"}))
        out.append(Stage("supervised", self.supervised_epochs, {"phase": "supervised"}))
        for r in range(self.rounds):
            out.append(Stage("semi" if self.rounds == 1 else f"semi{r + 1}", self.semi_epochs, {"phase": "semi"}))
        return out

    def on_stage_start(self, stage: Stage, context: StageContext) -> None:
        if self._all is None:
            # The first stage to start (also after a resume) sees the whole semi view.
            self._all = list(context.train_videos)
            levels = {v.label_level for v in self._all}
            if "full" not in levels:
                raise ValueError("method=apl needs labelled videos: run with label_mode=semi labelled_fraction=F "
                                 "(e.g. 0.2) or label_mode=full")
            if levels - {"full", "none"}:
                raise ValueError(f"method=apl trains on instance labels or none; got label levels {sorted(levels)} "
                                 "(label_mode=weak is not supported)")
        labelled = [v for v in self._all if v.label_level == "full"]
        self._phase = stage.options.get("phase", "supervised")
        self._stage_key = zlib.crc32(stage.name.encode())
        self._stage_metrics = {}
        assert context.set_train_videos is not None
        if self._phase == "acp":
            context.set_train_videos(list(self._all))  # every video; ACP uses no labels
        elif self._phase == "supervised":
            context.set_train_videos(labelled)
        else:
            unlabelled = [v for v in self._all if v.label_level == "none"]
            if not (context.resumed and self._pseudo):
                self._pseudo, self._stage_metrics = self.make_pseudo_labels(unlabelled, labelled, context)
            else:
                self._stage_metrics = dict(self._saved_metrics)
            # A video left without any pseudo-label is not trained on: "no action found" is not
            # evidence that it is all background (choice; docs/methods/apl.md).
            pseudo_videos = [self._pseudo_video(v) for v in unlabelled if len(self._pseudo.get(v.name, ((), ()))[1])]
            context.set_train_videos(labelled + pseudo_videos)
        self._saved_metrics = dict(self._stage_metrics)

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    def _pseudo_video(self, v: Video) -> Video:
        segs, labels = self._pseudo[v.name]
        return dataclasses.replace(v, segments=np.asarray(segs, np.float64).reshape(-1, 2),
                                   labels=np.asarray(labels, np.int64), label_level="pseudo")

    def stage_metrics(self) -> dict[str, Any]:
        return dict(self._stage_metrics)

    def extra_state(self) -> dict[str, Any]:
        return {"pseudo": {k: (list(map(list, s)), list(lab)) for k, (s, lab) in self._pseudo.items()},
                "metrics": dict(self._saved_metrics)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._pseudo = {k: (s, lab) for k, (s, lab) in state.get("pseudo", {}).items()}
        self._saved_metrics = dict(state.get("metrics", {}))

    # ------------------------------------------------------------------ pseudo-labels
    @torch.no_grad()
    def make_pseudo_labels(self, unlabelled: list[Video], labelled: list[Video], context: StageContext
                           ) -> tuple[dict[str, tuple[list, list]], dict[str, Any]]:
        """Predict, Soft-NMS, split by score (Eq. 6 or fixed), refine with ICD -> pseudo-labels + metrics."""
        if not unlabelled:
            log.warning("APL: no unlabelled video; the semi stage trains on the labelled videos only")
            return {}, {}
        outputs = context.predict(unlabelled)
        dets = []
        for v, o in zip(unlabelled, outputs):
            dets.append(segment_postprocess(o["segments"], o["scores"], o["labels"], step_s=v.step_s,
                                            offset_s=v.offset_s, duration=v.duration, **self.nms_options))
        scores = np.concatenate([d.scores for d in dets]) if dets else np.zeros(0)
        if self.selection == "adaptive":
            pos, cand, tau_pos = adaptive_split(scores, self.tau_neg, self.std_factor)
        else:
            pos, cand, tau_pos = fixed_split(scores, self.fixed_threshold)
        final = pos.copy()
        sim = np.zeros_like(scores)
        if self.icd is not None and (self.use_eap or self.use_mpp) and scores.size:
            sim = self._icd_scores(unlabelled, dets, labelled, context.device)
            final = icd_refine(pos, cand, sim, self.tau_icd, self.sigma_icd, self.use_eap, self.use_mpp)
        pseudo: dict[str, tuple[list, list]] = {}
        before, after, truth = [], [], []
        start = 0
        for v, d in zip(unlabelled, dets):
            n = len(d)
            keep, p = final[start:start + n], pos[start:start + n]
            start += n
            pseudo[v.name] = (d.segments[keep].tolist(), d.labels[keep].tolist())
            before.append((d.segments[p], d.labels[p]))
            after.append((d.segments[keep], d.labels[keep]))
            ref = context.reference_videos.get(v.name)
            truth.append((ref.segments, ref.labels) if ref is not None else (np.zeros((0, 2)), np.zeros(0)))
        metrics: dict[str, Any] = {
            "tau_pos": tau_pos, "num_candidates_nms": int(scores.size), "num_positive": int(pos.sum()),
            "num_candidate": int(cand.sum()), "num_final": int(final.sum()),
            "num_eliminated": int((pos & ~final).sum()), "num_mined": int((cand & final).sum()),
        }
        if context.reference_videos:
            # Fig. 3(c): quality against the hidden ground truth (metrics only, never trained on).
            metrics["before_icd"] = pseudo_label_quality(before, truth)
            metrics["pseudo_quality"] = pseudo_label_quality(after, truth)
        log.info("APL pseudo-labels: %s", {k: v for k, v in metrics.items()})
        return pseudo, metrics

    def _icd_scores(self, unlabelled: list[Video], dets: list, labelled: list[Video], device: torch.device) -> np.ndarray:
        """Eq. 10 for every post-NMS prediction, against every labelled instance of its class."""
        assert self.icd is not None
        bank_f, bank_l = [], []
        for v in labelled:
            if len(v.labels):
                feats = torch.as_tensor(np.asarray(v.features, np.float32), device=device)
                bank_f.append(instance_features(feats, torch.as_tensor(v.to_steps(v.segments), dtype=torch.float32)))
                bank_l.append(torch.as_tensor(v.labels, dtype=torch.long, device=device))
        if not bank_f:
            return np.zeros(sum(len(d) for d in dets))
        bank_feats, bank_labels = torch.cat(bank_f), torch.cat(bank_l)
        was = self.icd.training
        self.icd.eval()
        out = []
        for v, d in zip(unlabelled, dets):
            if len(d) == 0:
                continue
            feats = torch.as_tensor(np.asarray(v.features, np.float32), device=device)
            pf = instance_features(feats, torch.as_tensor(v.to_steps(d.segments), dtype=torch.float32))
            out.append(icd_similarity(self.icd, pf, torch.as_tensor(d.labels, device=device), bank_feats, bank_labels))
        self.icd.train(was)
        return torch.cat(out).cpu().numpy().astype(np.float64) if out else np.zeros(0)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        out = self.model(batch["features"], batch["mask"])
        if self._phase == "acp":
            losses = self.acp_losses(out, batch, supervised=False)
            losses["loss"] = losses.get("loss_conc", 0.0) + losses.get("loss_conf", 0.0)
            return losses
        losses = self.detection_losses(out, batch)
        total = losses["loss_det"]
        if self.use_acp:
            acp = self.acp_losses(out, batch, supervised=True)
            losses.update(acp)
            total = total + self.lambda_acp * sum(acp.values())
        if self.icd is not None:
            losses["loss_icd"] = self.icd_batch_loss(batch)
            total = total + losses["loss_icd"]
        losses["loss"] = total
        return losses

    def detection_losses(self, out: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Eq. 12's detection terms: L^s + beta L^u, each normalised by its own positive count."""
        cls_t, reg_t, pos, valid = self.targets(out, batch)
        cls_t, reg_t = cls_t.float(), reg_t.float()
        # Losses in float32 also under autocast (the heads may return bfloat16 / float16).
        logits, offsets = self.flat(out["cls_logits"]).float(), self.flat(out["offsets"]).float()  # (B, P, C), (B, P, 2)
        levels = batch["label_level"]
        is_pseudo = torch.tensor([lv == "pseudo" for lv in levels], device=logits.device)  # (B,)
        if any(lv not in ("full", "pseudo") for lv in levels):
            raise RuntimeError(f"APL's detection loss got videos without instance labels ({sorted(set(levels))})")
        # Positive counts of the global batch (every rank's under torchrun); each rank's share is
        # scaled by the world size because DDP averages gradients: same loss as one process.
        counts = dist_utils.all_reduce_sum(torch.stack([pos[~is_pseudo].sum(), pos[is_pseudo].sum(), is_pseudo.sum()]).float())
        n_sup, n_uns = counts[0].clamp(min=1), counts[1].clamp(min=1)
        w = torch.where(is_pseudo, self.beta / n_uns, 1.0 / n_sup) * dist_utils.world_size()
        w = w.to(logits.dtype)[:, None]  # (B, 1) per point
        zeros = torch.zeros(pos.shape, device=logits.device, dtype=logits.dtype)
        reg_el, locq_el = zeros.clone(), zeros.clone()
        if bool(pos.any()):
            reg_el[pos] = diou_loss(offsets[pos], reg_t[pos])
        if self.use_alqa:
            with torch.no_grad():  # Eq. 3: targets are the regression branch's own tIoU / tND
                t_iou, t_nd = diou_terms(offsets[pos], reg_t[pos])
                soft = torch.zeros_like(cls_t)
                soft[pos] = cls_t[pos] * (t_iou - t_nd).clamp(min=self.joint_eps)[:, None]  # DIoU soft label
            tiou_lg, tnd_lg = self.flat(out["tiou_logits"]).float(), self.flat(out["tnd_logits"]).float()  # (B, P)
            joint = joint_score(torch.sigmoid(logits), torch.sigmoid(tiou_lg), torch.sigmoid(tnd_lg), self.joint_eps)
            cls_el = quality_focal_loss(joint, soft, self.qfl_beta).sum(-1)  # Eq. 5, (B, P)
            if bool(pos.any()):
                locq_el[pos] = (F.binary_cross_entropy_with_logits(tiou_lg[pos], t_iou, reduction="none")
                                + F.binary_cross_entropy_with_logits(tnd_lg[pos], t_nd, reduction="none"))  # Eq. 3
        else:
            cls_el = sigmoid_focal_loss(logits, self.smooth(cls_t), self.focal_alpha, self.focal_gamma).sum(-1)
        v = valid.to(logits.dtype)
        cls_loss = (w * cls_el * v).sum()
        reg_loss = (w * reg_el).sum()
        locq_loss = (w * locq_el).sum()
        det = cls_loss + self.loss_weight * reg_loss + self.lambda_locq * locq_loss
        self._last = {"num_pos": float(counts[0] + counts[1]), "pseudo_videos": float(counts[2])}
        out_losses = {"loss_det": det, "cls_loss": cls_loss, "reg_loss": reg_loss}
        if self.use_alqa:
            out_losses["locq_loss"] = locq_loss
        return out_losses

    # ACP's fine contrast and ICD's pairs are sets over the batch. Under torchrun every rank
    # gathers the global batch's rows (in rank order, the single process's order) and computes
    # the same set loss, with gradients reaching each rank's own rows
    # (``all_gather_rows_with_grad``); the random draws are keyed by (seed, stage, epoch,
    # videos), not by the process. N processes then train on one process's objective.
    def _generator(self, *videos: int) -> torch.Generator:
        return keyed_generator(torch.initial_seed(), self._stage_key, self._epoch, *videos)

    def acp_losses(self, out: dict[str, Any], batch: dict[str, Any], supervised: bool) -> dict[str, Tensor]:
        """ACP (Sec. 3.3) on sampled frames of the concatenated, upsampled pyramid features.

        Unsupervised (pre-training): coarse labels are 2-means of each video's sampled input
        features, fine labels ``acp_fine_clusters``-means over the batch. Fine-tuning ("with GT
        action classes ... and pseudo labels", Tab. S4): coarse = inside an instance or not,
        fine = the instance's class (background its own class).
        """
        x, mask = batch["features"], batch["mask"]
        rep = pyramid_to_input(out["features"], x.shape[1], self.model.scale_factor)  # (B, T, L * F)
        coarse, fine_f, fine_x, fine_l = [], [], [], []
        for b in range(x.shape[0]):
            g = self._generator(int(batch["index"][b]))
            idx = sample_partition_frames(int(mask[b].sum()), self.acp_frames, x.device, generator=g)  # (N,)
            f = rep[b, idx]  # (N, L * F)
            if supervised:
                centre = idx.to(torch.float32) + 0.5
                segs, labs = batch["segments"][b].to(x.device), batch["labels"][b].to(x.device)
                inside = (centre[:, None] >= segs[None, :, 0]) & (centre[:, None] <= segs[None, :, 1])  # (N, M)
                cls = torch.full_like(idx, self.num_classes)
                if inside.numel():
                    lens = torch.where(inside, (segs[:, 1] - segs[:, 0])[None], torch.full_like(inside, float("inf"),
                                                                                             dtype=torch.float32))
                    has = inside.any(1)
                    cls[has] = labs[lens.argmin(1)][has]
                coarse_l = (cls < self.num_classes).long()
                fine_l.append(cls)
            else:
                coarse_l = kmeans(x[b, idx], 2, generator=g)
            if self.acp_coarse:
                coarse.append(set_infonce(f, coarse_l, self.acp_temperature))
            fine_f.append(f)
            fine_x.append(x[b, idx])
        losses: dict[str, Tensor] = {}
        if self.acp_coarse:  # Eq. 11 per video, averaged over the global batch's videos
            losses["loss_conc"] = dist_utils.all_gather_rows_with_grad(torch.stack(coarse)).mean()
        if self.acp_fine:
            feats = dist_utils.all_gather_rows_with_grad(torch.cat(fine_f))  # (N_global, L * F)
            if supervised:
                labels = dist_utils.all_gather_rows(torch.cat(fine_l))
            else:
                videos = dist_utils.all_gather_rows(batch["index"].to(x.device))  # (B_global,)
                k = self.acp_fine_clusters or videos.numel()
                labels = kmeans(dist_utils.all_gather_rows(torch.cat(fine_x)), k,
                                generator=self._generator(*videos.tolist()))
            losses["loss_conf"] = set_infonce(feats, labels, self.acp_temperature)
        return losses

    def icd_batch_loss(self, batch: dict[str, Any]) -> Tensor:
        """Eq. 8 on the ground-truth instances of the batch's labelled videos (not pseudo-labels)."""
        assert self.icd is not None
        x = batch["features"]
        feats, labels = [x.new_zeros(0, x.shape[-1])], [torch.zeros(0, dtype=torch.long, device=x.device)]
        for b, lv in enumerate(batch["label_level"]):
            if lv == "full" and batch["segments"][b].numel():
                feats.append(instance_features(x[b][batch["mask"][b]], batch["segments"][b]))
                labels.append(batch["labels"][b].to(x.device))
        # The instances are the input features' (no gradient), so a plain gather suffices: every
        # rank computes the same loss on the discriminator.
        videos = dist_utils.all_gather_rows(batch["index"].to(x.device))
        return icd_loss(self.icd, dist_utils.all_gather_rows(torch.cat(feats)),
                        dist_utils.all_gather_rows(torch.cat(labels)), self.icd_pairs,
                        generator=self._generator(-1, *videos.tolist()))

    # ------------------------------------------------------------------ inference
    def point_scores(self, out: dict[str, Any]) -> list[Tensor]:
        """ALQA ranks by the joint score (Eq. 4); without it, the class probabilities."""
        if not self.use_alqa:
            return super().point_scores(out)
        return [joint_score(torch.sigmoid(c), torch.sigmoid(ti), torch.sigmoid(tn), self.joint_eps)
                for c, ti, tn in zip(out["cls_logits"], out["tiou_logits"], out["tnd_logits"])]
