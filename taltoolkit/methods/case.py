"""CASE: Clustering-Assisted F&B SEparation (Liu et al., ICCV 2023; ../shared/papers/case.txt).

The method is the two-branch WTAL baseline (Sec. 3) plus snippet clustering (SCC, Eq. 3),
cluster classification (CCC, Eq. 4-6), both self-labelled by Sinkhorn optimal transport
(Eq. 10-13, Algorithm 1), trained jointly (Eq. 14) and used at test time through
clustering-assisted testing (Sec. 4.3). Networks live in ``taltoolkit.models.wtal``; the
losses in ``taltoolkit.losses``; Sinkhorn in ``taltoolkit.pseudo.sinkhorn``. This module is
only CASE's own glue: which tensors go where, and its ablation switches.

Values the paper leaves to its supplementary follow the authors' public code; each default
names its source.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from taltoolkit import collectives
from taltoolkit.engine.method import Method
from taltoolkit.evaluation.stages import stage
from taltoolkit.losses.clustering import (
    cluster_fb_logits,
    cluster_prototypes,
    fb_marginal,
    rank_gaussian_prior,
    soft_ce,
)
from taltoolkit.losses.mil import generalized_bce, topk_mil_indices, topk_mil_pool, video_ce_loss
from taltoolkit.models.memory import (
    TEST_CAMS,
    MemoryBranch,
    build_memory_branch,
    inference_state_with_memory,
    memory_test_cam,
)
from taltoolkit.models.wtal import TwoStreamWTAL
from taltoolkit.pseudo.sinkhorn import sinkhorn_labels
from taltoolkit.registry import register

SCC_LABELLINGS = ("ot_soft", "ot_hard", "argmax", "softmax")  # Table 4
TEST_FOREGROUND = ("fused", "attention", "transformed")  # Table 6: P^M, P^A, P^T
TEST_FUSIONS = ("code", "weighted")  # how P^M enters the calibrated T-CAS (docs/methods/case.md)
MEMORY_SCORES = ("calibrated", "softmax")  # what a memory branch's zeta = 0.75 gates


@register("method", "case")
class CASE(Method):
    """CASE: two-branch WTAL baseline + Sinkhorn-labelled snippet clustering and cluster classification."""

    sampling = "fixed"
    label_mode = "weak"
    paradigm = "weak"

    def __init__(
        self,
        model: TwoStreamWTAL,
        topk_ratio: float = 1 / 8,  # top-k = T // 8 snippets per class (public code), Eq. 1 and Q^A
        gce_q: float = 0.7,  # gamma of the generalized BCE, Eq. 2 (public code q_val)
        use_scc: bool = True,  # Table 3 line 2: snippet clustering, Eq. 3
        use_ccc: bool = True,  # Table 3 line 3: cluster classification, Eq. 4-6
        lambda_s: float = 1.0,  # Eq. 14 weight of L_S (public code w_clu)
        lambda_c: float = 0.3,  # Eq. 14 weight of L_C (public code w_cls)
        rho: float = 10.0,  # Eq. 5 temperature (public code temp)
        sigma: float = 10.0,  # Eq. 11 std of the rank prior (public code std)
        sinkhorn_epsilon: float = 0.5,  # Eq. 10 entropic weight: Q ∝ exp(L / eps); code: eps 20 over rho 10
        sinkhorn_iters: int = 3,  # Algorithm 1 n_iter
        scc_prior: str = "rank",  # Eq. 12 ("rank") or Eq. 10 ("none"): Table 5 line 2
        prior_positions: str = "rank",  # Eq. 11 as printed ("rank") or the public code's argsort indices ("argsort")
        ccc_marginal: str = "empirical",  # Eq. 13 ("empirical") or Eq. 9 ("equipartition"): Table 5 line 3
        scc_labelling: str = "ot_soft",  # Table 4: ot_soft | ot_hard | argmax | softmax (w/o OT)
        test_foreground: str = "fused",  # Table 6: fused P^M | attention P^A | transformed P^T
        test_fusion: str = "code",  # code: each stream's P^A and P^T averaged with the CAS on their own (public code)
        fusion_weight: float = 0.5,  # test_fusion=weighted: P^M = w P^A + (1 - w) P^T per stream, Sec. 4.3
        topk_rounding: str = "floor",  # top-k = floor(T / 8) as the public code's T // 8 ("round": round(T / 8))
        sampling_rule: str = "perturb",  # training sampling: the public code's random_perturb (data/sampling.py)
        test_sampling: str = "always",  # test videos resampled to T steps as the public code does ("native": every step)
        global_batch: bool = True,  # under torchrun: SCC/CCC's batch statistics over the global batch
        attention_warmup_epochs: int = 0,  # not in the paper (0 = paper): see docs/methods/case.md
        memory_branch: Callable[..., MemoryBranch] | None = None,  # RMGCL/GKSA's branch, one per stream
        memory_test_cam: str = "main",  # with a memory branch: main | pseudo | mean T-CAS at test time
        memory_teacher_weight: float = 1.0,  # with a memory branch: the pseudo-T-CAS learns Eq. 1 too (RMGCL Sec. III-D3)
        memory_scores: str = "calibrated",  # with a memory branch: what Eq. 7's zeta gates (docs/methods/case.md)
    ) -> None:
        super().__init__()
        if scc_prior not in ("rank", "none"):
            raise ValueError(f"method.scc_prior={scc_prior!r}; choose rank (Eq. 12) or none (Eq. 10)")
        if ccc_marginal not in ("empirical", "equipartition"):
            raise ValueError(f"method.ccc_marginal={ccc_marginal!r}; choose empirical (Eq. 13) or equipartition (Eq. 9)")
        if scc_labelling not in SCC_LABELLINGS:
            raise ValueError(f"method.scc_labelling={scc_labelling!r}; choose one of {SCC_LABELLINGS}")
        if test_foreground not in TEST_FOREGROUND:
            raise ValueError(f"method.test_foreground={test_foreground!r}; choose one of {TEST_FOREGROUND}")
        if test_fusion not in TEST_FUSIONS:
            raise ValueError(f"method.test_fusion={test_fusion!r}; choose one of {TEST_FUSIONS}")
        if use_ccc and not use_scc:
            raise ValueError("method.use_ccc=true needs method.use_scc=true: CCC classifies SCC's clusters")
        if (use_scc or test_foreground != "attention") and not model.num_clusters:
            raise ValueError("CASE's clustering needs model.num_clusters > 0 (or method.use_scc=false "
                             "method.use_ccc=false method.test_foreground=attention for the baseline)")
        if memory_test_cam not in TEST_CAMS:
            raise ValueError(f"method.memory_test_cam={memory_test_cam!r}; choose one of {TEST_CAMS}")
        if memory_scores not in MEMORY_SCORES:
            raise ValueError(f"method.memory_scores={memory_scores!r}; choose one of {MEMORY_SCORES}")
        self.model = model
        # RMGCL/GKSA Sec. IV-D "plug into other methods": each stream's classification
        # embeddings, T-CAS and classifier carry their own memory (the streams' embedding
        # spaces differ). The T-CAS has no background column; background regional features
        # come from the attention (1 - P^A).
        self.memory = None
        if memory_branch is not None:
            self.memory = nn.ModuleList(
                build_memory_branch(memory_branch, model.hidden_dim, model.num_classes, background=False)
                for _ in range(model.streams)
            )
        self.memory_test_cam = memory_test_cam
        self.memory_teacher_weight = memory_teacher_weight
        self.memory_scores = memory_scores
        self.topk_ratio = topk_ratio
        self.gce_q = gce_q
        self.use_scc, self.use_ccc = use_scc, use_ccc
        self.lambda_s, self.lambda_c = lambda_s, lambda_c
        self.rho, self.sigma = rho, sigma
        self.sinkhorn_epsilon, self.sinkhorn_iters = sinkhorn_epsilon, sinkhorn_iters
        self.scc_prior, self.ccc_marginal = scc_prior, ccc_marginal
        self.prior_positions = prior_positions
        self.scc_labelling = scc_labelling
        self.test_foreground = test_foreground
        self.test_fusion = test_fusion
        self.fusion_weight = fusion_weight
        self.topk_rounding = topk_rounding
        self.sampling_rule = sampling_rule
        self.test_sampling = test_sampling
        self.global_batch = global_batch
        self.attention_warmup_epochs = attention_warmup_epochs
        self._epoch = 0
        k = max(1, model.num_clusters)
        # Q^C: cluster -> (foreground, background) assignment of the last training step; it is
        # the prior of the next step's Eq. 11 and is used at test time (Sec. 4.3). Starts
        # uniform as in the public code; a buffer, so checkpoints carry it.
        self.register_buffer("cluster_fb", torch.full((k, 2), 1.0 / k))
        self._last: dict[str, float] = {}

    # ------------------------------------------------------------------ shared pieces
    def _combined_scores(
        self, out: dict[str, torch.Tensor], foreground: torch.Tensor, cas_prob: torch.Tensor | None = None
    ) -> torch.Tensor:
        """T-CAS calibrated by foreground maps: the mean of the stream-averaged class softmax and
        each of the M maps in ``foreground`` (M, B, T) (the public code's instance selection)."""
        if cas_prob is None:
            cas_prob = out["cas"].softmax(-1)  # (S, B, T, G)
        cas_prob = cas_prob.mean(0)  # (B, T, G)
        fg = rearrange(foreground, "m b t -> b t m")  # (B, T, M)
        return (cas_prob + fg.sum(-1, keepdim=True)) / (1 + fg.shape[-1])  # (B, T, G)

    def _transformed_foreground(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """P^T = P^S Q^C_{:,fg} per stream, law of total probability (Sec. 4.3)."""
        return out["cluster_logits"].softmax(-1) @ self.cluster_fb[:, 0]  # (S, B, T)

    def _test_foreground(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Foreground maps (M, B, T) that calibrate the test-time T-CAS (Table 6)."""
        if self.test_foreground == "attention":
            return out["attention"]  # (S, B, T)
        p_t = self._transformed_foreground(out)  # (S, B, T)
        if self.test_foreground == "transformed":
            return p_t
        if self.test_fusion == "code":
            # Public code: (CAS + P^A_rgb + P^A_flow + P^T_rgb + P^T_flow) / 5, i.e. P^M = the
            # equal mix of P^A and P^T, weighted 4/5 against the CAS's 1/5.
            return torch.cat([out["attention"], p_t])  # (2S, B, T)
        return self.fusion_weight * out["attention"] + (1 - self.fusion_weight) * p_t  # P^M (S, B, T)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x, mask, y = batch["features"], batch["mask"], batch["video_labels"]  # (B,T,D) (B,T) (B,G)
        out = self.model(x, mask)
        cas, att = out["cas"], out["attention"]  # (S,B,T,G) logits, (S,B,T) probabilities
        # During an optional warm-up the top-k (and so Q^A) come from the T-CAS alone: the
        # attention's own ranking would otherwise pick its targets and can lock onto background
        # before the classifier is informative (docs/methods/case.md, "Attention warm-up").
        select_fg = att if self._epoch >= self.attention_warmup_epochs else torch.zeros_like(att)
        combined = self._combined_scores(out, select_fg)  # (B, T, G)
        idx, counts = topk_mil_indices(
            combined, ratio=self.topk_ratio, mask=mask, return_counts=True, rounding=self.topk_rounding
        )  # (B, k, G)

        # Eq. 1: video scores from the mean of the top-k raw CAS logits, per stream.
        video_logits = topk_mil_pool(cas, idx, counts)  # (S, B, G)
        loss_v = sum(video_ce_loss(v, y) for v in video_logits) / cas.shape[0]

        # Q^A: snippets in the top-k of a ground-truth class are foreground.
        q_a = self._attention_targets(idx, y, x.shape[1])  # (B, T)
        loss_a = sum(generalized_bce(a, q_a, q=self.gce_q, mask=mask) for a in att)  # Eq. 2, summed over streams
        losses = {"loss_v": loss_v, "loss_a": loss_a}
        total = loss_v + loss_a

        if self.use_scc:
            valid = mask.reshape(-1)  # (N,) with N = B * T; padded steps never enter clustering
            logits = rearrange(out["cluster_logits"], "s b t k -> s (b t) k")[:, valid]  # (S, N, K)
            emb = rearrange(out["embeddings"], "s b t h -> s (b t) h")[:, valid]  # (S, N, H)
            att_fused = att.mean(0).reshape(-1)[valid]  # (N,)
            q_s = self._cluster_targets(logits.mean(0).detach(), att_fused.detach())  # (N, K)
            loss_s = sum(soft_ce(q_s, lg) for lg in logits)  # Eq. 3, summed over streams
            losses["loss_s"] = loss_s
            total = total + self.lambda_s * loss_s
            if self.use_ccc:
                q_a_flat = q_a.reshape(-1)[valid]  # (N,)
                fb = torch.stack([q_a_flat, 1 - q_a_flat], -1)  # (N, 2)
                stream_logits = torch.stack(
                    [cluster_fb_logits(cluster_prototypes(q_s, e, sum_over=self._sum_with_grad()),
                                       cluster_prototypes(fb, e, sum_over=self._sum_with_grad()), self.rho)
                     for e in emb]
                )  # (S, K, 2), Eq. 4-5
                beta = (fb_marginal(q_a_flat, sum_over=self._sum()) if self.ccc_marginal == "empirical"
                        else None)  # Eq. 13 / Eq. 9
                q_c = sinkhorn_labels(
                    stream_logits.mean(0).detach(), epsilon=self.sinkhorn_epsilon, n_iter=self.sinkhorn_iters,
                    col_marginal=beta,
                )  # (K, 2)
                loss_c = sum(soft_ce(q_c, lg) for lg in stream_logits)  # Eq. 6, summed over streams
                losses["loss_c"] = loss_c
                total = total + self.lambda_c * loss_c
                with torch.no_grad():
                    self.cluster_fb.copy_(q_c)
                    self._last["H(Q^C)"] = float(-(q_c * q_c.clamp_min(1e-12).log()).sum(-1).mean())
            with torch.no_grad():
                self._last["H(Q^S)"] = float(-(q_s * q_s.clamp_min(1e-12).log()).sum(-1).mean())
        if self.memory is not None:
            for si, branch in enumerate(self.memory):
                # RMGCL gates Eq. 7 on attention-weighted class probabilities. CASE's T-CAS has
                # no background column: "calibrated" gates CASE's own attention-calibrated T-CAS
                # (the scores of Eq. 1's top-k), so a class passes zeta only where the attention
                # also calls the step foreground, and background on 1 - P^A. "softmax" gates the
                # plain class softmax, which background steps of a labelled video pass too.
                scores = combined.detach() if self.memory_scores == "calibrated" else None
                res = branch(
                    out["cls_embeddings"][si], cas[si], y, mask, partial(self.model.classify, stream=si),
                    scores=scores, background_scores=1 - att[si],
                )
                total = total + res["loss"]  # gamma L_ps + mu L_cont (RMGCL Eq. 17)
                for k, v in res["losses"].items():
                    losses[k] = losses.get(k, 0) + v
                if self.memory_teacher_weight and res["pseudo_tcam"] is not None:
                    # The pseudo-T-CAS (the distillation teacher) learns Eq. 1 on the same top-k steps.
                    teacher = video_ce_loss(topk_mil_pool(res["pseudo_tcam"], idx, counts), y)
                    losses["loss_teacher"] = losses.get("loss_teacher", 0) + teacher
                    total = total + self.memory_teacher_weight * teacher
        losses["loss"] = total  # Eq. 14
        return losses

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch
        for branch in self.memory or []:
            branch.set_epoch(epoch)

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        return inference_state_with_memory(self, "memory")

    def _attention_targets(self, idx: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
        """Q^A (B, T): 1 where a snippet is among the top-k of one of the video's classes."""
        b, k, g = idx.shape
        chosen = torch.zeros(b, t, g, device=idx.device)
        chosen.scatter_(1, idx, 1.0)
        return (chosen * (y > 0).unsqueeze(1).float()).amax(-1)  # (B, T)

    @torch.no_grad()
    def _cluster_targets(self, logits: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Q^S (N, K) from the fused cluster logits, by the labelling Table 4 selects."""
        if self.scc_labelling == "softmax":  # "w/o OT, soft": labels are the predictions
            return (logits / self.sinkhorn_epsilon).softmax(-1)
        if self.scc_labelling == "argmax":  # "w/o OT, hard"
            return F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        prior = None
        if self.scc_prior == "rank":
            prior = self._rank_prior(attention)  # Eq. 11
        q = sinkhorn_labels(
            logits, epsilon=self.sinkhorn_epsilon, n_iter=self.sinkhorn_iters, prior=prior,
            distributed=self.global_batch,
        )  # Eq. 10 / Eq. 12
        if self.scc_labelling == "ot_hard":
            q = F.one_hot(q.argmax(-1), q.shape[-1]).float()
        return q

    # Under torchrun each rank holds 1/N of the batch. The paper's batch statistics -- SCC's
    # Sinkhorn (above) and rank prior, CCC's prototypes and marginal -- are taken over the
    # global batch, so that N processes train on one process's objective (docs/scaling.md).
    def _use_global(self) -> bool:
        return self.global_batch and collectives.is_distributed()

    def _sum(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return collectives.all_reduce_sum if self._use_global() else None

    def _sum_with_grad(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return collectives.all_reduce_sum_with_grad if self._use_global() else None

    def _rank_prior(self, attention: torch.Tensor) -> torch.Tensor:
        """Eq. 11 for this rank's snippets (N,), ranked among the global batch's."""
        if not self._use_global():
            return rank_gaussian_prior(attention, self.cluster_fb[:, 0], self.sigma, positions=self.prior_positions)  # (N, K)
        everyone, start = collectives.all_gather_rows_with_start(attention)  # rank order = one process's order
        prior = rank_gaussian_prior(everyone, self.cluster_fb[:, 0], self.sigma, positions=self.prior_positions)
        return prior[start : start + attention.shape[0]]

    def log_metrics(self) -> dict[str, float]:
        return dict(self._last)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        x, mask = batch["features"], batch["mask"]
        out = self.model(x, mask)
        cas_prob = None
        if self.memory is not None and self.memory_test_cam != "main":
            cas_prob = torch.stack([
                memory_test_cam(
                    out["cas"][si],
                    branch(out["cls_embeddings"][si], out["cas"][si], None, mask,
                           partial(self.model.classify, stream=si))["pseudo_tcam"],
                    self.memory_test_cam,
                )
                for si, branch in enumerate(self.memory)
            ])  # (S, B, T, G)
        with stage("clustering_assisted"):  # Sec. 4.3: the calibrated T-CAS
            combined = self._combined_scores(out, self._test_foreground(out), cas_prob)  # (B, T, G)
        idx, counts = topk_mil_indices(
            combined, ratio=self.topk_ratio, mask=mask, return_counts=True, rounding=self.topk_rounding
        )  # (B, k, G)
        # Public code: each stream's top-k logits -> softmax, then the streams' mean.
        video_scores = topk_mil_pool(out["cas"], idx, counts).softmax(-1).mean(0)  # (B, G)
        results = []
        for i in range(x.shape[0]):
            n = int(mask[i].sum())
            results.append({"cas": combined[i, :n], "class_scores": video_scores[i]})
        return results
