"""Torch datasets that turn :class:`Video` records into batches, and their collates.

- :class:`FixedLengthDataset` (WTAL methods): training samples ``num_segments`` steps per
  video by one of :data:`SAMPLING_RULES` (the rule of the method's public code); test
  returns the whole video, or a uniform resampling by one of :data:`TEST_SAMPLINGS`.
- :class:`VariableLengthDataset` (ActionFormer-style detectors): training crops a random
  window of at most ``max_seq_len`` steps that keeps part of the instances; test returns
  the whole video.

Every random choice comes from a generator seeded by ``(seed, epoch, index)``, so a batch
does not depend on the number of DataLoader workers or on which worker loads it. Call
``set_epoch(epoch)`` before iterating (the engine does); with ``persistent_workers=True``
the workers would keep their own copy of the epoch, so leave that off.

Batch dict (``B`` videos padded to ``T`` steps)::

    features      (B, T, D) float32, zeros where padded
    mask          (B, T) bool, True on real steps
    video_labels  (B, C) float32 multi-hot (zeros for label_level "none")
    positions     (B, T) float64, original step index of each step (-1 where padded)
    label_level   list[str] of "full" | "weak" | "none"
    names         list[str]
    index         (B,) long, index into the dataset's video list
    step_scale    (B,) float64, original steps per returned step (t / n for a test video
                  resampled from t to n steps, else 1): step i covers [i, i + 1) * step_scale
    step_s, offset_s, duration  (B,) float64, so seconds = offset_s + x * step_s
    segments      list of (N_b, 2) float32 in grid units of the batch's sequence (variable only)
    labels        list of (N_b,) long (variable only)
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from taltoolkit.structures import Video


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Generator for one item of one epoch; independent of worker layout."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, epoch % 2**63, index]))


def keyed_generator(*key: int) -> torch.Generator:
    """A CPU torch generator seeded by the integers ``key``: :func:`item_rng` for torch draws.

    For random choices a method makes inside a training step (APL's ACP frames, k-means
    seeds, ICD pairs): keyed by (seed, stage, epoch, video indices), not by the process, so
    torchrun's ranks and a single process draw the same numbers for the same videos.
    """
    state = np.random.SeedSequence([int(k) % 2**63 for k in key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def perturbed_indices(t: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` sorted step indices of a length-``t`` video, disjoint bins (rule ``"bins"``).

    ``t > n``: ``[0, t)`` is cut into ``n`` equal bins and one random index is drawn per bin.
    ``t <= n``: uniform with repetition ``floor(arange(n) * t / n)`` (no randomness).
    """
    if t <= n:
        return uniform_indices(t, n)
    edges = np.floor(np.arange(n + 1) * t / n).astype(np.int64)  # t > n, so every bin is non-empty
    lo, hi = edges[:-1], edges[1:]
    return lo + np.floor(rng.random(n) * (hi - lo)).astype(np.int64)


def uniform_indices(t: int, n: int) -> np.ndarray:
    """``floor(arange(n) * t / n)``: ``n`` evenly spaced steps of a length-``t`` video."""
    return np.floor(np.arange(n) * t / n).astype(np.int64)


