#!/usr/bin/env python
"""Benchmarks: ``python tools/bench.py {eval,nms,sinkhorn,train,actionformer,evalstages,sidebyside} [--out bench.json]``.

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
``evalstages`` a method's test evaluation on THUMOS-sized synthetic data (200 / 212 videos,
          2048-d, real THUMOS14 lengths) split by stage (taltoolkit.evaluation.stages):
          prediction, clustering-assisted testing, CAS to proposals, NMS, mAP and, with
          ``--outputs``, the results JSON and plots; ``--weights`` or ``--train-epochs`` first.
``sidebyside`` the library against the authors' public code (``--method case | acmnet |
          actionformer``, ``--official PATH`` or CASE_OFFICIAL_DIR / ACMNET_OFFICIAL_DIR /
          ACTIONFORMER_OFFICIAL_DIR) in one process: same weights, batches, test videos and
          threads; training step and test evaluation timed alternately, mAPs side by side;
          for ActionFormer also its compiled NMS against the library's. The public code is
          imported from the checkout by tools/official_adapters.py, never copied here;
          ``--official-site DIR`` (or TALTOOLKIT_OFFICIAL_SITE) supplies packages it needs
          that the environment lacks (pandas). docs/benchmarks.md has the figures.
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
from pathlib import Path
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


# ----------------------------------------------------------------------------- THUMOS-sized runs

# Library side of the per-method benchmarks: (method override, extra overrides). ACM-Net is
# RMGCL's baseline (memory_branch=none), trained and evaluated as ACM-Net's public code does.
METHODS = {
    "case": ("case", []),
    "acmnet": ("rmgcl", ["memory_branch=none"]),
    "actionformer": ("actionformer", []),
}


def _thumos_overrides(args: argparse.Namespace) -> list[str]:
    """The THUMOS-sized synthetic dataset (docs/benchmarks.md): real THUMOS14 lengths, 2048-d;
    ActionFormer reads the concat layout at its own timing (I3D every 4 frames at 30 fps)."""
    if args.method == "acmnet":  # ACM-Net's embedding keeps the feature width (2048 on THUMOS14)
        data = [f"model.hidden_dim={args.feature_dim}"]
    else:
        data = []
    if args.method == "actionformer":
        data += ["dataset.layout=concat", f"dataset.step_s={4 / 30}", f"dataset.max_seq_len={args.max_seq_len}",
                "dataset.num_segments=750"]
    else:
        data += ["dataset.layout=split", "dataset.num_segments=750", "dataset.max_seq_len=750", "dataset.step_s=0.64"]
    return ["dataset=synthetic", f"dataset.num_train={args.train_videos}", f"dataset.num_test={args.test_videos}",
            f"dataset.feature_dim={args.feature_dim}", "dataset.duration_scale=1.0", "dataset.max_steps=null",
            f"dataset.seed={args.seed}", *data]


def build_library(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(config, trainer, RunParts) of ``args.method`` on the THUMOS-sized synthetic data, CPU."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from taltoolkit.entry import build

    name, extra = METHODS[args.method]
    # ~method_dataset: the paper's settings (the method's THUMOS14 config, as the public codes
    # run), not the quick schedule and small network of conf/method_dataset/*_synthetic.yaml.
    overrides = [f"method={name}", "~method_dataset", *extra, *_thumos_overrides(args), "trainer.progress=false",
                 f"trainer.device={args.device}", "trainer.checkpoint_every=1000000", "trainer.eval_every=0",
                 *([f"trainer.batch_size={args.batch_size}"] if args.batch_size else []), *args.override]
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    trainer = instantiate(cfg.trainer, _convert_="all")
    parts = build(cfg, trainer)
    return cfg, trainer, parts


def prepare_weights(args: argparse.Namespace, trainer: Any, parts: Any) -> str:
    """Load ``--weights`` or train ``--train-epochs`` epochs first (an untrained network makes
    few proposals, so its evaluation is cheaper than a trained one's); returns what was done."""
    import torch

    if args.weights:
        state = torch.load(args.weights, map_location="cpu")
        parts.method.load_state_dict(state.get("weights", state) if isinstance(state, dict) else state)
        return f"weights {args.weights}"
    if args.train_epochs > 0:
        t0 = time.perf_counter()
        trainer.max_epochs = args.train_epochs
        with tempfile.TemporaryDirectory() as tmp:
            trainer.fit(parts.method, parts.train, tmp, None, seed=args.seed)
        took = time.perf_counter() - t0
        if args.save_weights:
            torch.save(parts.method.state_dict(), args.save_weights)
        return f"trained {args.train_epochs} epochs ({took:.0f} s)"
    return "untrained (random initialisation)"


def time_evaluation_stages(evaluator: Any, method: Any, out_dir: str | None = None, num_plots: int = 3,
                           classes: list[str] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """One evaluation of ``method`` split by stage (:mod:`taltoolkit.evaluation.stages`), plus
    the end-of-run outputs (results JSON, plots) when ``out_dir`` is given: (seconds by stage
    with ``"total"``, metrics)."""
    from taltoolkit.evaluation.stages import STAGES, record_stages, stage

    t0 = time.perf_counter()
    with record_stages() as timer:
        metrics, dets, outputs = evaluator.evaluate(method)
        if out_dir is not None:
            from taltoolkit.engine.reporting import write_plots
            from taltoolkit.postprocess.results_io import write_results_json

            with stage("results_writing"):
                write_results_json(os.path.join(out_dir, "predictions.json"), dets, classes or evaluator.classes)
            with stage("plots"):
                write_plots(Path(out_dir), evaluator.videos, outputs,
                            classes or evaluator.classes, num_plots)
    total = time.perf_counter() - t0
    seconds = {k: timer.seconds.get(k, 0.0) for k in STAGES}
    seconds.update({k: v for k, v in timer.seconds.items() if k not in seconds})
    seconds["other"] = max(total - timer.total, 0.0)
    seconds["total"] = total
    return seconds, metrics


def bench_evalstages(args: argparse.Namespace) -> dict:
    """A method's test evaluation on the THUMOS-sized data, split by stage."""
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg, trainer, parts = build_library(args)
    built = time.perf_counter() - t0
    how = prepare_weights(args, trainer, parts)
    parts.method.to(trainer.device)
    print(f"{args.method}: {len(parts.train.videos)} training / {len(parts.test_videos)} test videos, "
          f"{args.feature_dim}-d, built in {built:.0f} s; {how}; {torch.get_num_threads()} torch threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    runs = []
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            secs, metrics = time_evaluation_stages(parts.evaluator, parts.method, tmp if args.outputs else None,
                                                   classes=list(parts.dataset.classes))
        runs.append(secs)
    best = min(runs, key=lambda s: s["total"])
    print(f"{'stage':<22}{'seconds':>9}   (the fastest of {args.repeat} evaluations)")
    for k, v in best.items():
        print(f"{k:<22}{v:9.3f}")
    print(f"average mAP {metrics['average_mAP']:.2f}")
    return {"benchmark": "evalstages", "machine": _machine(), "method": args.method, "weights": how,
            "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0],
            "test_videos": len(parts.test_videos), "seconds": best, "all_runs": runs,
            "average_mAP": metrics["average_mAP"], "mAP": metrics["mAP"]}


def library_step_runner(trainer: Any, method: Any) -> Callable[[dict], None]:
    """One library optimizer step on a collated batch through the real ``Trainer.step`` (the
    method's training_step, backward, the method's optimizer and schedule, its end-of-step hook)."""
    from types import SimpleNamespace

    import torch

    stage = method.stages()[0]
    params = [p for p in method.parameters() if p.requires_grad]
    no_decay = method.no_weight_decay_parameters() if hasattr(method, "no_weight_decay_parameters") else []
    optimizer = trainer.build_optimizer(params, stage, no_decay)
    state = SimpleNamespace(bank=None, module=method, method=method, optimizer=optimizer, lr=0.0, params=params,
                            scheduler=trainer.build_scheduler(optimizer, 1, 1000),
                            scaler=torch.amp.GradScaler("cuda", enabled=False), losses={}, global_step=0)
    method.train()
    method.on_epoch_start(0)
    return lambda batch: trainer.step(state, batch)


def _official_items(args: argparse.Namespace, parts: Any) -> tuple[list, list]:
    """The library's test samples (its test sampling), as the public test loops read them, and
    the library's collated test batches."""
    import torch

    dataset, collate = parts.evaluator.make_dataset(parts.test_videos)
    official, library = [], []
    for i, video in enumerate(parts.test_videos):
        item = dataset[i]
        x = torch.from_numpy(np.ascontiguousarray(item["features"], dtype=np.float32))[None]  # (1, T, D)
        y = torch.from_numpy(np.asarray(item["video_labels"], np.float32))[None]  # (1, C)
        n = torch.tensor([video.num_steps])
        if args.method == "case":  # inference_case: data, label, temp_anno, [name], vid_num_seg
            official.append((x, y, None, [video.name], n))
        elif args.method == "acmnet":  # main_thu.test: [name], data, label, vid_len, duration
            official.append(([video.name], x, y, n, torch.tensor([video.duration], dtype=torch.float64)))
        else:  # libs/utils valid_one_epoch: a list of one video dict
            official.append([{"video_id": video.name, "feats": x[0].T.contiguous(), "fps": 30.0,
                              "duration": float(video.duration), "feat_stride": 4, "feat_num_frames": 4}])
        library.append(collate([item]))
    return official, library


def _training_batches(args: argparse.Namespace, parts: Any, trainer: Any) -> tuple[list, list]:
    """``--steps`` collated training batches of the library's sampler, and the same tensors as
    the public training loops read them."""
    dataset, collate = parts.train.make_dataset(parts.train.videos, args.seed)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(dataset))
    bs = trainer.batch_size
    library = [collate([dataset[int(j)] for j in order[k * bs:(k + 1) * bs]]) for k in range(args.steps)]
    official: list = []
    for b in library:
        if args.method in ("case", "acmnet"):
            official.append((b["features"], b["video_labels"]))
        else:  # ActionFormer video dicts; its point j is the library's grid coordinate j + 0.5
            videos = []
            for i in range(b["features"].shape[0]):
                n = int(b["mask"][i].sum())
                videos.append({"video_id": b["names"][i], "feats": b["features"][i, :n].T.contiguous(),
                               "segments": torch_tensor(b["segments"][i]) - 0.5, "labels": torch_tensor(b["labels"][i]).long(),
                               "fps": 30.0, "duration": float(b["duration"][i]), "feat_stride": 4, "feat_num_frames": 4})
            official.append(videos)
    return library, official


def torch_tensor(x: Any) -> Any:
    import torch

    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def bench_sidebyside(args: argparse.Namespace) -> dict:
    """Library against the public code in one process: the same weights, batches, test videos
    and thread count; the two sides alternate ``--repeat`` times and the median is kept."""
    import torch

    import official_adapters as oa

    torch.set_num_threads(args.threads)
    root = oa.official_dir(args.method, args.official)
    cfg, trainer, parts = build_library(args)
    how = prepare_weights(args, trainer, parts)
    classes = list(parts.dataset.classes)
    tmp = tempfile.TemporaryDirectory()
    work = Path(tmp.name)
    gt_path = oa.write_official_gt(parts.evaluator.ground_truth, classes, work / "gt.json", parts.subset)
    method = parts.method
    if args.method == "case":
        official = oa.OfficialCASE(root, method, gt_path, work, site=args.official_site)
    elif args.method == "acmnet":
        official = oa.OfficialACMNet(root, method, classes, gt_path, work, site=args.official_site)
    else:
        from omegaconf import OmegaConf

        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        model_cfg.setdefault("max_seq_len", args.max_seq_len)
        official = oa.OfficialActionFormer(root, method, model_cfg, gt_path, len(classes), args.feature_dim,
                                           site=args.official_site)
    print(f"{args.method} side by side with {root}: {len(parts.train.videos)} training / {len(parts.test_videos)} "
          f"test videos, {args.feature_dim}-d; {how}; {torch.get_num_threads()} torch threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    report: dict[str, Any] = {"benchmark": "sidebyside", "method": args.method, "official": str(root),
                              "machine": _machine(), "threads": torch.get_num_threads(), "weights": how,
                              "load_average_1min_start": os.getloadavg()[0], "seconds": {}}

    # Evaluation first, while both networks hold the same weights.
    off_items, _ = _official_items(args, parts)
    ev: dict[str, list[float]] = {"official": [], "library": []}
    lib_stages, off_map, lib_metrics = None, None, None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        off_map = official.evaluate(off_items)
        ev["official"].append(time.perf_counter() - t0)
        secs, lib_metrics = time_evaluation_stages(parts.evaluator, method)
        ev["library"].append(secs["total"])
        lib_stages = secs if lib_stages is None or secs["total"] < lib_stages["total"] else lib_stages
    report["seconds"]["evaluation"] = {k: float(np.median(v)) for k, v in ev.items()}
    report["evaluation_all"] = ev
    report["library_evaluation_stages"] = lib_stages
    report["mAP_percent"] = {"library": lib_metrics["mAP"],
                             "official": off_map if isinstance(off_map, float) else [100 * float(a) for a in off_map]}

    # Training steps on the same batches (the weights diverge from here on; timing only).
    lib_batches, off_batches = _training_batches(args, parts, trainer)
    step = library_step_runner(trainer, method)
    tr: dict[str, list[float]] = {"official": [], "library": []}
    for r in range(args.repeat + 1):  # the first round warms both sides up and is not kept
        t0 = time.perf_counter()
        official.train(off_batches)
        t_off = (time.perf_counter() - t0) / len(off_batches)
        t0 = time.perf_counter()
        for b in lib_batches:
            step(b)
        t_lib = (time.perf_counter() - t0) / len(lib_batches)
        if r:
            tr["official"].append(t_off)
            tr["library"].append(t_lib)
    report["seconds"]["training_step"] = {k: float(np.median(v)) for k, v in tr.items()}
    report["training_step_all"] = tr
    report["steps"] = args.steps
    report["batch_size"] = trainer.batch_size

    if args.method == "actionformer":
        report["nms"] = _nms_side_by_side(args, official)
    report["load_average_1min_end"] = os.getloadavg()[0]
    tmp.cleanup()

    e, t = report["seconds"]["evaluation"], report["seconds"]["training_step"]
    print(f"{'':<34}{'library':>10}{'official':>10}{'ratio':>8}")
    print(f"{'test evaluation, s':<34}{e['library']:10.2f}{e['official']:10.2f}{e['library'] / e['official']:8.2f}")
    print(f"{'training step, s':<34}{t['library']:10.3f}{t['official']:10.3f}{t['library'] / t['official']:8.2f}")
    print("library evaluation by stage: " + ", ".join(f"{k} {v:.2f}" for k, v in lib_stages.items() if v))
    print(f"mAP library {report['mAP_percent']['library']}, official {report['mAP_percent']['official']}")
    if "nms" in report:
        for k, v in report["nms"]["ms_per_video"].items():
            print(f"NMS {k:<40}{v:8.2f} ms/video")
    return report


def _nms_side_by_side(args: argparse.Namespace, official: Any) -> dict:
    """ActionFormer's batched_nms (compiled nms_1d_cpu) against the library's soft_nms_indices
    / batched_nms on the same seeded proposals and settings (its THUMOS14 test settings)."""
    import torch

    from taltoolkit.postprocess.suppression import batched_nms, soft_nms_indices

    g = torch.Generator().manual_seed(args.seed)
    videos = []
    for _ in range(args.nms_videos):
        n = 2000  # pre_nms_topk
        start = torch.rand(n, generator=g) * 1000
        seg = torch.stack([start, start + torch.rand(n, generator=g) * 60 + 0.5], 1)
        videos.append((seg, torch.rand(n, generator=g), torch.randint(0, 20, (n,), generator=g)))
    kw = dict(iou_threshold=0.1, min_score=0.001, max_seg_num=200, sigma=0.5)
    cases = {
        "soft, official batched_nms": lambda: [official.batched_nms(s, c, lb, use_soft_nms=True, multiclass=True,
                                                                    voting_thresh=0.0, **kw) for s, c, lb in videos],
        "soft, library soft_nms_indices": lambda: [soft_nms_indices(s, c, lb, iou_threshold=0.1, sigma=0.5,
                                                                    min_score=0.001, top_k=200) for s, c, lb in videos],
        "hard, official batched_nms": lambda: [official.batched_nms(s, c, lb, use_soft_nms=False, multiclass=True,
                                                                    voting_thresh=0.0, **kw) for s, c, lb in videos],
        "hard, library batched_nms": lambda: [batched_nms(s, c, lb, 0.1) for s, c, lb in videos],
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeat):
        for k, fn in cases.items():  # alternating
            times[k].append(_timeit(fn, 1)[0][0])
    return {"videos": args.nms_videos, "proposals_per_video": 2000, "settings": kw,
            "ms_per_video": {k: 1000 * float(np.median(v)) / args.nms_videos for k, v in times.items()}}


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
    st = sub.add_parser("evalstages", help="a method's test evaluation on THUMOS-sized data, split by stage")
    sb = sub.add_parser("sidebyside", help="library against the public code: training step and test evaluation")
    sb.add_argument("--official", default=None, help="checkout of the public code (default: $CASE_OFFICIAL_DIR, "
                    "$ACMNET_OFFICIAL_DIR or $ACTIONFORMER_OFFICIAL_DIR)")
    sb.add_argument("--official-site", default=None, help="extra package folder(s) for the public code (pandas, "
                    "h5py), appended to sys.path (default: $TALTOOLKIT_OFFICIAL_SITE)")
    sb.add_argument("--steps", type=int, default=4, help="training batches timed per round")
    sb.add_argument("--nms-videos", type=int, default=20, help="ActionFormer: videos of 2000 proposals for the NMS timing")
    for sp in (st, sb):
        sp.add_argument("--method", choices=sorted(METHODS), default="case")
        sp.add_argument("--train-videos", type=int, default=200)
        sp.add_argument("--test-videos", type=int, default=212)
        sp.add_argument("--feature-dim", type=int, default=2048)
        sp.add_argument("--max-seq-len", type=int, default=2304, help="ActionFormer's training crop (THUMOS14)")
        sp.add_argument("--batch-size", type=int, default=None, help="default: the method's trainer config")
        sp.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
        sp.add_argument("--train-epochs", type=int, default=0, help="train the library this long first")
        sp.add_argument("--weights", default=None, help="a state dict to evaluate instead (e.g. --save-weights of an earlier run)")
        sp.add_argument("--save-weights", default=None, help="after --train-epochs, save the state dict here")
        sp.add_argument("--repeat", type=int, default=3)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--device", default="cpu")
        sp.add_argument("override", nargs="*", help="extra Hydra overrides for the library side")
    st.add_argument("--outputs", action="store_true", help="also time the end-of-run outputs (results JSON, plots)")
    for sp in (e, n, t, k, a, st, sb):
        sp.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    report = {"eval": bench_eval, "nms": bench_nms, "train": bench_train, "sinkhorn": bench_sinkhorn,
              "actionformer": bench_train, "evalstages": bench_evalstages,
              "sidebyside": bench_sidebyside}[args.command](args)
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
