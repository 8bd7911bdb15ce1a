#!/usr/bin/env python
"""Benchmarks: ``python tools/bench.py {eval,nms,sinkhorn,train,actionformer} [--out bench.json]``.

``eval``  THUMOS14-sized detection evaluation: the real THUMOS14 test ground truth and
          seeded random predictions near it (1000 per video); ``--dataset activitynet13``
          does the same on ActivityNet 1.3 validation. Times ``tools/eval.py`` as a
          whole subprocess (start-up and JSON reading included), the in-process
          ``detection_map``, and the loop-based restatement of the official rule in
          ``tests/reference_anet.py``; checks the numbers are bit-identical.
``nms``   ``nms`` / ``batched_nms`` / ``soft_nms`` from ``taltoolkit.postprocess.suppression`` over
          many videos' worth of proposals.
``train`` training throughput (videos/s) of a method on THUMOS-sized synthetic data
          (200 videos, T = 750 sampled steps, 2048-d features), with and without
          ``trainer.features_on_device``; ``--device cuda`` when a GPU is available.
          Any method: ``--method rmgcl``, ``--method copl --label-mode none`` (its
          clustering stages get real inference, not timed).
``sinkhorn`` CASE-sized Sinkhorn labelling (a batch of 16 x 750 snippets, K = 16 clusters):
          ``sinkhorn_labels`` (3 iterations, as CASE uses it) and ``sinkhorn_plan`` to
          convergence against POT's ``ot.sinkhorn`` on the same problem (time and largest
          difference of the plans).
``actionformer`` the same for ``method=actionformer`` (full labels) at ActionFormer's
          THUMOS14 timing: I3D features every 4 frames at 30 fps (``step_s`` 4/30), random
          crops of at most ``--max-seq-len`` 2304 steps, batch 2, the paper's 512-d network.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from taltoolkit.atomicio import atomic_write_text  # noqa: E402 - after the sys.path set-up

THUMOS_GT = os.path.join(ROOT, "taltoolkit", "annotations", "thumos14", "thumos14_annotations.json")
DATASETS = {  # packaged ground truth and the preset that goes with it
    name: (os.path.join(ROOT, "taltoolkit", "annotations", name, f"{name}_annotations.json"), preset)
    for name, preset in [("thumos14", "thumos14_weak"), ("activitynet12", "activitynet"),
                         ("activitynet13", "activitynet")]
}


def _timeit(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def make_thumos_predictions(gt_json: dict, per_video: int = 1000, seed: int = 0,
                            subset: str = "test") -> dict:
    """Seeded ActivityNet results near the ground truth of every ``subset`` video.

    About 60% of the predictions are jittered copies of a ground-truth instance of the video
    (mostly with its label, higher scores), the rest random segments with random labels, so
    matching does real work: many overlaps, duplicates competing for the same instance.
    Scores are rounded to 4 decimals, so ties in score occur as they do in real outputs.
    """
    rng = np.random.default_rng(seed)
    classes = gt_json["classes"]
    results: dict[str, list[dict]] = {}
    for video, entry in gt_json["database"].items():
        if entry["subset"] != subset:
            continue
        dur = float(entry.get("duration") or 200.0)
        anns = entry["annotations"]
        n_near = int(per_video * 0.6) if anns else 0
        n_rand = per_video - n_near
        segs = np.zeros((per_video, 2))
        labels = rng.integers(0, len(classes), per_video)
        scores = rng.random(per_video) * 0.6
        if n_near:
            src = rng.integers(0, len(anns), n_near)
            gs = np.array([anns[i]["segment"] for i in src], dtype=float)  # (n_near, 2)
            length = np.maximum(gs[:, 1] - gs[:, 0], 0.5)
            centre = gs.mean(axis=1) + rng.normal(0, 0.25, n_near) * length
            half = length / 2 * np.exp(rng.normal(0, 0.35, n_near))
            segs[:n_near] = np.stack([centre - half, centre + half], axis=1)
            same = rng.random(n_near) < 0.9
            gl = np.array([classes.index(anns[i]["label"]) for i in src])
            labels[:n_near] = np.where(same, gl, labels[:n_near])
            scores[:n_near] = 0.3 + 0.7 * rng.random(n_near) ** 0.7
        start = rng.random(n_rand) * dur
        segs[n_near:] = np.stack([start, start + rng.exponential(8.0, n_rand)], axis=1)
        segs = np.clip(np.round(segs, 2), 0.0, dur)
        perm = rng.permutation(per_video)  # file order must not follow the generator's
        results[video] = [
            {"label": classes[int(labels[i])], "score": round(float(scores[i]), 4),
             "segment": [float(segs[i, 0]), float(segs[i, 1])]}
            for i in perm
        ]
    return {"version": "bench", "results": results, "external_data": {}}


def bench_eval(args: argparse.Namespace) -> dict:
    import reference_anet as ref
    from taltoolkit.evaluation import detection_map, get_preset

    gt_path, default = DATASETS[args.dataset]
    args.preset = args.preset or default
    preset = get_preset(args.preset)
    thresholds = np.asarray(preset.tiou_thresholds)
    with open(gt_path) as f:
        gt_json = json.load(f)
    pred_json = make_thumos_predictions(gt_json, args.per_video, args.seed, preset.subset)
    n_videos = len(pred_json["results"])
    n_pred = sum(len(v) for v in pred_json["results"].values())

    with tempfile.TemporaryDirectory() as tmp:
        pred_path = os.path.join(tmp, "predictions.json")
        metrics_path = os.path.join(tmp, "metrics.json")
        atomic_write_text(pred_path, json.dumps(pred_json))
        size_mb = os.path.getsize(pred_path) / 2 ** 20

        cmd = [sys.executable, os.path.join(ROOT, "tools", "eval.py"), gt_path, pred_path,
               "--preset", args.preset, "--out", metrics_path, "--quiet"]

        def run_cli() -> None:
            subprocess.run(cmd, check=True)

        cli_times, _ = _timeit(run_cli, args.repeat)
        with open(metrics_path) as f:
            cli_metrics = json.load(f)

        def load_both() -> tuple[dict, dict]:
            with open(gt_path) as f:
                g = json.load(f)
            with open(pred_path) as f:
                p = json.load(f)
            return g, p

        def load_both_no_gc() -> tuple[dict, dict]:  # what tools/eval.py does
            gc.disable()
            try:
                return load_both()
            finally:
                gc.enable()

        load_times, (g_loaded, p_loaded) = _timeit(load_both, args.repeat)
        load_nogc_times, _ = _timeit(load_both_no_gc, args.repeat)
        ours_times, ours = _timeit(
            lambda: detection_map(g_loaded, p_loaded, tiou_thresholds=thresholds,
                                  subset=preset.subset), args.repeat)

        # The reference reads the files itself, as the official tool does; its compute alone
        # (on the dicts already loaded) is timed too, for the like-for-like comparison.
        def run_ref():
            g, p = load_both()
            return ref.evaluate(g, p, preset.subset, thresholds)

        ref_times, (ref_ap, ref_idx, ref_map, ref_avg) = _timeit(run_ref, args.ref_repeat)
        ref_compute_times, _ = _timeit(
            lambda: ref.evaluate(g_loaded, p_loaded, preset.subset, thresholds), args.ref_repeat)

    cols = [gt_json["classes"].index(c) for c in ref_idx]
    identical = bool(
        np.array_equal(ours.ap[:, cols], ref_ap)
        and np.array_equal(ours.mAP, ref_map)
        and ours.average_mAP == ref_avg
        # The CLI's JSON holds 100 * value; the same product of the reference must match.
        and cli_metrics["mAP"] == [100.0 * float(x) for x in ref_map]
        and cli_metrics["average_mAP"] == 100.0 * ref_avg
    )
    cli_t, inproc_t = min(cli_times), min(ours_times)
    ref_t, ref_c = min(ref_times), min(ref_compute_times)
    report = {
        "benchmark": "eval",
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1min": os.getloadavg()[0]},
        "input": {"ground_truth": os.path.relpath(gt_path, ROOT), "subset": preset.subset,
                  "videos": n_videos, "classes": len(gt_json["classes"]),
                  "ground_truth_instances": int(ours.num_ground_truth.sum()),
                  "predictions": n_pred, "predictions_json_MB": round(size_mb, 1),
                  "seed": args.seed, "preset": args.preset,
                  "tiou_thresholds": thresholds.tolist()},
        "seconds": {
            "cli_subprocess": cli_t,
            "cli_subprocess_all": cli_times,
            "json_load_in_process": min(load_times),
            "json_load_in_process_gc_off": min(load_nogc_times),
            "detection_map_in_process": inproc_t,
            "detection_map_all": ours_times,
            "loop_reference_with_json_load": ref_t,
            "loop_reference_with_json_load_all": ref_times,
            "loop_reference_compute_only": ref_c,
        },
        "speedup": {"cli_vs_loop_reference_with_json_load": ref_t / cli_t,
                    "detection_map_vs_loop_reference_compute_only": ref_c / inproc_t},
        "identical": identical,
        "mAP_percent": [100.0 * float(x) for x in ours.mAP],
        "average_mAP_percent": 100.0 * ours.average_mAP,
    }
    rows = [
        ("tools/eval.py, whole subprocess", cli_t, ref_t / cli_t),
        ("loop reference, JSON reading included", ref_t, 1.0),
        ("detection_map in process (dicts loaded)", inproc_t, ref_c / inproc_t),
        ("loop reference in process (dicts loaded)", ref_c, 1.0),
        ("JSON reading of GT + predictions", min(load_times), None),
        ("  the same with the cyclic GC off", min(load_nogc_times), None),
    ]
    print(f"eval benchmark: {n_videos} videos, {len(gt_json['classes'])} classes, "
          f"{n_pred} predictions ({size_mb:.1f} MB), {len(thresholds)} thresholds, "
          f"best of {args.repeat} (reference: {args.ref_repeat}), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':<44}{'seconds':>9}{'speed-up':>10}")
    for name, t, sp in rows:
        print(f"{name:<44}{t:9.3f}{'' if sp is None else f'{sp:9.1f}x':>10}")
    print("mAP (%): " + " ".join(f"{100 * x:.2f}" for x in ours.mAP)
          + f" | average {100 * ours.average_mAP:.2f}")
    print(f"identical to the loop reference: {identical}")
    return report


def bench_nms(args: argparse.Namespace) -> dict:
    import torch

    from taltoolkit.postprocess import suppression as nms_mod

    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(args.seed)
    videos = []
    for _ in range(args.videos):
        start = torch.rand(args.proposals, generator=g, dtype=torch.float64) * 200
        length = torch.rand(args.proposals, generator=g, dtype=torch.float64) * 20 + 0.5
        videos.append((torch.stack([start, start + length], 1).to(dev),
                       torch.rand(args.proposals, generator=g, dtype=torch.float64).to(dev),
                       torch.randint(0, 20, (args.proposals,), generator=g).to(dev)))
    all_segs = torch.cat([v[0] for v in videos])
    all_scores = torch.cat([v[1] for v in videos])
    all_labels = torch.cat([v[2] for v in videos])
    all_groups = torch.repeat_interleave(torch.arange(args.videos), args.proposals).to(dev)

    def synced(fn: Callable[[], Any]) -> Callable[[], Any]:  # CUDA kernels run asynchronously
        def run() -> Any:
            out = fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return out
        return run

    cases: dict[str, Callable[[], Any]] = {
        "nms, per video": lambda: [nms_mod.nms(s, c, args.iou) for s, c, _ in videos],
        "batched_nms, per video": lambda: [nms_mod.batched_nms(s, c, lb, args.iou) for s, c, lb in videos],
        "batched_nms, one call (groups)":
            lambda: nms_mod.batched_nms(all_segs, all_scores, all_labels, args.iou, groups=all_groups),
        "soft_nms, per video": lambda: [nms_mod.soft_nms(s, c, lb) for s, c, lb in videos],
    }
    report: dict[str, Any] = {"benchmark": "nms", "videos": args.videos, "device": str(dev),
                              "proposals_per_video": args.proposals, "iou": args.iou,
                              "torch": torch.__version__, "seconds": {}}
    print(f"nms benchmark: {args.videos} videos x {args.proposals} proposals on {dev}, best of {args.repeat}")
    print(f"{'':<34}{'total s':>9}{'ms/video':>10}")
    for name, fn in cases.items():
        t = min(_timeit(synced(fn), args.repeat)[0])
        report["seconds"][name] = t
        print(f"{name:<34}{t:9.3f}{1000 * t / args.videos:10.2f}")
    return report


def bench_train(args: argparse.Namespace) -> dict:
    """Epoch time of ``method`` through the real Trainer on in-memory THUMOS-sized data."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from taltoolkit.data.sampling import make_dataset
    from taltoolkit.data.synthetic import generate_synthetic
    from taltoolkit.data.views import label_view
    from taltoolkit.engine.evaluator import Evaluator
    from taltoolkit.engine.trainer import TrainData, seed_everything

    t0 = time.perf_counter()
    videos, classes = generate_synthetic(
        "thumos", num_videos={"validation": args.videos, "test": 0}, num_classes=20,
        feature_dim=args.feature_dim, seed=0, duration_scale=1.0, max_steps=None,
        step_s=getattr(args, "step_s", 0.64),
    )
    label_mode = getattr(args, "label_mode", "weak")
    full_videos = [v for v in videos if v.subset == "validation"]
    if label_mode == "semi":
        videos = label_view(full_videos, "semi", fraction=args.labelled_fraction, seed=0)
    else:
        videos = label_view(full_videos, label_mode)
    steps = [v.num_steps for v in videos]
    print(f"{len(videos)} videos, steps median {int(np.median(steps))} max {max(steps)}, "
          f"{args.feature_dim}-d, generated in {time.perf_counter() - t0:.1f} s; device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"method={args.method}", *args.override])
    report: dict[str, Any] = {"machine": _machine(), "method": args.method, "videos": len(videos),
                              "compile": args.compile, "amp": args.amp,
                              "num_segments": args.num_segments, "max_seq_len": getattr(args, "max_seq_len", None),
                              "feature_dim": args.feature_dim,
                              "batch_size": args.batch_size, "device": args.device, "runs": {}}
    print(f"{'features_on_device':<20}{'s/epoch':>10}{'videos/s':>10}")
    modes = {"both": (False, True), "false": (False,), "true": (True,)}[args.on_device or (
        "both" if str(args.device).startswith("cuda") else "false")]
    for on_device in modes:
        seed_everything(0)
        model = instantiate(cfg.model, in_dim=args.feature_dim, num_classes=len(classes)) if cfg.get("model") else None
        method = instantiate(cfg.method, model=model)
        # The method's schedule from its config (optimizer and scheduler partials included),
        # with this benchmark's epochs, batch size, device and options.
        trainer = instantiate(cfg.trainer, _convert_="all", max_epochs=args.epochs + 1, batch_size=args.batch_size,
                              device=args.device, features_on_device=on_device, progress=False,
                              checkpoint_every=10**9, compile=args.compile, amp=args.amp != "off",
                              amp_dtype=args.amp if args.amp != "off" else "bfloat16", eval_every=0,
                              model_selection="last", resume=None, stop_after_epochs=None, drop_last=True)
        seq_len = getattr(args, "max_seq_len", args.num_segments)
        # Stage hooks that predict (COPL's clustering, APL's pseudo-labels) get real inference;
        # its time is not in the epoch times below.
        predictor = Evaluator(videos, classes, {}, "validation", [0.5], lambda **kw: None,
                              lambda v: make_dataset(method.sampling, v, False, 0, args.num_segments, seq_len),
                              trainer.device)
        data = TrainData(videos, lambda v, seed: make_dataset(method.sampling, v, True, seed, args.num_segments, seq_len),
                         reference={v.name: v for v in full_videos})
        with tempfile.TemporaryDirectory() as tmp:
            result = trainer.fit(method, data, tmp, evaluator=predictor)
        rows = result.history[1:]  # the first epoch warms up
        t = float(np.median([r["seconds"] for r in rows]))
        run: dict[str, Any] = {"seconds_per_epoch": t, "videos_per_s": len(videos) / t}
        stages = list(dict.fromkeys(r.get("stage", "train") for r in rows))
        if len(stages) > 1:  # e.g. APL's ACP pre-training / supervised / semi epochs differ in cost
            run["stages"] = {s: float(np.median([r["seconds"] for r in rows if r.get("stage", "train") == s]))
                             for s in stages}
        report["runs"][f"features_on_device={on_device}"] = run
        print(f"{str(on_device):<20}{t:10.2f}{len(videos) / t:10.1f}")
        for s, secs in run.get("stages", {}).items():
            print(f"  stage {s:<14}{secs:10.2f}")
    return report


def bench_sinkhorn(args: argparse.Namespace) -> dict:
    """Sinkhorn labels at CASE's size, and the converged plan against POT on the same problem."""
    import ot
    import torch

    from taltoolkit.pseudo.sinkhorn import sinkhorn_labels, sinkhorn_plan

    g = torch.Generator().manual_seed(args.seed)
    n, k = args.snippets, args.clusters
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 3  # (N, K) cluster logits
    report: dict[str, Any] = {"machine": _machine(), "snippets": n, "clusters": k, "runs": {}}
    times, _ = _timeit(lambda: sinkhorn_labels(logits.float(), epsilon=0.5, n_iter=3), args.repeat)
    report["runs"]["sinkhorn_labels (3 iterations, float32)"] = {"seconds": min(times)}
    cost = -logits  # plan of exp(logits / reg) with uniform rows and columns
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    b = torch.full((k,), 1.0 / k, dtype=torch.float64)
    times, plan = _timeit(lambda: sinkhorn_plan(cost, a, b, args.reg, n_iter=args.iters), args.repeat)
    report["runs"][f"sinkhorn_plan ({args.iters} iterations, float64)"] = {"seconds": min(times)}
    import warnings

    with warnings.catch_warnings():  # a fixed iteration count on purpose: POT warns it did not converge
        warnings.simplefilter("ignore", UserWarning)
        times, ref = _timeit(lambda: ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), args.reg,
                                                 numItermax=args.iters, stopThr=0.0), args.repeat)
    report["runs"][f"POT ot.sinkhorn ({args.iters} iterations, float64)"] = {"seconds": min(times)}
    report["max_abs_plan_difference"] = float(np.abs(plan.numpy() - ref).max())
    report["identical"] = report["max_abs_plan_difference"] < 1e-9
    print(f"{n} x {k}, reg {args.reg}")
    for name, r in report["runs"].items():
        print(f"{name:<45}{r['seconds'] * 1e3:10.2f} ms")
    print(f"largest |plan - POT plan|: {report['max_abs_plan_difference']:.2e}")
    return report


