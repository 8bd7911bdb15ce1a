"""Pseudo-label makers. Plain functions that methods call."""
from taltoolkit.pseudo.has import global_video_feature, has_attention, vote
from taltoolkit.pseudo.plri import (
    affinity_graph,
    align_clusters,
    plri_confidence,
    plri_split,
    spectral_clustering,
    spectral_embedding,
)
from taltoolkit.pseudo.sinkhorn import sinkhorn_labels, sinkhorn_log, sinkhorn_plan

__all__ = [
    "affinity_graph",
    "align_clusters",
    "global_video_feature",
    "has_attention",
    "plri_confidence",
    "plri_split",
    "sinkhorn_labels",
    "sinkhorn_log",
    "sinkhorn_plan",
    "spectral_clustering",
    "spectral_embedding",
    "vote",
]
