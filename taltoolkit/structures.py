"""The few records every layer passes on: a video, its ground truth, and detections.

Time convention (used by every reader, sampler and post-processor): a video's feature
sequence has ``T`` steps; step ``j`` covers the interval ``[offset_s + j * step_s,
offset_s + (j + 1) * step_s)`` seconds, so a continuous grid coordinate ``x`` maps to
``offset_s + x * step_s`` seconds. W-TALC features (16 frames at 25 fps) have
``step_s = 0.64, offset_s = 0``; ActionFormer THUMOS features (16-frame windows, stride 4)
have ``step_s = 4 / fps`` and ``offset_s = (16 / 2 - 4 / 2) / fps`` so that the centre of
step ``j`` is the centre of its 16-frame window.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Video:
    """One video in memory: features plus everything needed to map them to seconds."""

    name: str
    features: np.ndarray  # (T, D) float32
    duration: float  # seconds
    fps: float  # frames per second of the source video
    step_s: float  # seconds between consecutive feature steps
    offset_s: float = 0.0  # seconds at the start boundary of step 0
    subset: str = ""  # split name as in the annotation file ("validation", "test", ...)
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))  # (N, 2) seconds
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (N,) class ids
    video_labels: np.ndarray | None = None  # (C,) float32 multi-hot; None until classes are known
    # How much of the ground truth a training view exposes: "full" (instances), "weak"
    # (video labels only) or "none". Readers always return "full"; label views lower it.
    label_level: str = "full"

    @property
    def num_steps(self) -> int:
        return int(self.features.shape[0])

    def boundaries(self) -> np.ndarray:
        """Seconds of the T + 1 step boundaries: step j spans [b[j], b[j + 1])."""
        return self.offset_s + np.arange(self.num_steps + 1, dtype=np.float64) * self.step_s

    def to_seconds(self, x: np.ndarray | float) -> np.ndarray | float:
        """Continuous grid coordinate(s) -> seconds."""
        return self.offset_s + np.asarray(x, dtype=np.float64) * self.step_s

    def to_steps(self, seconds: np.ndarray | float) -> np.ndarray | float:
        """Seconds -> continuous grid coordinate(s) (inverse of :meth:`to_seconds`)."""
        return (np.asarray(seconds, dtype=np.float64) - self.offset_s) / self.step_s

    def action_mask(self) -> np.ndarray:
        """(T,) bool: steps whose centre lies inside a ground-truth segment (any class).

        For statistics and diagnostics (how well an attention finds the actions), not training.
        """
        centres = self.to_seconds(np.arange(self.num_steps) + 0.5)  # (T,)
        seg = np.asarray(self.segments, np.float64).reshape(-1, 2)  # (N, 2)
        inside = (centres[:, None] >= seg[None, :, 0]) & (centres[:, None] < seg[None, :, 1])  # (T, N)
        return inside.any(axis=1)


@dataclass
class Detections:
    """Scored segments of one video, in seconds."""

    segments: np.ndarray  # (N, 2) seconds
    scores: np.ndarray  # (N,)
    labels: np.ndarray  # (N,) class ids

    def __len__(self) -> int:
        return int(self.scores.shape[0])
