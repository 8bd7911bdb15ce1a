"""Write a synthetic TAL dataset in a real on-disk layout and print its statistics.

    python tools/make_synthetic.py --preset thumos --layout wtalc --out /tmp/synth
    python tools/make_synthetic.py --from-annotations thumos14 --feature-dim 2048 \\
        --layout split --out /data/thumos14_synthetic      # real THUMOS'14 ground truth

The folder reads back with ``dataset=tal dataset.root=DIR dataset.layout=LAYOUT ...`` or
``taltoolkit.data.writers.read_layout(DIR)``. The feature model is in docs/synthetic.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Keep start-up cheap (``--help`` must be instant): numpy and the data layer load in main().


def _max_steps(text: str) -> int | None:
    return None if text.lower() in ("none", "0", "") else int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("thumos", "anet"), default="thumos",
                    help="timing statistics and subset names (thumos: validation/test; anet: training/validation)")
    ap.add_argument("--layout", choices=("wtalc", "split", "concat"), default="wtalc")
    ap.add_argument("--out", required=True, type=Path, help="output folder (must not exist unless --overwrite)")
    ap.add_argument("--num-train", type=int, default=None,
                    help="training videos (default 100; all with --from-annotations)")
    ap.add_argument("--num-test", type=int, default=None,
                    help="test videos (default 100; all with --from-annotations)")
    ap.add_argument("--num-classes", type=int, default=None,
                    help="default 20; from the annotations with --from-annotations")
    ap.add_argument("--feature-dim", type=int, default=512, help="even: RGB half + flow half (2048 like I3D)")
    ap.add_argument("--difficulty", type=float, default=1.0, help="divides the action amplitude (1 = I3D-like)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-annotations", default=None, metavar="thumos14|activitynet12|activitynet13|PATH",
                    help="copy real ground truth (videos, durations, segments, labels, subsets)")
    ap.add_argument("--duration-scale", type=float, default=0.5, help="shrink planned videos (1 = real lengths)")
    ap.add_argument("--max-steps", type=_max_steps, default=320,
                    help="cap on planned video length in steps ('none': no cap)")
    ap.add_argument("--step-s", type=float, default=0.64, help="seconds per feature step (W-TALC: 0.64)")
    ap.add_argument("--offset-s", type=float, default=0.0, help="seconds at the start of step 0")
    ap.add_argument("--name", default="Synthetic",
                    help="file prefix of the wtalc layout (<name>-I3D-JOINTFeatures.npy)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing --out folder written by this tool (refused if it holds other files)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Here, after parsing: --help answers without loading numpy and the generator.
    from taltoolkit.data.synthetic import (
        GENERATOR_VERSION, PRESETS, annotation_set, concat_write_params, format_statistics, generate_synthetic,
        statistics_by_subset, train_test_subsets,
    )
    from taltoolkit.data.writers import atomic_write_json, foreign_files, write_layout

    if args.out.is_dir() and any(args.out.iterdir()):
        # Checked before generating (minutes for real-sized sets); write_layout checks again.
        foreign = foreign_files(args.out) if args.overwrite else []
        if not args.overwrite or foreign:
            why = ("pass --overwrite to replace it" if not args.overwrite else
                   f"it holds files this tool did not write ({', '.join(foreign[:4])}"
                   f"{' ...' if len(foreign) > 4 else ''}), which --overwrite never deletes: move them")
            print(f"make_synthetic.py: error: --out {args.out} exists and is not empty; {why}, or choose another "
                  "folder", file=sys.stderr)
            return 2
    preset = PRESETS[args.preset]
    if args.from_annotations is not None:
        subsets = annotation_set(args.from_annotations).subsets()
        train, test = train_test_subsets(preset, subsets)
        num_videos = {s: None for s in subsets}  # every video of every subset unless limited
        num_videos.update({k: v for k, v in ((train, args.num_train), (test, args.num_test)) if v is not None})
    else:
        num_videos = {preset.train_subset: args.num_train if args.num_train is not None else 100,
                      preset.test_subset: args.num_test if args.num_test is not None else 100}
    params = dict(preset=args.preset, num_videos=num_videos, num_classes=args.num_classes, feature_dim=args.feature_dim,
                  difficulty=args.difficulty, seed=args.seed, from_annotations=args.from_annotations,
                  duration_scale=args.duration_scale, max_steps=args.max_steps, step_s=args.step_s,
                  offset_s=args.offset_s)
    t0 = time.time()
    videos, classes = generate_synthetic(**params)
    t_gen = time.time() - t0
    timing = concat_write_params(args.step_s, args.offset_s, videos[0].fps) if args.layout == "concat" else {}
    subset_names = list(dict.fromkeys(v.subset for v in videos))
    train_subset, test_subset = train_test_subsets(preset, subset_names)
    extra: dict = {}
    if args.layout == "split":
        # The real BaS-Net/CASE folder names (features/train, features/test) and split_<folder>.txt.
        extra["subsets"] = {s: ("train" if s == train_subset else "test" if s == test_subset else s)
                            for s in subset_names}
    try:
        out = write_layout(videos, classes, args.out, args.layout, name=args.name, overwrite=args.overwrite,
                           **timing, **extra)
    except FileExistsError as e:
        print(f"make_synthetic.py: error: {e}", file=sys.stderr)
        return 2
    stats = statistics_by_subset(videos)
    atomic_write_json(out / "synthetic.json", {"generator_version": GENERATOR_VERSION, "params": params,
                                               "layout": args.layout, "name": args.name, "write_timing": timing,
                                               "statistics": stats})
    print(f"wrote {len(videos)} videos, {len(classes)} classes, layout {args.layout} to {out} "
          f"(generated in {t_gen:.1f} s)")
    print(format_statistics(stats))
    if args.layout == "concat":
        print("read back with: " + json.dumps(timing))
    over = [f"dataset.root={out}", f"dataset.train_subset={train_subset}", f"dataset.test_subset={test_subset}"]
    if args.layout in ("wtalc", "split") and (args.step_s != 0.64 or args.offset_s != 0.0):
        over += [f"dataset.step_s={args.step_s}", f"dataset.offset_s={args.offset_s}"]
    for key in ("feature_stride", "snippet_frames", "fps", "resize_length"):
        if key in timing:
            over.append(f"dataset.{key}={'null' if timing[key] is None else timing[key]}")
    print("train and evaluate on it with (python tools/run.py in a checkout):\n    taltoolkit-run method=case "
          "dataset=custom " + " ".join(over))
    return 0


if __name__ == "__main__":
    sys.exit(main())
