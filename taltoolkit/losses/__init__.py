"""Losses: one module per paper-equation family, tensors in, tensors out.

Plain functions, not registered components: methods call them directly. Components that
a config swaps (a memory branch, a post-processor) are registered instead."""
from taltoolkit.losses.clustering import (
    ascending_ranks,
    cluster_fb_logits,
    cluster_prototypes,
    fb_marginal,
    rank_gaussian_prior,
    soft_ce,
)
from taltoolkit.losses.mil import generalized_bce, topk_count, topk_mil_indices, topk_mil_pool, video_ce_loss

__all__ = [
    "ascending_ranks",
    "cluster_fb_logits",
    "cluster_prototypes",
    "fb_marginal",
    "generalized_bce",
    "rank_gaussian_prior",
    "soft_ce",
    "topk_count",
    "topk_mil_indices",
    "topk_mil_pool",
    "video_ce_loss",
]
