"""Every plot of a run directory, and its report.html, from what the run saved.

At the end of a run ``write_run_plots(run_dir, videos=..., outputs=..., classes=...)`` first
saves what the plots need beyond the run's own files -- ``plots/ground_truth.json`` (the
test videos' instances, ActivityNet format) and ``plots/activations.npz`` (the CAS and
attention of the plotted videos) -- then draws everything from the directory. Later,
``write_run_plots(run_dir)`` (``taltoolkit-visualize --run DIR``) draws the same again, with
other videos or settings. What it reads:

- ``metrics.json``: the metrics table, AP per class, the per-epoch history (curves when
  there is no per-step scalar), ``stage_metrics`` (pseudo-label rounds);
- ``predictions.json``: the detections of the timelines;
- ``scalars.jsonl``: training curves (:class:`taltoolkit.engine.logger.RunLogger`);
- ``config.yaml`` (else ``.hydra/config.yaml``): ``plots.num_videos``, ``plots.top_k`` and
  the post-processor's thresholds drawn on the activations;
- ``plots/ground_truth.json`` and ``plots/activations.npz``.

Written: ``plots/videos/<video>_timeline.png``, ``plots/videos/<video>_activation.png``,
``plots/training_curves.png``, ``plots/per_class_ap.png``, ``plots/pseudo_labels.png`` (when
``stage_metrics`` report pseudo-label rounds) and ``report.html``. Any other PNG a method
writes into ``plots/`` (e.g. COPL's cluster confusion) is shown in the report too.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from taltoolkit.atomicio import atomic_write_bytes, atomic_write_text
from taltoolkit.visualization._figure import class_colors, file_stem
from taltoolkit.visualization.layout import ACTIVATIONS_FILE, GROUND_TRUTH_FILE, PLOTS_DIR, REPORT_FILE, VIDEOS_DIR

log = logging.getLogger("taltoolkit")

DEFAULT_NUM_VIDEOS = 3
DEFAULT_TOP_K = 10

__all__ = [
    "ACTIVATIONS_FILE", "GROUND_TRUTH_FILE", "REPORT_FILE", "RunData", "detection_entries", "ground_truth_json",
    "load_run", "plot_video", "save_plot_data", "video_times", "write_run_plots",
]


# ----------------------------------------------------------------------------- saving


def ground_truth_json(videos: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
    """ActivityNet-format ground truth of ``videos`` (:class:`~taltoolkit.structures.Video`)."""
    database = {}
    for v in videos:
        database[v.name] = {
            "subset": v.subset,
            "duration": float(v.duration),
            "annotations": [{"label": classes[int(c)], "segment": [float(s), float(e)]}
                            for (s, e), c in zip(np.asarray(v.segments).reshape(-1, 2), np.asarray(v.labels))],
        }
    return {"version": "taltoolkit", "classes": list(classes), "database": database}


def video_times(video: Any, out: Mapping[str, Any], num_steps: int) -> np.ndarray:
    """Seconds at the centre of each output step of ``video``'s ``method.predict`` output."""
    from taltoolkit.visualization.activation import activation_times

    return activation_times(num_steps, video.step_s, video.offset_s, float(out.get("_step_scale", 1.0)),
                            out.get("positions"))


def save_plot_data(
    run_dir: str | Path,
    videos: Sequence[Any],
    outputs: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    num_videos: int,
) -> None:
    """Save the ground truth of ``videos`` and the activations of the first ``num_videos``
    (``outputs``: their ``method.predict`` outputs) under ``run_dir/plots``."""
    plots = Path(run_dir) / PLOTS_DIR
    atomic_write_text(plots / GROUND_TRUTH_FILE, json.dumps(ground_truth_json(videos, classes)))
    arrays: dict[str, np.ndarray] = {}
    names = []
    for video, out in list(zip(videos, outputs))[:num_videos]:
        if out.get("cas") is None:  # detectors regress segments: no activation sequence
            continue
        i = len(names)
        names.append(video.name)
        cas = np.asarray(out["cas"], dtype=np.float32)
        arrays[f"cas_{i}"] = cas
        arrays[f"times_{i}"] = video_times(video, out, cas.shape[0])
        if out.get("class_scores") is not None:
            arrays[f"class_scores_{i}"] = np.asarray(out["class_scores"], dtype=np.float32).reshape(-1)
        if out.get("actionness") is not None:
            arrays[f"actionness_{i}"] = np.asarray(out["actionness"], dtype=np.float32).reshape(-1)
    arrays["names"] = np.asarray(names, dtype=np.str_)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    atomic_write_bytes(plots / ACTIVATIONS_FILE, lambda f: f.write(data))


