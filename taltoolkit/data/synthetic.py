"""Planted-action synthetic features that behave like I3D features where TAL methods care.

:func:`generate_synthetic` returns ``Video`` records (float32 ``(T, D)`` features plus ground
truth) whose statistics follow ``/work/shared/data/STATISTICS.md``: non-negative right-skewed
features made of an RGB half and a flow half with different norms and smoothness, a strong
component shared by every video, a per-video scene that partly reveals the class, and actions
that differ only modestly from background. Timing (video length, instances, gaps, classes per
video) is drawn from the real THUMOS'14 or ActivityNet statistics, or copied from real ground
truth with ``from_annotations``. The feature model and its equations are in
``docs/synthetic.md``.

:func:`synthetic_dataset` (registered as ``dataset=synthetic``) writes a generated set once into
a cache with the ordinary writers and returns a ``TALDataset`` that reads it back through the
ordinary readers, so the default configuration exercises the real-format code path.

Determinism: every random draw comes from a ``SeedSequence`` keyed by ``seed`` and by what the
draw is for, so the ground truth does not depend on ``feature_dim`` or ``difficulty``, and
adding test videos does not change the training videos.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from taltoolkit.data.annotations import canonical_name, load_annotations, load_packaged_annotations
from taltoolkit.data.dataset import TALDataset
from taltoolkit.data.writers import atomic_write_json, write_layout
from taltoolkit.registry import register
from taltoolkit.structures import Video
from taltoolkit.tables import format_table

log = logging.getLogger(__name__)

# Bump when the feature model or the timing model changes: it is part of the cache key, so a
# cache written by an older generator is never read as if it were current.
GENERATOR_VERSION = 2

# Real THUMOS'14 per-class median instance lengths (s), used when a thumos preset asks for its
# 20 classes; other class counts draw medians from the same spread (ln-sd 0.55 around 3 s).
_THUMOS_CLASSES = (
    "BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving",
    "CricketBowling", "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing", "HammerThrow",
    "HighJump", "JavelinThrow", "LongJump", "PoleVault", "Shotput", "SoccerPenalty",
    "TennisSwing", "ThrowDiscus", "VolleyballSpiking",
)
_THUMOS_CLASS_MEDIAN_S = (
    3.0, 1.5, 2.2, 8.75, 2.7, 1.2, 1.1, 2.5, 2.3, 4.2, 7.1, 4.5, 6.3, 7.1, 6.4, 4.65, 2.9,
    1.5, 4.25, 1.7,
)


@dataclass(frozen=True)
class Preset:
    """Timing defaults of one benchmark family."""

    name: str
    train_subset: str
    test_subset: str
    num_classes: int
    fps: float
    evaluation_preset: str  # the benchmark's evaluation protocol (taltoolkit.evaluation.presets)


PRESETS: dict[str, Preset] = {
    "thumos": Preset("thumos", "validation", "test", 20, 30.0, "thumos14"),
    "anet": Preset("anet", "training", "validation", 20, 30.0, "activitynet"),
}


@dataclass(frozen=True)
class HalfModel:
    """Latent parameters of one modality half (see docs/synthetic.md for the equation)."""

    bias_mean: float  # mean of the shared per-dimension bias b_d
    bias_std: float  # spread of b_d across dimensions: sets the shared (cross-video) cosine
    scene: float  # per-video scene amplitude (constant in time)
    drift: float  # amplitude of the slowly varying AR(1) part of the per-step noise
    drift_phi: float  # its lag-1 correlation
    white: float  # amplitude of the per-step innovation itself: sets how rough the half is
    actionness: float  # class-agnostic action amplitude
    classness: float  # class-specific action amplitude
    scale: float  # output scale after the softplus: sets the per-dimension mean (~0.2)


# Calibrated (docs/synthetic.md, "Calibration") so that at difficulty 1 the per-half lag-1
# cosines are ~0.89 (RGB) and ~0.79 (flow), steps of different videos have cosine ~0.5, action
# vs background mean-feature cosine is ~0.9 and norms are ~10-30 % higher inside actions.
RGB = HalfModel(bias_mean=-1.0, bias_std=0.8, scene=0.9, drift=1.0, drift_phi=0.9,
                white=0.4, actionness=0.4, classness=0.6, scale=0.33)
FLOW = HalfModel(bias_mean=-1.3, bias_std=0.8, scene=0.75, drift=0.95, drift_phi=0.85,
                 white=0.62, actionness=0.6, classness=0.55, scale=0.28)

GROUP_SHARE = 0.4  # fraction of a class direction's variance shared with its group (confusable classes)
GROUP_SIZE = 4  # classes per group of related classes (generic class names)
# With the real THUMOS'14 names, groups follow what real detectors confuse.
_THUMOS_GROUPS = (
    ("CliffDiving", "Diving"), ("CricketBowling", "CricketShot"),
    ("HammerThrow", "JavelinThrow", "Shotput", "ThrowDiscus"), ("HighJump", "LongJump", "PoleVault"),
    ("BaseballPitch", "GolfSwing", "TennisSwing"),
    ("BasketballDunk", "VolleyballSpiking", "SoccerPenalty", "FrisbeeCatch"), ("Billiards",), ("CleanAndJerk",),
)
# Fraction of the scene variance that is class-typical (context bias). At 0.35 a linear probe
# classified background snippets almost as well as action snippets (88 % vs 93 %), so MIL
# had no reason to prefer actions and attention locked onto background; at 0.1 actions carry
# clearly more class evidence (66 % vs 34 %), as in real videos where the scene hints at the
# class but the action decides it.
SCENE_CLASS_SHARE = 0.1
INSTANCE_JITTER = 0.5  # per-instance deviation from the class direction, relative
ACTIONNESS_MEAN = 0.6  # mean of the actionness direction: actions raise activations overall
CONTEXT_S = 2.0  # seconds around an instance that carry some of its class pattern
CONTEXT_STRENGTH = 0.35  # of the class component, without actionness
DISTRACTOR_RATE = 1.0 / 60.0  # unannotated partial actions per second of video
DISTRACTOR_STRENGTH = 0.5  # of the full action amplitude
RECEPTIVE = np.array([0.2, 0.6, 0.2], np.float32)  # temporal blur of an I3D snippet's receptive field


# --------------------------------------------------------------------------- seeding


def _rng(seed: int, *key: int | str) -> np.random.Generator:
    """A generator keyed by ``seed`` and a purpose (strings are hashed stably with crc32)."""
    ints = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in key]
    return np.random.default_rng(np.random.SeedSequence(ints))


# --------------------------------------------------------------------------- world


@dataclass
class _World:
    """Everything shared by all videos of one generated set."""

    bias: np.ndarray  # (D,) latent bias: the shared component
    actionness: np.ndarray  # (D,) class-agnostic action direction
    class_dirs: np.ndarray  # (C, D) class-specific action directions (group-correlated)
    class_scenes: np.ndarray  # (C, D) class-typical scene directions
    half_params: tuple[np.ndarray, ...]  # per-dimension model parameters, each (D,)


def _per_dim(h: int, name: str) -> np.ndarray:
    """One HalfModel field laid out over the D = 2h dimensions, RGB first then flow."""
    return np.concatenate([np.full(h, getattr(RGB, name), np.float32), np.full(h, getattr(FLOW, name), np.float32)])


def class_groups(classes: list[str]) -> np.ndarray:
    """(C,) group id of each class: related classes share part of their action pattern."""
    if sorted(classes) == sorted(_THUMOS_CLASSES):
        gid = {c: g for g, members in enumerate(_THUMOS_GROUPS) for c in members}
        return np.array([gid[c] for c in classes])
    return np.arange(len(classes)) // GROUP_SIZE


def _make_world(seed: int, classes: list[str], feature_dim: int) -> _World:
    num_classes = len(classes)
    h = feature_dim // 2
    rng = _rng(seed, "world", feature_dim)
    bias = np.concatenate([
        RGB.bias_mean + RGB.bias_std * rng.standard_normal(h),
        FLOW.bias_mean + FLOW.bias_std * rng.standard_normal(h),
    ]).astype(np.float32)
    actionness = (ACTIONNESS_MEAN + rng.standard_normal(feature_dim)).astype(np.float32)
    groups = class_groups(classes)
    # Related classes (same group) share part of their direction, so they are confusable.
    group_dirs = rng.standard_normal((int(groups.max()) + 1, feature_dim))
    own = rng.standard_normal((num_classes, feature_dim))
    class_dirs = (math.sqrt(1 - GROUP_SHARE) * own + math.sqrt(GROUP_SHARE) * group_dirs[groups]).astype(np.float32)
    class_scenes = rng.standard_normal((num_classes, feature_dim)).astype(np.float32)
    names = ("scene", "drift", "drift_phi", "white", "actionness", "classness", "scale")
    return _World(bias, actionness, class_dirs, class_scenes, tuple(_per_dim(h, n) for n in names))


# --------------------------------------------------------------------------- timing


@dataclass
class _Plan:
    name: str
    subset: str
    duration: float
    segments: np.ndarray  # (N, 2) seconds
    labels: np.ndarray  # (N,) class ids


def _class_medians(seed: int, preset: str, num_classes: int) -> np.ndarray:
    """Median instance length (s) of each class."""
    if preset == "thumos" and num_classes == len(_THUMOS_CLASS_MEDIAN_S):
        return np.array(_THUMOS_CLASS_MEDIAN_S)
    rng = _rng(seed, "class-medians", num_classes)
    return np.exp(1.11 + 0.55 * rng.standard_normal(num_classes))


def _place(rng: np.random.Generator, duration: float, lengths: np.ndarray, gap_sigma: float) -> np.ndarray:
    """Lay ``lengths`` (N,) end to end with random gaps; returns (N, 2) seconds.

    Gap weights are lognormal, so most gaps are short and a few are long: instances come in
    bursts, as in THUMOS (median gap 2.5 s, p95 30 s).
    """
    free = max(duration - float(lengths.sum()), 0.0)
    w = np.exp(gap_sigma * rng.standard_normal(len(lengths) + 1))
    gaps = free * w / w.sum()  # (N + 1,)
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    return np.stack([starts, starts + lengths], 1)


def _round_segments(seg: np.ndarray, duration: float) -> np.ndarray:
    """0.1 s resolution like the real annotations, inside the video, never empty."""
    seg = np.round(seg, 1)
    seg[:, 0] = np.clip(seg[:, 0], 0.0, max(duration - 0.1, 0.0))
    seg[:, 1] = np.clip(np.maximum(seg[:, 1], seg[:, 0] + 0.1), 0.0, duration)
    return seg


def _plan_thumos(rng: np.random.Generator, medians: np.ndarray, groups: np.ndarray, duration_scale: float,
                 max_duration: float | None) -> tuple[float, np.ndarray, np.ndarray]:
    c = len(medians)
    # ln length and ln count are jointly normal with the real correlation (r = 0.65).
    z = rng.standard_normal(2)
    ln_len = 4.98 + 0.88 * z[0]
    ln_n = 2.10 + 1.16 * (0.65 * z[0] + math.sqrt(1 - 0.65**2) * z[1])
    real_len = float(np.clip(math.exp(ln_len), 8.9, 1700.0))
    duration = real_len * duration_scale
    if max_duration is not None:
        duration = min(duration, max_duration)
    duration = max(round(duration, 2), 4.0)
    # Fewer instances in a shortened video keep the coverage of the real set.
    n = max(1, int(round(math.exp(ln_n) * duration / real_len)))
    n = min(n, 200)
    y1 = int(rng.integers(c))
    labels = np.full(n, y1)
    if c > 1 and rng.random() < 0.14:  # 14 % of THUMOS videos hold a second class
        same_group = [k for k in range(c) if groups[k] == groups[y1] and k != y1]
        pool = same_group if same_group and rng.random() < 0.5 else [k for k in range(c) if k != y1]
        y2 = int(rng.choice(pool))
        second = rng.random(n) < 0.3
        second[rng.integers(n)] = True
        labels[second] = y2
        if second.all():  # keep the primary class present too
            labels = np.append(labels, y1)
            n = len(labels)
    lengths = np.exp(np.log(medians[labels]) + 0.63 * rng.standard_normal(n))
    lengths = np.clip(lengths, 0.4, 120.0)
    # Real coverage rarely exceeds ~0.8: drop instances (then shrink) until they fit.
    budget = 0.85 * duration
    while len(lengths) > 1 and lengths.sum() > budget:
        lengths, labels = lengths[:-1], labels[:-1]
    if lengths.sum() > budget:
        lengths = lengths * budget / lengths.sum()
    order = rng.permutation(len(lengths))  # mix classes along the video
    lengths, labels = lengths[order], labels[order]
    seg = _place(rng, duration, lengths, gap_sigma=1.3)
    return duration, _round_segments(seg, duration), labels.astype(np.int64)


def _plan_anet(rng: np.random.Generator, num_classes: int, duration_scale: float,
               max_duration: float | None) -> tuple[float, np.ndarray, np.ndarray]:
    # Real lengths pile up below ~4 min with a thin tail to ~755 s.
    real_len = 235.0 * rng.beta(1.6, 1.5) if rng.random() > 0.03 else rng.uniform(235.0, 755.0)
    real_len = max(real_len, 4.0)
    duration = real_len * duration_scale
    if max_duration is not None:
        duration = min(duration, max_duration)
    duration = max(round(duration, 2), 4.0)
    n = 1 if rng.random() < 0.755 else 1 + int(rng.geometric(0.5))  # 75 % one, geometric tail
    n = min(n, 20)
    if n == 1:  # bimodal instance/video ratio: half the single instances span > 0.8 of the video
        ratio = np.array([rng.uniform(0.8, 1.0) if rng.random() < 0.48 else 0.8 * rng.beta(1.3, 1.0)])
    else:
        ratio = np.clip(np.exp(math.log(0.09) + 0.9 * rng.standard_normal(n)), 0.01, 0.6)
        if ratio.sum() > 0.9:
            ratio *= 0.9 / ratio.sum()
    lengths = np.maximum(ratio * duration, 0.5)
    seg = _place(rng, duration, lengths, gap_sigma=0.8)
    labels = np.full(n, int(rng.integers(num_classes)), np.int64)  # one class per video
    return duration, _round_segments(seg, duration), labels


def _num_steps(duration: float, step_s: float, offset_s: float) -> int:
    """Whole snippets inside the video (a trailing partial snippet is dropped, as in W-TALC)."""
    return max(1, int(math.floor((duration - offset_s) / step_s + 1e-6)))


# --------------------------------------------------------------------------- features


def _envelope(segments: np.ndarray, t: int, step_s: float, offset_s: float, pad_s: float = 0.0) -> np.ndarray:
    """(N, T) fraction of each step covered by each (optionally widened) segment."""
    b = offset_s + np.arange(t + 1) * step_s  # (T + 1,) step boundaries
    s = segments[:, :1] - pad_s
    e = segments[:, 1:] + pad_s
    cover = np.minimum(e, b[None, 1:]) - np.maximum(s, b[None, :-1])  # (N, T)
    return np.clip(cover / step_s, 0.0, 1.0).astype(np.float32)


def _blur(x: np.ndarray) -> np.ndarray:
    """Temporal receptive-field blur along axis 0 of (T, ...) with edge replication."""
    if x.shape[0] < 2:
        return x
    p = np.concatenate([x[:1], x, x[-1:]], 0)
    return RECEPTIVE[0] * p[:-2] + RECEPTIVE[1] * p[1:-1] + RECEPTIVE[2] * p[2:]


def _smooth_noise(rng: np.random.Generator, t: int, phi: np.ndarray, smooth: np.ndarray,
                  rough: np.ndarray) -> np.ndarray:
    """(T, D) ARMA(1,1) noise ``smooth * s_t + rough * e_t`` with ``s`` an AR(1) of ``e``.

    One Gaussian draw feeds both the slowly varying part and the per-step roughness (a draw
    of (T, D) normals is the most expensive step of the generator). ``s`` is stationary with
    unit variance and per-dimension lag-1 correlation ``phi`` (D,).
    """
    e = rng.standard_normal((t, phi.shape[0]), dtype=np.float32)
    c = np.sqrt(1 - phi**2)
    s = e * c
    s[0] = e[0]  # start in the stationary distribution
    for i in range(1, t):  # a Python loop over steps of (D,) vectors: ~1 us a step
        s[i] += phi * s[i - 1]
    s *= smooth
    s += rough * e
    return s


def _render(rng: np.random.Generator, world: _World, t: int, step_s: float, offset_s: float,
            segments: np.ndarray, labels: np.ndarray, duration: float, gain: float) -> np.ndarray:
    """(T, D) float32 features of one video; ``gain`` = 1 / difficulty scales the actions."""
    scene_a, drift_a, phi, white_a, act_a, cls_a, scale = world.half_params
    d = world.bias.shape[0]
    # Scene: random plus a class-typical part (pool/court/field) that reveals the class but
    # not where the action is: the context a weakly supervised classifier latches on to.
    scene = rng.standard_normal(d, dtype=np.float32)
    if len(labels):
        primary = int(np.bincount(labels).argmax())
        scene = math.sqrt(1 - SCENE_CLASS_SHARE) * scene + math.sqrt(SCENE_CLASS_SHARE) * world.class_scenes[primary]
    z = world.bias + scene_a * scene  # (D,)
    z = z + _smooth_noise(rng, t, phi, drift_a, white_a)  # (T, D)

    # Every planted pattern is an envelope over time (K, T) times a direction (K, D); they are
    # stacked so that the whole action part is one (T, K) @ (K, D) product.
    envs: list[np.ndarray] = []
    pats: list[np.ndarray] = []
    seg = np.asarray(segments, np.float64).reshape(-1, 2)
    lab = np.asarray(labels, np.int64).reshape(-1)
    if len(seg):
        env = _envelope(seg, t, step_s, offset_s)  # (N, T)
        ctx = np.clip(_envelope(seg, t, step_s, offset_s, CONTEXT_S) - env, 0.0, None)  # (N, T)
        jitter = rng.standard_normal((len(seg), d), dtype=np.float32)  # (N, D) instance variation
        cls = (world.class_dirs[lab] + INSTANCE_JITTER * jitter) / math.sqrt(1 + INSTANCE_JITTER**2)
        envs += [env, ctx]
        pats += [act_a * world.actionness[None] + cls_a * cls,  # the action itself
                 CONTEXT_STRENGTH * cls_a * cls]  # its context carries the class, not actionness
    # Unannotated partial actions (ambiguous moments, replays, generic motion): background that
    # partly resembles action, so perfect localization is out of reach.
    n_dis = int(rng.poisson(DISTRACTOR_RATE * duration))
    if n_dis:
        starts = rng.uniform(0.0, duration, n_dis)
        lens = np.exp(1.11 + 0.84 * rng.standard_normal(n_dis))
        dseg = np.stack([starts, np.minimum(starts + lens, duration)], 1)
        # Half of them carry the video's own class pattern, the rest a random one.
        dcls = rng.standard_normal((n_dis, d), dtype=np.float32)  # (M, D)
        if len(lab):
            own = rng.random(n_dis) < 0.5
            dcls[own] = world.class_dirs[lab[rng.integers(len(lab), size=int(own.sum()))]]
        envs.append(_envelope(dseg, t, step_s, offset_s))  # (M, T)
        pats.append(DISTRACTOR_STRENGTH * (act_a * world.actionness[None] + 0.5 * cls_a * dcls))
    if envs:
        # Blurring the envelopes equals blurring the (T, D) sum: the blur is linear in time.
        e = _blur(np.concatenate(envs, 0).T)  # (T, K)
        z += gain * (e @ np.concatenate(pats, 0).astype(np.float32))  # (T, D)
    # Softplus: non-negative, right-skewed, never exactly zero (like spatially pooled ReLUs).
    np.minimum(z, 30.0, out=z)  # exp stays finite in float32
    x = np.log1p(np.exp(z, out=z), out=z)
    x *= scale
    return x


# --------------------------------------------------------------------------- public API


def annotation_set(source: Any) -> Any:
    """An ``AnnotationSet`` from an ``AnnotationSet``, a packaged benchmark name or a path."""
    if hasattr(source, "videos") and hasattr(source, "classes"):
        return source
    text = str(source)
    if not os.path.exists(text) and canonical_name(text) is not None:
        return load_packaged_annotations(text)
    return load_annotations(text)  # raises DataError naming the path when it is not there


def train_test_subsets(preset: Preset, subsets: list[str]) -> tuple[str, str]:
    """Train and test subset names of an annotation set: the preset's if it has them, else
    ``training``/``validation`` (ActivityNet), else ``validation``/``test`` (THUMOS), else the
    first and last subset in file order."""
    for pair in ((preset.train_subset, preset.test_subset), ("training", "validation"), ("validation", "test")):
        if set(pair) <= set(subsets):
            return pair
    return subsets[0], subsets[-1]


def _counts(num_videos: int | Mapping[str, int | None] | None, subsets: list[str],
            default: int | None) -> dict[str, int | None]:
    """Videos per subset; ``None`` values mean "all" (only with annotations)."""
    if num_videos is None:
        return {s: default for s in subsets}
    if isinstance(num_videos, Mapping):
        unknown = sorted(set(map(str, num_videos)) - set(subsets))
        if unknown:
            raise ValueError(f"num_videos names subset(s) {unknown}; the subsets are {subsets}")
        return {s: (None if num_videos.get(s) is None else int(num_videos[s])) if s in num_videos else 0
                for s in subsets}
    return {s: int(num_videos) for s in subsets}


def generate_synthetic(
    preset: str = "thumos",
    num_videos: int | Mapping[str, int] | None = None,
    num_classes: int | None = None,
    feature_dim: int = 512,
    difficulty: float = 1.0,
    seed: int = 0,
    from_annotations: Any = None,
    *,
    duration_scale: float = 0.5,
    max_steps: int | None = 320,
    step_s: float = 0.64,
    offset_s: float = 0.0,
    fps: float | None = None,
) -> tuple[list[Video], list[str]]:
    """Generate ``(videos, classes)``; deterministic in every argument.

    preset: ``"thumos"`` (subsets ``validation`` = train, ``test``) or ``"anet"``
        (``training``, ``validation``): timing statistics and subset names.
    num_videos: videos per subset, an int for every subset or ``{subset: count}``; ``None``
        gives 100 per subset, or every video with ``from_annotations``.
    num_classes: default 20; taken from the annotations with ``from_annotations``.
    feature_dim: even; the first half is "RGB", the second "flow".
    difficulty: divides the action amplitude (1 = I3D-like separation; 2 = half of it).
    from_annotations: an ``AnnotationSet``, a packaged name (``thumos14``, ``activitynet12``,
        ``activitynet13``) or a path: copy its videos, durations, fps, segments, labels and
        subsets exactly and only synthesize the features (``num_videos`` then takes the first
        N videos of each subset in file order).
    duration_scale, max_steps: shrink planned videos (instance counts shrink with them so the
        action coverage is kept; instance lengths do not). Ignored with ``from_annotations``.
    step_s, offset_s: the feature grid (``Video`` time convention); W-TALC's by default.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    if feature_dim < 2 or feature_dim % 2:
        raise ValueError(f"feature_dim must be even and >= 2 (RGB half + flow half), got {feature_dim}")
    if not difficulty > 0:
        raise ValueError(f"difficulty must be > 0, got {difficulty}")
    p = PRESETS[preset]
    plans: list[_Plan] = []
    fps_of: dict[str, float] = {}
    if from_annotations is not None:
        ann = annotation_set(from_annotations)
        classes = [str(c) for c in ann.classes]
        if num_classes is not None and int(num_classes) != len(classes):
            raise ValueError(f"num_classes={num_classes} but the annotations have {len(classes)} classes; "
                             "leave num_classes unset with from_annotations")
        by_subset: dict[str, list[str]] = {}
        for name, va in ann.videos.items():  # file order: readers return videos in this order
            by_subset.setdefault(str(va.subset), []).append(name)
        counts = _counts(num_videos, list(by_subset), None)
        keep = {n for sub, names in by_subset.items()
                for n in (names if counts[sub] is None else names[: counts[sub]])}
        for name, va in ann.videos.items():
            if name not in keep:
                continue
            plans.append(_Plan(name, str(va.subset), float(va.duration),
                               np.asarray(va.segments, np.float64).reshape(-1, 2).copy(),
                               np.asarray(va.labels, np.int64).reshape(-1).copy()))
            fps_of[name] = float(va.fps) if va.fps else float(fps or p.fps)
    else:
        c = int(num_classes or p.num_classes)
        classes = list(_THUMOS_CLASSES) if preset == "thumos" and c == 20 else [f"class_{k:03d}" for k in range(c)]
        medians = _class_medians(seed, preset, c)
        groups = class_groups(classes)
        max_duration = None if max_steps is None else offset_s + max_steps * step_s
        for subset, k in _counts(num_videos, [p.train_subset, p.test_subset], 100).items():
            for i in range(100 if k is None else int(k)):
                rng = _rng(seed, "plan", subset, i)
                if preset == "thumos":
                    dur, seg, lab = _plan_thumos(rng, medians, groups, duration_scale, max_duration)
                else:
                    dur, seg, lab = _plan_anet(rng, c, duration_scale, max_duration)
                plans.append(_Plan(f"synth_{subset}_{i:05d}", subset, dur, seg, lab))
    world = _make_world(seed, classes, feature_dim)
    gain = 1.0 / float(difficulty)
    videos = []
    for pl in plans:
        rng = _rng(seed, "render", pl.subset, pl.name)
        t = _num_steps(pl.duration, step_s, offset_s)
        # Videos differ in overall brightness / amount of motion: a mild per-video gain.
        feats = _render(rng, world, t, step_s, offset_s, pl.segments, pl.labels, pl.duration, gain)
        feats *= np.exp(0.1 * rng.standard_normal(1, dtype=np.float32))
        vl = np.zeros(len(classes), np.float32)
        vl[pl.labels] = 1.0
        videos.append(Video(
            name=pl.name, features=feats, duration=pl.duration, fps=fps_of.get(pl.name, fps or p.fps),
            step_s=step_s, offset_s=offset_s, subset=pl.subset, segments=pl.segments,
            labels=pl.labels, video_labels=vl,
        ))
    return videos, classes


