"""report.html: one self-contained page per run -- the metrics table, training curves, AP per
class, the per-video timelines and activations, the resolved config. Images are embedded as
base64 data URIs and the page has no script and loads nothing, so it opens offline, by mail
or from an archive, in any browser."""
from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from pathlib import Path
from typing import Any, Sequence

from taltoolkit.atomicio import atomic_write_text
from taltoolkit.visualization.layout import PLOTS_DIR, VIDEOS_DIR

__all__ = ["write_report"]

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1200px; padding: 0 16px; color: #1d1d1f; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #555; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; border: 1px solid #eee; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; border: 1px solid #e3e3e3; }
nav a { margin-right: 12px; } .note { color: #777; font-style: italic; }
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, digits: int = 2) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "&ndash;"
    return f"{x:.{digits}f}"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _metrics_table(metrics: dict[str, Any]) -> str:
    t = metrics.get("tiou_thresholds") or []
    head = "".join(f"<th>{_num(x)}</th>" for x in t) + "<th>avg</th>"
    row = "".join(f"<td>{_num(x)}</td>" for x in metrics.get("mAP") or []) + f"<td>{_num(metrics.get('average_mAP'))}</td>"
    out = [f'<table id="metrics"><thead><tr><th>tIoU</th>{head}</tr></thead>',
           f"<tbody><tr><td>mAP (%)</td>{row}</tr></tbody></table>"]
    averages = metrics.get("averages") or {}
    if averages:
        out.append('<table id="averages"><thead><tr><th>average</th><th>mAP (%)</th></tr></thead><tbody>')
        out += [f"<tr><td>{_esc(k)}</td><td>{_num(v)}</td></tr>" for k, v in averages.items()]
        out.append("</tbody></table>")
    return "\n".join(out)


def _per_class_table(metrics: dict[str, Any]) -> str:
    per_class = metrics.get("per_class_AP") or {}
    t = metrics.get("tiou_thresholds") or []
    n_gt = metrics.get("num_ground_truth") or {}
    n_pred = metrics.get("num_predictions") or {}
    head = "".join(f"<th>{_num(x)}</th>" for x in t)
    rows = []
    for c, aps in per_class.items():
        vals = [a for a in aps if isinstance(a, (int, float))]
        mean = sum(vals) / len(vals) if vals and len(vals) == len(aps) else None
        cells = "".join(f"<td>{_num(a)}</td>" for a in aps)
        rows.append(f"<tr><td>{_esc(c)}</td><td>{n_gt.get(c, '')}</td><td>{n_pred.get(c, '')}</td>{cells}"
                    f"<td>{_num(mean)}</td></tr>")
    return (f'<details><summary>AP (%) per class and tIoU</summary><table id="per-class"><thead><tr>'
            f"<th>class</th><th>instances</th><th>predictions</th>{head}<th>avg</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></details>")


def write_report(
    data: Any,
    path: str | Path,
    *,
    plots_dir: str | Path | None = None,
    videos: Sequence[tuple[str, Sequence[Path]]] | None = None,
) -> Path:
    """Write the report of ``data`` (a :class:`~taltoolkit.visualization.run.RunData`) to ``path``.

    ``plots_dir``: the run-level PNGs to embed (default ``<run>/plots``); every PNG directly in
    it is shown (the curves, AP per class, pseudo-labels first, then any a method wrote).
    ``videos``: ``[(video, [its PNGs])]`` to show (default: every PNG under ``plots/videos``).
    """
    run_dir = Path(data.run_dir)
    plots = Path(plots_dir) if plots_dir is not None else run_dir / PLOTS_DIR
    metrics = data.metrics or {}
    title = " ".join(str(x) for x in (metrics.get("method"), "on", metrics.get("dataset")) if x) \
        if metrics.get("method") else run_dir.name
    subset = metrics.get("subset")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}{f' ({_esc(subset)})' if subset else ''}</h1>",
    ]
    meta = [f"{k.replace('_', ' ')}: {metrics[k]}" for k in ("label_mode", "preset", "seed", "device", "world_size")
            if metrics.get(k) is not None]
    selected = metrics.get("model_selection") or {}
    if selected.get("weights"):
        meta.append(f"weights: {selected['weights']}")
    meta.append(f"run directory: {run_dir.resolve()}")
    parts.append(f'<p class="meta">{_esc(" · ".join(meta))}</p>')
    parts.append('<nav><a href="#sec-metrics">metrics</a><a href="#sec-curves">training</a>'
                 '<a href="#sec-classes">classes</a><a href="#sec-videos">videos</a><a href="#sec-config">config</a></nav>')

    parts.append('<h2 id="sec-metrics">Metrics</h2>')
    if metrics.get("mAP") is not None:
        parts.append(_metrics_table(metrics))
    else:
        parts.append('<p class="note">no metrics.json: the run did not finish its evaluation</p>')

    run_pngs = sorted(plots.glob("*.png")) if plots.is_dir() else []
    first = {"training_curves.png": 0, "per_class_ap.png": 1, "pseudo_labels.png": 2}
    run_pngs.sort(key=lambda p: (first.get(p.name, 3), p.name))
    parts.append('<h2 id="sec-curves">Training</h2>')
    curves = plots / "training_curves.png"
    parts.append(_img(curves, "training curves") if curves.is_file()
                 else '<p class="note">no training curves (no scalars.jsonl or history in metrics.json)</p>')
    parts.append('<h2 id="sec-classes">Classes</h2>')
    per_class = plots / "per_class_ap.png"
    if per_class.is_file():
        parts.append(_img(per_class, "AP per class"))
    if metrics.get("per_class_AP"):
        parts.append(_per_class_table(metrics))
    others = [p for p in run_pngs if p.name not in ("training_curves.png", "per_class_ap.png")]
    for p in others:
        parts.append(f"<h3>{_esc(p.stem.replace('_', ' '))}</h3>{_img(p, p.stem)}")

    parts.append('<h2 id="sec-videos">Videos</h2>')
    if videos is None:
        folder = plots / VIDEOS_DIR
        by_video: dict[str, list[Path]] = {}
        for p in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            by_video.setdefault(p.stem.rsplit("_", 1)[0], []).append(p)
        videos = list(by_video.items())
    if not videos:
        parts.append('<p class="note">no video plots</p>')
    for name, pngs in videos:
        parts.append(f"<h3>{_esc(name)}</h3>" + "".join(_img(Path(p), f"{name} {Path(p).stem}") for p in pngs))

    parts.append('<h2 id="sec-config">Config</h2>')
    if data.config_path is not None:
        parts.append(f'<p class="meta">{_esc(data.config_path.name if data.config_path.parent == run_dir else data.config_path)}</p>'
                     f'<pre id="config">{_esc(data.config_path.read_text(encoding="utf-8"))}</pre>')
    else:
        parts.append('<p class="note">no config.yaml in the run directory</p>')
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    parts.append(f'<p class="meta">written {_esc(stamp)} by taltoolkit</p></body></html>')
    path = Path(path)
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
