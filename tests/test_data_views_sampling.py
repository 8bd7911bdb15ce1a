"""Label views (full / weak / none / semi), samplers and collates, and TALDataset end to end."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from taltoolkit.data.dataset import TALDataset
from taltoolkit.data.errors import DataError
from taltoolkit.data.sampling import (
    FixedLengthDataset,
    VariableLengthDataset,
    collate_fixed,
    crop_window,
    SAMPLING_RULES,
    make_dataset,
    perturbed_indices,
    evaluation_indices,
)
from taltoolkit.data.views import choose_labelled, label_view
from taltoolkit.data.writers import write_layout
from taltoolkit.structures import Video

C = 4


def videos(n: int = 40, lengths: tuple[int, int] = (5, 60), seed: int = 0) -> list[Video]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(*lengths))
        k = int(rng.integers(1, 4))
        s = rng.uniform(0, t * 0.5 - 1, k)
        labels = np.full(k, i % C, np.int64)
        vl = np.zeros(C, np.float32)
        vl[labels] = 1
        out.append(Video(
            f"v{i:03d}", rng.standard_normal((t, 3)).astype(np.float32), t * 0.5, 25.0, 0.5, 0.25,
            "train" if i < n * 3 // 4 else "test", np.stack([s, s + rng.uniform(0.2, 3, k)], 1), labels, vl,
        ))
    return out


# --------------------------------------------------------------------------- views
def test_views_copy_and_never_mutate() -> None:
    vs = videos(6)
    before = copy.deepcopy(vs)
    full, weak, none = (label_view(vs, m) for m in ("full", "weak", "none"))
    assert [v.label_level for v in full + weak + none] == ["full"] * 6 + ["weak"] * 6 + ["none"] * 6
    assert all(len(v.segments) == 0 and len(v.labels) == 0 for v in weak + none)
    np.testing.assert_array_equal(weak[0].video_labels, vs[0].video_labels)
    assert all(not v.video_labels.any() for v in none)
    full[0].segments[0, 0] = -99.0  # editing a view must not reach the input
    full[0].video_labels[:] = 7
    for a, b in zip(vs, before):
        np.testing.assert_array_equal(a.segments, b.segments)
        np.testing.assert_array_equal(a.video_labels, b.video_labels)
        assert a.label_level == "full"
    assert full[1].features is vs[1].features  # features are shared, not copied
    with pytest.raises(ValueError, match="full, weak, none, semi"):
        label_view(vs, "strong")
    with pytest.raises(ValueError, match="label_level"):
        label_view(weak, "full")


def test_semi_split_reproducible_stratified_and_fraction() -> None:
    vs = videos(40)
    a = choose_labelled(vs, 0.25, seed=0)
    assert a == choose_labelled(vs, 0.25, seed=0) == choose_labelled(vs[::-1], 0.25, seed=0)[::-1]
    assert a != choose_labelled(vs, 0.25, seed=1)
    assert len(a) == 10
    per_class = np.bincount([int(next(v for v in vs if v.name == n).labels[0]) for n in a], minlength=C)
    assert per_class.tolist() == [3, 3, 2, 2] or sorted(per_class.tolist()) == [2, 2, 3, 3]  # 10 over 4 strata
    assert len(choose_labelled(vs, 0.01, seed=0)) == 1 and len(choose_labelled(vs, 1.0, 0)) == 40
    view = label_view(vs, "semi", fraction=0.25, seed=0)
    assert [v.name for v in view if v.label_level == "full"] == a
    assert all(len(v.segments) == 0 and not v.video_labels.any() for v in view if v.label_level == "none")


def test_semi_split_file_written_and_reread(tmp_path: Path) -> None:
    vs = videos(20)
    f = tmp_path / "splits" / "semi.json"
    first = label_view(vs, "semi", fraction=0.3, seed=5, split_file=f)
    data = json.loads(f.read_text())
    assert data["seed"] == 5 and data["fraction"] == 0.3 and len(data["labelled"]) == 6
    assert sorted(data["labelled"] + data["unlabelled"]) == sorted(v.name for v in vs)
    # A hand-edited split is what is used: the file wins over a fresh draw.
    data["labelled"], data["unlabelled"] = data["unlabelled"][:2], data["unlabelled"][2:] + data["labelled"]
    f.write_text(json.dumps(data))
    again = label_view(vs, "semi", fraction=0.3, seed=5, split_file=f)
    assert [v.name for v in again if v.label_level == "full"] == data["labelled"]
    assert [v.name for v in first] == [v.name for v in again]
    assert [v.name for v in label_view(vs, "semi", seed=5, split_file=f) if v.label_level == "full"] == data["labelled"]
    with pytest.raises(DataError, match="fraction"):
        label_view(vs, "semi", fraction=0.5, seed=5, split_file=f)
    with pytest.raises(DataError, match=str(f)):
        label_view(vs[:-1], "semi", fraction=0.3, seed=5, split_file=f)


# --------------------------------------------------------------------------- fixed length
def test_perturbed_indices() -> None:
    rng = np.random.default_rng(0)
    idx = perturbed_indices(100, 10, rng)
    assert (np.diff(idx) > 0).all() and ((idx // 10) == np.arange(10)).all()  # one per bin, sorted
    np.testing.assert_array_equal(perturbed_indices(4, 8, rng), [0, 0, 1, 1, 2, 2, 3, 3])


# Transcriptions of the public codes' samplers (global NumPy RNG, per-position loops), written
# from reading them: CASE's dataset/thumos_features.py random_perturb and uniform_sampling,
# ACM-Net's dataset/dataset_class.py random_sample and uniform_sample.
def _case_random_perturb(length: int, n: int) -> np.ndarray:
    if n == length:
        return np.arange(n)
    s = np.arange(n) * length / n
    for i in range(n):
        if i < n - 1:
            if int(s[i]) != int(s[i + 1]):
                s[i] = np.random.choice(range(int(s[i]), int(s[i + 1]) + 1))
            else:
                s[i] = int(s[i])
        elif int(s[i]) < length - 1:
            s[i] = np.random.choice(range(int(s[i]), length))
        else:
            s[i] = int(s[i])
    return s.astype(int)


def _acmnet_random_sample(length: int, n: int) -> np.ndarray:
    if length < n:
        return np.sort(np.random.choice(length, n, replace=True))
    if length > n:
        s = np.arange(n) * length / n
        for i in range(n - 1):
            s[i] = np.random.choice(range(int(s[i]), int(s[i + 1] + 1)))
        s[-1] = np.random.choice(np.arange(s[-2], length))
        return s.astype(int)
    return np.arange(length)


def _supports(draw, trials: int) -> tuple[list[set[int]], set[tuple[int, ...]]]:
    """Per-position sets of values, and the set of whole draws, over ``trials`` draws."""
    per_pos: list[set[int]] | None = None
    whole = set()
    for k in range(trials):
        idx = [int(i) for i in draw(k)]
        whole.add(tuple(idx))
        per_pos = [set() for _ in idx] if per_pos is None else per_pos
        for p, i in enumerate(idx):
            per_pos[p].add(i)
    return per_pos, whole


def _seeded(fn, length: int, n: int):  # noqa: ANN001, ANN202
    def draw(k: int) -> np.ndarray:
        np.random.seed(k)
        return fn(length, n)
    return draw


@pytest.mark.parametrize(("rule", "official"), [("perturb", _case_random_perturb), ("acmnet", _acmnet_random_sample)])
@pytest.mark.parametrize(("t", "n"), [(5, 12), (11, 12), (12, 12), (13, 12), (40, 12), (100, 7)])
def test_sampling_rules_match_the_public_codes(rule: str, official, t: int, n: int) -> None:  # noqa: ANN001
    """Same support per position as the transcribed public sampler, sorted, in range."""
    ours = SAMPLING_RULES[rule]
    got_pos, got_whole = _supports(lambda k: ours(t, n, np.random.default_rng(k)), 4000)
    ref_pos, ref_whole = _supports(_seeded(official, t, n), 4000)
    assert all(len(w) == n and list(w) == sorted(w) and 0 <= w[0] and w[-1] < t for w in got_whole)
    if rule == "acmnet" and t < n:
        # Sorted draws with replacement: rare extremes make supports noisy; compare the
        # per-position means instead (their spread over 2000 draws is < 0.05).
        got = np.mean([ours(t, n, np.random.default_rng(k)) for k in range(2000)], 0)
        ref = np.mean([_seeded(official, t, n)(k) for k in range(2000)], 0)
        np.testing.assert_allclose(got, ref, atol=0.15)
        assert len(got_whole) > 1 and len(ref_whole) > 1
    else:
        assert got_pos == ref_pos


def test_short_videos_are_jittered_by_the_public_rules_only() -> None:
    """A video shorter than T: CASE's and ACM-Net's rules draw at random, the "bins" rule repeats uniformly."""
    for rule, random_short in (("perturb", True), ("acmnet", True), ("bins", False)):
        draws = {tuple(SAMPLING_RULES[rule](9, 16, np.random.default_rng(k))) for k in range(50)}
        assert (len(draws) > 1) == random_short, rule


def test_test_time_sampling_modes() -> None:
    """native keeps every step; always resamples every video to T (CASE); longer only longer ones (ACM-Net)."""
    np.testing.assert_array_equal(evaluation_indices(20, 8, "native"), np.arange(20))
    np.testing.assert_array_equal(evaluation_indices(20, 8, "always"), np.floor(np.arange(8) * 20 / 8))
    np.testing.assert_array_equal(evaluation_indices(5, 8, "always"), np.floor(np.arange(8) * 5 / 8))
    np.testing.assert_array_equal(evaluation_indices(5, 8, "longer"), np.arange(5))
    np.testing.assert_array_equal(evaluation_indices(20, 8, "longer"), np.floor(np.arange(8) * 20 / 8))
    vs = videos(3)
    ds, collate = make_dataset("fixed", vs, training=False, num_segments=16, test_sampling="always")
    batch = collate([ds[i] for i in range(3)])
    assert batch["features"].shape[1] == 16 and batch["mask"].all()
    np.testing.assert_allclose(batch["step_scale"].numpy(), [v.num_steps / 16 for v in vs])
    for i, v in enumerate(vs):
        np.testing.assert_array_equal(batch["features"][i].numpy(), v.features[np.floor(np.arange(16) * v.num_steps / 16).astype(int)])


def test_resampled_test_video_maps_to_the_original_seconds() -> None:
    """A step of a video resampled from t to n steps covers t / n original steps (the public codes' t_factor)."""
    from taltoolkit.engine.evaluator import Evaluator

    v = videos(1, lengths=(40, 41))[0]
    seen = {}

    def post(cas, step_s, offset_s, duration, **_):  # noqa: ANN001, ANN202
        seen.update(n=len(cas), step_s=step_s)
        from taltoolkit.structures import Detections
        return Detections.empty() if hasattr(Detections, "empty") else None

    class _M(torch.nn.Module):
        def predict(self, batch):  # noqa: ANN001, ANN202
            return [{"cas": batch["features"][i, :, :2]} for i in range(batch["features"].shape[0])]

    ev = Evaluator([v], ["a", "b"], {}, "test", [0.5], post,
                   lambda vids: make_dataset("fixed", vids, training=False, num_segments=10, test_sampling="always"),
                   torch.device("cpu"))
    out = ev.predict(_M(), [v])[0]
    ev._postprocess(v, out)
    assert seen["n"] == 10 and seen["step_s"] == pytest.approx(v.step_s * v.num_steps / 10)


def test_fixed_length_shapes_and_determinism() -> None:
    vs = label_view(videos(8), "weak")
    ds = FixedLengthDataset(vs, num_segments=16, training=True, seed=3)
    batch = collate_fixed([ds[i] for i in range(4)])
    assert batch["features"].shape == (4, 16, 3) and batch["features"].dtype == torch.float32
    assert batch["mask"].all() and batch["video_labels"].shape == (4, C)
    assert batch["positions"].dtype == torch.float64 and batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["label_level"] == ["weak"] * 4 and batch["names"] == [v.name for v in vs[:4]]
    for i in range(4):  # features are the rows named by positions
        pos = batch["positions"][i].long().numpy()
        np.testing.assert_array_equal(batch["features"][i].numpy(), vs[i].features[pos])
    again = FixedLengthDataset(vs, 16, True, seed=3)
    assert all(torch.equal(torch.as_tensor(ds[i]["positions"]), torch.as_tensor(again[i]["positions"])) for i in range(8))
    long_video = max(range(8), key=lambda i: vs[i].num_steps)
    e0 = ds[long_video]["positions"].copy()
    ds.set_epoch(1)
    assert not np.array_equal(e0, ds[long_video]["positions"])
    ds.set_epoch(0)
    np.testing.assert_array_equal(e0, ds[long_video]["positions"])


def test_fixed_length_test_mode_pads_with_mask() -> None:
    vs = videos(3)
    ds, collate = make_dataset("fixed", vs, training=False, num_segments=16)
    batch = collate([ds[0], ds[1], ds[2]])
    lengths = [v.num_steps for v in vs]
    assert batch["features"].shape == (3, max(lengths), 3)
    assert batch["mask"].sum(1).tolist() == lengths
    for i, t in enumerate(lengths):
        np.testing.assert_array_equal(batch["positions"][i, :t].numpy(), np.arange(t))
        assert (batch["positions"][i, t:] == -1).all() and (batch["features"][i, t:] == 0).all()


def test_loader_workers_do_not_change_batches() -> None:
    vs = videos(6)
    ds = FixedLengthDataset(vs, 8, True, seed=1)
    ds.set_epoch(2)
    b0 = list(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_fixed, num_workers=0))
    b2 = list(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_fixed, num_workers=2))
    for x, y in zip(b0, b2):
        assert torch.equal(x["positions"], y["positions"]) and torch.equal(x["features"], y["features"])


