"""COPL's method glue: cluster -> class mapping at inference, pseudo-labels only, P/U losses."""
from __future__ import annotations

import numpy as np
import torch

from taltoolkit.methods.copl import COPL
from taltoolkit.models.iocnet import IOCNet


def _method(**kw):
    torch.manual_seed(0)
    return COPL(IOCNet(in_dim=8, num_classes=3, hidden_dim=6), shift_channels=4, **kw)


def _batch(names, labels=None):
    b = len(names)
    return {
        "features": torch.rand(b, 10, 8), "mask": torch.ones(b, 10, dtype=torch.bool), "names": names,
        "video_labels": torch.zeros(b, 3) if labels is None else labels, "label_level": ["none"] * b,
    }


def test_hungarian_mapping_maximises_agreement():
    clusters = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    true = np.array([2, 2, 1, 0, 0, 1, 1, 2])
    assert COPL._hungarian_mapping(true, clusters, 3) == [2, 0, 1]


def test_predict_moves_cluster_columns_to_classes():
    m = _method().eval()
    batch = _batch(["a"])
    ident = m.predict(batch)[0]
    m.cluster_to_class.copy_(torch.tensor([2, 0, 1]))  # cluster k is class mapping[k]
    mapped = m.predict(batch)[0]
    for k, c in enumerate([2, 0, 1]):
        assert torch.equal(mapped["cas"][:, c], ident["cas"][:, k])
        assert mapped["class_scores"][c] == ident["class_scores"][k]
    assert torch.equal(mapped["_a_cs"], ident["_a_cs"])


def test_unsupervised_training_ignores_video_labels_and_splits_p_and_u():
    m = _method()
    m._state.update(pseudo={"a": 0, "b": 2}, in_p={"a": True, "b": False})
    batch = _batch(["a", "b"])
    torch.manual_seed(1)
    plain = m.training_step(batch)
    torch.manual_seed(1)
    leaked = m.training_step({**batch, "video_labels": torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])})
    assert all(torch.equal(plain[k], leaked[k]) for k in plain)  # ground truth never enters a loss
    # Only video "a" is in P: its supervised losses; "b" contributes L_un only (Algorithm 1 lines 23-24).
    assert plain["loss"].item() > 0 and plain["loss_u"].item() > 0
    m._state["in_p"] = {"a": False, "b": False}
    torch.manual_seed(1)
    none_in_p = m.training_step(batch)
    assert none_in_p["loss_cls"].item() == 0 and none_in_p["loss_p"].item() == 0
