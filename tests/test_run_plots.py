"""A run's plots and report.html: written at the end of a run, redrawn identically from the
saved folder, with the videos and detections its settings ask for; taltoolkit-visualize
draws any ActivityNet-format files and a saved run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from figure_capture import figures  # noqa: F401 - the fixture
from tiny_run import tiny_run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real run with TensorBoard, two plotted videos, top-5 detections."""
    root = tmp_path_factory.mktemp("plots_run")
    return tiny_run(root, "logger=tensorboard", "plots.num_videos=2", "plots.top_k=5")


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_a_run_writes_event_files_scalars_plots_and_report(run):
    out, metrics, cfg = run
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    from taltoolkit.engine.logger import read_scalars

    assert read_scalars(out)["average_mAP"][-1][1] == pytest.approx(metrics["average_mAP"])
    names = sorted(_pngs(out / "plots"))
    videos = list(json.loads((out / "plots" / "ground_truth.json").read_text())["database"])[:2]
    assert names == sorted(["per_class_ap.png", "training_curves.png",
                            *(f"videos/{v}_{kind}.png" for v in videos for kind in ("activation", "timeline"))])
    assert all(b[:8] == PNG for b in _pngs(out / "plots").values())
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(names)


def test_saved_plot_data_is_the_runs_ground_truth_and_outputs(run):
    out, metrics, cfg = run
    gt = json.loads((out / "plots" / "ground_truth.json").read_text())
    from taltoolkit.evaluation import detection_map

    # The saved ground truth scores the saved predictions exactly as the run did.
    again = detection_map(gt, json.loads((out / "predictions.json").read_text()),
                          tiou_thresholds=metrics["tiou_thresholds"], subset=metrics["subset"]).to_dict()
    assert again["mAP"] == pytest.approx(metrics["mAP"])
    with np.load(out / "plots" / "activations.npz") as z:
        names = [str(n) for n in z["names"]]
        assert names == list(gt["database"])[:2]
        for i, name in enumerate(names):
            cas, t = z[f"cas_{i}"], z[f"times_{i}"]
            assert cas.ndim == 2 and cas.shape[1] == len(gt["classes"]) and t.shape == (cas.shape[0],)
            assert np.all(np.diff(t) > 0) and 0 < t[0] and t[-1] < gt["database"][name]["duration"] + 1.0
            assert z[f"class_scores_{i}"].shape == (len(gt["classes"]),)


def test_write_run_plots_redraws_the_same_plots_from_the_saved_folder(run, tmp_path):
    from taltoolkit.visualization import write_run_plots

    out, _, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = _pngs(copy / "plots")
    for p in (copy / "plots").rglob("*.png"):
        p.unlink()
    (copy / "report.html").unlink()
    written = write_run_plots(copy)
    assert _pngs(copy / "plots") == before  # byte for byte: the end of the run drew from the same data
    assert copy / "report.html" in written and (copy / "report.html").is_file()


def test_video_choice_top_k_and_output_folder_are_settings(run, tmp_path, figures):  # noqa: F811
    from taltoolkit.visualization import write_run_plots

    out, _, _ = run
    gt = json.loads((out / "plots" / "ground_truth.json").read_text())["database"]
    third = list(gt)[2]
    written = write_run_plots(out, video_names=[third], top_k=3, out_dir=tmp_path / "o")
    assert {p.name for p in written} == {f"{third}_timeline.png", "training_curves.png", "per_class_ap.png",
                                         "report.html"}  # no saved activation for this video: timeline only
    assert all(str(p).startswith(str(tmp_path / "o")) for p in written)
    ax = figures[f"{third}_timeline.png"].axes[0]
    assert len(ax.texts) == min(3, len(json.loads((out / "predictions.json").read_text())["results"][third]))
    write_run_plots(out, num_videos=1, out_dir=tmp_path / "one")
    assert len(list((tmp_path / "one" / "plots" / "videos").glob("*_timeline.png"))) == 1
    with pytest.raises(KeyError, match="no_such_video"):
        write_run_plots(out, video_names=["no_such_video"], out_dir=tmp_path / "x")


def test_a_plot_that_fails_is_reported_and_the_others_are_still_written(run, tmp_path, monkeypatch, caplog):
    from taltoolkit.visualization import curves, write_run_plots

    def broken(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("no curves today")

    monkeypatch.setattr(curves, "plot_training_curves", broken)
    with caplog.at_level("WARNING", logger="taltoolkit"):
        written = write_run_plots(run[0], out_dir=tmp_path)
    assert any("training curves" in r.message and "no curves today" in r.message for r in caplog.records)
    assert (tmp_path / "report.html") in written and (tmp_path / "plots" / "per_class_ap.png") in written


def test_training_curves_prefer_per_step_scalars_over_the_epoch_history(run, tmp_path):
    from taltoolkit.engine.logger import RunLogger
    from taltoolkit.visualization.run import RunData, training_scalars

    out, metrics, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "scalars.jsonl").unlink()
    RunLogger(scalars_path=copy / "scalars.jsonl").log({"average_mAP": 1.0, "mAP@0.50": 2.0})  # the final mAP
    scalars, x_label, _ = training_scalars(RunData(copy))
    assert x_label == "epoch"  # no training-loop scalar: the curves come from metrics.json's history
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([h["loss"] for h in metrics["history"]])
    lg = RunLogger(scalars_path=copy / "scalars.jsonl")
    lg.log({"train/loss": 4.0}, step=10)
    lg.log({"train/loss": 3.0}, step=20)
    scalars, x_label, _ = training_scalars(RunData(copy))
    assert x_label == "step" and scalars["train/loss"] == [(10, 4.0), (20, 3.0)]


