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
3. ``semi`` (``rounds`` times): pseudo-label the unlabelled videos with the EMA network
   (``context.predict``): Soft-NMS through the shared post-processor, ALQA's adaptive split
   (Eq. 6, tau_pos pooled or per video, guarded by a minimum count) or the fixed threshold of
   Table 2's baseline, ICD refinement (EAP / MPP), then train on labelled + pseudo-labelled
   videos with Eq. 12 (``beta`` on the unlabelled part; with ``ignore_uncertain`` the points
   inside unselected predictions above tau_neg get no classification loss).

The EMA restarts from the live weights when the supervised stage starts (``ema_reset``) and,
with ``ema_bias_correction``, is the normalised average of the steps since then, so the
network that pseudo-labels holds neither the random initialisation nor the ACP weights.

Pseudo-label quality against the hidden ground truth goes to ``stage_metrics``, including
Fig. 3(c)'s comparison of both selection rules on the same pool (``fig3c``); it is computed
after the selection and never trains. The pseudo-labels, ignore regions and EMA step count go
to the checkpoint (``extra_state``) so a resumed semi stage trains on the same ones. Choices
the paper leaves open are marked "choice" and listed in docs/methods/apl.md.
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
from taltoolkit import collectives
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
    TAU_POS_SCOPES,
    ConsistencyDiscriminator,
    adaptive_split_videos,
    fixed_split,
    icd_loss,
    icd_refine,
    icd_similarity,
    instance_features,
    joint_score,
    positive_pseudo_labels,
    pseudo_label_quality,
)
from taltoolkit.registry import register
from taltoolkit.structures import Video

log = logging.getLogger("taltoolkit")

SELECTIONS = ("adaptive", "fixed")
ORACLES = ("correct", "truth")  # diagnostic pseudo-label oracles (method.pseudo_label_oracle)