# --------------------------------------------------------------------------- statistics


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (N, D) arrays."""
    num = np.einsum("nd,nd->n", a, b, dtype=np.float64)
    den = np.sqrt(np.einsum("nd,nd->n", a, a, dtype=np.float64) * np.einsum("nd,nd->n", b, b, dtype=np.float64))
    return num / np.maximum(den, 1e-12)


def _coverage(segments: np.ndarray, duration: float) -> float:
    """Exact fraction of ``[0, duration]`` covered by the union of the segments."""
    seg = np.clip(np.asarray(segments, np.float64).reshape(-1, 2), 0.0, duration)
    seg = seg[np.argsort(seg[:, 0])]
    covered, end = 0.0, 0.0
    for s, e in seg:  # sweep: count only what extends past the covered prefix
        if e > end:
            covered += e - max(s, end)
            end = e
    return covered / duration if duration > 0 else 0.0


def _q(x: Any, qs: tuple[float, ...]) -> list[float]:
    x = np.asarray(x, np.float64)
    return [float(v) for v in np.percentile(x, qs)] if x.size else [float("nan")] * len(qs)


def summary_statistics(videos: list[Video], seed: int = 0) -> dict[str, Any]:
    """Timing and feature statistics of a set of videos (what ``tools/make_synthetic.py`` prints).

    Feature statistics compare with STATISTICS.md: ``lag1_cos_*`` is the mean cosine between
    consecutive steps; ``cross_video_cos`` the mean cosine between random steps of different
    videos; ``action_bg_cos`` / ``action_bg_norm_ratio`` the per-video cosine between the mean
    action and mean background feature and the ratio of their mean step norms (median over
    videos holding both). Action steps are those whose centre lies inside a segment.
    """
    subsets: dict[str, int] = {}
    for v in videos:
        subsets[v.subset] = subsets.get(v.subset, 0) + 1
    steps = [v.num_steps for v in videos]
    n_inst = [len(v.segments) for v in videos]
    n_cls = [len(np.unique(v.labels)) for v in videos]
    inst_len = np.concatenate([np.diff(np.asarray(v.segments).reshape(-1, 2), axis=1)[:, 0] for v in videos]
                              or [np.zeros(0)])
    cover, lag_r, lag_f, lag_a, ab_cos, ab_ratio, norms_r, norms_f = [], [], [], [], [], [], [], []
    dim_sum = dim_sq = 0.0
    n_steps = 0
    for v in videos:
        x = np.asarray(v.features, np.float32)  # (T, D); sums below accumulate in float64
        h = x.shape[1] // 2
        cover.append(_coverage(v.segments, v.duration))
        if len(x) > 1:
            lag_r.append(_cos_rows(x[:-1, :h], x[1:, :h]))
            lag_f.append(_cos_rows(x[:-1, h:], x[1:, h:]))
            lag_a.append(_cos_rows(x[:-1], x[1:]))
        norms_r.append(np.linalg.norm(x[:, :h], axis=1))
        norms_f.append(np.linalg.norm(x[:, h:], axis=1))
        dim_sum = dim_sum + x.sum(0, dtype=np.float64)
        dim_sq = dim_sq + np.square(x).sum(0, dtype=np.float64)
        n_steps += len(x)
        m = v.action_mask()
        if m.sum() >= 2 and (~m).sum() >= 2:
            ab_cos.append(float(_cos_rows(x[m].mean(0, keepdims=True), x[~m].mean(0, keepdims=True))[0]))
            nrm = np.linalg.norm(x, axis=1)
            ab_ratio.append(float(nrm[m].mean() / nrm[~m].mean()))
    # Cross-video cosine from a fixed random sample of step pairs (different videos).
    rng = np.random.default_rng(seed)
    cross = float("nan")
    if len(videos) > 1:
        i = rng.integers(len(videos), size=2000)
        j = (i + rng.integers(1, len(videos), size=2000)) % len(videos)
        a = np.stack([videos[k].features[rng.integers(videos[k].num_steps)] for k in i]).astype(np.float64)
        b = np.stack([videos[k].features[rng.integers(videos[k].num_steps)] for k in j]).astype(np.float64)
        cross = float(_cos_rows(a, b).mean())
    mean = dim_sum / max(n_steps, 1)
    std = np.sqrt(np.maximum(dim_sq / max(n_steps, 1) - mean**2, 0.0))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    return {
        "videos": len(videos),
        "subsets": subsets,
        "feature_dim": int(videos[0].features.shape[1]) if videos else 0,
        "steps": {"min": int(min(steps, default=0)), "median": float(np.median(steps)) if steps else 0.0,
                  "max": int(max(steps, default=0))},
        "duration_s": dict(zip(("min", "median", "max"), _q([v.duration for v in videos], (0, 50, 100)))),
        "instances_per_video": {"min": int(min(n_inst, default=0)),
                                "median": float(np.median(n_inst)) if n_inst else 0.0,
                                "mean": float(np.mean(n_inst)) if n_inst else 0.0, "max": int(max(n_inst, default=0))},
        "classes_per_video": {str(k): int(c) for k, c in enumerate(np.bincount(n_cls)) if c} if n_cls else {},
        "instance_length_s": dict(zip(("p5", "median", "p95"), _q(inst_len, (5, 50, 95)))),
        "coverage": dict(zip(("p5", "median", "p95"), _q(cover, (5, 50, 95)))),
        "lag1_cos": {"rgb": float(cat(lag_r).mean()) if lag_r else float("nan"),
                     "flow": float(cat(lag_f).mean()) if lag_f else float("nan"),
                     "all": float(cat(lag_a).mean()) if lag_a else float("nan")},
        "cross_video_cos": cross,
        "action_bg_cos": float(np.median(ab_cos)) if ab_cos else float("nan"),
        "action_bg_norm_ratio": float(np.median(ab_ratio)) if ab_ratio else float("nan"),
        "step_norm": {"rgb": float(cat(norms_r).mean()), "flow": float(cat(norms_f).mean())},
        "dim_mean": float(mean.mean()),
        "dim_std": float(std.mean()),
        "min_value": float(min((float(v.features.min()) for v in videos), default=float("nan"))),
    }


def _g(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


# Rows of the statistics table: label and how to render one column's statistics.
_ROWS: tuple[tuple[str, Any], ...] = (
    ("videos", lambda s: str(s["videos"])),
    ("feature dim (RGB + flow)", lambda s: f"{s['feature_dim']} ({s['feature_dim'] // 2} + {s['feature_dim'] // 2})"),
    ("steps / video  min / median / max", lambda s: " / ".join(_g(s["steps"][k]) for k in ("min", "median", "max"))),
    ("duration s  min / median / max", lambda s: " / ".join(_g(s["duration_s"][k]) for k in ("min", "median", "max"))),
    ("instances / video  min / med / mean / max",
     lambda s: " / ".join(_g(s["instances_per_video"][k]) for k in ("min", "median", "mean", "max"))),
    ("classes / video  (count: videos)", lambda s: ", ".join(f"{k}: {v}" for k, v in s["classes_per_video"].items())),
    ("instance length s  p5 / median / p95",
     lambda s: " / ".join(_g(s["instance_length_s"][k]) for k in ("p5", "median", "p95"))),
    ("coverage  p5 / median / p95", lambda s: " / ".join(_g(s["coverage"][k]) for k in ("p5", "median", "p95"))),
    ("lag-1 cosine  RGB / flow / all", lambda s: " / ".join(f"{s['lag1_cos'][k]:.3f}" for k in ("rgb", "flow", "all"))),
    ("cosine between videos", lambda s: f"{s['cross_video_cos']:.3f}"),
    ("action vs background cosine", lambda s: f"{s['action_bg_cos']:.3f}"),
    ("action / background norm ratio", lambda s: f"{s['action_bg_norm_ratio']:.3f}"),
    ("step L2 norm  RGB / flow", lambda s: f"{s['step_norm']['rgb']:.2f} / {s['step_norm']['flow']:.2f}"),
    ("per-dimension mean / std", lambda s: f"{s['dim_mean']:.3f} / {s['dim_std']:.3f}"),
    ("min feature value", lambda s: f"{s['min_value']:.2g}"),
)


def format_statistics(columns: Mapping[str, dict[str, Any]] | dict[str, Any]) -> str:
    """A text table of :func:`summary_statistics` results, one column per entry of ``columns``
    (``{"validation": stats, "test": stats, "all": stats}``) or of a single result."""
    if "videos" in columns:
        columns = {"all": columns}  # a single summary
    heads = list(columns)
    body = [[label] + [render(columns[h]) if columns[h]["videos"] else "-" for h in heads] for label, render in _ROWS]
    return format_table(["statistic", *heads], body, align="<" * (len(heads) + 1))


def statistics_by_subset(videos: list[Video]) -> dict[str, dict[str, Any]]:
    """:func:`summary_statistics` of each subset and of all videos together."""
    subsets = list(dict.fromkeys(v.subset for v in videos))
    out = {s: summary_statistics([v for v in videos if v.subset == s]) for s in subsets}
    out["all"] = summary_statistics(videos)
    return out


# --------------------------------------------------------------------------- cached dataset

CACHE_ENV = "TALTOOLKIT_CACHE"
MARKER_FILE = "synthetic.json"  # written last inside the temporary folder: a cache is complete iff it has one


def default_cache_dir() -> Path:
    """``$TALTOOLKIT_CACHE/synthetic`` if set, else ``~/.cache/taltoolkit/synthetic``."""
    env = os.environ.get(CACHE_ENV)
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "taltoolkit") / "synthetic"


def concat_write_params(step_s: float, offset_s: float, fps: float) -> dict[str, float]:
    """``feature_stride, snippet_frames, fps`` of the concat layout that give this grid.

    The concat layout stores timing as ActionFormer does (``step_s = stride / fps``,
    ``offset_s = (snippet / 2 - stride / 2) / fps``); whole frame counts are preferred, at
    W-TALC's 25 fps extraction rate (0.64 s = 16 frames) or the video rate.
    """
    for f in (25.0, float(fps)):
        stride, snippet = step_s * f, step_s * f + 2 * offset_s * f
        if abs(stride - round(stride)) < 1e-9 and abs(snippet - round(snippet)) < 1e-9:
            return {"feature_stride": int(round(stride)), "snippet_frames": int(round(snippet)), "fps": f}
    return {"feature_stride": step_s * 25.0, "snippet_frames": (step_s + 2 * offset_s) * 25.0, "fps": 25.0}


def _source_digest(from_annotations: str | None) -> str | None:
    """What identifies the annotation source in the cache key: its name, or its content."""
    if from_annotations is None:
        return None
    p = Path(str(from_annotations)).expanduser()
    if not p.exists():
        return str(from_annotations)  # a packaged benchmark name
    h = hashlib.sha1()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        h.update(q.name.encode())
        h.update(q.read_bytes())
    return h.hexdigest()


def cache_key(params: Mapping[str, Any]) -> str:
    """Stable short hash of the generation parameters (and the generator version)."""
    text = json.dumps({"generator_version": GENERATOR_VERSION, **params}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def build_synthetic_cache(
    params: Mapping[str, Any], layout: str, cache_dir: str | os.PathLike | None = None, name: str = "Synthetic"
) -> Path:
    """Generate and write a synthetic set once; returns its folder (reused when complete).

    ``params`` are :func:`generate_synthetic` keyword arguments (JSON-able). The folder is
    built under a temporary name and renamed into place only once the marker file is in it,
    so a crashed or concurrent build is never read as a complete cache.
    """
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key_params = {**params, "layout": layout, "name": name,
                  "from_annotations": _source_digest(params.get("from_annotations"))}
    key = cache_key(key_params)
    root = base / f"{params.get('preset', 'thumos')}_{layout}_{key}"
    if (root / MARKER_FILE).is_file():
        log.info("synthetic dataset: using cache %s", root)
        return root
    log.info("synthetic dataset: generating into %s", root)
    videos, classes = generate_synthetic(**params)
    p = PRESETS[params.get("preset", "thumos")]
    timing: dict[str, Any] = {}
    if layout == "concat":
        timing = concat_write_params(videos[0].step_s, videos[0].offset_s, videos[0].fps)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=base))
    staged = tmp / "data"  # write_layout publishes into a folder that must not exist yet
    try:
        write_layout(videos, classes, staged, layout, name=name, **timing)
        atomic_write_json(staged / MARKER_FILE, {
            "generator_version": GENERATOR_VERSION, "params": {k: v for k, v in params.items()},
            "layout": layout, "name": name, "write_timing": timing,
            "train_subset": p.train_subset, "test_subset": p.test_subset,
        })
        try:
            os.rename(staged, root)  # atomic; fails if another process published first
        except OSError:
            if not (root / MARKER_FILE).is_file():
                raise
            log.info("synthetic dataset: %s was built concurrently; using it", root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@register("dataset", "synthetic")
def synthetic_dataset(
    preset: str = "thumos",
    num_train: int | None = 100,
    num_test: int | None = 100,
    num_classes: int | None = 20,
    feature_dim: int = 512,
    difficulty: float = 1.0,
    seed: int = 0,
    layout: str = "wtalc",
    cache_dir: str | None = None,
    num_segments: int = 320,
    max_seq_len: int = 320,
    from_annotations: str | None = None,
    duration_scale: float = 0.5,
    max_steps: int | None = 320,
    step_s: float = 0.64,
    offset_s: float = 0.0,
    split_dir: str | None = None,
    evaluation_preset: str | None = None,
) -> Any:
    """Planted-action synthetic benchmark, generated into a cache once and read like a real one.

    Defaults (THUMOS-like timing at half length, 20 classes, 100 + 100 videos of at most 320
    steps, 512-d = 256 RGB + 256 flow) train a two-branch MIL model in about a minute on two
    CPU cores; see docs/synthetic.md for THUMOS-sized settings. ``num_train``/``num_test``
    ``None`` with ``from_annotations`` keep every video of that subset. ``evaluation_preset``
    None: the protocol of the benchmark ``preset`` imitates (``thumos14``, ``activitynet``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    if from_annotations is not None:
        train_subset, test_subset = train_test_subsets(p, annotation_set(from_annotations).subsets())
        num_videos: Any = {train_subset: num_train, test_subset: num_test}
        num_classes = None
    else:
        train_subset, test_subset = p.train_subset, p.test_subset
        num_videos = {train_subset: num_train, test_subset: num_test}
    params = dict(preset=preset, num_videos=num_videos, num_classes=num_classes, feature_dim=int(feature_dim),
                  difficulty=float(difficulty), seed=int(seed), from_annotations=from_annotations,
                  duration_scale=float(duration_scale), max_steps=max_steps, step_s=float(step_s),
                  offset_s=float(offset_s))
    root = build_synthetic_cache(params, layout, cache_dir)
    meta = json.loads((root / MARKER_FILE).read_text())
    timing = meta.get("write_timing") or {}
    return TALDataset(
        name=f"synthetic_{preset}", root=str(root), layout=layout, feature_dim=int(feature_dim),
        train_subset=train_subset, test_subset=test_subset, step_s=float(step_s), offset_s=float(offset_s),
        feature_stride=timing.get("feature_stride", 4), snippet_frames=timing.get("snippet_frames", 16),
        fps=timing.get("fps"), num_segments=num_segments, max_seq_len=max_seq_len, split_dir=split_dir,
        evaluation_preset=evaluation_preset or p.evaluation_preset,
    )
