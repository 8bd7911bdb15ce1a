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


# ----------------------------------------------------------------------------- clustering protocol
def _video(name: str, cls: int, t: int = 12, seg=(2.0, 6.0)):
    from taltoolkit.structures import Video

    rng = np.random.default_rng(sum(map(ord, name)))
    feats = rng.normal(size=(t, 8)).astype(np.float32)
    return Video(name=name, features=feats, duration=float(t), fps=25.0, step_s=1.0,
                 segments=np.array([seg]), labels=np.array([cls]), video_labels=np.eye(3, dtype=np.float32)[cls])


def test_action_mask_marks_steps_whose_centre_is_inside_a_segment():
    v = _video("a", 0, t=8, seg=(2.0, 4.6))
    assert v.action_mask().tolist() == [False, False, True, True, True, False, False, False]


def test_actionness_diagnostics_against_a_hand_count():
    v = _video("a", 0, t=8, seg=(2.0, 5.0))  # steps 2, 3, 4 are action
    mask = v.action_mask().astype(np.float32)
    has = torch.tensor([0, 0, 0.9, 0.8, 0, 0, 0, 0.7])  # 2 of 3 selected steps inside
    out = {"_a_cs": torch.tensor(mask), "_a_ca": torch.tensor(1 - mask), "_positions": None}
    d = COPL._actionness_diagnostics([v], [out], [has], {"a": v}, gamma=8 / 3)  # k = 3
    assert d["corr_a_cs"] == 1.0 and d["corr_a_ca"] == -1.0
    assert d["has_precision"] == 2 / 3 and d["action_rate"] == 3 / 8
    assert d["top_a_cs_precision"] == 1.0 and d["top_a_ca_precision"] == 0.0  # top-3 of each attention
    # A resampled video (test_sampling=always): the mask is read at the sampled steps.
    pos = np.array([0, 2, 2, 3, 5, 7])
    out_s = {"_a_cs": torch.tensor(mask[pos]), "_a_ca": torch.tensor(mask[pos]), "_positions": pos}
    d = COPL._actionness_diagnostics([v], [out_s], [torch.tensor([0, 1.0, 0, 0, 0, 0.5])], {"a": v}, gamma=3)
    assert d["action_rate"] == 3 / 6 and d["has_precision"] == 1 / 2


def test_clustering_features_use_the_steps_the_teacher_saw():
    v = _video("a", 0, t=6)
    pos = np.array([0, 0, 1, 3, 5, 5])
    x = COPL._sampled_features(v, {"_positions": pos})
    assert torch.equal(x, torch.as_tensor(v.features[pos]))
    assert torch.equal(COPL._sampled_features(v, None), torch.as_tensor(v.features))


def test_cluster_mapping_protocol_all_or_p(monkeypatch):
    """cluster_mapping=all maps clusters to classes on every training video; =p on P only."""
    import taltoolkit.methods.copl as copl_mod
    from taltoolkit.engine.method import StageContext

    # Six videos in clusters [0, 0, 1, 1, 1, 2] of classes [0, 0, 1, 0, 2, 2]: on every video
    # cluster 1 is mostly class 1 (v2) or 0 (v3) or 2 (v4); P = {v3, v5} maps cluster 1 to class 0.
    labels = np.array([0, 0, 1, 1, 1, 2])
    true = [0, 0, 1, 0, 2, 2]
    videos = [_video(f"v{i}", c) for i, c in enumerate(true)]
    s = np.array([-1.0, -1.0, -1.0, 1.0, -1.0, 1.0])  # P = {v3 (cluster 1, class 0), v5}
    monkeypatch.setattr(copl_mod, "spectral_clustering", lambda f, c, **kw: (labels, np.eye(len(f))))
    monkeypatch.setattr(copl_mod, "plri_confidence", lambda w, y, *a: (s, s, s))
    ctx = StageContext(train_videos=videos, device=torch.device("cpu"), predict=lambda vs: [],
                       reference_videos={v.name: v for v in videos})
    on_all = _method(cluster_mapping="all")._cluster(ctx, first=True)["mapping"]
    on_p = _method(cluster_mapping="p")._cluster(ctx, first=True)["mapping"]
    assert on_all[0] == 0 and on_all[1] == 1 and on_all[2] == 2  # majority of every video
    assert on_p[1] == 0  # P alone: cluster 1's only P video is class 0
