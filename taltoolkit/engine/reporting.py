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
        plot_videos(out_dir / "plots", videos[:num_plots], outputs[:num_plots], detections, classes)
    except Exception as e:  # noqa: BLE001 - a plotting failure must not lose the results above
        log.warning("could not draw plots: %s", e)


def plot_videos(
    folder: Path, videos: list[Video], outputs: list[dict[str, Any]], detections: dict[str, Detections], classes: list[str]
) -> None:
    """One PNG per video: activation sequences over time, ground truth and top detections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for video, out in zip(videos, outputs):
        fig, ax = plt.subplots(figsize=(10, 3.2))
        # A test video resampled to another length (step_scale) is drawn on its own time axis.
        scale = float(out.get("_step_scale", 1.0))
        t = video.to_seconds((np.arange(int(round(video.num_steps / scale))) + 0.5) * scale)
        gt_classes = sorted(set(video.labels.tolist()))
        if "cas" in out and out["cas"] is not None:
            cas = np.asarray(out["cas"])
            for c in gt_classes or [int(np.argmax(cas.mean(0)))]:
                n = min(len(t), cas.shape[0])
                ax.plot(t[:n], cas[:n, c], lw=1, label=f"CAS {classes[c]}")
        if "actionness" in out and out["actionness"] is not None:
            a = np.asarray(out["actionness"])
            n = min(len(t), a.shape[0])
            ax.plot(t[:n], a[:n], lw=1, color="k", alpha=0.7, label="actionness")
        for (s, e), c in zip(video.segments, video.labels):
            ax.axvspan(s, e, color="tab:green", alpha=0.2)
        det = detections.get(video.name)
        if det is not None and len(det):
            top = np.argsort(-det.scores)[:10]
            for rank, i in enumerate(top):
                s, e = det.segments[i]
                ax.hlines(-0.05 - 0.03 * rank, s, e, color="tab:red", lw=2)
        ax.set_xlim(0, max(video.duration, float(t[-1]) if len(t) else 1.0))
        ax.set_xlabel("seconds")
        ax.set_title(f"{video.name}: ground truth (green), top detections (red)")
        if ax.get_legend_handles_labels()[0]:  # detectors (ActionFormer) plot no CAS curve
            ax.legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / f"{video.name}.png", dpi=80)
        plt.close(fig)
