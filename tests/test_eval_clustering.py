"""Clustering scores: NMI / ARI against scikit-learn, purity / accuracy by hand."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from taltoolkit.evaluation import clustering_scores


@pytest.mark.parametrize("seed", range(40))
def test_nmi_ari_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    k_true, k_pred = int(rng.integers(1, 8)), int(rng.integers(1, 12))
    t = rng.integers(0, k_true, n)
    # Half the cases correlated with the truth, half independent.
    p = (t + rng.integers(0, 2, n) * rng.integers(0, k_pred, n)) % k_pred if seed % 2 else rng.integers(0, k_pred, n)
    s = clustering_scores(t, p)
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(t, p), abs=1e-12)
    assert s["ari"] == pytest.approx(adjusted_rand_score(t, p), abs=1e-12)


@pytest.mark.parametrize("t,p", [
    ([0, 0, 0], [1, 1, 1]),  # one class, one cluster
    ([0, 1, 2], [0, 1, 2]),  # all singletons
    ([0, 0, 1, 1], [0, 1, 2, 3]),
    ([0, 0, 0, 0], [0, 1, 0, 1]),
    ([5], [9]),
])
def test_degenerate_labelings_match_sklearn(t, p):
    s = clustering_scores(t, p)
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(t, p), abs=1e-12)
    assert s["ari"] == pytest.approx(adjusted_rand_score(t, p), abs=1e-12)


def test_purity_accuracy_mapping_by_hand():
    # clusters: 0 -> {a, a, b}, 1 -> {b, b}, 2 -> {c, a}
    t = ["a", "a", "b", "b", "b", "c", "a"]
    p = [0, 0, 0, 1, 1, 2, 2]
    s = clustering_scores(t, p)
    # purity: majority per cluster 2 + 2 + 1 (tie a/c) = 5 / 7
    assert s["purity"] == pytest.approx(5 / 7)
    # best one-to-one: 0->a (2), 1->b (2), 2->c (1) = 5 / 7
    assert s["accuracy"] == pytest.approx(5 / 7)
    assert s["mapping"] == {0: "a", 1: "b", 2: "c"}


def test_more_clusters_than_classes():
    t = [0, 0, 0, 1, 1, 1]
    p = [0, 0, 1, 2, 2, 3]
    s = clustering_scores(t, p)
    assert s["purity"] == 1.0
    # one-to-one: 0->0 (2), 2->1 (2); clusters 1 and 3 get no class
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["mapping"] == {0: 0, 1: None, 2: 1, 3: None}
    assert s["num_clusters"] == 4 and s["num_classes"] == 2


def test_fewer_clusters_than_classes():
    t = [0, 1, 2, 2, 2]
    p = [7, 7, 8, 8, 8]
    s = clustering_scores(t, p)
    assert s["purity"] == pytest.approx(4 / 5)
    assert s["accuracy"] == pytest.approx(4 / 5)
    assert s["mapping"][8] == 2 and s["mapping"][7] in (0, 1)


def test_permuted_perfect_clustering():
    t = np.repeat(np.arange(5), 10)
    p = (t * 3 + 1) % 5
    s = clustering_scores(t, p)
    assert s["accuracy"] == s["purity"] == s["ari"] == 1.0
    assert s["nmi"] == pytest.approx(1.0, abs=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="items"):
        clustering_scores([0, 1], [0])
    with pytest.raises(ValueError, match="at least one"):
        clustering_scores([], [])
