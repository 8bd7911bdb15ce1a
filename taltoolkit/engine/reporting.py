"""What a run leaves in its output directory, and the table it prints."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from taltoolkit.jsonio import dump_json
from taltoolkit.postprocess.results_io import write_results_json
from taltoolkit.structures import Detections, Video
from taltoolkit.tables import format_table

log = logging.getLogger("taltoolkit")

__all__ = ["format_table", "metrics_table", "plot_videos", "write_run_outputs"]


def metrics_table(metrics: dict[str, Any]) -> str:
    headers = ["tIoU", *[f"{t:.2f}" for t in metrics["tiou_thresholds"]], "avg"]
    row = ["mAP %", *[float(m) for m in metrics["mAP"]], float(metrics["average_mAP"])]
    text = format_table(headers, [row])
    if metrics.get("averages"):
        text += "\n" + "  ".join(f"{k}: {v:.2f}" for k, v in metrics["averages"].items())
    return text


def write_run_outputs(
    out_dir: Path,
    metrics: dict[str, Any],
    detections: dict[str, Detections],
    outputs: list[dict[str, Any]],
    videos: list[Video],
    classes: list[str],
    run_logger: Any = None,
    num_plots: int = 3,
) -> None:
    write_results_json(out_dir / "predictions.json", detections, classes)
    dump_json(out_dir / "metrics.json", metrics)
    table = metrics_table(metrics)
    print(f"\n{metrics.get('method', '')} on {metrics.get('dataset', '')} ({metrics.get('subset', '')}):\n{table}\n")
    log.info("results written to %s (metrics.json, predictions.json, plots/)", out_dir)
    if run_logger is not None:
        run_logger.log({"average_mAP": metrics["average_mAP"], **{f"mAP@{t:.2f}": m for t, m in zip(metrics["tiou_thresholds"], metrics["mAP"])}})
    try:
        write_plots(out_dir, videos, outputs, classes, num_plots)
    except Exception as e:  # noqa: BLE001 - a plotting failure must not lose the results above
        log.warning("could not draw plots: %s", e)


def write_plots(out_dir: Path, videos: list[Video], outputs: list[dict[str, Any]], classes: list[str],
                num_plots: int = 3) -> None:
    """The run's plots and report.html (:func:`taltoolkit.visualization.write_run_plots`): the
    first ``plots.num_videos`` test videos (the run's config; else ``num_plots``) with their
    outputs, the training curves, AP per class. ``taltoolkit-visualize --run DIR`` redraws them."""
    from taltoolkit.visualization.run import write_run_plots

    written = write_run_plots(out_dir, videos=videos, outputs=outputs, classes=classes, default_num_videos=num_plots)
    log.info("%d plots in %s, report: %s", sum(p.suffix == ".png" for p in written), out_dir / "plots",
             out_dir / "report.html")


def plot_videos(
    folder: Path, videos: list[Video], outputs: list[dict[str, Any]], detections: dict[str, Detections], classes: list[str],
    *, thresholds: dict[str, Any] | None = None, top_k: int = 10,
) -> list[Path]:
    """Per video, a timeline of the ground truth against the ``top_k`` detections and (for
    outputs with a CAS) the activation plot with the post-processor's ``thresholds``
    (``cas_thresholds``, ``actionness_thresholds``, ``class_threshold``) in ``folder``."""
    from taltoolkit.visualization.run import detection_entries, ground_truth_json, plot_video, video_times

    database = ground_truth_json(videos, classes)["database"]
    written: list[Path] = []
    for video, out in zip(videos, outputs):
        activation = None
        if out.get("cas") is not None:
            cas = np.asarray(out["cas"])
            activation = {"cas": cas, "times": video_times(video, out, cas.shape[0]),
                          "class_scores": out.get("class_scores"), "actionness": out.get("actionness")}
        written += plot_video(folder, video.name, database[video.name]["annotations"],
                              {"detections": detection_entries(detections.get(video.name), classes)}, classes,
                              duration=video.duration, activation=activation, thresholds=thresholds, top_k=top_k)
    return written
