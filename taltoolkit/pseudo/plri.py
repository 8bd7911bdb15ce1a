"""Spectral clustering of video features and PLRI (COPL Sec. 3.3, Eq. 6-10).

numpy/scipy functions on plain arrays (torch tensors are accepted and converted):

- :func:`affinity_graph`: the fully connected graph ``w_ij = exp(-d_ij^2 / (2 sigma^2))`` with
  ``d`` the Euclidean distance and ``sigma = (1 / N^2) sum_ij d_ij`` (Sec. 3.3).
- :func:`spectral_embedding` + :func:`kmeans` = :func:`spectral_clustering`: normalized-cut
  spectral clustering [Shi & Malik] as scikit-learn's ``SpectralClustering(affinity=
  "precomputed")`` does it: the C eigenvectors of the symmetric normalized Laplacian with the
  smallest eigenvalues (self-loops ignored), divided by sqrt(degree), then k-means (k-means++
  seeding, ``n_init`` restarts, best inertia). Tests check parity with scikit-learn.
- :func:`plri_confidence`: cohesion ``a_i`` (Eq. 6), separation ``b_i`` (Eq. 7) and the score
  ``s_i = (a_i - b_i) / max(a_i, b_i)`` (Eq. 8) on the same graph.
- :func:`plri_split`: ``P = {s_i >= delta}``, ``U = {s_i < delta}`` (Eq. 9-10).
- :func:`align_clusters`: relabels a new clustering to best match the previous one (ours: the
  paper does not say how cluster ids carry over between iterations).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "pairwise_distances",
    "affinity_graph",
    "spectral_embedding",
    "kmeans",
    "spectral_clustering",
    "plri_confidence",
    "plri_split",
    "align_clusters",
    "SEPARATIONS",
    "COHESIONS",
]

SEPARATIONS = ("nearest", "literal_min")
COHESIONS = ("others", "literal")


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def pairwise_distances(features: Any) -> np.ndarray:
    """Euclidean distances. Shapes: (N, D) -> (N, N), exact zeros on the diagonal."""
    f = _array(features)
    if f.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {f.shape}")
    sq = (f * f).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)  # rounding can go below 0
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def affinity_graph(features: Any) -> tuple[np.ndarray, float]:
    """Fully connected graph of Sec. 3.3. Shapes: (N, D) -> W (N, N), sigma (float).

    ``sigma`` is the mean distance over all N^2 ordered pairs, the zero diagonal included, as
    the paper writes it; ``w_ii = 1``. A set of identical features (sigma = 0) has W = 1.
    """
    d = pairwise_distances(features)
    sigma = float(d.mean())
    if sigma <= 0:
        return np.ones_like(d), 0.0
    return np.exp(-(d**2) / (2.0 * sigma**2)), sigma


def spectral_embedding(affinity: Any, n_components: int) -> np.ndarray:
    """Normalized-Laplacian eigenmap as scikit-learn's ``spectral_embedding(drop_first=False)``.

    Shapes: (N, N) symmetric non-negative -> (N, n_components). The diagonal (self-loops) is
    ignored; ``L = I - D^-1/2 W D^-1/2``; the eigenvectors of the ``n_components`` smallest
    eigenvalues are divided by ``sqrt(deg)`` and each column's sign is fixed so that its
    largest-magnitude entry is positive (so the result is deterministic).
    """
    from scipy.linalg import eigh

    w = _array(affinity).copy()
    n = w.shape[0]
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"affinity must be square, got {w.shape}")
    if not 1 <= n_components <= n:
        raise ValueError(f"n_components={n_components} must be in [1, N={n}]")
    np.fill_diagonal(w, 0.0)
    deg = w.sum(1)
    isolated = deg <= 0
    dd = np.sqrt(np.where(isolated, 1.0, deg))  # an isolated node keeps its own component
    lap = -w / dd[:, None] / dd[None, :]
    np.fill_diagonal(lap, 1.0)
    _, vecs = eigh(lap, subset_by_index=[0, n_components - 1])  # ascending eigenvalues
    emb = vecs / dd[:, None]  # (N, C)
    signs = np.sign(emb[np.abs(emb).argmax(0), np.arange(emb.shape[1])])
    return emb * np.where(signs == 0, 1.0, signs)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        i = int(rng.integers(n)) if total <= 0 else int(rng.choice(n, p=d2 / total))
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return np.stack(centres)


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances (N, k) without an (N, k, F) temporary (ActivityNet: N ~ 5000, k = 100)."""
    return np.maximum((x * x).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * x @ c.T, 0.0)