def test_plot_videos_keeps_its_signature_and_draws_through_the_package(run, tmp_path):
    from taltoolkit.engine.reporting import plot_videos
    from taltoolkit.structures import Detections, Video

    v = Video(name="v/1", features=np.zeros((10, 4), np.float32), duration=5.0, fps=25.0, step_s=0.5,
              segments=np.array([[1.0, 2.0]]), labels=np.array([1]))
    det = Detections(np.array([[1.0, 2.5]]), np.array([0.7]), np.array([1]))
    cas = np.zeros((10, 2), np.float32)
    written = plot_videos(tmp_path, [v], [{"cas": cas, "class_scores": np.array([0.1, 0.9])}], {"v/1": det}, ["a", "b"])
    assert sorted(p.name for p in written) == ["v_1_activation.png", "v_1_timeline.png"]


# ----------------------------------------------------------------------------- CLI


def _write(path: Path, obj) -> str:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


GT = {"database": {
    "vid_a": {"subset": "test", "duration": 40.0, "annotations": [{"label": "Diving", "segment": [3.0, 9.0]}]},
    "vid_b": {"subset": "test", "duration": 30.0, "annotations": [{"label": "HighJump", "segment": [5.0, 8.0]}]},
    "vid_c": {"subset": "validation", "duration": 20.0, "annotations": [{"label": "Diving", "segment": [1.0, 2.0]}]},
}}
A = {"results": {"vid_a": [{"label": "Diving", "score": 0.9, "segment": [3.0, 8.5]}],
                 "vid_b": [{"label": "HighJump", "score": 0.3, "segment": [5.0, 9.0]}]}}
B = {"results": {"vid_a": [{"label": "HighJump", "score": 0.6, "segment": [20.0, 25.0]},
                           {"label": "Diving", "score": 0.2, "segment": [2.0, 9.0]}]}}


def test_cli_compares_results_files_on_the_same_video(tmp_path, figures, capsys):  # noqa: F811
    from taltoolkit.cli.visualize import main

    gt = _write(tmp_path / "gt.json", GT)
    a = _write(tmp_path / "case" / "predictions.json", A)
    b = _write(tmp_path / "official" / "predictions.json", B)
    rc = main([gt, a, b, "--video", "vid_a", "--out", str(tmp_path / "out"), "--per-class", "--subset", "test"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["per_class_ap.png", "vid_a_timeline.png"]
    ax = figures["vid_a_timeline.png"].axes[0]
    rows = [t.get_text().split("\n")[0] for t in ax.get_yticklabels()]
    assert rows == ["ground truth", "case/predictions.json", "official/predictions.json"]  # one row per file
    assert sorted(t.get_text() for t in ax.texts) == ["0.20", "0.60", "0.90"]
    per_class = figures["per_class_ap.png"].axes[0]
    assert {t.get_text() for t in per_class.get_legend().get_texts()} >= {"case/predictions.json",
                                                                           "official/predictions.json"}
    assert str(tmp_path / "out" / "vid_a_timeline.png") in capsys.readouterr().out


def test_cli_picks_videos_of_the_subset_that_have_detections(tmp_path):
    from taltoolkit.cli.visualize import main

    gt = _write(tmp_path / "gt.json", GT)
    b = _write(tmp_path / "b.json", B)
    assert main([gt, b, "--subset", "test", "--out", str(tmp_path / "o")]) == 0
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["vid_a_timeline.png"]  # vid_b: no detections in b
    assert main([gt, b, "--num-videos", "3", "--out", str(tmp_path / "all")]) == 0
    assert len(list((tmp_path / "all").iterdir())) == 1


@pytest.mark.parametrize("argv, message", [
    (["{b}", "{gt}"], "looks like a results file: pass the ground truth first"),
    (["{gt}", "{gt}"], "must be a JSON object with 'results'"),
    (["{gt}", "{b}", "--video", "vid_z"], "'vid_z' are in neither"),
    (["{gt}", "{b}", "--subset", "train"], "subset 'train' has no videos"),
    (["{gt}", "{tmp}/missing.json"], "results file not found"),
    (["{gt}"], "at least one results file"),
    (["{gt}", "{b}", "--run", "{tmp}"], "not both"),
    (["--run", "{tmp}/missing"], "not a directory"),
    (["{gt}", "{b}", "--top", "0"], "--top must be at least 1"),
])
def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    from taltoolkit.cli.visualize import main

    paths = {"gt": _write(tmp_path / "gt.json", GT), "b": _write(tmp_path / "b.json", B), "tmp": str(tmp_path)}
    assert main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("visualize.py: error: ") and message in err and "\n" not in err


def test_cli_redraws_a_saved_run(run, tmp_path):
    from taltoolkit.cli.visualize import main

    out, _, _ = run
    assert main(["--run", str(out), "--num-videos", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").is_file()
    assert len(list((tmp_path / "plots" / "videos").glob("*.png"))) == 2  # timeline and activation


def test_row_names_are_file_names_made_unique_by_their_folders():
    from taltoolkit.cli.visualize import row_names

    assert row_names(["/x/a.json", "/y/b.json"]) == ["a.json", "b.json"]
    assert row_names(["/r1/run/predictions.json", "/r2/run/predictions.json"]) == \
        ["r1/run/predictions.json", "r2/run/predictions.json"]


def test_the_console_script_and_the_tools_wrapper_reach_the_cli():
    import configparser
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    cfg = configparser.ConfigParser()
    cfg.read(repo / "setup.cfg")
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].split("\n") if line)
    assert scripts["taltoolkit-visualize"] == "taltoolkit.cli.visualize:main"
    res = subprocess.run([sys.executable, str(repo / "tools" / "visualize.py"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "--run DIR" in res.stdout and "--per-class" in res.stdout