def _machine() -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="detection evaluation vs the loop reference")
    e.add_argument("--per-video", type=int, default=1000)
    e.add_argument("--dataset", choices=sorted(DATASETS), default="thumos14",
                   help="packaged ground truth to use (default: thumos14, its test subset)")
    e.add_argument("--preset", default=None,
                   help="default: thumos14_weak for THUMOS14, activitynet for ActivityNet")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--repeat", type=int, default=3)
    e.add_argument("--ref-repeat", type=int, default=2)
    n = sub.add_parser("nms", help="nms / batched_nms / soft_nms")
    n.add_argument("--videos", type=int, default=100)
    n.add_argument("--proposals", type=int, default=1000)
    n.add_argument("--iou", type=float, default=0.5)
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--repeat", type=int, default=3)
    n.add_argument("--device", default="cuda" if _cuda() else "cpu")
    t = sub.add_parser("train", help="training throughput of a method on THUMOS-sized synthetic data")
    t.add_argument("--method", default="case")
    t.add_argument("--label-mode", default="weak", help="weak (CASE, RMGCL, copl_weak) | none (COPL) | semi (APL)")
    t.add_argument("--videos", type=int, default=200)
    t.add_argument("--num-segments", type=int, default=750)
    t.add_argument("--feature-dim", type=int, default=2048)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    t.add_argument("--device", default="cuda" if _cuda() else "cpu")
    t.add_argument("override", nargs="*", help="extra Hydra overrides, e.g. method.use_scc=false")
    k = sub.add_parser("sinkhorn", help="Sinkhorn labels at CASE's size; converged plan vs POT")
    k.add_argument("--snippets", type=int, default=16 * 750)
    k.add_argument("--clusters", type=int, default=16)
    k.add_argument("--reg", type=float, default=0.5)
    k.add_argument("--iters", type=int, default=100)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--repeat", type=int, default=3)
    a = sub.add_parser("actionformer", help="ActionFormer training throughput at THUMOS14's ActionFormer timing")
    a.add_argument("--videos", type=int, default=200)
    a.add_argument("--max-seq-len", type=int, default=2304, help="training crop length (THUMOS14: 2304)")
    a.add_argument("--step-s", type=float, default=4 / 30, help="seconds per feature step (stride 4 at 30 fps)")
    a.add_argument("--feature-dim", type=int, default=2048)
    a.add_argument("--batch-size", type=int, default=2)
    a.add_argument("--epochs", type=int, default=1, help="timed epochs (after one warm-up epoch)")
    a.add_argument("--device", default="cuda" if _cuda() else "cpu")
    a.add_argument("override", nargs="*", help="extra Hydra overrides, e.g. model.embed_dim=256")
    a.add_argument("--method", default="actionformer", help="actionformer, or apl (with --label-mode semi)")
    a.add_argument("--label-mode", default="full", help="full (ActionFormer) | semi (APL)")
    a.set_defaults(num_segments=750)
    for sp in (t, a):
        sp.add_argument("--labelled-fraction", type=float, default=0.2, help="with --label-mode semi")
    for sp in (t, a):
        sp.add_argument("--compile", action="store_true", help="trainer.compile=true (torch.compile the network)")
        sp.add_argument("--amp", choices=("off", "bfloat16", "float16"), default="off",
                        help="trainer.amp with this dtype (float16: CUDA only)")
        # On a CPU the "device" is host memory: both settings time the same thing (docs/benchmarks.md).
        sp.add_argument("--on-device", choices=("both", "false", "true"), default=None,
                        help="features_on_device settings to time (default: both on CUDA, false on CPU)")
    for sp in (e, n, t, k, a):
        sp.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    report = {"eval": bench_eval, "nms": bench_nms, "train": bench_train, "sinkhorn": bench_sinkhorn,
              "actionformer": bench_train}[args.command](args)
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2))
        print(f"written to {args.out}")
    return 0 if report.get("identical", True) else 1


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
