"""Score an ActivityNet results JSON against ActivityNet-format ground truth.

    python tools/eval.py GT.json PRED.json --preset thumos14_weak --out metrics.json
    python tools/eval.py GT.json PRED.json --subset test --tiou 0.3 0.4 0.5 0.6 0.7

The numbers are those of the ActivityNet Challenge ``eval_detection.py`` (see
docs/evaluation.md). Start-up is kept short: this imports json, argparse, numpy and
``taltoolkit.evaluation`` only (no torch, scipy, scikit-learn, hydra or matplotlib).
Bad input ends with exit status 2 and one line naming the file and the fix; ``--debug``
shows the traceback instead.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from typing import Any

from taltoolkit.atomicio import atomic_write_text
from taltoolkit.evaluation.detection import DEFAULT_TIOU_THRESHOLDS, DetectionResult, detection_map
from taltoolkit.evaluation.errors import EvaluationError
from taltoolkit.evaluation.presets import get_preset, preset_names
from taltoolkit.tables import format_table


class CliError(Exception):
    """One-line user error: printed as ``eval.py: error: <message>`` with exit status 2."""


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys: a video listed twice would be scored on
    # its last copy only. dict(pairs) is C code, so the check costs nothing measurable.
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return d


def _load_json(path: str, what: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(), object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise CliError(f"{path}: key {e.key!r} appears twice in one object (a video listed twice?); JSON readers "
                       f"keep only the last copy, so remove or merge the duplicate {what} entries") from None
    except FileNotFoundError:
        raise CliError(f"{path}: {what} file not found; check the path") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory; pass the {what} JSON file") from None
    except PermissionError:
        raise CliError(f"{path}: cannot read the {what} file (permission denied)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CliError(f"{path}: not valid JSON ({e}); write the {what} file with json.dump") from None


def _check_shapes(gt: Any, gt_path: str, pred: Any, pred_path: str) -> None:
    """Catch the commonest mix-ups (files swapped, wrong format) before evaluating."""
    if not isinstance(gt, dict):
        raise CliError(f"{gt_path}: ground truth must be a JSON object with a 'database' key "
                       "(ActivityNet format)")
    if "results" in gt and "database" not in gt:
        raise CliError(f"{gt_path}: this looks like a results file; pass the ground truth first, "
                       "then the predictions")
    if not isinstance(pred, dict):
        raise CliError(f"{pred_path}: predictions must be a JSON object with a 'results' key "
                       "(ActivityNet results format)")
    if "database" in pred:
        raise CliError(f"{pred_path}: this looks like a ground-truth file; pass the ground truth "
                       "first, then the predictions")
    if "results" not in pred:
        raise CliError(f"{pred_path}: no 'results' key; expected "
                       "{\"results\": {video: [{\"label\", \"score\", \"segment\"}]}}")


def _is_number(x: Any) -> bool:
    return type(x) in (int, float)  # bool is an int subclass and str a number's spelling: neither is a time or score


def _check_types(gt: dict, gt_path: str, pred: dict, pred_path: str) -> None:
    """Scores and segment times must be JSON numbers: ``true`` or ``"12.5"`` would otherwise be
    converted silently (numpy reads ``true`` as 1.0 and the string as 12.5)."""
    results = pred.get("results")
    if isinstance(results, dict):
        try:
            score_types = {type(it["score"]) for items in results.values() for it in items}
            seg_types = {type(x) for items in results.values() for it in items for x in it["segment"]}
        except (TypeError, KeyError, AttributeError):
            score_types = seg_types = set()  # malformed: detection_map names the entry
        if not score_types <= {int, float} or not seg_types <= {int, float}:
            for video, items in results.items():
                for it in items:
                    if not _is_number(it["score"]):
                        raise CliError(f"{pred_path}: video {video!r}: score {it['score']!r} must be a JSON number")
                    if not all(_is_number(x) for x in it["segment"]):
                        raise CliError(f"{pred_path}: video {video!r}: segment {it['segment']!r} must be "
                                       "[start, end] as JSON numbers (seconds)")
    database = gt.get("database")
    if isinstance(database, dict):
        for video, entry in database.items():
            anns = entry.get("annotations", []) if isinstance(entry, dict) else []
            for a in anns if isinstance(anns, list) else []:
                seg = a.get("segment") if isinstance(a, dict) else None
                if isinstance(seg, (list, tuple)) and not all(_is_number(x) for x in seg):
                    raise CliError(f"{gt_path}: video {video!r}: segment {seg!r} must be [start, end] as JSON "
                                   "numbers (seconds)")


def _check_out(out: str, inputs: dict[str, str]) -> None:
    """``--out`` must not name an input: the metrics would replace the file just scored."""
    for what, path in inputs.items():
        same = os.path.realpath(out) == os.path.realpath(path)
        try:
            same = same or os.path.samefile(out, path)
        except OSError:
            pass
        if same:
            raise CliError(f"--out {out} is the {what} file; the metrics would replace it: choose another --out path")


def result_table(res: DetectionResult, per_class: bool = False) -> str:
    """Readable summary: one row per tIoU, then the averages (percent); per class on request."""
    n_cls = len(res.evaluated_classes)
    title = (f"ActivityNet detection mAP (subset {res.subset!r}, {n_cls} classes, "
             f"{int(res.num_ground_truth.sum())} instances, {int(res.num_predictions.sum())} predictions)")
    rows: list[list[Any]] = [[f"{t:.2f}", 100 * float(m)] for t, m in zip(res.tiou_thresholds, res.mAP)]
    rows += [[name, 100 * float(v)] for name, v in res.averages.items()]
    rows.append(["average", 100 * float(res.average_mAP)])
    lines = [title, format_table(["tIoU", "mAP (%)"], rows)]
    if res.num_ignored_predictions:
        lines.append(f"note: {res.num_ignored_predictions} predictions of classes absent from the "
                     "subset's ground truth were ignored")
    if per_class:
        # A class without ground truth in the subset has no AP (it stays out of the mean).
        ap_rows = [[c[:28], *(100 * float(x) if res.num_ground_truth[j] else "-" for x in res.ap[:, j])]
                   for j, c in enumerate(res.classes)]
        heads = ["AP (%) per class", *(f"{t:.2f}" for t in res.tiou_thresholds)]
        lines += ["", format_table(heads, ap_rows, align="<" + ">" * len(res.tiou_thresholds))]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eval.py",
        description="ActivityNet-exact temporal detection mAP of a results JSON.",
    )
    p.add_argument("ground_truth", help="ActivityNet-format ground truth JSON ('database')")
    p.add_argument("predictions", help="ActivityNet results JSON ('results')")
    p.add_argument("--subset", default=None,
                   help="ground-truth subset to score (default: the preset's, else 'test')")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tiou", type=float, nargs="+", metavar="T",
                   help="tIoU thresholds (default: 0.5:0.95:0.05)")
    g.add_argument("--preset", choices=preset_names(),
                   help="named protocol: thresholds, subset and averaged ranges")
    p.add_argument("--out", help="write the metrics JSON here (percent)")
    p.add_argument("--per-class", action="store_true", help="also print AP per class")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Decoding a results file allocates hundreds of thousands of small dicts and lists, and
    # the cyclic collector's repeated passes over them double the decoding time; nothing
    # here creates cycles worth collecting. Restored on return for in-process callers.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(args)
    except CliError as e:
        if args.debug:
            raise
        print(f"eval.py: error: {e}", file=sys.stderr)
        return 2
    finally:
        if gc_was_enabled:
            gc.enable()


def _run(args: argparse.Namespace) -> int:
    if args.out:
        _check_out(args.out, {"ground truth": args.ground_truth, "predictions": args.predictions})
    gt = _load_json(args.ground_truth, "ground truth")
    pred = _load_json(args.predictions, "predictions")
    _check_shapes(gt, args.ground_truth, pred, args.predictions)
    _check_types(gt, args.ground_truth, pred, args.predictions)
    preset = get_preset(args.preset) if args.preset else None
    try:
        res = detection_map(
            gt, pred,
            tiou_thresholds=args.tiou if args.tiou else (None if preset else DEFAULT_TIOU_THRESHOLDS),
            subset=args.subset,
            preset=preset,
        )
    except EvaluationError as e:
        where = {"ground_truth": args.ground_truth, "predictions": args.predictions}
        prefix = f"{where[e.source]}: " if e.source in where else ""
        raise CliError(f"{prefix}{e}") from e
    metrics = res.to_dict(percent=True)
    metrics["ground_truth_file"] = os.path.abspath(args.ground_truth)
    metrics["predictions_file"] = os.path.abspath(args.predictions)
    if not args.quiet:
        print(result_table(res, per_class=args.per_class))
    if args.out:
        try:
            atomic_write_text(args.out, json.dumps(metrics, indent=2))
        except OSError as e:
            raise CliError(f"{args.out}: cannot write the metrics ({e.strerror}); "
                           "choose a writable --out path") from None
        if not args.quiet:
            print(f"metrics written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