def _randint_inclusive(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo + np.floor(rng.random(lo.shape) * (hi - lo + 1)).astype(np.int64)


def bas_perturb_indices(t: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """BaS-Net/CASE training sampling (rule ``"perturb"``), for any ``t``.

    Position ``i`` starts at ``floor(i t / n)``; where the next position's floor differs, the
    index is drawn uniformly from that floor to the next one *inclusive* (neighbouring draws
    overlap by one step), else it stays. The last position draws from its floor to ``t - 1``.
    So a video shorter than ``n`` is jittered too: each change of step may come one position
    early. ``t == n`` returns ``arange(n)``.
    """
    if t == n:
        return np.arange(n, dtype=np.int64)
    lo = np.floor(np.arange(n) * t / n).astype(np.int64)  # (n,)
    nxt = np.append(lo[1:], t - 1)  # (n,) the last position draws up to t - 1
    return np.where(nxt != lo, _randint_inclusive(rng, lo, nxt), lo)


def acmnet_indices(t: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """ACM-Net training sampling (rule ``"acmnet"``).

    ``t < n``: ``n`` draws with replacement from ``[0, t)``, sorted (steps repeat at random);
    ``t > n``: position ``i < n - 1`` draws from ``floor(i t / n)`` to ``floor((i + 1) t / n)``
    inclusive, and the last from the second-to-last's draw to ``t - 1``; ``t == n``: all steps.
    """
    if t == n:
        return np.arange(n, dtype=np.int64)
    if t < n:
        return np.sort(rng.integers(0, t, size=n)).astype(np.int64)
    lo = np.floor(np.arange(n) * t / n).astype(np.int64)  # (n,)
    out = lo.copy()
    if n > 1:
        out[:-1] = _randint_inclusive(rng, lo[:-1], lo[1:])
        out[-1] = _randint_inclusive(rng, out[-2:-1], np.array([t - 1]))[0]
    else:
        out[0] = rng.integers(0, t)
    return out


# Training rules: the sampling of each method's public code.
SAMPLING_RULES = {
    "bins": perturbed_indices,  # one draw per disjoint bin; shorter videos repeat uniformly
    "perturb": bas_perturb_indices,  # BaS-Net / CASE random_perturb
    "acmnet": acmnet_indices,  # ACM-Net random_sample
}
# Test-time length: "native" keeps every step; "always" resamples every video uniformly to
# num_segments steps (CASE's public code); "longer" only videos longer than num_segments (ACM-Net).
TEST_SAMPLINGS = ("native", "always", "longer")


def evaluation_indices(t: int, n: int, mode: str) -> np.ndarray:
    """Step indices of a length-``t`` test video under ``mode`` (see :data:`TEST_SAMPLINGS`)."""
    if mode not in TEST_SAMPLINGS:
        raise ValueError(f"test sampling {mode!r}; choose one of {TEST_SAMPLINGS}")
    if mode == "native" or t == n or (mode == "longer" and t < n):
        return np.arange(t, dtype=np.int64)
    return uniform_indices(t, n)


def _video_labels(v: Video) -> np.ndarray:
    if v.video_labels is None:
        raise ValueError(f"video {v.name!r} has no video_labels; read it through a reader so the class list is known")
    return np.asarray(v.video_labels, np.float32)


def _base_item(v: Video, index: int, feats: np.ndarray, positions: np.ndarray) -> dict[str, Any]:
    return {
        "features": feats,  # (t, D)
        "positions": positions.astype(np.float64),  # (t,)
        "video_labels": _video_labels(v),  # (C,)
        "label_level": v.label_level,
        "name": v.name,
        "index": index,
        "step_s": float(v.step_s),
        "offset_s": float(v.offset_s),
        "duration": float(v.duration),
        "step_scale": 1.0,
    }


def _collate_common(items: Sequence[dict[str, Any]], length: int) -> dict[str, Any]:
    b = len(items)
    d = items[0]["features"].shape[1]
    feats = np.zeros((b, length, d), np.float32)  # (B, T, D)
    mask = np.zeros((b, length), bool)  # (B, T)
    positions = np.full((b, length), -1.0, np.float64)  # (B, T)
    for i, it in enumerate(items):
        t = it["features"].shape[0]
        feats[i, :t] = it["features"]
        mask[i, :t] = True
        positions[i, :t] = it["positions"]
    return {
        "features": torch.from_numpy(feats),
        "mask": torch.from_numpy(mask),
        "video_labels": torch.from_numpy(np.stack([it["video_labels"] for it in items])),  # (B, C)
        "positions": torch.from_numpy(positions),
        "label_level": [it["label_level"] for it in items],
        "names": [it["name"] for it in items],
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "step_s": torch.tensor([it["step_s"] for it in items], dtype=torch.float64),
        "offset_s": torch.tensor([it["offset_s"] for it in items], dtype=torch.float64),
        "duration": torch.tensor([it["duration"] for it in items], dtype=torch.float64),
        "step_scale": torch.tensor([it["step_scale"] for it in items], dtype=torch.float64),
    }


# --------------------------------------------------------------------------- fixed length
def collate_fixed(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad to the longest item of the batch (all equal while training)."""
    if not items:
        raise ValueError("collate_fixed got an empty batch")
    return _collate_common(items, max(it["features"].shape[0] for it in items))


class _EpochSeededVideos(Dataset):
    """Videos plus the (seed, epoch) that seed each item's random choices."""

    def __init__(self, videos: Sequence[Video], training: bool, seed: int) -> None:
        self.videos = list(videos)
        self.training = bool(training)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.videos)


class FixedLengthDataset(_EpochSeededVideos):
    """WTAL sampling: ``num_segments`` steps per video while training, by ``rule`` (a key of
    :data:`SAMPLING_RULES`); at test the whole video, or a uniform resampling to
    ``num_segments`` steps by ``test_sampling`` (:data:`TEST_SAMPLINGS`)."""

    def __init__(
        self, videos: Sequence[Video], num_segments: int, training: bool, seed: int = 0,
        rule: str = "bins", test_sampling: str = "native",
    ) -> None:
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        if rule not in SAMPLING_RULES:
            raise ValueError(f"sampling rule {rule!r}; choose one of {sorted(SAMPLING_RULES)}")
        if test_sampling not in TEST_SAMPLINGS:
            raise ValueError(f"test sampling {test_sampling!r}; choose one of {TEST_SAMPLINGS}")
        super().__init__(videos, training, seed)
        self.num_segments = int(num_segments)
        self.rule = rule
        self.test_sampling = test_sampling

    def __getitem__(self, index: int) -> dict[str, Any]:
        v = self.videos[index]
        t = v.num_steps
        if self.training:
            rng = item_rng(self.seed, self.epoch, index)
            idx = SAMPLING_RULES[self.rule](t, self.num_segments, rng)  # (n,)
            return _base_item(v, index, np.asarray(v.features[idx], np.float32), idx)
        idx = evaluation_indices(t, self.num_segments, self.test_sampling)
        if len(idx) == t:
            return _base_item(v, index, np.asarray(v.features, np.float32), idx)
        item = _base_item(v, index, np.asarray(v.features[idx], np.float32), idx)
        # Step i of the resampled sequence stands for original steps [i, i + 1) * t / n, the
        # time scale of the public codes' proposals (their t_factor).
        item["step_scale"] = t / len(idx)
        return item

    @staticmethod
    def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate_fixed(items)


# --------------------------------------------------------------------------- variable length
def crop_window(
    t: int,
    segments: np.ndarray,
    max_seq_len: int,
    rng: np.random.Generator,
    crop_ratio: tuple[float, float] | None = (0.9, 1.0),
    trunc_thresh: float = 0.5,
    max_trials: int = 200,
    margin: tuple[float, float] | None = None,
) -> tuple[int, int, np.ndarray]:
    """A training window ``[start, end)`` of a length-``t`` video and the segments kept in it.

    Length: ``max_seq_len`` when the video is longer; otherwise a random fraction in
    ``crop_ratio`` of the video (the whole video when ``crop_ratio`` is None). Start: uniform,
    redrawn up to ``max_trials`` times until at least one segment keeps ``trunc_thresh`` of
    its length inside the window (the last draw is used if none does). A segment is kept
    when that share of it lies in the window, and is clipped to the window. ``segments``
    are ``(N, 2)`` grid coordinates; returns kept indices into them.

    ``margin=(lo, hi)`` follows ActionFormer's ``truncate_feats`` instead: segments are
    measured against (and the caller clips them to) the widened window ``[start - lo,
    end + hi]``; a video that is not cut (length ``t``) keeps every segment, unclipped; a
    zero-length segment is never kept from a cut (its share is 0 / 0 there).
    """
    if t > max_seq_len:
        length = max_seq_len
    elif crop_ratio is None:
        length = t
    else:
        lo = max(int(round(crop_ratio[0] * t)), 1)
        hi = max(min(int(round(crop_ratio[1] * t)), t), lo)
        length = int(rng.integers(lo, hi + 1))
    segs = np.asarray(segments, np.float64).reshape(-1, 2)
    seg_len = segs[:, 1] - segs[:, 0]
    if margin is not None and length == t:
        return 0, t, np.arange(len(segs))  # truncate_feats returns an uncut video as it is
    lo_m, hi_m = (0.0, 0.0) if margin is None else (float(margin[0]), float(margin[1]))
    keep = np.zeros(len(segs), bool)
    start = 0
    for _ in range(max(1, max_trials)):
        start = int(rng.integers(0, t - length + 1))
        end = start + length
        inter = np.clip(np.minimum(segs[:, 1], end + hi_m) - np.maximum(segs[:, 0], start - lo_m), 0.0, None)
        # A zero-length segment counts as fully inside when its point is in the window
        # (with a margin, as the public code, it never counts).
        point_in = (segs[:, 0] >= start) & (segs[:, 0] <= end) & (margin is None)
        ratio = np.where(seg_len > 0, inter / np.where(seg_len > 0, seg_len, 1.0), point_in.astype(np.float64))
        keep = ratio >= trunc_thresh
        if len(segs) == 0 or keep.any() or t == length:
            break  # with the whole video there is nothing else to try
    return start, start + length, np.nonzero(keep)[0]


def collate_variable(
    items: Sequence[dict[str, Any]], max_seq_len: int, pad_multiple: int = 1, training: bool | None = None
) -> dict[str, Any]:
    """Pad to ``max_seq_len`` while training, else to the batch max rounded up to ``pad_multiple``."""
    if not items:
        raise ValueError("collate_variable got an empty batch")
    if training is None:
        training = bool(items[0]["training"])
    longest = max(it["features"].shape[0] for it in items)
    if training:
        if longest > max_seq_len:
            raise ValueError(f"training item of {longest} steps exceeds max_seq_len={max_seq_len}")
        length = max_seq_len
    else:
        length = int(math.ceil(longest / pad_multiple) * pad_multiple)
    batch = _collate_common(items, length)
    batch["segments"] = [torch.from_numpy(it["segments"]) for it in items]
    batch["labels"] = [torch.from_numpy(it["labels"]) for it in items]
    return batch


class VariableLengthDataset(_EpochSeededVideos):
    """ActionFormer-style items: random crops of at most ``max_seq_len`` steps while training.

    ``crop_margin="official"`` crops as ActionFormer's ``truncate_feats`` with its feature
    offset ``f = snippet_frames / (2 * feature_stride)`` steps: a window starting at step
    ``s`` is ``[s - f, e + f]`` in its coordinates, where step k sits at k; step k's centre
    is k + 0.5 here, so that window is ``[s - (f - 0.5), e + (f + 0.5)]`` here, and ``f - 0.5
    = offset_s / step_s`` (readers.concat_timing): margins ``(offset_s / step_s, offset_s /
    step_s + 1)`` steps (THUMOS14 I3D: 1.5 and 2.5). ``"none"``: segments are measured
    against and clipped to the window itself (the earlier rule: targets never extend past
    the crop's features).
    """

    def __init__(
        self,
        videos: Sequence[Video],
        max_seq_len: int,
        training: bool,
        crop_ratio: tuple[float, float] | None = (0.9, 1.0),
        seed: int = 0,
        trunc_thresh: float = 0.5,
        max_trials: int = 200,
        pad_multiple: int = 1,
        crop_margin: str = "official",
    ) -> None:
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        if crop_margin not in ("official", "none"):
            raise ValueError(f"crop_margin={crop_margin!r}; choose official or none")
        self.crop_margin = crop_margin
        super().__init__(videos, training, seed)
        self.max_seq_len = int(max_seq_len)
        self.crop_ratio = None if crop_ratio is None else (float(crop_ratio[0]), float(crop_ratio[1]))
        self.trunc_thresh = float(trunc_thresh)
        self.max_trials = int(max_trials)
        self.pad_multiple = int(pad_multiple)

    def __getitem__(self, index: int) -> dict[str, Any]:
        v = self.videos[index]
        t = v.num_steps
        grid = (np.asarray(v.segments, np.float64).reshape(-1, 2) - v.offset_s) / v.step_s  # (N, 2) steps
        labels = np.asarray(v.labels, np.int64)
        if self.training:
            rng = item_rng(self.seed, self.epoch, index)
            margin = None
            if self.crop_margin == "official":
                lo = float(v.offset_s) / float(v.step_s)
                margin = (lo, lo + 1.0)
            start, end, kept = crop_window(
                t, grid, self.max_seq_len, rng, self.crop_ratio, self.trunc_thresh, self.max_trials, margin
            )
            if margin is not None and end - start == t:
                segs = grid[kept] - start  # an uncut video keeps its segments as they are (start is 0)
            else:
                m_lo, m_hi = margin if margin is not None else (0.0, 0.0)
                segs = np.clip(grid[kept], start - m_lo, end + m_hi) - start
            labels = labels[kept]
        else:
            start, end, segs = 0, t, grid  # evaluation uses seconds; grid units unclipped
        item = _base_item(v, index, np.asarray(v.features[start:end], np.float32), np.arange(start, end))
        item["segments"] = segs.astype(np.float32).reshape(-1, 2)
        item["labels"] = labels
        item["training"] = self.training
        return item

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate_variable(items, self.max_seq_len, self.pad_multiple, self.training)


# --------------------------------------------------------------------------- factory
def make_dataset(
    sampling: str,
    videos: Sequence[Video],
    training: bool,
    seed: int = 0,
    num_segments: int = 750,
    max_seq_len: int = 2304,
    crop_ratio: tuple[float, float] | None = (0.9, 1.0),
    pad_multiple: int = 1,
    rule: str = "bins",
    test_sampling: str = "native",
) -> tuple[Dataset, Callable[[Sequence[dict[str, Any]]], dict[str, Any]]]:
    """``(dataset, collate)`` for ``sampling`` = ``"fixed"`` or ``"variable"`` (Method.sampling);
    ``rule`` and ``test_sampling`` choose the fixed-length rules (Method.sampling_rule /
    Method.test_sampling)."""
    if sampling == "fixed":
        ds = FixedLengthDataset(videos, num_segments, training, seed=seed, rule=rule, test_sampling=test_sampling)
        return ds, collate_fixed
    if sampling == "variable":
        vds = VariableLengthDataset(videos, max_seq_len, training, crop_ratio=crop_ratio, seed=seed, pad_multiple=pad_multiple)
        return vds, partial(collate_variable, max_seq_len=vds.max_seq_len, pad_multiple=pad_multiple, training=training)
    raise ValueError(f"unknown sampling {sampling!r}; choose 'fixed' or 'variable'")
