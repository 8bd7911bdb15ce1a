"""COPL: Consistency-Oriented Progressive high actionness Learning (unsupervised TAL; ../shared/papers/copl*.txt).

Algorithm 1 of the supplementary, on the shared engine. Each of ``iterations`` (3) is one
:class:`~taltoolkit.engine.method.Stage` whose ``on_stage_start`` is the clustering step and
whose epochs are the training step:

- clustering (lines 7-18): the teacher IOCNet predicts A_cs and A_ca for every training video
  (``context.predict``, full videos; under torchrun each rank predicts a shard and all ranks get every output); HAS (Eq. 1-3) filters them,
  the votes of the previous training epochs (Eq. 4) are added, the global features
  F = L2Norm(X^T A^HAS) (Eq. 5) are spectrally clustered into C clusters (C = the dataset's
  number of classes), and PLRI (Eq. 6-10) splits the videos into P (pseudo-labelled) and U;
- training (lines 20-27): the student sees temporally shifted features, the teacher the
  originals; L_P = L_cls + L_asl + L_un on P and L_U = L_un on U (Eq. 15-22); the teacher
  follows by EMA after every step; at every epoch end the teacher's HAS attention of every
  training video is voted into the running sum that the next clustering uses (line 27).

Pseudo-labels, P/U membership, the votes and the clustering metrics are in
:meth:`extra_state`, so a run resumed mid-iteration does not re-cluster.

Where the paper is vague (all listed in docs/methods/copl.md):
- first clustering: the pre-trained features, mean-pooled (``initial_attention="uniform"``,
  default): the conventional first clustering that the supplementary's Sec. 1.1.1 modifies,
  whose confidences its Fig. A shows as "iteration 0". ``"model"`` runs HAS on the randomly
  initialised teacher instead (Algorithm 1 read literally);
- Eq. 14 averages the two modalities (``selection_modalities="mean"``, the AICL code's
  instance selection whose weights COPL keeps); ``"sum"`` is the printed form;
- videos are sampled to ``dataset.num_segments`` steps in training (``sampling_rule="perturb"``)
  and in testing and clustering (``test_sampling="always"``): Sec. 4.1 "during both training
  and testing, 750 ... snippets are sampled", as the AICL/CASE code lineage does;
- Eq. 4 is read as a decaying running sum, newest epoch weighted 1 (:func:`taltoolkit.pseudo.has.vote`);
- Eq. 6 averages over the *other* members of the cluster (the text; Eq. 6 prints |Y_I|) and
  Eq. 7 takes the nearest other cluster by largest mean affinity (the printed min over
  similarities would take the farthest) (:func:`taltoolkit.pseudo.plri.plri_confidence`);
- new cluster ids are aligned to the previous iteration's (Hungarian on overlaps) so the
  classifier's columns keep their meaning across iterations;
- EMA decay is not given (mean-teacher default 0.999);
- evaluation maps clusters to classes by the Hungarian assignment between the final
  clustering and the training videos' true primary classes (supplementary Sec. 1.2,
  "we map each cluster to groundtruth labels [TCAM, APSL, UGCT]"), over every training video
  (``cluster_mapping="all"``, one protocol for every ablation variant) or over P only
  (``"p"``, the supplementary's wording). The true labels come from
  ``context.reference_videos`` and serve only this mapping and the clustering metrics; they
  never enter a loss.

``weak=True`` (``method=copl_weak``) is the paper's WTAL row: IOCNet trained once, on all
training videos with their ground-truth video labels, no clustering.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taltoolkit.data.views import primary_class
from taltoolkit import collectives
from taltoolkit.engine.method import Method, Stage, StageContext
from taltoolkit.evaluation.clustering import clustering_scores
from taltoolkit.losses.copl import (
    SELECTION_MODALITIES,
    action_selection_loss,
    classification_loss,
    ema_update,
    inner_consistency_loss,
    outer_consistency_loss,
    selection_scores,
    selection_targets,
    snippet_contrastive_loss,
    temporal_feature_shift,
)
from taltoolkit.losses.mil import topk_mil_indices, topk_mil_pool
from taltoolkit.models.iocnet import IOCNet
from taltoolkit.pseudo.has import HAS_BRANCHES, global_video_feature, has_attention, vote
from taltoolkit.pseudo.plri import COHESIONS, SEPARATIONS, align_clusters, plri_confidence, plri_split, spectral_clustering
from taltoolkit.registry import register
from taltoolkit.structures import Video

log = logging.getLogger("taltoolkit")

INITIAL_ATTENTION = ("model", "uniform")
CLUSTER_MAPPINGS = ("all", "p")


@register("method", "copl")
class COPL(Method):
    """COPL: iterative HAS + spectral clustering + PLRI, and IOCNet teacher-student training."""

    sampling = "fixed"
    label_mode = "none"
    paradigm = "unsup"

    def __init__(
        self,
        model: IOCNet,
        weak: bool = False,  # True: method=copl_weak, the paper's WTAL row (Sec. 4.2)
        iterations: int = 3,  # Sec. 4.1 "total iteration number is set to 3"
        epochs_per_iteration: int | None = None,  # None: trainer.max_epochs (300 THUMOS14, Sec. 4.1)
        gamma: float = 20.0,  # Eq. 3, k = T / gamma (Sec. 4.1; Table 5)
        alpha: float = 0.9,  # Eq. 4 decay rate (Sec. 4.1)
        has_branch: str = "both",  # Table 3: both (HAS) | cs | ca (single branch) | none (w/o filter)
        use_vote: bool = True,  # Table 4: voting function, Eq. 4
        initial_attention: str = "uniform",  # first clustering: uniform (mean pooling, supp. Fig. A iteration 0) | model
        use_plri: bool = True,  # Fig. 4 / Table 6 "w/o PLRI": P = P_o, U empty
        delta: float = 0.0,  # Eq. 9-10 threshold (Sec. 4.1; Table 6, supp. Table B)
        plri_separation: str = "nearest",  # Eq. 7: nearest other cluster | literal_min
        plri_cohesion: str = "others",  # Eq. 6 normaliser: |Y_I| - 1 (text) | literal (|Y_I|)
        align_clusters: bool = True,  # not in the paper: keep cluster ids across iterations
        topk_ratio: float = 1 / 8,  # l = T / 8 THUMOS14 (Sec. 4.1)
        beta: float = 1 / 3,  # Eq. 14, 1/3 THUMOS14 (Sec. 4.1)
        selection_modalities: str = "mean",  # Eq. 14: mean of A_ca^R, A_ca^F (AICL code) | sum (printed)
        gce_q: float = 0.7,  # Eq. 16 (Sec. 4.1)
        mu1: float = 5.0,  # Eq. 20 (Sec. 4.1)
        mu2: float = 0.1,  # Eq. 20 (Sec. 4.1)
        lambda1: float = 0.01,  # Eq. 22 weight of L_C (Sec. 4.1)
        lambda2: float = 10.0,  # Eq. 22 weight of L_CO, 10 THUMOS14 (Sec. 4.1)
        use_lci: bool = True,  # Table 7
        use_lc: bool = True,  # Table 7
        use_lco: bool = True,  # Table 7: false = single model, no augmentation, no teacher
        contrast_ratio: float = 1 / 20,  # L_C snippets per region, T / 20 (AICL [24]; not in COPL)
        contrast_temperature: float = 0.1,  # L_C temperature (AICL [24]; not in COPL)
        shift_channels: int = 512,  # c of the temporal feature shift (Sec. 4.1)
        ema_decay: float = 0.999,  # not in the paper: mean-teacher [42] default
        clustering_seed: int = 0,  # k-means seeding of spectral clustering
        kmeans_n_init: int = 10,  # k-means restarts (scikit-learn's default)
        cluster_mapping: str = "all",  # cluster -> class for evaluation from: all training videos | p
        sampling_rule: str = "perturb",  # training sampling (data.sampling.SAMPLING_RULES), AICL/CASE code
        test_sampling: str = "always",  # test and clustering: videos resampled to num_segments (Sec. 4.1)
    ) -> None:
        super().__init__()
        if has_branch not in HAS_BRANCHES:
            raise ValueError(f"method.has_branch={has_branch!r}; choose one of {HAS_BRANCHES} (Table 3)")
        if initial_attention not in INITIAL_ATTENTION:
            raise ValueError(f"method.initial_attention={initial_attention!r}; choose one of {INITIAL_ATTENTION}")
        if plri_separation not in SEPARATIONS:
            raise ValueError(f"method.plri_separation={plri_separation!r}; choose one of {SEPARATIONS}")
        if selection_modalities not in SELECTION_MODALITIES:
            raise ValueError(f"method.selection_modalities={selection_modalities!r}; choose one of {SELECTION_MODALITIES}")
        if cluster_mapping not in CLUSTER_MAPPINGS:
            raise ValueError(f"method.cluster_mapping={cluster_mapping!r}; choose one of {CLUSTER_MAPPINGS}")
        if plri_cohesion not in COHESIONS:
            raise ValueError(f"method.plri_cohesion={plri_cohesion!r}; choose one of {COHESIONS}")
        if iterations < 1:
            raise ValueError(f"method.iterations={iterations} must be >= 1")
        if not 0 < topk_ratio <= 1 or not 0 < contrast_ratio <= 1:
            raise ValueError("method.topk_ratio and method.contrast_ratio must be in (0, 1]")
        if use_lco and shift_channels > model.in_dim:
            raise ValueError(
                f"method.shift_channels={shift_channels} exceeds the feature dimension {model.in_dim}; "
                f"set method.shift_channels <= {model.in_dim} (the paper shifts 512 of 2048 I3D channels)"
            )
        self.student = model
        # Teacher: same architecture, EMA of the student, no gradients (Sec. 3.4, supp. 1.1.2).
        self.teacher = copy.deepcopy(model) if use_lco else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
        self.weak = weak
        if weak:  # instance attributes shadow the class defaults the engine reads
            self.label_mode = "weak"
            self.paradigm = "weak"
        self.iterations = iterations
        self.epochs_per_iteration = epochs_per_iteration
        self.gamma, self.alpha, self.has_branch, self.use_vote = gamma, alpha, has_branch, use_vote
        self.initial_attention = initial_attention
        self.use_plri, self.delta, self.plri_separation = use_plri, delta, plri_separation
        self.plri_cohesion = plri_cohesion
        self.align = align_clusters
        self.topk_ratio, self.beta, self.gce_q = topk_ratio, beta, gce_q
        self.selection_modalities, self.cluster_mapping = selection_modalities, cluster_mapping
        # Read by the entry point to build the datasets (Method.sampling_rule / test_sampling).
        self.sampling_rule, self.test_sampling = sampling_rule, test_sampling
        self.mu1, self.mu2, self.lambda1, self.lambda2 = mu1, mu2, lambda1, lambda2
        self.use_lci, self.use_lc, self.use_lco = use_lci, use_lc, use_lco
        self.contrast_ratio, self.contrast_temperature = contrast_ratio, contrast_temperature
        self.shift_channels, self.ema_decay = shift_channels, ema_decay
        self.clustering_seed, self.kmeans_n_init = clustering_seed, kmeans_n_init
        c = model.num_classes
        # cluster id -> class id for evaluation (identity until a clustering maps it); a buffer,
        # so every checkpoint carries the mapping its classifier needs.
        self.register_buffer("cluster_to_class", torch.arange(c))
        self._state: dict[str, Any] = {"pseudo": {}, "in_p": {}, "votes": {}, "metrics": {}, "iteration": 0}
        self._context: StageContext | None = None
        self._last: dict[str, float] = {}

    # ------------------------------------------------------------------ stages
    def stages(self) -> list[Stage]:
        if self.weak:
            return [Stage("train", epochs=self.epochs_per_iteration)]
        return [
            Stage(f"iter{n}", epochs=self.epochs_per_iteration, options={"iteration": n})
            for n in range(1, self.iterations + 1)
        ]

    def _net(self) -> IOCNet:
        """The network used for inference and for HAS: the teacher (Sec. 3.2, 3.4.2)."""
        return self.teacher if self.teacher is not None else self.student

    def on_stage_start(self, stage: Stage, context: StageContext) -> None:
        self._context = context
        if self.weak:
            return
        if context.resumed:
            log.info("%s: resumed; pseudo-labels restored from the checkpoint (no re-clustering)", stage.name)
            return
        n = int(stage.options.get("iteration", 1))
        result = self._cluster(context, first=(n == 1))
        self._state.update(pseudo=result["pseudo"], in_p=result["in_p"], votes={}, iteration=n)
        self._state["metrics"] = result["metrics"]
        self._set_mapping(result["mapping"])
        m = result["metrics"]
        log.info(
            "%s clustering: purity=%.3f NMI=%.3f ARI=%.3f acc=%.3f | P=%d U=%d, P purity=%.3f",
            stage.name, m.get("purity", float("nan")), m.get("nmi", float("nan")), m.get("ari", float("nan")),
            m.get("accuracy", float("nan")), m["num_p"], m["num_u"], m.get("p_purity", float("nan")),
        )

    def on_epoch_start(self, epoch: int) -> None:
        # Algorithm 1 line 27: after each training epoch the teacher's HAS attention is voted
        # in. Epoch e's start is epoch e-1's end; the last epoch's end is voted by the next
        # clustering (or the final diagnostic clustering).
        if self.weak or epoch == 0 or self._context is None:
            return
        self._vote_all(self._context.train_videos)

    # ------------------------------------------------------------------ clustering
    def _has_of(self, outputs: list[dict[str, Any]]) -> list[torch.Tensor]:
        return [
            has_attention(torch.as_tensor(o["_a_cs"]), torch.as_tensor(o["_a_ca"]), self.gamma, self.has_branch)
            for o in outputs
        ]

    def _vote_all(self, videos: list[Video]) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
        """Vote the teacher's current HAS attention of every video in (Eq. 4); returns the
        teacher's outputs and the (un-voted) HAS attention, for the clustering diagnostics."""
        assert self._context is not None
        outputs = self._context.predict(videos)
        votes = self._state["votes"]
        has = self._has_of(outputs)
        for v, a in zip(videos, has):
            prev = votes.get(v.name) if self.use_vote else None
            votes[v.name] = vote(None if prev is None else torch.as_tensor(prev), a, self.alpha).numpy()
        return outputs, has

    @staticmethod
    def _sampled_features(v: Video, output: dict[str, Any] | None) -> torch.Tensor:
        """X of Eq. 5 at the steps the teacher saw (``test_sampling``), (T', D)."""
        x = torch.as_tensor(np.asarray(v.features, np.float32))
        pos = None if output is None else output.get("_positions")
        if pos is None:
            return x
        return x[torch.as_tensor(np.asarray(pos), dtype=torch.long)]  # pos: (T',) native step indices

    def _cluster(self, context: StageContext, first: bool) -> dict[str, Any]:
        videos = context.train_videos
        c = self.student.num_classes
        if len(videos) < c:
            raise ValueError(f"COPL clusters {len(videos)} training videos into C={c} clusters; need at least C videos")
        outputs: list[dict[str, Any]] | None = None
        if first and self.initial_attention == "uniform":
            attention = [torch.ones(v.num_steps) for v in videos]
        else:
            outputs, has = self._vote_all(videos)  # the current teacher's HAS (the end of the last epoch)
            attention = [torch.as_tensor(self._state["votes"][v.name]) for v in videos]
        feats = torch.stack([
            global_video_feature(self._sampled_features(v, None if outputs is None else outputs[i]), attention[i])
            for i, v in enumerate(videos)
        ]).numpy()  # (N, D), Eq. 5
        labels, w = spectral_clustering(feats, c, seed=self.clustering_seed, n_init=self.kmeans_n_init)
        previous = self._state["pseudo"]
        if self.align and previous and all(v.name in previous for v in videos):
            labels = align_clusters(labels, [previous[v.name] for v in videos], c)
        _, _, s = plri_confidence(w, labels, self.plri_separation, self.plri_cohesion)
        in_p = plri_split(s, self.delta) if self.use_plri else np.ones(len(videos), bool)
        metrics: dict[str, Any] = {
            "num_p": int(in_p.sum()), "num_u": int((~in_p).sum()),
            "confidence_mean": float(s.mean()), "confidence_min": float(s.min()), "confidence_max": float(s.max()),
        }
        mapping = list(range(c))
        true = [primary_class(context.reference_videos[v.name]) if v.name in context.reference_videos else -1
                for v in videos]
        known = np.array([t >= 0 for t in true])
        if known.any():
            t_arr = np.asarray(true)
            scores = clustering_scores(t_arr[known], labels[known])
            metrics.update({k: scores[k] for k in ("purity", "nmi", "ari", "accuracy")})
            sel = known & in_p
            if sel.any():
                sp = clustering_scores(t_arr[sel], labels[sel])
                metrics.update({f"p_{k}": sp[k] for k in ("purity", "nmi", "ari", "accuracy")})
            # For the cluster-against-class plot of the run (taltoolkit.visualization).
            metrics["cluster_assignment"] = {"clusters": labels[known].tolist(), "classes": t_arr[known].tolist()}
            by = sel if (self.cluster_mapping == "p" and sel.any()) else known
            mapping = self._hungarian_mapping(t_arr[by], labels[by], c)
            if outputs is not None:
                metrics.update(self._actionness_diagnostics(videos, outputs, has, context.reference_videos, self.gamma))
        else:
            log.warning("COPL: no reference labels for the training videos; clustering metrics skipped and "
                        "clusters evaluated as classes in id order")
        return {
            "pseudo": {v.name: int(y) for v, y in zip(videos, labels)},
            "in_p": {v.name: bool(p) for v, p in zip(videos, in_p)},
            "metrics": metrics,
            "mapping": mapping,
        }

    @staticmethod
    def _actionness_diagnostics(videos: list[Video], outputs: list[dict[str, Any]], has: list[torch.Tensor],
                                reference: dict[str, Video], gamma: float) -> dict[str, float]:
        """How well the teacher's attentions find the (hidden) actions of the training videos:
        Pearson correlation of A_cs and A_ca with the true action mask (mean over videos with
        both actions and background), the share of HAS-selected snippets inside actions
        (``has_precision``) against the share of all snippets inside actions (``action_rate``),
        and the same share for the top k = max(1, floor(T / gamma)) snippets of A_cs and of A_ca
        alone (Eq. 3's k, whatever the filter). Metrics only."""
        corr: dict[str, list[float]] = {"a_cs": [], "a_ca": []}
        hits = {"has": [0, 0], "top_a_cs": [0, 0], "top_a_ca": [0, 0], "all": [0, 0]}
        for v, o, a in zip(videos, outputs, has):
            ref = reference.get(v.name)
            if ref is None:
                continue
            mask = ref.action_mask()
            pos = o.get("_positions")
            if pos is not None:
                mask = mask[np.asarray(pos, np.int64)]
            m = mask.astype(np.float64)  # (T',)
            k = max(1, int(len(m) // gamma))  # Eq. 3
            for key in ("a_cs", "a_ca"):
                x = np.asarray(torch.as_tensor(o[f"_{key}"]).float())
                if 0 < m.sum() < len(m) and x.std() > 0:
                    corr[key].append(float(np.corrcoef(x, m)[0, 1]))
                top = np.argsort(-x, kind="stable")[:k]
                hits[f"top_{key}"][0] += int(mask[top].sum())
                hits[f"top_{key}"][1] += len(top)
            sel = np.asarray(a) > 0
            hits["has"][0] += int(mask[sel].sum())
            hits["has"][1] += int(sel.sum())
            hits["all"][0] += int(mask.sum())
            hits["all"][1] += len(mask)
        out: dict[str, float] = {f"corr_{k}": float(np.mean(v)) for k, v in corr.items() if v}
        names = {"has": "has_precision", "top_a_cs": "top_a_cs_precision", "top_a_ca": "top_a_ca_precision",
                 "all": "action_rate"}
        out.update({names[k]: h / n for k, (h, n) in hits.items() if n})
        return out

    @staticmethod
    def _hungarian_mapping(true: np.ndarray, clusters: np.ndarray, c: int) -> list[int]:
        """cluster -> class, one-to-one, maximising the number of P videos whose cluster maps to
        their true class (supplementary Sec. 1.2). Full C x C so every cluster gets a class."""
        from scipy.optimize import linear_sum_assignment

        counts = np.zeros((c, c), np.int64)  # (cluster, class)
        np.add.at(counts, (clusters.astype(np.int64), true.astype(np.int64)), 1)
        rows, cols = linear_sum_assignment(counts, maximize=True)
        mapping = list(range(c))
        for r, col in zip(rows, cols):
            mapping[int(r)] = int(col)
        return mapping

    def _set_mapping(self, mapping: list[int]) -> None:
        self.cluster_to_class.copy_(torch.as_tensor(mapping, dtype=torch.long))

    # ------------------------------------------------------------------ training
    def _labels_and_p(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels (B, C), in_p (B,) bool) for the batch: ground truth (weak) or pseudo-labels."""
        device = batch["features"].device
        c = self.student.num_classes
        if self.weak:
            y = batch["video_labels"]
            if not bool((y.sum(-1) > 0).any()) and all(lv == "none" for lv in batch["label_level"]):
                raise ValueError("method=copl_weak (method.weak=true) needs video labels; the run has "
                                 "label_mode=none. Use label_mode=weak (the copl_weak default) or method=copl")
            return y, torch.ones(y.shape[0], dtype=torch.bool, device=device)
        pseudo, in_p = self._state["pseudo"], self._state["in_p"]
        missing = [n for n in batch["names"] if n not in pseudo]
        if missing:
            raise RuntimeError(f"COPL has no pseudo-label for {missing[:3]}...: the clustering stage did not run")
        ids = torch.tensor([pseudo[n] for n in batch["names"]], device=device)
        y = F.one_hot(ids, c).float()
        return y, torch.tensor([in_p[n] for n in batch["names"]], dtype=torch.bool, device=device)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x, mask = batch["features"], batch["mask"]  # (B, T, D), (B, T)
        y, in_p = self._labels_and_p(batch)  # (B, C), (B,)
        x_student = temporal_feature_shift(x, self.shift_channels, mask) if self.use_lco else x
        out = self.student(x_student, mask)
        h = selection_scores(out["cas"], out["a_ca_m"], self.beta, self.selection_modalities)  # (B, T, C), Eq. 14
        zero = x.new_zeros(())
        losses: dict[str, torch.Tensor] = {}

        # Weakly-supervised loss on P (Eq. 15-17).
        if bool(in_p.any()):
            p = in_p
            l_cls, idx = classification_loss(out["cas"][p], h[p].detach(), y[p], self.topk_ratio, mask[p])
            targets = selection_targets(idx, y[p], x.shape[1])  # S^p
            l_asl = action_selection_loss(out["a_ca_m"][:, p], targets, self.gce_q, mask[p])
        else:
            l_cls, l_asl = zero, zero

        # Unsupervised loss per video (Eq. 18-22), on P and on U.
        un = x.new_zeros(x.shape[0])
        if self.use_lci:
            l_ci = inner_consistency_loss(out["a_ca_m"], out["a_cs"], out["a_ca"], self.mu1, self.mu2, mask)
            un = un + l_ci
            losses["loss_ci"] = l_ci.mean()
        if self.use_lc:
            embs = [out["emb_cs"], *out["emb_ca"]]
            l_c, _ = snippet_contrastive_loss(
                embs, out["a_cs"], out["a_ca"], self.contrast_ratio, self.contrast_temperature, mask
            )
            un = un + self.lambda1 * l_c
            losses["loss_c"] = l_c.mean()
        if self.use_lco:
            assert self.teacher is not None
            with torch.no_grad():
                t_out = self.teacher(x, mask)
                h_t = selection_scores(t_out["cas"], t_out["a_ca_m"], self.beta, self.selection_modalities)
            l_co = outer_consistency_loss(h, h_t, out["a_ca"], t_out["a_ca"], mask)
            un = un + self.lambda2 * l_co
            losses["loss_co"] = l_co.mean()

        # Means over the P and U videos of the global batch: under torchrun the ranks' halves
        # hold different numbers of each (a factor of 1 when run alone).
        share_p = collectives.global_share(int(in_p.sum()), x.device)
        share_u = collectives.global_share(int((~in_p).sum()), x.device)
        l_p = (l_cls + l_asl + un[in_p].mean()) * share_p if bool(in_p.any()) else zero  # Algorithm 1 line 24
        l_u = un[~in_p].mean() * share_u if bool((~in_p).any()) else zero  # line 23
        losses["loss_cls"], losses["loss_asl"] = l_cls * share_p, l_asl * share_p
        losses["loss_p"], losses["loss_u"] = l_p, l_u
        losses["loss"] = l_p + l_u  # line 25
        self._last["p_fraction"] = float(in_p.float().mean())
        return losses

    def networks(self) -> list[nn.Module]:
        return [self.student] + ([self.teacher] if self.teacher is not None else [])

    def on_train_step_end(self) -> None:
        if self.teacher is not None:
            ema_update(self.teacher, self.student, self.ema_decay)  # Algorithm 1 line 26

    def log_metrics(self) -> dict[str, float]:
        return dict(self._last)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Supplementary Sec. 1.2: top-l snippets of h_cs give the video's class scores; the CAS
        gives per-step class probabilities.

        ``cas`` (T, C) = beta softmax(CAS) + (1 - beta) A_ca: h_cs of Eq. 14 with the modalities'
        mean, the sequence the AICL code thresholds, in [0, 1] for the thresholds 0:1.0:0.1 (the
        paper does not say which sequence is thresholded); ``class_scores`` (C,) = softmax of the mean CAS over each
        class's top-l snippets; ``actionness`` (T,) = A_ca. Unsupervised: columns are moved from
        cluster ids to classes by ``cluster_to_class``. ``_a_cs``/``_a_ca`` feed HAS.
        """
        x, mask = batch["features"], batch["mask"]
        out = self._net()(x, mask)
        h = selection_scores(out["cas"], out["a_ca_m"], self.beta, self.selection_modalities)  # (B, T, C)
        idx, counts = topk_mil_indices(h, ratio=self.topk_ratio, mask=mask, return_counts=True)
        scores = topk_mil_pool(out["cas"], idx, counts).softmax(-1)  # (B, C)
        # The thresholded sequence is h_cs with the modalities' mean (A_ca, Eq. 13), whichever form selects.
        cas = h if self.selection_modalities == "mean" else selection_scores(
            out["cas"], out["a_ca_m"], self.beta, "mean")  # (B, T, C)
        positions = batch.get("positions")
        if not self.weak:
            inv = torch.empty_like(self.cluster_to_class)
            inv[self.cluster_to_class] = torch.arange(len(inv), device=inv.device)  # class -> cluster
            cas, scores = cas[..., inv], scores[..., inv]
        results = []
        for i in range(x.shape[0]):
            n = int(mask[i].sum())
            results.append({
                "cas": cas[i, :n], "class_scores": scores[i], "actionness": out["a_ca"][i, :n],
                "_a_cs": out["a_cs"][i, :n], "_a_ca": out["a_ca"][i, :n],
                "_positions": None if positions is None else positions[i, :n].long().cpu().numpy(),
            })
        return results

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return copy.deepcopy(self._state)

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            self._state = copy.deepcopy(state)

    def stage_metrics(self) -> dict[str, Any]:
        if self.weak:
            return {}
        out = {"iteration": self._state["iteration"], **self._state["metrics"]}
        if self._state["iteration"] == self.iterations and self._context is not None:
            # Diagnostic only (never trained on): cluster once more with the final model, to
            # show what one more iteration's clustering would give.
            final = self._cluster_diagnostic()
            out.update({f"final_{k}": v for k, v in final.items()})
        return out

    def _cluster_diagnostic(self) -> dict[str, Any]:
        assert self._context is not None
        saved = copy.deepcopy(self._state)
        mapping = self.cluster_to_class.clone()
        try:
            result = self._cluster(self._context, first=False)
        finally:
            self._state = saved
            self.cluster_to_class.copy_(mapping)
        m = result["metrics"]
        log.info("after training, clustering (diagnostic): purity=%.3f NMI=%.3f ARI=%.3f acc=%.3f",
                 m.get("purity", float("nan")), m.get("nmi", float("nan")), m.get("ari", float("nan")),
                 m.get("accuracy", float("nan")))
        return m
