"""Clustering scores for pseudo-label makers: purity, NMI, ARI and Hungarian accuracy.

NMI and ARI are written with numpy on the contingency table and follow scikit-learn's
definitions (NMI with the arithmetic-mean normaliser, both with scikit-learn's conventions
for degenerate labelings), so they can be used without importing scikit-learn. scipy is
imported lazily, only for the assignment problem.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _contingency(labels_true: Sequence[Any], labels_pred: Sequence[Any]):
    """(classes (A,), clusters (B,), counts (A, B) int64) of the two labelings."""
    t = np.asarray(labels_true)
    p = np.asarray(labels_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shapes {t.shape} and {p.shape}")
    if len(t) != len(p):
        raise ValueError(f"labels_true has {len(t)} items but labels_pred has {len(p)}")
    if len(t) == 0:
        raise ValueError("clustering scores need at least one item")
    classes, ti = np.unique(t, return_inverse=True)
    clusters, pi = np.unique(p, return_inverse=True)
    counts = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    np.add.at(counts, (ti, pi), 1)
    return classes, clusters, counts


def _entropy(sizes: np.ndarray) -> float:
    """Shannon entropy (nats) of a partition given its part sizes."""
    p = sizes[sizes > 0] / sizes.sum()
    return float(-(p * np.log(p)).sum())


def _nmi(counts: np.ndarray) -> float:
    A, B = counts.shape
    # Both labelings put everything in one group: identical, by scikit-learn's convention.
    if A == B == 1:
        return 1.0
    n = counts.sum()
    a = counts.sum(axis=1)  # (A,) class sizes
    b = counts.sum(axis=0)  # (B,) cluster sizes
    i, j = np.nonzero(counts)
    nij = counts[i, j].astype(np.float64)
    mi = float((nij / n * (np.log(nij * n) - np.log(a[i] * b[j].astype(np.float64)))).sum())
    mi = max(mi, 0.0)  # rounding can leave a tiny negative value for independent labelings
    if mi == 0.0:
        return 0.0
    return mi / ((_entropy(a) + _entropy(b)) / 2.0)


def _ari(counts: np.ndarray) -> float:
    """Adjusted Rand index from pair counts, in exact integer arithmetic until the ratio."""
    n = int(counts.sum())
    sq = int((counts.astype(object) ** 2).sum())  # Python ints: no overflow on big inputs
    a2 = int((counts.sum(axis=1).astype(object) ** 2).sum())
    b2 = int((counts.sum(axis=0).astype(object) ** 2).sum())
    # Ordered pairs of distinct items: together in both, only in pred, only in true, neither.
    both = sq - n
    pred_only = b2 - sq
    true_only = a2 - sq
    neither = n * n - both - pred_only - true_only - n
    if pred_only == 0 and true_only == 0:
        return 1.0
    num = 2.0 * (both * neither - true_only * pred_only)
    den = (both + true_only) * (true_only + neither) + (both + pred_only) * (pred_only + neither)
    return float(num / den)


def clustering_scores(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> dict[str, Any]:
    """Scores of a clustering ``labels_pred`` against classes ``labels_true`` (both (N,)).

    Returns ``purity`` (each cluster counted as its majority class), ``nmi``, ``ari``,
    ``accuracy`` (best one-to-one cluster -> class assignment, Hungarian; clusters left
    without a class when there are more clusters than classes count as wrong) and
    ``mapping`` {cluster: class or None}. The numbers of clusters and classes may differ.
    """
    from scipy.optimize import linear_sum_assignment  # here: importing taltoolkit.evaluation loads numpy only

    classes, clusters, counts = _contingency(labels_true, labels_pred)  # counts (A, B)
    n = int(counts.sum())
    purity = float(counts.max(axis=0).sum() / n)
    rows, cols = linear_sum_assignment(counts, maximize=True)  # rectangular is fine
    accuracy = float(counts[rows, cols].sum() / n)
    mapping: dict[Any, Any] = {c.item() if hasattr(c, "item") else c: None for c in clusters}
    for r, c in zip(rows, cols):
        key = clusters[c].item() if hasattr(clusters[c], "item") else clusters[c]
        mapping[key] = classes[r].item() if hasattr(classes[r], "item") else classes[r]
    return {
        "purity": purity,
        "nmi": _nmi(counts),
        "ari": _ari(counts),
        "accuracy": accuracy,
        "mapping": mapping,
        "num_classes": int(len(classes)),
        "num_clusters": int(len(clusters)),
    }
