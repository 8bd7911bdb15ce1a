"""Cluster-against-class confusion matrix (COPL's pseudo-label clusters against the hidden
true classes), from two integer arrays so that any clustering step can draw it."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from taltoolkit.visualization._figure import new_figure, save_png

__all__ = ["cluster_confusion", "plot_cluster_confusion"]


def cluster_confusion(
    clusters: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Counts (K, C) of items per (cluster, true class) and the row order that puts each
    cluster matched to a class (Hungarian matching on the counts) on that class's column, the
    unmatched clusters after, by their majority class. Items with a negative cluster or class
    (unassigned, background) are not counted."""
    from scipy.optimize import linear_sum_assignment

    k_arr = np.asarray(clusters, dtype=np.int64).reshape(-1)
    c_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    if k_arr.shape != c_arr.shape:
        raise ValueError(f"clusters and labels must have one entry per item, got {k_arr.shape} and {c_arr.shape}")
    keep = (k_arr >= 0) & (c_arr >= 0)
    k_arr, c_arr = k_arr[keep], c_arr[keep]
    n_clusters = int(k_arr.max()) + 1 if k_arr.size else 0
    n_classes = max(int(num_classes or 0), int(c_arr.max()) + 1 if c_arr.size else 0)
    counts = np.zeros((n_clusters, n_classes), dtype=np.int64)
    np.add.at(counts, (k_arr, c_arr), 1)
    if counts.size == 0:
        return counts, np.arange(n_clusters)
    rows, cols = linear_sum_assignment(-counts)
    matched = [int(r) for r, _ in sorted(zip(rows, cols), key=lambda rc: rc[1])]
    rest = sorted(set(range(n_clusters)) - set(matched), key=lambda r: (int(np.argmax(counts[r])), r))
    return counts, np.asarray(matched + rest, dtype=np.int64)


def plot_cluster_confusion(
    path: str | Path,
    clusters: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    *,
    title: str | None = None,
) -> Path:
    """Write a PNG of the cluster (rows) x true class (columns) counts, rows ordered by
    :func:`cluster_confusion` so a good clustering shows as a diagonal; colour is the share of
    the cluster's items (its precision), counts written in the cells for up to 30 x 30. The
    title carries purity, NMI and ARI (:func:`taltoolkit.evaluation.clustering_scores`)."""
    from taltoolkit.evaluation import clustering_scores

    counts, order = cluster_confusion(clusters, labels, len(class_names))
    if counts.size == 0:
        raise ValueError("no item with a cluster and a class to plot")
    m = counts[order]
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    k, c = m.shape
    names = list(class_names) + [f"class {i}" for i in range(len(class_names), c)]
    fig = new_figure(min(2.5 + 0.38 * c, 18.0), min(1.8 + 0.3 * k, 18.0))
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    if k * c <= 900:
        for i in range(k):
            for j in range(c):
                if m[i, j]:
                    ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=6,
                            color="white" if share[i, j] > 0.55 else "black")
    ax.set_xticks(range(c), names, rotation=60, ha="right", fontsize=7 if c <= 40 else 5)
    ax.set_yticks(range(k), [f"cluster {int(r)}" for r in order], fontsize=7 if k <= 40 else 5)
    ax.set_xlabel("true class")
    ax.set_ylabel("cluster")
    fig.colorbar(im, ax=ax, label="share of the cluster's items", shrink=0.8)
    k_arr = np.asarray(clusters).reshape(-1)
    c_arr = np.asarray(labels).reshape(-1)
    keep = (k_arr >= 0) & (c_arr >= 0)
    s = clustering_scores(c_arr[keep], k_arr[keep])
    scores = f"purity {s['purity']:.3f}  NMI {s['nmi']:.3f}  ARI {s['ari']:.3f}  ({int(keep.sum())} items)"
    ax.set_title(f"{title}\n{scores}" if title else f"clusters against true classes\n{scores}", fontsize=9)
    return save_png(fig, path)
