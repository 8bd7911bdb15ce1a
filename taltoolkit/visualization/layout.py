"""Where a run directory keeps its plots, the data they are drawn from and its report."""
from __future__ import annotations

PLOTS_DIR = "plots"  # <run>/plots: run-level PNGs
VIDEOS_DIR = "videos"  # <run>/plots/videos: <video>_timeline.png, <video>_activation.png
GROUND_TRUTH_FILE = "ground_truth.json"  # <run>/plots: the test videos' instances (ActivityNet format)
ACTIVATIONS_FILE = "activations.npz"  # <run>/plots: CAS and attention of the plotted videos
REPORT_FILE = "report.html"  # <run>/report.html
