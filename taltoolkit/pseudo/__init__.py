"""Pseudo-label makers. Plain functions that methods call."""
from taltoolkit.pseudo.sinkhorn import sinkhorn_labels, sinkhorn_log, sinkhorn_plan

__all__ = ["sinkhorn_labels", "sinkhorn_log", "sinkhorn_plan"]
