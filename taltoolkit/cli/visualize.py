"""Draw detections against the ground truth, or redraw a run's plots and report.html.

    taltoolkit-visualize GT.json PRED.json [PRED2.json ...] [--video ID ...] [--out DIR]
    taltoolkit-visualize GT.json a/predictions.json b/results.json --subset test --per-class
    taltoolkit-visualize --run outputs/case/synthetic/<time> [--video ID ...] [--num-videos 8]

GT is ActivityNet-format ground truth (``{"database": {video: {"annotations": [...]}}}``),
each PRED an ActivityNet results file (``{"results": {video: [{"label", "score",
"segment"}]}}``) -- a run's predictions.json or the official codes' outputs. Each video gets a
timeline: the ground truth on one row, then one row per PRED (named after its file) with its
``--top`` best detections, so methods compare on the same video. ``--per-class`` also draws
AP per class for every PRED side by side. ``--run DIR`` redraws a saved run's plots and
report.html (into DIR, or ``--out``). User errors end with exit status 2 and one line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


class CliError(Exception):
    """One-line user error: printed as ``visualize.py: error: <message>``, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="visualize.py",
        description="Timelines of ground truth against detections (ActivityNet-format files), or a run's "
                    "plots and report.html.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  visualize.py gt.json case/predictions.json acm/results.json --video video_test_0000004\n"
               "  visualize.py --run outputs/case/synthetic/2026-11-23_12-00-00_ab12cd",
    )
    p.add_argument("files", nargs="*", metavar="GT PRED", help="ground truth JSON, then one or more results JSON")
    p.add_argument("--run", type=Path, metavar="DIR", help="a run directory: redraw its plots and report.html")
    p.add_argument("--video", nargs="+", action="extend", metavar="ID", help="videos to draw (default: the first "
                   "--num-videos of the ground truth's subset that have detections)")
    p.add_argument("--num-videos", type=int, default=None, metavar="N",
                   help="videos to draw without --video (default 3; a run: its plots.num_videos)")
    p.add_argument("--top", type=int, default=None, metavar="K",
                   help="detections per row, best first (default 10; a run: its plots.top_k)")
    p.add_argument("--subset", default=None, help="ground-truth subset to draw videos from and to score "
                   "(default: every video; --per-class: 'test')")
    p.add_argument("--per-class", action="store_true", help="also draw AP per class of each PRED (per_class_ap.png)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default ./timelines; with --run: the run directory)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = _run(args)
    except CliError as e:
        if args.debug:
            raise
        print(f"visualize.py: error: {e}", file=sys.stderr)
        return 2
    for p in written:
        print(p)
    return 0


def _run(args: argparse.Namespace) -> list[Path]:
    for flag, v in (("--num-videos", args.num_videos), ("--top", args.top)):
        if v is not None and v < 1:
            raise CliError(f"{flag} must be at least 1, got {v}")
    if args.run is not None:
        if args.files:
            raise CliError("give either --run DIR or GT PRED files, not both")
        return _redraw_run(args)
    if len(args.files) < 2:
        raise CliError("give the ground truth and at least one results file (GT PRED [PRED ...]), or --run DIR")
    return _timelines(args)


def _redraw_run(args: argparse.Namespace) -> list[Path]:
    from taltoolkit.visualization.run import write_run_plots

    run = args.run
    if not run.is_dir():
        raise CliError(f"{run}: not a directory; pass a run's output folder (it holds metrics.json)")
    if not any((run / f).exists() for f in ("metrics.json", "predictions.json", "scalars.jsonl", "config.yaml")):
        raise CliError(f"{run}: no run outputs (metrics.json, predictions.json, scalars.jsonl or config.yaml)")
    try:
        return write_run_plots(run, video_names=args.video, num_videos=args.num_videos, top_k=args.top,
                               out_dir=args.out)
    except KeyError as e:
        raise CliError(f"{run}: {e.args[0]}") from None


def _load(path: str, what: str) -> Any:
    from taltoolkit.jsonio import DuplicateKeyError, strict_loads

    try:
        with open(path, "rb") as f:
            return strict_loads(f.read())
    except FileNotFoundError:
        raise CliError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory; pass the {what} JSON file (or --run DIR for a run folder)") from None
    except DuplicateKeyError as e:
        raise CliError(f"{path}: key {e.key!r} appears twice in one object; remove the duplicate") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CliError(f"{path}: not valid JSON ({e})") from None


def row_names(paths: list[str]) -> list[str]:
    """A row label per results file: its file name, with parent folders added until unique
    (two runs' predictions.json -> ``runA/predictions.json``, ``runB/predictions.json``)."""
    parts = [Path(p).resolve().parts for p in paths]
    for depth in range(1, max(len(q) for q in parts) + 1):
        names = ["/".join(q[-depth:]) for q in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{i + 1}: {p}" for i, p in enumerate(paths)]  # the same file twice


def _timelines(args: argparse.Namespace) -> list[Path]:
    gt_path, pred_paths = args.files[0], args.files[1:]
    gt = _load(gt_path, "ground truth")
    if not isinstance(gt, dict) or not isinstance(gt.get("database"), dict):
        hint = " (it looks like a results file: pass the ground truth first)" if isinstance(gt, dict) and "results" in gt else ""
        raise CliError(f"{gt_path}: ground truth must be a JSON object with a 'database' (ActivityNet format){hint}")
    database: dict[str, Any] = gt["database"]
    results: list[dict[str, Any]] = []
    for p in pred_paths:
        pred = _load(p, "results")
        if not isinstance(pred, dict) or not isinstance(pred.get("results"), dict):
            raise CliError(f"{p}: a results file must be a JSON object with 'results' "
                           '({"results": {video: [{"label", "score", "segment"}]}})')
        results.append(pred["results"])
    if args.subset is not None:
        in_subset = [v for v, e in database.items() if isinstance(e, dict) and e.get("subset") == args.subset]
        if not in_subset:
            found = sorted({str(e.get("subset")) for e in database.values() if isinstance(e, dict)})
            raise CliError(f"{gt_path}: subset {args.subset!r} has no videos; subsets in the file: {found}")
    else:
        in_subset = list(database)
    videos = _pick_videos(args, database, in_subset, results, gt_path)
    labels = {str(a.get("label")) for v in videos for a in database.get(v, {}).get("annotations", [])}
    labels |= {str(d.get("label")) for r in results for v in videos for d in r.get(v, [])}
    classes = list(gt["classes"]) if isinstance(gt.get("classes"), list) else sorted(labels)
    classes += sorted(labels - set(classes))

    from taltoolkit.visualization._figure import file_stem
    from taltoolkit.visualization.timeline import plot_timeline

    out = args.out if args.out is not None else Path("timelines")
    names = row_names(pred_paths)
    top = args.top if args.top is not None else 10
    written = []
    for v in videos:
        entry = database.get(v, {})
        rows = {name: _entries(r.get(v, []), p, v) for name, r, p in zip(names, results, pred_paths)}
        try:
            written.append(plot_timeline(out / f"{file_stem(v)}_timeline.png", v, entry.get("annotations", []), rows,
                                         duration=entry.get("duration"), top_k=top, classes=classes))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CliError(f"video {v!r}: an annotation or detection is malformed ({type(e).__name__}: {e}); "
                           "each needs 'label' and 'segment' [start, end] (and 'score' for detections)") from None
    if args.per_class:
        written.append(_per_class(gt, results, names, args.subset or "test", out, gt_path))
    return written


def _entries(items: Any, path: str, video: str) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise CliError(f"{path}: results of video {video!r} must be a list of detections")
    return items


def _pick_videos(args: argparse.Namespace, database: dict[str, Any], in_subset: list[str],
                 results: list[dict[str, Any]], gt_path: str) -> list[str]:
    if args.video:
        unknown = [v for v in args.video if v not in database and not any(v in r for r in results)]
        if unknown:
            close = [v for v in database if any(u in v or v in u for u in unknown)][:5]
            raise CliError(f"video(s) {', '.join(map(repr, unknown))} are in neither {gt_path} nor the results"
                           + (f"; similar names: {', '.join(close)}" if close else ""))
        return list(dict.fromkeys(args.video))
    n = args.num_videos if args.num_videos is not None else 3
    with_detections = [v for v in in_subset if any(r.get(v) for r in results)]
    return (with_detections or in_subset)[:n]


def _per_class(gt: dict[str, Any], results: list[dict[str, Any]], names: list[str], subset: str, out: Path,
               gt_path: str) -> Path:
    from taltoolkit.evaluation import EvaluationError
    from taltoolkit.visualization.per_class import per_class_ap, plot_per_class_ap

    series = {}
    thresholds: list[float] = []
    for name, r in zip(names, results):
        try:
            series[name], thresholds = per_class_ap(gt, {"results": r}, subset=subset)
        except EvaluationError as e:
            where = gt_path if e.source == "ground_truth" else name
            raise CliError(f"{where}: {e}") from None
    span = f"tIoU {thresholds[0]:.2f}-{thresholds[-1]:.2f}" if thresholds else ""
    return plot_per_class_ap(out / "per_class_ap.png", series, title=f"AP per class, mean over {span} ({subset})")


if __name__ == "__main__":
    sys.exit(main())