# ----------------------------------------------------------------------------- loading


class RunData:
    """What a run directory holds for its plots (each part None/empty when absent)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise FileNotFoundError(f"{self.run_dir}: not a run directory")
        self.metrics: dict[str, Any] | None = _read_json(self.run_dir / "metrics.json")
        preds = _read_json(self.run_dir / "predictions.json")
        self.predictions: dict[str, list[dict[str, Any]]] = (preds or {}).get("results", {}) if preds else {}
        self.config_path, self.config = _read_config(self.run_dir)
        gt = _read_json(self.run_dir / PLOTS_DIR / GROUND_TRUTH_FILE)
        self.ground_truth: dict[str, Any] = gt or {}
        self.activations = load_activations(self.run_dir / PLOTS_DIR / ACTIVATIONS_FILE)
        scalars_path = self.run_dir / "scalars.jsonl"
        if scalars_path.is_file():
            from taltoolkit.engine.logger import read_scalars

            self.scalars = read_scalars(scalars_path)
        else:
            self.scalars = {}

    @property
    def classes(self) -> list[str]:
        if self.ground_truth.get("classes"):
            return list(self.ground_truth["classes"])
        if self.metrics and self.metrics.get("per_class_AP"):
            return list(self.metrics["per_class_AP"])
        return sorted({d["label"] for ds in self.predictions.values() for d in ds})

    def setting(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        return default if node is None else node


def load_run(run_dir: str | Path) -> RunData:
    return RunData(run_dir)


def load_activations(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{video: {"cas", "times", "class_scores"?, "actionness"?}}`` from ``plots/activations.npz``."""
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["names"]]
        out = {}
        for i, name in enumerate(names):
            out[name] = {k: z[f"{k}_{i}"] for k in ("cas", "times", "class_scores", "actionness")
                         if f"{k}_{i}" in z.files}
    return out


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_config(run_dir: Path) -> tuple[Path | None, dict[str, Any]]:
    from omegaconf import OmegaConf

    for p in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if p.is_file():
            try:
                cfg = OmegaConf.to_container(OmegaConf.load(p), resolve=False)
            except Exception as e:  # noqa: BLE001 - the plots do without settings
                log.warning("could not read %s (%s); plotting with default settings", p, e)
                return p, {}
            return p, cfg if isinstance(cfg, dict) else {}
    return None, {}


# ----------------------------------------------------------------------------- drawing


def detection_entries(det: Any, classes: Sequence[str]) -> list[dict[str, Any]]:
    """:class:`~taltoolkit.structures.Detections` -> ActivityNet result entries."""
    if det is None:
        return []
    return [{"label": classes[int(c)], "score": float(s), "segment": [float(a), float(b)]}
            for (a, b), s, c in zip(np.asarray(det.segments).reshape(-1, 2), np.asarray(det.scores),
                                    np.asarray(det.labels))]


def plot_video(
    folder: str | Path,
    video: str,
    ground_truth: Sequence[Mapping[str, Any]],
    detections: Mapping[str, Sequence[Mapping[str, Any]]],
    classes: Sequence[str],
    *,
    duration: float | None = None,
    activation: Mapping[str, Any] | None = None,
    thresholds: Mapping[str, Any] | None = None,
    top_k: int | None = DEFAULT_TOP_K,
) -> list[Path]:
    """The timeline (and, with ``activation`` = {"cas", "times", ...}, the activation plot) of
    one video in ``folder``, sharing class colours; ``thresholds``: the post-processor's
    ``cas_thresholds``, ``actionness_thresholds`` and ``class_threshold``."""
    from taltoolkit.visualization.activation import localized_classes, plot_activation, threshold_values
    from taltoolkit.visualization.timeline import plot_timeline, top_detections

    folder = Path(folder)
    stem = file_stem(video)
    thresholds = thresholds or {}
    class_threshold = thresholds.get("class_threshold")
    names = [str(g["label"]) for g in ground_truth]
    names += [str(d["label"]) for entries in detections.values() for d in top_detections(entries, top_k)]
    if activation is not None:
        picked = localized_classes(activation.get("class_scores"), class_threshold, np.shape(activation["cas"])[1])
        names += [classes[c] for c in picked[:4] if c < len(classes)]
    colors = class_colors(names, classes)  # one palette for both figures of the video
    paths = [plot_timeline(folder / f"{stem}_timeline.png", video, ground_truth, detections, duration=duration,
                           top_k=top_k, classes=classes, colors=colors)]
    if activation is not None:
        paths.append(plot_activation(
            folder / f"{stem}_activation.png", video, activation["times"], activation["cas"], classes,
            class_scores=activation.get("class_scores"), class_threshold=class_threshold,
            cas_thresholds=threshold_values(thresholds.get("cas_thresholds")),
            actionness=activation.get("actionness"),
            actionness_thresholds=threshold_values(thresholds.get("actionness_thresholds")),
            ground_truth=ground_truth, duration=duration, colors=colors,
        ))
    return paths