def kmeans(x: Any, k: int, n_init: int = 10, max_iter: int = 300, seed: int = 0, tol: float = 1e-10) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; the restart with the lowest inertia wins.

    Shapes: (N, F) -> (N,) int64 labels in [0, k). Deterministic in ``seed``. An empty cluster
    is re-seeded with the point farthest from its centre.
    """
    x = _array(x)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} clusters need at least k points, got N={n}")
    rng = np.random.default_rng(seed)
    best_labels, best_inertia = None, np.inf
    for _ in range(max(1, n_init)):
        c = _kmeans_pp(x, k, rng)
        labels = np.zeros(n, np.int64)
        for _ in range(max_iter):
            d2 = _sq_dists(x, c)  # (N, k)
            labels = d2.argmin(1)
            new = np.empty_like(c)
            for j in range(k):
                members = x[labels == j]
                if len(members):
                    new[j] = members.mean(0)
                else:
                    far = int(d2[np.arange(n), labels].argmax())
                    new[j] = x[far]
                    labels[far] = j
            shift = ((new - c) ** 2).sum()
            c = new
            if shift <= tol:
                break
        d2 = _sq_dists(x, c)
        labels = d2.argmin(1)
        inertia = float(d2[np.arange(n), labels].sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return np.asarray(best_labels, np.int64)


def spectral_clustering(
    features: Any, n_clusters: int, seed: int = 0, n_init: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster videos by their global features (Algorithm 1 line 13).

    Shapes: (N, D) -> labels (N,) int64 in [0, n_clusters), affinity W (N, N) (reused by PLRI).
    """
    w, _ = affinity_graph(features)
    emb = spectral_embedding(w, n_clusters)
    return kmeans(emb, n_clusters, n_init=n_init, seed=seed), w


def plri_confidence(
    affinity: Any, labels: Any, separation: str = "nearest", cohesion: str = "others"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cohesion a (Eq. 6), separation b (Eq. 7) and confidence s (Eq. 8) of every video.

    Shapes: affinity (N, N), labels (N,) -> a, b, s each (N,).

    - Eq. 6: ``a_i = sum_{j in Y_I, j != i} w_ij / n`` with ``cohesion="others"`` (default):
      n = |Y_I| - 1, "the average ... to other videos within their cluster" as the text and
      the silhouette [34] define it; ``cohesion="literal"``: n = |Y_I| as Eq. 6 is printed,
      which scales a_i by (|Y_I| - 1) / |Y_I| and so marks every member of a small cluster
      as unreliable (0.8 for 5 videos). A singleton has a_i = 0 either way.
    - Eq. 7: ``b_i = (1 / |Y_J|) sum_{j in Y_J} w_ij`` for the nearest other cluster J.
      ``separation="nearest"`` (default) takes the cluster with the *largest* mean affinity:
      w is a similarity, so that is the nearest cluster the text describes, and it makes
      Eq. 8 the silhouette [34] in similarity form. The printed ``min_J`` over similarities
      would pick the *farthest* cluster; ``separation="literal_min"`` does that, for
      comparison. With a single cluster b_i = 0.
    - Eq. 8: ``s_i = (a_i - b_i) / max(a_i, b_i)`` (0 where both are 0).
    """
    if separation not in SEPARATIONS:
        raise ValueError(f"separation={separation!r}; choose one of {SEPARATIONS}")
    if cohesion not in COHESIONS:
        raise ValueError(f"cohesion={cohesion!r}; choose one of {COHESIONS}")
    w = _array(affinity)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    n = w.shape[0]
    if w.shape != (n, n) or y.shape[0] != n:
        raise ValueError(f"affinity (N, N) and labels (N,) expected, got {w.shape} and {y.shape}")
    ids, inv = np.unique(y, return_inverse=True)
    onehot = np.zeros((n, len(ids)))
    onehot[np.arange(n), inv] = 1.0
    sizes = onehot.sum(0)  # (K,)
    w_off = w.copy()
    np.fill_diagonal(w_off, 0.0)
    mean_to = (w_off @ onehot) / sizes  # (N, K): mean affinity to each cluster
    own = sizes[inv] - (1 if cohesion == "others" else 0)  # (N,) Eq. 6 normaliser
    a = np.where(own > 0, (w_off @ onehot)[np.arange(n), inv] / np.maximum(own, 1), 0.0)
    others = mean_to.copy()
    if len(ids) == 1:
        b = np.zeros(n)
    else:
        fill = -np.inf if separation == "nearest" else np.inf
        others[np.arange(n), inv] = fill
        b = others.max(1) if separation == "nearest" else others.min(1)
    den = np.maximum(a, b)
    s = np.where(den > 0, (a - b) / np.where(den > 0, den, 1.0), 0.0)
    return a, b, s


def plri_split(confidence: Any, delta: float = 0.0) -> np.ndarray:
    """Eq. 9-10: True where a video joins the refined pseudo-labelled set P (``s_i >= delta``);
    the rest form the unlabelled set U. Shapes: (N,) -> (N,) bool."""
    return _array(confidence) >= delta


def align_clusters(new: Any, previous: Any, n_clusters: int) -> np.ndarray:
    """Relabel ``new`` so that its clusters match ``previous``'s as well as possible.

    Hungarian assignment on the overlap counts (maximised). Cluster ids are arbitrary per
    clustering, while the classifier's columns stay bound to the ids it was trained on, so
    without this each iteration would start from a permuted classifier. Shapes: (N,), (N,) -> (N,).
    """
    from scipy.optimize import linear_sum_assignment

    a = np.asarray(new, np.int64).reshape(-1)
    b = np.asarray(previous, np.int64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"new and previous labelings differ in length: {a.shape} vs {b.shape}")
    counts = np.zeros((n_clusters, n_clusters), np.int64)
    np.add.at(counts, (a, b), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    perm = np.arange(n_clusters)
    perm[rows] = cols
    return perm[a]