# --------------------------------------------------------------------------- variable length
def test_crop_window_keeps_instances() -> None:
    rng = np.random.default_rng(0)
    segs = np.array([[10.0, 14.0], [80.0, 81.0]])
    for _ in range(20):
        st, ed, kept = crop_window(100, segs, 30, rng, crop_ratio=None)
        assert ed - st == 30 and len(kept) >= 1
        inside = np.clip(segs[kept], st, ed)
        assert ((inside[:, 1] - inside[:, 0]) >= 0.5 * (segs[kept, 1] - segs[kept, 0])).all()
    st, ed, kept = crop_window(20, segs[:1], 30, rng, crop_ratio=(0.5, 0.5))
    assert ed - st == 10


def test_variable_length_training_and_test() -> None:
    vs = videos(6, lengths=(40, 80))
    ds = VariableLengthDataset(vs, max_seq_len=32, training=True, crop_ratio=(0.9, 1.0), seed=0)
    items = [ds[i] for i in range(len(vs))]
    batch = ds.collate(items)
    assert batch["features"].shape == (6, 32, 3) and batch["mask"].sum(1).max() <= 32
    for i, it in enumerate(items):
        v, start = vs[i], int(it["positions"][0])
        grid = v.to_steps(v.segments)  # (N, 2) steps of the whole video
        segs = batch["segments"][i].double().numpy() + start  # back to whole-video steps
        assert batch["segments"][i].dtype == torch.float32 and batch["labels"][i].dtype == torch.long
        # each kept segment is an original one clipped to the crop widened as ActionFormer's
        # truncate_feats (crop_margin="official"; tests/test_actionformer.py checks the margins)
        lo = v.offset_s / v.step_s
        for s in segs:
            assert any(np.allclose(s, np.clip(g, start - lo, start + len(it["positions"]) + lo + 1), atol=1e-4)
                       for g in grid)
    assert all(torch.equal(a, b) for a, b in zip(batch["segments"], ds.collate([ds[i] for i in range(6)])["segments"]))

    test_ds, collate = make_dataset("variable", vs, training=False, max_seq_len=32, pad_multiple=16)
    tb = collate([test_ds[0]])
    t = vs[0].num_steps
    assert tb["features"].shape[1] == -(-t // 16) * 16 and tb["mask"].sum() == t
    np.testing.assert_allclose(tb["segments"][0].numpy(), vs[0].to_steps(vs[0].segments), rtol=1e-6)


# --------------------------------------------------------------------------- TALDataset
def test_tal_dataset_end_to_end(tmp_path: Path) -> None:
    vs = videos(12)
    root = write_layout(vs, [f"c{k}" for k in range(C)], tmp_path / "ds", "concat", feature_stride=12.5,
                        snippet_frames=25, fps=25.0)
    ds = TALDataset(name="tiny", root=str(root), layout="concat", feature_dim=3, train_subset="train",
                    test_subset="test", feature_stride=12.5, snippet_frames=25, fps=25.0)
    assert ds.classes == ["c0", "c1", "c2", "c3"] and ds.num_classes == C
    assert [v.name for v in ds.test_videos()] == [v.name for v in vs if v.subset == "test"]
    semi = ds.train_videos("semi", labelled_fraction=0.5, split_seed=1)
    assert (root / "splits" / "semi_0.5_seed1.json").is_file()
    assert sum(v.label_level == "full" for v in semi) == 5  # 0.5 * 9 rounded half up
    assert [v.label_level for v in ds.train_videos("weak")] == ["weak"] * 9
    gt = ds.ground_truth()
    name = vs[-1].name
    assert set(gt) == {v.name for v in vs if v.subset == "test"}
    assert gt[name]["subset"] == "test" and gt[name]["annotations"][0]["label"] == f"c{vs[-1].labels[0]}"
    assert gt[name]["annotations"][0]["segment"] == vs[-1].segments[0].tolist()
