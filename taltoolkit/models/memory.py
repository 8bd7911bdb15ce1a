"""RMGCL/GKSA cross-video memory branch (Zhang & Zhao; ../shared/papers/rmgcl_gksa.txt, Sec. III-C..E).

A component that any WTAL baseline can carry: it takes the baseline's segment embeddings,
its TCAM and the video labels, and returns fused segment features, pseudo-TCAMs from the
baseline's own (shared) CAM head, and two losses:

* RMGCL (Sec. III-C): regional representative features (Eq. 6-7) enter a dataset-level
  memory bank of per-class queues, background included (Eq. 8), and are contrasted against
  it with the noise-tolerant loss of Eq. 9;
* GKSA (Sec. III-D): learnable latent codewords summarise the memory (self-attention,
  Eq. 10; depthwise 1x1 key/value projections and sparse cross-attention + FFN, Eq. 11) into
  T_M, which is aggregated into every segment without parameters (Eq. 12) and fused with it
  (Eq. 13); the shared CAM head turns the fused features into pseudo-TCAMs (Eq. 14);
* the pseudo-TCAMs supervise the baseline's TCAM with per-segment KL uncertainty weighting
  (Sec. III-E, Eq. 15-16).

The memory bank is a training-time buffer. At inference only T_M is needed (Sec. III-E4):
:meth:`MemoryBranch.compress` stores it as a buffer and :meth:`MemoryBranch.inference_state`
returns a state dict without the memory bank (nor the summariser that reads it), which a
fresh branch loads and predicts from identically.

The networks here never look at what produced their inputs, so CASE's two-stream network
(T-CAS without a background column: ``background=False``) can carry the branch as well as
ACM-Net (C+1 columns, background last). Values the paper leaves open are chosen in the
constructor, each with its reason.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange, repeat
from torch import nn

from taltoolkit import collectives
from taltoolkit.losses.memory import (
    momentum_enqueue,
    noise_tolerant_contrastive,
    regional_features,
    segment_uncertainty,
    uncertainty_weighted_pseudo_loss,
)
from taltoolkit.registry import register

Tensor = torch.Tensor

AGGREGATIONS = ("nonparametric", "parametric")  # Eq. 12 vs the parametric attention of Sec. IV-D
# Which class activation map the proposals are cut from at test time (docs/methods/rmgcl.md).
TEST_CAMS = ("main", "pseudo", "mean")


class _Attention(nn.Module):
    """Multi-head scaled dot-product attention over a shared key set; ``topk > 0`` makes it sparse.

    forward(query (..., Nq, D), key (Nk, Dk), value (Nk, Dv), key_valid (Nk,) bool | None)
    -> (..., Nq, D). Keys are shared by every leading index of the query (codewords, or all
    segments of a batch). Sparse: each query attends only to its ``topk`` highest-scoring
    valid keys per head (Sp-Att of Eq. 11). No valid key -> zeros (nothing to attend to).
    """

    def __init__(
        self, dim: int, num_heads: int, key_dim: int | None = None, value_dim: int | None = None,
        dropout: float = 0.0, topk: int = 0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dimension {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.topk = topk
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(key_dim or dim, dim)
        self.v_proj = nn.Linear(value_dim or dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_valid: Tensor | None = None) -> Tensor:
        if key_valid is not None and not bool(key_valid.any()):
            return query.new_zeros(query.shape[:-1] + (self.out_proj.out_features,))
        h = self.num_heads
        q = rearrange(self.q_proj(query), "... n (h d) -> ... h n d", h=h)
        k = rearrange(self.k_proj(key), "m (h d) -> h m d", h=h)
        v = rearrange(self.v_proj(value), "m (h d) -> h m d", h=h)
        scores = torch.einsum("...hnd,hmd->...hnm", q, k) / math.sqrt(q.shape[-1])  # (..., h, Nq, Nk)
        if key_valid is not None:
            scores = scores.masked_fill(~key_valid.to(torch.bool), float("-inf"))
        if 0 < self.topk < scores.shape[-1]:
            # Keep each query's top-k keys; with fewer valid keys than k the k-th score is
            # -inf and nothing more is dropped.
            kth = scores.topk(self.topk, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        attn = self.dropout(scores.softmax(-1))
        out = torch.einsum("...hnm,hmd->...hnd", attn, v)
        return self.out_proj(rearrange(out, "... h n d -> ... n (h d)"))


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


class KnowledgeSummarizer(nn.Module):
    """Global Knowledge Summarization (Eq. 10-11): N learnable codewords read the memory into T_M.

    forward(memory (R, Q, D), valid (R, Q) bool) -> T_M (N, D).

    Eq. 10: K = MLP([R, PE]), V = MLP([R, PE]), Q_M = LN(R + SelfAtt(R, K, V)).
    Eq. 11: K_M = DWConv1x1(M), V_M = DWConv1x1(M),
            T' = LN(Q_M + SpAtt(Q_M, [K_M, PE_M], V_M)), T_M = LN(T' + FFN(T')),
    with [., .] concatenation along channels (projected back to D by the attention's key
    projection) and residual + layer norm around attention and FFN as in the Transformer the
    paper follows ([85]). PE (N, D) are learnable positional embeddings of the codewords
    (DETR-style queries); PE_M (R, D) is a learnable embedding of the memory row a slot
    belongs to -- the only position a slot has, since the order inside a FIFO queue carries
    no meaning. Empty slots are masked out of the cross-attention.
    """

    def __init__(
        self, dim: int, num_codewords: int, num_rows: int, num_heads: int, sparse_topk: int,
        dropout: float = 0.1, ffn_ratio: int = 4,
    ) -> None:
        super().__init__()
        # Randomly initialised and shared across the dataset (Sec. III-D1); N(0, 1) as nn.Embedding.
        self.codewords = nn.Parameter(torch.randn(num_codewords, dim))  # R
        self.codeword_pos = nn.Parameter(torch.randn(num_codewords, dim))  # PE of Eq. 10
        self.key_mlp = _mlp(2 * dim, dim, dim)
        self.value_mlp = _mlp(2 * dim, dim, dim)
        self.self_attn = _Attention(dim, num_heads, dropout=dropout)
        self.norm_self = nn.LayerNorm(dim)
        # Depthwise 1x1 convolutions (groups = channels): a per-channel affine map of each slot.
        self.memory_key = nn.Conv1d(dim, dim, 1, groups=dim)
        self.memory_value = nn.Conv1d(dim, dim, 1, groups=dim)
        self.memory_pos = nn.Parameter(torch.randn(num_rows, dim))  # PE of Eq. 11
        self.cross_attn = _Attention(dim, num_heads, key_dim=2 * dim, dropout=dropout, topk=sparse_topk)
        self.norm_cross = nn.LayerNorm(dim)
        self.ffn = _mlp(dim, ffn_ratio * dim, dim, dropout)  # [85]: d_ff = 4 d_model
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, memory: Tensor, valid: Tensor) -> Tensor:
        r = self.codewords  # (N, D)
        kv = torch.cat([r, self.codeword_pos], -1)  # (N, 2D)
        q_m = self.norm_self(r + self.dropout(self.self_attn(r, self.key_mlp(kv), self.value_mlp(kv))))  # Eq. 10
        slots = rearrange(memory, "r q d -> 1 d (r q)")  # one sequence of R*Q slots, channels-first
        k_m = rearrange(self.memory_key(slots), "1 d l -> l d")  # (L, D)
        v_m = rearrange(self.memory_value(slots), "1 d l -> l d")
        pos = repeat(self.memory_pos, "r d -> (r q) d", q=memory.shape[1])  # (L, D)
        att = self.cross_attn(q_m, torch.cat([k_m, pos], -1), v_m, rearrange(valid, "r q -> (r q)"))
        t = self.norm_cross(q_m + self.dropout(att))
        return self.norm_ffn(t + self.dropout(self.ffn(t)))  # T_M, Eq. 11


@register("branch", "rmgcl")
class MemoryBranch(nn.Module):
    """RMGCL + GKSA memory branch: dataset-level memory, contrastive loss, summarised knowledge, pseudo-TCAMs.

    forward(embeddings (B, T, H), tcam (B, T, K) logits, video_labels (B, C) | None,
    mask (B, T) | None, classify, scores=None, background_scores=None, update=None) -> dict:
      ``active`` bool; ``fused`` (B, T, H) F_fuse (Eq. 13) or None when inactive;
      ``pseudo_tcam`` (B, T, K) logits A_hat = classify(F_fuse) (Eq. 14) or None;
      ``uncertainty`` (B, T) D_t (Eq. 15, detached, for logging) or None;
      ``losses`` {"loss_ncl" (Eq. 9), "loss_pseudo" (Eq. 16)}, zeros when inactive or in eval;
      ``loss`` their share of Eq. 17, ``gamma * loss_pseudo + mu * loss_ncl``, which the host
      method adds to its own objective;
      ``regional`` (features (N, H) detached, rows (N,)) the regional features of this batch.

    K = C+1 (background column last) when ``background`` else C. ``tcam`` holds the logits
    of the baseline's TCAM A (Eq. 2), the student of Eq. 15-16. ``scores`` (B, T, K) are the
    probabilities Eq. 7 thresholds (for ACM-Net: softmax of the instance TCAM A^ins); default
    ``softmax(tcam)``. ``background_scores`` (B, T) is the probability of background that
    selects background regional features with the same threshold zeta; default: the
    background column of ``scores`` (the C+1-th class of Eq. 7), or, for a TCAM without one,
    ``1 - max_c scores`` (low-score steps) -- pass ``1 - attention`` for CASE. ``classify``
    is the baseline's CAM head (..., H) -> (..., K), shared for Eq. 14.

    Control (``empty_memory_control=True``, not in the paper): the memory is never filled
    and the aggregated knowledge F' of Eq. 12 is 0, so F_fuse = FFN([0, F]) and the
    pseudo-TCAM is a second, dropout-free path through the shared head with no cross-video
    information; L_cont is 0 (no stored positive). Everything else (Eq. 15-16, the host's
    teacher loss, test-time pseudo-CAM) runs as usual, so the difference between this and
    the full branch is what the memory itself contributes.

    Warm-up (Sec. IV-B2): before ``warmup_epochs`` (set through :meth:`set_epoch`) the branch
    is inactive while training: the memory is neither filled, read nor used for losses, as
    the paper builds it "only after 50 training epochs". In eval mode the branch is active
    whenever it has knowledge: a non-empty memory, or a stored T_M (:meth:`compress`); it
    then aggregates the stored T_M, which it first refreshes from the memory if it has one.
    While training and active, ``forward`` enqueues the batch's regional features after
    computing its losses (``update=False`` to do it yourself with :meth:`update_memory`).
    """

    def __init__(
        self,
        embed_dim: int,  # runtime: the baseline's embedding width H (D of Sec. III)
        num_classes: int,  # runtime: C action classes; the memory has C+1 rows, background last
        queue_length: int = 500,  # q of Sec. III-C1, "set to 500" (Sec. IV-B1); Fig. 5 varies it
        momentum: float = 0.99,  # alpha of Eq. 8 (Sec. IV-B2)
        zeta: float = 0.75,  # Eq. 7 threshold (Sec. III-C1)
        num_codewords: int = 40,  # N of Sec. III-D1: 40 THUMOS14, 200 ActivityNet (Sec. IV-B1, Table VII)
        num_heads: int = 8,  # not stated: the Transformer [85] the modules follow uses 8 heads
        temperature: float = 0.1,  # tau of Eq. 9, not stated: supervised contrastive learning [48]'s value
        ncl_lambda: float = 0.5,  # lambda of Eq. 9 (Sec. IV-B2)
        ncl_q: float = 0.2,  # q of Eq. 9 (Sec. IV-B2)
        ncl_reduction: str = "mean",  # Eq. 9 over a row's positives: mean (default) | sum (as printed)
        rho: float = 0.001,  # Eq. 16 variance regulariser (Sec. IV-B2)
        warmup_epochs: int = 50,  # memory built only after 50 of 200 epochs (Sec. IV-B2)
        background: bool = True,  # the TCAM has a background column (ACM-Net: yes; CASE: no)
        store_background: bool = True,  # Table V "+ background": background features in the memory
        use_contrastive: bool = True,  # Table IV "RMGCL" / Table V "+ robust contrastive loss"
        use_summarization: bool = True,  # Table IV "GKS": False aggregates the raw memory (Eq. 12 over M)
        aggregation: str = "nonparametric",  # Eq. 12; "parametric": projected attention, the variant Sec. III-D2 rejects
        use_uncertainty: bool = True,  # Eq. 16 weighting; False: plain pseudo-label cross-entropy
        sparse_topk: int | None = None,  # Sp-Att keys per codeword, not stated: None = q (one queue's worth), 0 = dense
        dropout: float = 0.1,  # attention/FFN dropout, not stated: the Transformer [85] default
        detach_pseudo_target: bool = True,  # A_hat is a label inside Eq. 16's CE (D_t keeps both gradients)
        detach_uncertainty_weight: bool = True,  # not in the paper: no gradient through exp(-D_t) (docs/methods/rmgcl.md)
        distributed: bool = True,  # under torchrun, every rank enqueues the regional features of all ranks
        pseudo_weight: float = 1.0,  # gamma of Eq. 17 (Sec. IV-B2)
        contrastive_weight: float = 0.1,  # mu of Eq. 17 (Sec. IV-B2)
        empty_memory_control: bool = False,  # control, not in the paper: memory never filled, F' = 0
    ) -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={aggregation!r}; choose one of {AGGREGATIONS}")
        if queue_length < 1 or num_codewords < 1:
            raise ValueError("queue_length and num_codewords must be >= 1")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum={momentum} must be in (0, 1]")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.queue_length = queue_length
        self.momentum = momentum
        self.zeta = zeta
        self.num_codewords = num_codewords
        self.temperature = temperature
        self.ncl_lambda, self.ncl_q = ncl_lambda, ncl_q
        if ncl_reduction not in ("mean", "sum"):
            raise ValueError(f"ncl_reduction={ncl_reduction!r}; choose mean or sum")
        self.ncl_reduction = ncl_reduction
        self.rho = rho
        self.warmup_epochs = warmup_epochs
        self.background = background
        self.store_background = store_background
        self.use_contrastive = use_contrastive
        self.use_summarization = use_summarization
        self.aggregation = aggregation
        self.use_uncertainty = use_uncertainty
        self.detach_pseudo_target = detach_pseudo_target
        self.detach_uncertainty_weight = detach_uncertainty_weight
        self.distributed = distributed
        self.pseudo_weight, self.contrastive_weight = pseudo_weight, contrastive_weight
        self.empty_memory_control = empty_memory_control
        self._epoch = 0
        rows = num_classes + 1

        # The memory bank M (C+1, q, H) and its FIFO bookkeeping: training state, carried by
        # training checkpoints (resume) but not needed at inference.
        self.register_buffer("memory", torch.zeros(rows, queue_length, embed_dim))
        self.register_buffer("memory_count", torch.zeros(rows, dtype=torch.long))
        self.register_buffer("memory_ptr", torch.zeros(rows, dtype=torch.long))
        self.summarizer: KnowledgeSummarizer | None = None
        if use_summarization:
            topk = queue_length if sparse_topk is None else sparse_topk
            self.summarizer = KnowledgeSummarizer(embed_dim, num_codewords, rows, num_heads, topk, dropout)
        # T_M as stored for inference (Sec. III-E4); without summarisation the "summary" is the
        # raw memory, which is then as large as the memory itself.
        size = num_codewords if use_summarization else rows * queue_length
        self.register_buffer("summary", torch.zeros(size, embed_dim))
        self.register_buffer("summary_mask", torch.zeros(size, dtype=torch.bool))
        self.aggregator = (
            _Attention(embed_dim, num_heads, dropout=dropout) if aggregation == "parametric" else None
        )
        self.fusion = _mlp(2 * embed_dim, embed_dim, embed_dim, dropout)  # Eq. 13 FFN on [F', F]
        self.register_load_state_dict_pre_hook(_fill_training_state)
        # True while the stored T_M equals what the memory and the current weights give; only a
        # training step, a memory update or a load can change either, and each clears it. Lets
        # evaluation summarise the memory once instead of once per predicted video.
        self._summary_fresh = False

    # ------------------------------------------------------------------ state
    def set_epoch(self, epoch: int) -> None:
        """Warm-up gating: the branch trains from epoch ``warmup_epochs`` on (0-based)."""
        self._epoch = int(epoch)

    @property
    def is_active(self) -> bool:
        if self.training:
            return self._epoch >= self.warmup_epochs
        # The control has no knowledge by design, but its fused path is still the branch's output.
        return self.empty_memory_control or self.memory_filled() or bool(self.summary_mask.any())

    def memory_valid(self) -> Tensor:
        """(C+1, q) bool: slots that hold a feature."""
        slots = torch.arange(self.queue_length, device=self.memory.device)
        return slots.unsqueeze(0) < self.memory_count.unsqueeze(1)

    def memory_filled(self) -> bool:
        return bool((self.memory_count > 0).any())

    def training_only_keys(self) -> list[str]:
        """State-dict keys that inference does not need: the memory bank and its summariser."""
        keys = ["memory", "memory_count", "memory_ptr"]
        if self.summarizer is not None:
            keys += [f"summarizer.{k}" for k in self.summarizer.state_dict()]
        return keys

    @torch.no_grad()
    def update_memory(self, features: Tensor, rows: Tensor) -> None:
        """Enqueue regional features (N, H) into their rows (N,) with the momentum of Eq. 8.

        Under torchrun (and ``distributed``) the features of all ranks are gathered first, in
        rank order, so that every rank's memory stays identical. The buffers are replaced,
        not written in place: the old memory may still be needed by this step's backward.
        A no-op under ``empty_memory_control``.
        """
        if self.empty_memory_control:
            return
        features, rows = self._gather(features.detach(), rows)
        memory, count, ptr = momentum_enqueue(
            self.memory, self.memory_count, self.memory_ptr, features, rows, alpha=self.momentum
        )
        self.memory, self.memory_count, self.memory_ptr = memory, count, ptr
        self._summary_fresh = False

    def _gather(self, features: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        if not (self.distributed and collectives.is_distributed()):
            return features, rows
        return collectives.all_gather_rows(features), collectives.all_gather_rows(rows)

    def knowledge(self) -> tuple[Tensor, Tensor]:
        """The knowledge Eq. 12 aggregates: (T_M (S, H), valid (S,) bool).

        While training, and whenever the memory holds anything, from the memory (summarised
        by GKS -- with an empty memory the codewords alone -- or the raw slots without
        summarisation); in eval mode with an empty memory (a branch loaded from
        :meth:`inference_state`), the stored T_M of :meth:`compress`.
        """
        if self.training or self.memory_filled():
            valid = self.memory_valid()
            if self.summarizer is None:
                return rearrange(self.memory, "r q h -> (r q) h"), rearrange(valid, "r q -> (r q)")
            t_m = self.summarizer(self.memory, valid)
            return t_m, torch.ones(t_m.shape[0], dtype=torch.bool, device=t_m.device)
        return self.summary, self.summary_mask

    @torch.no_grad()
    def compress(self) -> Tensor:
        """Store T_M, summarised from the current memory without dropout, as the ``summary`` buffer.

        A no-op when the memory is empty (the stored T_M, if any, is kept). Returns the summary.
        """
        if not self.memory_filled():
            return self.summary
        was = self.training
        self.eval()  # T_M for inference: no dropout
        t_m, valid = self.knowledge()
        self.train(was)
        self.summary.copy_(t_m)
        self.summary_mask.copy_(valid)
        return self.summary

    def _refresh_summary(self) -> None:
        """Re-summarise the memory into the stored T_M unless it is already current."""
        if not self._summary_fresh and self.memory_filled():
            self.compress()
            self._summary_fresh = True

    def inference_state(self) -> dict[str, Tensor]:
        """State dict for deployment: T_M compressed and stored, the memory bank and summariser left out.

        A fresh branch loads it with ``load_state_dict`` (strict) and, in eval mode, gives the
        same outputs as this one.
        """
        self._refresh_summary()
        drop = set(self.training_only_keys())
        return {k: v for k, v in self.state_dict().items() if k not in drop}

    # ------------------------------------------------------------------ forward
    def _selection_scores(
        self, tcam: Tensor, scores: Tensor | None, background_scores: Tensor | None
    ) -> Tensor:
        """(B, T, C+1) probabilities that Eq. 7 thresholds: C classes, then background."""
        c = self.num_classes
        probs = tcam.detach().softmax(-1) if scores is None else scores.detach()
        if self.background:
            cls, bg = probs[..., :c], probs[..., c]
        else:
            cls, bg = probs, 1 - probs.max(-1).values
        if background_scores is not None:
            bg = background_scores.detach()
        return torch.cat([cls, bg.unsqueeze(-1)], -1)

    def aggregate(self, embeddings: Tensor, t_m: Tensor, valid: Tensor) -> Tensor:
        """F' of Eq. 12: (B, T, H) segments attend to the knowledge T_M (S, H)."""
        if self.aggregator is not None:
            return self.aggregator(embeddings, t_m, t_m, valid)
        # Non-parametric: the segment features themselves are the queries, T_M keys and values.
        logits = embeddings @ t_m.t() / math.sqrt(self.embed_dim)  # (B, T, S)
        logits = logits.masked_fill(~valid, float("-inf"))
        return logits.softmax(-1) @ t_m  # (B, T, H)

    def forward(
        self,
        embeddings: Tensor,
        tcam: Tensor,
        video_labels: Tensor | None,
        mask: Tensor | None,
        classify: Callable[[Tensor], Tensor],
        scores: Tensor | None = None,
        background_scores: Tensor | None = None,
        update: bool | None = None,
    ) -> dict[str, Any]:
        b, t, h = embeddings.shape
        k = self.num_classes + int(self.background)
        if h != self.embed_dim:
            raise ValueError(f"embeddings have H={h}, the branch was built for embed_dim={self.embed_dim}")
        if tcam.shape != (b, t, k):
            raise ValueError(
                f"tcam has shape {tuple(tcam.shape)}, expected {(b, t, k)} "
                f"({self.num_classes} classes{' + background' if self.background else ''})"
            )
        if scores is not None and scores.shape != tcam.shape:
            raise ValueError(f"scores have shape {tuple(scores.shape)}, expected the TCAM's {tuple(tcam.shape)}")
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=embeddings.device)
        mask = mask.to(torch.bool)
        zero = embeddings.new_zeros(())
        out: dict[str, Any] = {
            "active": False, "fused": None, "pseudo_tcam": None, "uncertainty": None,
            "losses": {"loss_ncl": zero, "loss_pseudo": zero}, "loss": zero, "regional": None,
        }
        if self.training:
            self._summary_fresh = False  # this step's optimizer update will change the weights
        if not self.is_active:
            return out
        out["active"] = True

        # GKSA: knowledge T_M (Eq. 10-11), aggregation (Eq. 12), fusion (Eq. 13), pseudo-TCAM (Eq. 14).
        if self.empty_memory_control:
            t_m, valid = self.summary, torch.zeros_like(self.summary_mask)  # no knowledge: F' = 0 below
        elif self.training:
            t_m, valid = self.knowledge()
        else:
            # Inference reads the stored T_M only, refreshed first when a memory is present, so a
            # branch loaded without the memory computes exactly the same thing.
            self._refresh_summary()
            t_m, valid = self.summary, self.summary_mask
        if bool(valid.any()):
            agg = self.aggregate(embeddings, t_m.to(embeddings.dtype), valid)  # (B, T, H): F'
        else:  # only the first step after warm-up without summarisation: nothing stored yet
            agg = torch.zeros_like(embeddings)
        fused = self.fusion(torch.cat([agg, embeddings], -1)) * mask.unsqueeze(-1)  # (B, T, H)
        pseudo = classify(fused)  # (B, T, K) logits, the shared head
        out["fused"], out["pseudo_tcam"] = fused, pseudo

        if not self.training:
            return out
        if video_labels is None:
            raise ValueError("training the memory branch needs video_labels")

        # RMGCL: regional features (Eq. 6-7), filtered by the video labels; background for every video.
        select = self._selection_scores(tcam, scores, background_scores)  # (B, T, C+1)
        bg_label = torch.full_like(video_labels[:, :1], 1 if self.store_background else 0)
        labels = torch.cat([video_labels, bg_label], -1)  # (B, C+1)
        beta, has = regional_features(embeddings, select, labels, zeta=self.zeta, mask=mask)  # (B, C+1, H)
        vid, rows = has.nonzero(as_tuple=True)
        anchors = beta[vid, rows]  # (N, H), keeps the embeddings' gradient
        losses = out["losses"]
        # Both losses exponentiate tau-scaled similarities / KL terms: fp32 even under autocast.
        with torch.autocast(embeddings.device.type, enabled=False):
            if self.use_contrastive:
                # Eq. 9, against the memory before this batch is enqueued; averaged over the
                # anchors of the global batch (ranks hold different numbers of anchors).
                losses["loss_ncl"] = collectives.global_mean(noise_tolerant_contrastive(
                    anchors.float(), rows, self.memory, self.memory_valid(), temperature=self.temperature,
                    lam=self.ncl_lambda, q=self.ncl_q, reduction=self.ncl_reduction, per_anchor_out=True,
                ))
            losses["loss_pseudo"] = uncertainty_weighted_pseudo_loss(
                tcam.float(), pseudo.float(), mask, rho=self.rho, use_uncertainty=self.use_uncertainty,
                detach_target=self.detach_pseudo_target, detach_weight=self.detach_uncertainty_weight,
            )  # Eq. 16
        out["loss"] = self.pseudo_weight * losses["loss_pseudo"] + self.contrastive_weight * losses["loss_ncl"]  # Eq. 17
        with torch.no_grad():
            out["uncertainty"] = segment_uncertainty(tcam, pseudo)
        out["regional"] = (anchors.detach(), rows)
        if update is None or update:
            self.update_memory(anchors, rows)  # Eq. 8
        return out


def _fill_training_state(
    module: MemoryBranch, state_dict: dict[str, Tensor], prefix: str, local_metadata: Any, strict: bool,
    missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
) -> None:
    """Load-time hook: a state with a stored T_M may omit the memory bank and the summariser.

    The missing entries keep the loading module's own values (an empty memory, untrained
    summariser), which inference never reads; any other missing key still fails a strict load.
    """
    module._summary_fresh = False  # new weights, and maybe a new memory
    mask = state_dict.get(prefix + "summary_mask")
    if mask is None or not (bool(mask.any()) or module.empty_memory_control):
        return
    own = module.state_dict()
    for key in module.training_only_keys():
        if prefix + key not in state_dict:
            state_dict[prefix + key] = own[key]


# --------------------------------------------------------------------------- host helpers
# What a method that carries the branch (RMGCL on ACM-Net, CASE on its two-stream network)
# needs to build it, read its pseudo-CAM at test time and save its inference weights.
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