def write_run_plots(
    run_dir: str | Path,
    *,
    videos: Sequence[Any] | None = None,
    outputs: Sequence[Mapping[str, Any]] | None = None,
    classes: Sequence[str] | None = None,
    video_names: Sequence[str] | None = None,
    num_videos: int | None = None,
    top_k: int | None = None,
    out_dir: str | Path | None = None,
    default_num_videos: int = DEFAULT_NUM_VIDEOS,
    report: bool = True,
) -> list[Path]:
    """Draw every plot of ``run_dir`` (module docstring) and write its report.html; returns
    the files written.

    ``videos``/``outputs``/``classes`` (at the end of a run): save the plot data first.
    ``video_names``: the videos to draw (default: those whose activations were saved, then
    the next ones of the ground truth, ``num_videos`` in all). ``num_videos``/``top_k``:
    default ``plots.num_videos``/``plots.top_k`` of the run's config, else
    ``default_num_videos``/10. ``out_dir``: write plots/ and report.html there instead.
    A plot that cannot be drawn is logged and skipped; the others are still written.
    """
    run_dir = Path(run_dir)
    if videos is not None:
        if classes is None or outputs is None:
            raise ValueError("videos need their outputs and the class list")
        cfg_n = _read_config(run_dir)[1].get("plots", {}) or {}
        n = num_videos if num_videos is not None else int(cfg_n.get("num_videos", default_num_videos))
        save_plot_data(run_dir, videos, outputs, classes, n)
    data = RunData(run_dir)
    num_videos = num_videos if num_videos is not None else int(data.setting("plots.num_videos", default_num_videos))
    top_k = top_k if top_k is not None else int(data.setting("plots.top_k", DEFAULT_TOP_K))
    base = Path(out_dir) if out_dir is not None else run_dir
    plots = base / PLOTS_DIR
    written: list[Path] = []

    def attempt(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - one failing plot must not cost the others
            log.warning("could not draw %s: %s: %s", what, type(e).__name__, e)
            return None
        written.extend(result if isinstance(result, list) else [result])
        return result

    video_pngs: list[tuple[str, list[Path]]] = []
    for name in select_videos(data, video_names, num_videos):
        paths = attempt(f"the plots of video {name}", _plot_run_video, data, name, plots / VIDEOS_DIR, top_k)
        if paths:
            video_pngs.append((name, paths))
    curves = training_scalars(data)
    if curves is not None:
        scalars, x_label, starts = curves
        attempt("the training curves", _curves, plots / "training_curves.png", scalars, x_label, starts)
    if data.metrics and data.metrics.get("per_class_AP"):
        attempt("AP per class", _per_class, plots / "per_class_ap.png", data.metrics)
    if data.metrics:
        from taltoolkit.visualization.pseudo_labels import plot_pseudo_label_quality, pseudo_label_rounds

        rounds = pseudo_label_rounds(data.metrics.get("stage_metrics") or [])
        if rounds:
            attempt("the pseudo-label rounds", plot_pseudo_label_quality, plots / "pseudo_labels.png", rounds)
        from taltoolkit.visualization.clusters import plot_cluster_confusion

        for stage, name, assignment in cluster_assignments(data.metrics.get("stage_metrics") or []):
            attempt(f"the {name} clusters", plot_cluster_confusion, plots / f"clusters_{name}.png",
                    assignment["clusters"], assignment["classes"], data.classes, title=f"{stage}: clusters x classes")
    if report:
        from taltoolkit.visualization.report import write_report

        attempt("report.html", write_report, data, base / REPORT_FILE, plots_dir=plots, videos=video_pngs)
    return written


def cluster_assignments(stage_metrics: Sequence[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(stage, file name part, {"clusters", "classes"}) for every clustering a method reported in
    its stage metrics as ``cluster_assignment`` (COPL: each iteration's clustering) or
    ``final_cluster_assignment`` (the clustering of the trained model)."""
    out = []
    for i, m in enumerate(stage_metrics):
        stage = str(m.get("stage", i))
        for key, name in (("cluster_assignment", stage), ("final_cluster_assignment", "final")):
            a = m.get(key)
            if isinstance(a, dict) and a.get("clusters") and len(a["clusters"]) == len(a.get("classes", ())):
                out.append((stage if name == stage else f"{stage} (trained model)", name, a))
    return out


def select_videos(data: RunData, names: Sequence[str] | None, num_videos: int) -> list[str]:
    """``names`` when given (each must be in the ground truth or the predictions), else the
    videos whose activations were saved, then further ground-truth videos, ``num_videos`` in all."""
    database = data.ground_truth.get("database", {})
    if names:
        unknown = [n for n in names if n not in database and n not in data.predictions]
        if unknown:
            raise KeyError(f"video(s) {', '.join(map(repr, unknown))} are in neither the run's ground truth nor "
                           "its predictions.json")
        return list(names)
    chosen = list(data.activations)
    chosen += [v for v in database if v not in chosen]
    if not database:
        chosen += [v for v in data.predictions if v not in chosen]
    return chosen[: max(0, num_videos)]


def training_scalars(data: RunData) -> tuple[dict[str, Any], str, list[tuple[float, str]]] | None:
    """Curves of the run: the scalars of scalars.jsonl when the training loop logged any (tags
    ``group/name``), else the per-epoch history of metrics.json; None without either."""
    if any("/" in t for t in data.scalars):
        # The final mAP per tIoU (logged untagged at the end) is the metrics table; of it, the
        # curves keep the average as the last point of the evaluation panel.
        logged = {t: s for t, s in data.scalars.items() if "/" in t or t == "average_mAP"}
        return logged, "step", []
    if data.metrics and data.metrics.get("history"):
        from taltoolkit.visualization.curves import scalars_from_history

        metrics = data.metrics
        scalars, starts = scalars_from_history(metrics["history"], metrics.get("evaluations") or [])
        if isinstance(metrics.get("average_mAP"), (int, float)):  # the evaluation after the last epoch
            scalars["eval/final_average_mAP"] = [(float(len(metrics["history"])), float(metrics["average_mAP"]))]
        if scalars:
            return scalars, "epoch", starts
    return None


def _plot_run_video(data: RunData, name: str, folder: Path, top_k: int) -> list[Path]:
    entry = data.ground_truth.get("database", {}).get(name, {})
    gt = entry.get("annotations", [])
    label = str((data.metrics or {}).get("method") or "detections")
    post = data.setting("postprocess", {}) or {}
    return plot_video(folder, name, gt, {label: data.predictions.get(name, [])}, data.classes,
                      duration=entry.get("duration"), activation=data.activations.get(name), thresholds=post,
                      top_k=top_k)


def _curves(path: Path, scalars: Mapping[str, Any], x_label: str, starts: list[tuple[float, str]]) -> Path:
    from taltoolkit.visualization.curves import plot_training_curves

    return plot_training_curves(path, scalars, x_label=x_label, stage_starts=starts)


def _per_class(path: Path, metrics: Mapping[str, Any]) -> Path:
    from taltoolkit.visualization.per_class import mean_over_thresholds, plot_per_class_ap

    t = metrics.get("tiou_thresholds") or []
    span = f"tIoU {t[0]:.2f}-{t[-1]:.2f}" if len(t) > 1 else (f"tIoU {t[0]:.2f}" if t else "")
    per_class = mean_over_thresholds(metrics["per_class_AP"])
    label = str(metrics.get("method") or "AP")
    return plot_per_class_ap(path, {label: per_class},
                             title=f"AP per class, mean over {span} ({metrics.get('subset', '')})")
