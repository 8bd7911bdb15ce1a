"""taltoolkit.visualization: each plot draws what it names (read back from the figure it
saves), and the helpers that decide what is drawn are right."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from figure_capture import figures  # noqa: F401 - the fixture
from taltoolkit.visualization import _figure

PNG = b"\x89PNG\r\n\x1a\n"
CLASSES = ["Diving", "HighJump", "LongJump"]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def _bars(ax):  # noqa: ANN001, ANN202
    """(x0, x1, y0, y1, rgba) of every bar that broken_barh drew."""
    out = []
    for coll in ax.collections:
        for path, fc in zip(coll.get_paths(), coll.get_facecolors()):
            v = path.vertices
            out.append((v[:, 0].min(), v[:, 0].max(), v[:, 1].min(), v[:, 1].max(), tuple(np.round(fc, 4))))
    return out


# ----------------------------------------------------------------------------- timeline


def test_assign_lanes_never_stacks_overlapping_segments_and_uses_the_fewest_lanes():
    from taltoolkit.visualization.timeline import assign_lanes

    rng = np.random.default_rng(0)
    for _ in range(50):
        starts = rng.uniform(0, 50, 12)
        segs = np.stack([starts, starts + rng.uniform(0.5, 15, 12)], 1)
        lanes = assign_lanes(segs.tolist())
        for i in range(len(segs)):
            for j in range(i + 1, len(segs)):
                overlap = segs[i, 0] < segs[j, 1] and segs[j, 0] < segs[i, 1]
                assert not (overlap and lanes[i] == lanes[j])
        # the fewest lanes: the largest number of segments covering one instant
        depth = max(sum(s <= t < e for s, e in segs) for t in segs[:, 0])
        assert max(lanes) + 1 == depth


def test_timeline_draws_gt_and_each_source_on_its_own_rows_with_class_colours_and_scores(tmp_path, figures):
    from taltoolkit.visualization.timeline import plot_timeline

    gt = [{"label": "Diving", "segment": [2.0, 6.0]}, {"label": "HighJump", "segment": [10.0, 14.0]}]
    a = [{"label": "Diving", "score": 0.91, "segment": [2.5, 6.5]},
         {"label": "Diving", "score": 0.40, "segment": [1.0, 7.0]},     # overlaps the first: another lane
         {"label": "LongJump", "score": 0.05, "segment": [20.0, 21.0]}]  # below the top 2
    b = [{"label": "HighJump", "score": 0.77, "segment": [9.0, 13.0]}]
    path = plot_timeline(tmp_path / "t.png", "v1", gt, {"method A": a, "method B": b}, duration=30.0, top_k=2,
                         classes=CLASSES)
    assert _is_png(path)
    ax = figures["t.png"].axes[0]
    bars = _bars(ax)
    assert len(bars) == 2 + 2 + 1  # ground truth, method A's top 2, method B's one
    colors = _figure.class_colors(CLASSES, CLASSES)
    by_span = {(round(x0, 3), round(x1, 3)): (y0, y1, fc) for x0, x1, y0, y1, fc in bars}
    for d in gt + a[:2] + b:
        y0, y1, fc = by_span[tuple(round(x, 3) for x in d["segment"])]
        assert fc == tuple(np.round(colors[d["label"]], 4)), d  # one colour per class
    # rows: the ground truth above method A above method B, never sharing a y range
    gt_y = [by_span[(2.0, 6.0)][:2], by_span[(10.0, 14.0)][:2]]
    a_y = [by_span[(2.5, 6.5)][:2], by_span[(1.0, 7.0)][:2]]
    b_y = [by_span[(9.0, 13.0)][:2]]
    assert min(y for y, _ in gt_y) > max(y for _, y in a_y)
    assert min(y for y, _ in a_y) > max(y for _, y in b_y)
    assert a_y[0] != a_y[1]  # overlapping detections of one source are stacked, not drawn over each other
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["0.40", "0.77", "0.91"]  # the score on each detection bar, and only there
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Diving", "HighJump"]
    assert ax.get_xlabel() == "time (s)" and ax.get_xlim()[1] >= 30.0
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "ground truth" and labels[1].startswith("method A") and labels[2].startswith("method B")


def test_class_colours_are_stable_across_figures_for_small_class_lists_and_distinct_for_large_ones():
    small = _figure.class_colors(["LongJump"], CLASSES)
    assert small["LongJump"] == _figure.class_colors(CLASSES, CLASSES)["LongJump"]
    many = [f"c{i}" for i in range(200)]
    shown = ["c3", "c23", "c43", "c199"]  # equal modulo 20: a global palette would repeat colours
    cols = _figure.class_colors(shown, many)
    assert len(set(cols.values())) == len(shown)


# ----------------------------------------------------------------------------- activation


def test_activation_times_follow_the_post_processors_time_mapping():
    from taltoolkit.visualization.activation import activation_times

    np.testing.assert_allclose(activation_times(3, 0.5, offset_s=1.0), [1.25, 1.75, 2.25])
    np.testing.assert_allclose(activation_times(2, 0.5, step_scale=2.0), [0.5, 1.5])  # a resampled video
    # sampled steps: step i spans [pos_i, pos_{i+1}) (the last spans 1)
    np.testing.assert_allclose(activation_times(3, 1.0, positions=[0, 4, 6]), [2.0, 5.0, 6.5])


def test_localized_classes_follow_the_post_processors_class_threshold():
    from taltoolkit.visualization.activation import localized_classes

    assert localized_classes([0.8, 0.1, 0.3], 0.25, 3) == [0, 2]  # score >= threshold, best first
    assert localized_classes([0.1, 0.2, 0.05], 0.25, 3) == [1]  # none above: the top-1
    assert localized_classes(None, 0.25, 3) == [0, 1, 2]


def test_activation_plot_draws_the_thresholds_localized_and_ground_truth_classes(tmp_path, figures):
    from taltoolkit.visualization.activation import plot_activation, threshold_values

    t = np.arange(40) * 0.5 + 0.25
    cas = np.full((40, 3), 0.05)
    cas[5:15, 0] = 0.9
    cas[20:30, 2] = 0.6
    scores = np.array([0.8, 0.1, 0.3])  # class_threshold 0.25 localizes Diving and LongJump
    levels = threshold_values("arange(0.15, 0.25, 0.05)")  # how conf/postprocess/acmnet.yaml writes them
    assert levels == pytest.approx([0.15, 0.2])
    plot_activation(tmp_path / "a.png", "v1", t, cas, CLASSES, class_scores=scores, class_threshold=0.25,
                    cas_thresholds=levels, actionness=cas.max(1), actionness_thresholds=[0.5],
                    ground_truth=[{"label": "HighJump", "segment": [11.0, 12.0]}], duration=20.0)
    ax = figures["a.png"].axes[0]
    curves = [ln.get_label() for ln in ax.get_lines() if len(ln.get_xdata()) == 40]
    assert curves[:3] == ["CAS HighJump (video score 0.10)", "CAS Diving (video score 0.80)",
                          "CAS LongJump (video score 0.30)"]  # ground truth first, then the localized classes
    assert curves[3] == "attention / actionness"
    hlines = [(ln.get_ydata()[0], ln.get_linestyle()) for ln in ax.get_lines() if len(ln.get_xdata()) == 2]
    assert sorted(y for y, s in hlines if s == ":") == pytest.approx([0.15, 0.2])
    assert [y for y, s in hlines if s == "--"] == pytest.approx([0.5])


# ----------------------------------------------------------------------------- curves


def test_tags_are_grouped_into_losses_lr_evaluation_and_their_own_panels():
    from taltoolkit.visualization.curves import group_tags

    groups = group_tags(["train/loss", "train/loss_a", "train/lr", "eval/mAP@0.50", "eval/average_mAP",
                         "epoch/seconds", "epoch/videos_per_s", "epoch/loss", "epoch/lr", "epoch/H(Q^C)",
                         "train/H(Q^C)", "iter1/nmi", "train/heatmap_loss", "average_mAP"])
    assert groups == {
        "losses": ["train/loss", "train/loss_a", "train/heatmap_loss"],
        "learning rate": ["train/lr", "epoch/lr"],
        "evaluation mAP (%)": ["eval/mAP@0.50", "eval/average_mAP", "average_mAP"],
        "speed": ["epoch/seconds", "epoch/videos_per_s"],
        "epoch: losses": ["epoch/loss"],
        "epoch": ["epoch/H(Q^C)"],
        "train: other": ["train/H(Q^C)"],
        "iter1": ["iter1/nmi"],
    }


def test_training_curves_draw_one_panel_per_group_with_every_tag(tmp_path, figures):
    from taltoolkit.visualization.curves import plot_training_curves

    scalars = {"train/loss": [(1, 3.0), (2, 2.0), (3, 1.0), (4, 0.5)], "train/lr": [(1, 1e-3), (4, 1e-5)],
               "eval/average_mAP": [(4, 12.0)]}
    scalars["epoch/lr"] = [(2, 1e-3), (4, 1e-5)]
    plot_training_curves(tmp_path / "c.png", scalars)
    axes = [ax for ax in figures["c.png"].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["losses", "learning rate", "evaluation mAP (%)"]
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["train/lr", "epoch/lr"]  # told apart
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["loss"]
    loss = axes[0].get_lines()[0]
    assert list(loss.get_xdata()) == [1, 2, 3, 4] and list(loss.get_ydata()) == [3.0, 2.0, 1.0, 0.5]
    assert axes[1].get_yscale() == "log"  # lr spanning 100x
    assert axes[2].get_lines()[0].get_marker() == "o"  # a single evaluation stays visible


def test_history_rows_become_curves_over_epochs_across_stages():
    from taltoolkit.visualization.curves import scalars_from_history

    history = [{"stage": "warmup", "epoch": 0, "lr": 0.1, "loss": 3.0, "seconds": 2.0},
               {"stage": "iter1", "epoch": 0, "lr": 0.1, "loss": 2.0, "seconds": 2.5, "note": "x"},
               {"stage": "iter1", "epoch": 1, "lr": 0.05, "loss": 1.5, "seconds": 2.0}]
    evals = [{"stage": "iter1", "epoch": 0, "test_average_mAP": 7.5}]
    scalars, starts = scalars_from_history(history, evals)
    assert scalars["train/loss"] == [(1, 3.0), (2, 2.0), (3, 1.5)]
    assert scalars["train/lr"] == [(1, 0.1), (2, 0.1), (3, 0.05)]
    assert scalars["epoch/seconds"][1] == (2, 2.5)
    assert scalars["eval/test_average_mAP"] == [(2, 7.5)]
    assert "train/note" not in scalars
    assert starts == [(0, "warmup"), (1, "iter1")]


# ----------------------------------------------------------------------------- per-class AP


def test_per_class_ap_comes_from_the_evaluation_layer_and_is_drawn_sorted(tmp_path, figures):
    from taltoolkit.evaluation import detection_map
    from taltoolkit.visualization.per_class import mean_over_thresholds, per_class_ap, plot_per_class_ap

    gt = {"classes": CLASSES, "database": {
        "v1": {"subset": "test", "duration": 30.0, "annotations": [{"label": "Diving", "segment": [1.0, 5.0]},
                                                                   {"label": "HighJump", "segment": [10.0, 15.0]}]},
        "v2": {"subset": "test", "duration": 30.0, "annotations": [{"label": "HighJump", "segment": [3.0, 9.0]}]}}}
    pred = {"results": {"v1": [{"label": "Diving", "score": 0.9, "segment": [1.0, 5.0]},
                               {"label": "HighJump", "score": 0.5, "segment": [20.0, 25.0]}],
                        "v2": [{"label": "HighJump", "score": 0.8, "segment": [3.5, 9.0]}]}}
    ap, thresholds = per_class_ap(gt, pred, subset="test", tiou_thresholds=[0.5, 0.7])
    ref = detection_map(gt, pred, tiou_thresholds=[0.5, 0.7], subset="test").to_dict()["per_class_AP"]
    assert ap == mean_over_thresholds(ref)
    assert ap["Diving"] == pytest.approx(100.0) and ap["LongJump"] is None and 0 < ap["HighJump"] < 100
    assert thresholds == [0.5, 0.7]
    plot_per_class_ap(tmp_path / "p.png", {"A": ap, "B": {"Diving": 20.0, "HighJump": 80.0}})
    ax = figures["p.png"].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Diving", "HighJump"]  # by A's AP, absent class out
    widths = [round(p.get_width(), 6) for p in ax.patches]
    assert widths == [100.0, round(ap["HighJump"], 6), 20.0, 80.0]  # A's bars, then B's, on the same classes


def test_mean_over_thresholds_leaves_out_classes_absent_from_the_subset():
    from taltoolkit.visualization.per_class import mean_over_thresholds

    got = mean_over_thresholds({"a": [10.0, 20.0], "b": [None, None], "c": [float("nan"), 5.0]})
    assert got == {"a": 15.0, "b": None, "c": None}


# ----------------------------------------------------------------------------- clusters, pseudo-labels


def test_cluster_confusion_counts_and_orders_matched_clusters_on_the_diagonal(tmp_path, figures):
    from taltoolkit.visualization.clusters import cluster_confusion, plot_cluster_confusion

    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1, -1])
    clusters = np.array([2, 2, 1, 0, 0, 1, 1, 1, 3, 0, 5])  # cluster 2 ~ class 0, 0 ~ 1, 1 ~ 2; 3 extra
    counts, order = cluster_confusion(clusters, labels, 3)
    assert counts.shape == (4, 3) and counts.sum() == 10  # the item with class -1 is not counted
    assert counts[2, 0] == 2 and counts[1, 2] == 3 and counts[0, 1] == 3 and counts[3, 2] == 1
    assert order.tolist() == [2, 0, 1, 3]
    assert np.trace(counts[order][:3]) == 8
    plot_cluster_confusion(tmp_path / "k.png", clusters, labels, CLASSES)
    ax = figures["k.png"].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cluster 2", "cluster 0", "cluster 1", "cluster 3"]
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    shown = ax.images[0].get_array()
    assert shown[0, 0] == pytest.approx(1.0) and shown[1, 1] == pytest.approx(1.0)
    assert "purity" in ax.get_title() and "NMI" in ax.get_title()


def test_pseudo_label_quality_draws_count_precision_and_recall_per_round(tmp_path, figures):
    from taltoolkit.visualization.pseudo_labels import plot_pseudo_label_quality, pseudo_label_rounds

    stage_metrics = [{"stage": "supervised"}, {"stage": "round_1", "count": 120, "precision": 0.6, "recall": 0.4},
                     {"stage": "round_2", "tau_pos": 0.3, "before_icd": {"num_pseudo": 99.0, "pos_acc": 0.1, "recall": 0.1},
                      "pseudo_quality": {"num_pseudo": 150.0, "class_acc": 0.5, "pos_acc": 0.7, "recall": 0.55}}]
    rounds = pseudo_label_rounds(stage_metrics)  # plain keys, and APL's pseudo_quality
    assert rounds == [{"round": "round_1", "count": 120, "precision": 0.6, "recall": 0.4},
                      {"round": "round_2", "count": 150.0, "precision": 0.7, "recall": 0.55}]
    plot_pseudo_label_quality(tmp_path / "q.png", rounds)
    ax_n, ax_q = figures["q.png"].axes[:2]
    assert [p.get_height() for p in ax_n.patches] == [120, 150]
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in ax_q.get_lines()}
    assert lines == {"precision": [0.6, 0.7], "recall": [0.4, 0.55]}
    assert [t.get_text() for t in ax_n.get_xticklabels()] == ["round_1", "round_2"]


def test_save_png_is_atomic_and_leaves_the_backend_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    fig = _figure.new_figure(2, 1)
    fig.subplots().plot([0, 1])
    assert _is_png(_figure.save_png(fig, tmp_path / "sub" / "f.png"))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.png"]  # no temporary left over
    assert matplotlib.get_backend() == backend
    assert math.isfinite(_figure.DPI)