def _hidden_truth(unlabelled: list[Video], context: StageContext) -> list[tuple[np.ndarray, np.ndarray]]:
    """(segments (N, 2) seconds, labels (N,)) of each unlabelled video's hidden instances; none when unknown."""
    truth = []
    for v in unlabelled:
        ref = context.reference_videos.get(v.name)
        truth.append((ref.segments, ref.labels) if ref is not None else (np.zeros((0, 2)), np.zeros(0)))
    return truth


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
        # Eq. 5's alpha: None = QFL as in ref. [17] (no alpha); 0.25 = the baseline's focal alpha
        # (ActionFormer), alpha_t = alpha q + (1 - alpha)(1 - q) on the soft label q (choice)
        alqa_alpha: float | None = None,
        selection: str = "adaptive",  # Eq. 6 ("adaptive") | fixed threshold (Table 2 baseline, Fig. 3(c))
        tau_neg: float = 0.15,  # Eq. 6
        std_factor: float = 1.0,  # tau_pos = mean + std_factor * std (choice: the paper gives no formula)
        tau_pos_scope: str = "pooled",  # pooled over the unlabelled videos | "video": per video (choice)
        tau_pos_min_count: int = 10,  # fewer scores above tau_neg: tau_pos = tau_pos_fallback (choice)
        tau_pos_fallback: float = 0.3,  # Fig. 3(c)'s fixed tau_pos (choice)
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
        # Points inside a prediction above tau_neg that was not selected get no classification
        # loss (neither action nor background); False: background, as Eq. 12's sum over frames.
        ignore_uncertain: bool = False,
        # EMA (the network that pseudo-labels and is evaluated): restart it from the live weights
        # when the supervised stage starts, and average the steps since then with weights
        # normalised to 1 (the restart point itself gets none once a step is taken).
        ema_reset: bool = True,
        ema_bias_correction: bool = True,
        supervised_epochs: int | None = None,  # None: trainer.max_epochs
        semi_epochs: int | None = None,  # None: trainer.max_epochs
        rounds: int = 1,  # pseudo-labelling rounds (Fig. 1: one); 0 = labelled-only ActionFormer
        # Soft-NMS on the unlabelled predictions (the shared post-processor, ActionFormer's test values)
        pseudo_iou_threshold: float = 0.1,
        pseudo_sigma: float = 0.5,
        pseudo_min_score: float = 0.001,
        pseudo_max_seg_num: int = 200,
        # Diagnostic only, never a result: "correct" trains on the selected pseudo-labels that
        # hit a hidden instance (precision 1 at the selection's recall), "truth" on the hidden
        # instances themselves (precision and recall 1). Separates the teacher's precision from
        # its recall as the cause of a (missing) semi-supervised gain.
        pseudo_label_oracle: str | None = None,
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
        if tau_pos_scope not in TAU_POS_SCOPES:
            raise ValueError(f"method.tau_pos_scope={tau_pos_scope!r}; choose one of {TAU_POS_SCOPES}")
        if tau_pos_min_count < 1:
            raise ValueError(f"method.tau_pos_min_count={tau_pos_min_count} must be >= 1")
        if pseudo_label_oracle is not None and pseudo_label_oracle not in ORACLES:
            raise ValueError(f"method.pseudo_label_oracle={pseudo_label_oracle!r}; choose null (APL), "
                             f"correct or truth (diagnostics that read the hidden labels)")
        if alqa_alpha is not None and not 0 <= alqa_alpha <= 1:
            raise ValueError(f"method.alqa_alpha={alqa_alpha} must be null (QFL) or in [0, 1]")
        self.use_alqa, self.lambda_locq, self.joint_eps, self.qfl_beta = use_alqa, lambda_locq, joint_eps, qfl_beta
        self.selection, self.tau_neg, self.std_factor, self.fixed_threshold = selection, tau_neg, std_factor, fixed_threshold
        self.alqa_alpha = alqa_alpha
        self.tau_pos_scope, self.tau_pos_min_count, self.tau_pos_fallback = tau_pos_scope, tau_pos_min_count, tau_pos_fallback
        self.ignore_uncertain = ignore_uncertain
        self.pseudo_label_oracle = pseudo_label_oracle
        self.ema_reset, self.ema_bias_correction = ema_reset, ema_bias_correction
        self._ema_steps = 0  # optimizer steps the EMA has averaged since it was (re)started
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
        self._ignore: dict[str, list] = {}  # video -> unselected predictions above tau_neg, (K, 2) seconds
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
            # The EMA pseudo-labels at the next stage: without the restart it would still hold
            # the random initialisation and the ACP weights (whose heads ACP never trains).
            # Not when resuming inside the stage: the checkpoint holds the EMA of this stage.
            if self.ema is not None and self.ema_reset and not context.resumed:
                self.restart_ema()
        else:
            unlabelled = [v for v in self._all if v.label_level == "none"]
            if not (context.resumed and self._pseudo):
                self._pseudo, self._ignore, self._stage_metrics = self.make_pseudo_labels(unlabelled, labelled, context)
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
                "ignore": {k: list(map(list, s)) for k, s in self._ignore.items()},
                "metrics": dict(self._saved_metrics), "ema_steps": self._ema_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._pseudo = {k: (s, lab) for k, (s, lab) in state.get("pseudo", {}).items()}
        self._ignore = {k: s for k, s in state.get("ignore", {}).items()}
        self._saved_metrics = dict(state.get("metrics", {}))
        self._ema_steps = int(state.get("ema_steps", 0))

    # ------------------------------------------------------------------ EMA
    @torch.no_grad()
    def restart_ema(self) -> None:
        """EMA <- the live weights; the step count that the bias correction uses restarts at 0."""
        assert self.ema is not None
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.copy_(p.detach())
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)
        self._ema_steps = 0

    def ema_step_decay(self) -> float:
        """Decay of the next EMA update.

        With ``ema_bias_correction`` the EMA after n steps since the restart is
        ``sum_k d^(n-k) (1 - d) w_k / (1 - d^n)``: the steps' weights, normalised to 1, so the
        restart point's weights have none (Adam's bias correction). The recursion's decay is
        ``d (1 - d^(n-1)) / (1 - d^n)``: 0 at the first step, -> d later. Without it, ``d``.
        """
        d = self.ema_decay
        if not self.ema_bias_correction:
            return d
        n = self._ema_steps + 1
        return d * (1.0 - d ** (n - 1)) / (1.0 - d**n)

    def ema_restart_weight(self) -> float:
        """Share of the EMA that is still the weights it was (re)started from."""
        if self.ema_bias_correction and self._ema_steps > 0:
            return 0.0
        return self.ema_decay ** self._ema_steps

    def on_train_step_end(self) -> None:
        if self.ema is None:
            return
        decay = self.ema_step_decay()
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters()):
                e.lerp_(p.detach(), 1.0 - decay)
            for e, b in zip(self.ema.buffers(), self.model.buffers()):
                e.copy_(b)
        self._ema_steps += 1

    # ------------------------------------------------------------------ pseudo-labels
    @torch.no_grad()
    def make_pseudo_labels(self, unlabelled: list[Video], labelled: list[Video], context: StageContext
                           ) -> tuple[dict[str, tuple[list, list]], dict[str, list], dict[str, Any]]:
        """Predict, Soft-NMS, split by score (Eq. 6 or fixed), refine with ICD.

        Returns the pseudo-labels (video -> (segments in seconds, labels)), the ignore regions
        (video -> unselected predictions above tau_neg, seconds; empty unless
        ``ignore_uncertain``) and the metrics. The hidden labels (``context.reference_videos``)
        enter the metrics only, after the selection.
        """
        if not unlabelled:
            log.warning("APL: no unlabelled video; the semi stage trains on the labelled videos only")
            return {}, {}, {}
        outputs = context.predict(unlabelled)
        dets = []
        for v, o in zip(unlabelled, outputs):
            dets.append(segment_postprocess(o["segments"], o["scores"], o["labels"], step_s=v.step_s,
                                            offset_s=v.offset_s, duration=v.duration, **self.nms_options))
        scores = np.concatenate([d.scores for d in dets]) if dets else np.zeros(0)  # (L_nms,) every video's
        # Both rules on the same pool of the same network: the selection trains, the other is
        # Fig. 3(c)'s comparison only.
        a_pos, a_cand, a_taus, a_info = adaptive_split_videos(
            [d.scores for d in dets], self.tau_neg, self.std_factor, self.tau_pos_scope,
            self.tau_pos_min_count, self.tau_pos_fallback)
        f_pos, f_cand, f_tau = fixed_split(scores, self.fixed_threshold)
        if self.selection == "adaptive":
            pos, cand, tau_pos = a_pos, a_cand, a_info["tau_pos_pooled"]
        else:
            pos, cand, tau_pos = f_pos, f_cand, f_tau
        final = pos.copy()
        sim = None
        if self.icd is not None and (self.use_eap or self.use_mpp) and scores.size:
            sim = self._icd_scores(unlabelled, dets, labelled, context.device)
            final = icd_refine(pos, cand, sim, self.tau_icd, self.sigma_icd, self.use_eap, self.use_mpp)
        # Unselected predictions above tau_neg: Eq. 6's candidates that ICD did not mine and
        # positives that EAP eliminated (under the fixed rule: those in (tau_neg, threshold)).
        uncertain = (scores > self.tau_neg) & ~final
        pseudo: dict[str, tuple[list, list]] = {}
        ignore: dict[str, list] = {}
        bounds = np.cumsum([0] + [len(d) for d in dets])  # video v's predictions: bounds[v]:bounds[v + 1]
        for i, (v, d) in enumerate(zip(unlabelled, dets)):
            keep = final[bounds[i]:bounds[i + 1]]
            pseudo[v.name] = (d.segments[keep].tolist(), d.labels[keep].tolist())
            unsure = uncertain[bounds[i]:bounds[i + 1]]
            if self.ignore_uncertain and unsure.any():
                ignore[v.name] = d.segments[unsure].tolist()
        oracle: dict[str, Any] | None = None
        if self.pseudo_label_oracle is not None:  # before the counts, so num_ignored is what trains
            pseudo, ignore, oracle = self._apply_oracle(pseudo, ignore, unlabelled, context)
        metrics: dict[str, Any] = {
            "tau_pos": tau_pos, "num_candidates_nms": int(scores.size), "num_positive": int(pos.sum()),
            "num_candidate": int(cand.sum()), "num_final": int(final.sum()),
            "num_eliminated": int((pos & ~final).sum()), "num_mined": int((cand & final).sum()),
            "num_uncertain": int(uncertain.sum()), "num_ignored": int(sum(len(s) for s in ignore.values())),
            "num_above_tau_neg": a_info["num_above_tau_neg"], "tau_pos_fallback": a_info["tau_pos_fallback"],
        }
        if oracle is not None:
            metrics["oracle"] = oracle
        if self.tau_pos_scope == "video":
            metrics["videos_tau_pos_fallback"] = a_info["videos_fallback"]
            metrics["tau_pos_video_mean"] = float(a_taus.mean()) if a_taus.size else float("nan")
        if self.ema is not None:
            metrics["ema_steps"] = self._ema_steps  # steps the pseudo-labelling EMA averages
            metrics["ema_restart_weight"] = self.ema_restart_weight()
        if context.reference_videos:
            truth = _hidden_truth(unlabelled, context)

            def quality(mask: np.ndarray) -> dict[str, float]:
                sel = [(d.segments[mask[bounds[i]:bounds[i + 1]]], d.labels[mask[bounds[i]:bounds[i + 1]]])
                       for i, d in enumerate(dets)]
                return pseudo_label_quality(sel, truth)

            def curve_point(mask: np.ndarray, tau: float) -> dict[str, float]:
                q = quality(mask)
                return {"tau_pos": float(tau), "count": int(mask.sum()), "precision": q["pos_acc"],
                        "recall": q["recall"], "class_acc": q["class_acc"], "avg_tiou": q["avg_tiou"]}

            # Quality against the hidden ground truth (metrics only, never trained on).
            metrics["before_icd"] = quality(pos)
            metrics["pseudo_quality"] = quality(final)
            # Fig. 3(c): on this network's scores ("joint" with ALQA, else the class
            # probability), tau_pos fixed at ``fixed_threshold`` vs the adaptive tau_pos, and
            # ICD's EAP / MPP / both on the adaptive split. Precision = share with a same-class
            # hidden instance at tIoU > 0.5 (the paper's Pos Acc); recall = share of the
            # hidden instances so found.
            fig = {"score": "joint" if self.use_alqa else "class", "num_hidden": int(sum(len(t[1]) for t in truth)),
                   "fixed": curve_point(f_pos, f_tau), "adaptive": curve_point(a_pos, a_info["tau_pos_pooled"])}
            if sim is not None:
                for name, eap, mpp in (("eap", True, False), ("mpp", False, True), ("eap_mpp", True, True)):
                    fig[name] = curve_point(icd_refine(a_pos, a_cand, sim, self.tau_icd, self.sigma_icd, eap, mpp),
                                            a_info["tau_pos_pooled"])
            metrics["fig3c"] = fig
        log.info("APL pseudo-labels: %s", {k: v for k, v in metrics.items()})
        return pseudo, ignore, metrics

    def _apply_oracle(self, pseudo: dict[str, tuple[list, list]], ignore: dict[str, list], unlabelled: list[Video],
                      context: StageContext) -> tuple[dict[str, tuple[list, list]], dict[str, list], dict[str, Any]]:
        """``pseudo_label_oracle``: replace the selection by its correct part or by the hidden labels."""
        missing = [v.name for v in unlabelled if v.name not in context.reference_videos]
        if missing:
            raise RuntimeError(f"method.pseudo_label_oracle={self.pseudo_label_oracle} reads the hidden labels of the "
                               f"unlabelled videos, but {len(missing)} have none (e.g. {missing[0]}); "
                               "set method.pseudo_label_oracle=null")
        truth = _hidden_truth(unlabelled, context)
        out: dict[str, tuple[list, list]] = {}
        if self.pseudo_label_oracle == "truth":
            for v, (gs, gl) in zip(unlabelled, truth):
                out[v.name] = (np.asarray(gs, np.float64).reshape(-1, 2).tolist(), np.asarray(gl, np.int64).reshape(-1).tolist())
            ignore = {}  # every hidden instance is a label: nothing is uncertain
        else:
            for v, (gs, gl) in zip(unlabelled, truth):
                segs, labels = pseudo.get(v.name, ([], []))
                hit = positive_pseudo_labels(np.asarray(segs), np.asarray(labels), gs, gl)
                out[v.name] = ([s for s, h in zip(segs, hit) if h], [c for c, h in zip(labels, hit) if h])
        quality = pseudo_label_quality([(np.asarray(out[v.name][0]), np.asarray(out[v.name][1])) for v in unlabelled], truth)
        return out, ignore, {"mode": self.pseudo_label_oracle, **quality}

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
        counts = collectives.all_reduce_sum(torch.stack([pos[~is_pseudo].sum(), pos[is_pseudo].sum(), is_pseudo.sum()]).float())
        n_sup, n_uns = counts[0].clamp(min=1), counts[1].clamp(min=1)
        w = torch.where(is_pseudo, self.beta / n_uns, 1.0 / n_sup) * collectives.world_size()
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
            cls_el = self.alqa_cls_loss(joint, soft).sum(-1)  # Eq. 5, (B, P)
            if bool(pos.any()):
                locq_el[pos] = (F.binary_cross_entropy_with_logits(tiou_lg[pos], t_iou, reduction="none")
                                + F.binary_cross_entropy_with_logits(tnd_lg[pos], t_nd, reduction="none"))  # Eq. 3
        else:
            cls_el = sigmoid_focal_loss(logits, self.smooth(cls_t), self.focal_alpha, self.focal_gamma).sum(-1)
        v = valid.to(logits.dtype)
        if self.ignore_uncertain:
            # Neither action nor background: no classification term (regression / locq are on
            # positives only, which keep their loss).
            v = v * (~(self.ignore_mask(out, batch) & ~pos)).to(v.dtype)
        cls_loss = (w * cls_el * v).sum()
        reg_loss = (w * reg_el).sum()
        locq_loss = (w * locq_el).sum()
        det = cls_loss + self.loss_weight * reg_loss + self.lambda_locq * locq_loss
        self._last = {"num_pos": float(counts[0] + counts[1]), "pseudo_videos": float(counts[2])}
        out_losses = {"loss_det": det, "cls_loss": cls_loss, "reg_loss": reg_loss}
        if self.use_alqa:
            out_losses["locq_loss"] = locq_loss
        return out_losses

    def alqa_cls_loss(self, joint: Tensor, soft: Tensor) -> Tensor:
        """Eq. 5 element-wise: focal loss of the joint score (..., C) against the DIoU soft label (..., C).

        QFL (ref. [17]): ``|q - p|^qfl_beta BCE(p, q)``, minimal at ``p = q``. With
        ``alqa_alpha`` it is weighted by ``alpha q + (1 - alpha)(1 - q)``, the baseline focal
        loss's alpha interpolated on soft labels as its implementation does; on one-hot labels
        it is then ActionFormer's focal loss (alpha, gamma = qfl_beta) of the joint score.
        """
        loss = quality_focal_loss(joint, soft, self.qfl_beta)
        if self.alqa_alpha is not None:
            loss = loss * (self.alqa_alpha * soft + (1 - self.alqa_alpha) * (1 - soft))
        return loss

    def ignore_mask(self, out: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        """(B, P) True at the points of pseudo-labelled videos inside an ignore region.

        A region is stored in seconds of its video; batch step j is the video's step
        ``positions[b, j]`` (a crop is contiguous), so the crop starts at ``positions[b, 0]``
        and a point at grid coordinate x of the crop is at ``x + positions[b, 0]`` of the video.
        """
        points = out["points"][:, 0]  # (P,) grid coordinates of the crop
        mask = torch.zeros(len(batch["label_level"]), points.shape[0], dtype=torch.bool, device=points.device)
        for b, (name, level) in enumerate(zip(batch["names"], batch["label_level"])):
            regions = self._ignore.get(name) if level == "pseudo" else None
            if not regions:
                continue
            secs = torch.as_tensor(regions, dtype=torch.float64).reshape(-1, 2)  # (K, 2) seconds
            grid = (secs - float(batch["offset_s"][b])) / float(batch["step_s"][b]) - float(batch["positions"][b, 0])
            grid = grid.to(device=points.device, dtype=points.dtype)  # (K, 2) grid of the crop
            inside = (points[:, None] >= grid[None, :, 0]) & (points[:, None] <= grid[None, :, 1])  # (P, K)
            mask[b] = inside.any(1)
        return mask

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
            losses["loss_conc"] = collectives.all_gather_rows_with_grad(torch.stack(coarse)).mean()
        if self.acp_fine:
            feats = collectives.all_gather_rows_with_grad(torch.cat(fine_f))  # (N_global, L * F)
            if supervised:
                labels = collectives.all_gather_rows(torch.cat(fine_l))
            else:
                videos = collectives.all_gather_rows(batch["index"].to(x.device))  # (B_global,)
                k = self.acp_fine_clusters or videos.numel()
                labels = kmeans(collectives.all_gather_rows(torch.cat(fine_x)), k,
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
        videos = collectives.all_gather_rows(batch["index"].to(x.device))
        return icd_loss(self.icd, collectives.all_gather_rows(torch.cat(feats)),
                        collectives.all_gather_rows(torch.cat(labels)), self.icd_pairs,
                        generator=self._generator(-1, *videos.tolist()))

    # ------------------------------------------------------------------ inference
    def point_scores(self, out: dict[str, Any]) -> list[Tensor]:
        """ALQA ranks by the joint score (Eq. 4); without it, the class probabilities."""
        if not self.use_alqa:
            return super().point_scores(out)
        return [joint_score(torch.sigmoid(c), torch.sigmoid(ti), torch.sigmoid(tn), self.joint_eps)
                for c, ti, tn in zip(out["cls_logits"], out["tiou_logits"], out["tnd_logits"])]
