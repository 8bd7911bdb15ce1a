"""Named evaluation protocols: which tIoU thresholds, which subset, which averages.

Thresholds are the nearest doubles to their decimal values (0.3, not the
0.30000000000000004 that ``np.arange(0.1, 0.8, 0.1)`` produces), so a tIoU that lands
exactly on a threshold is counted as reaching it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from taltoolkit.evaluation.errors import EvaluationError


def _grid(start: float, stop: float, step: float) -> tuple[float, ...]:
    """Inclusive decimal grid, each value rounded to 2 decimals to drop float drift."""
    n = int(round((stop - start) / step)) + 1
    return tuple(round(start + i * step, 2) for i in range(n))


@dataclass(frozen=True)
class EvalPreset:
    name: str
    tiou_thresholds: tuple[float, ...]
    subset: str
    averages: dict[str, tuple[float, float]] = field(default_factory=dict)
    description: str = ""


# WTAL / unsupervised papers on THUMOS14 report 0.1:0.7 and the means over three ranges.
_THUMOS_LOW = {
    "avg(0.1:0.5)": (0.1, 0.5),
    "avg(0.3:0.7)": (0.3, 0.7),
    "avg(0.1:0.7)": (0.1, 0.7),
}
_THUMOS_HIGH = {"avg(0.3:0.7)": (0.3, 0.7)}

PRESETS: dict[str, EvalPreset] = {
    p.name: p
    for p in [
        EvalPreset("thumos14_weak", _grid(0.1, 0.7, 0.1), "test", _THUMOS_LOW,
                   "weakly-supervised THUMOS14: tIoU 0.1:0.7:0.1"),
        EvalPreset("thumos14_unsup", _grid(0.1, 0.7, 0.1), "test", _THUMOS_LOW,
                   "unsupervised THUMOS14: tIoU 0.1:0.7:0.1"),
        EvalPreset("thumos14_full", _grid(0.3, 0.7, 0.1), "test", _THUMOS_HIGH,
                   "fully-supervised THUMOS14: tIoU 0.3:0.7:0.1"),
        EvalPreset("thumos14_semi", _grid(0.3, 0.7, 0.1), "test", _THUMOS_HIGH,
                   "semi-supervised THUMOS14: tIoU 0.3:0.7:0.1"),
        EvalPreset("activitynet", _grid(0.5, 0.95, 0.05), "validation",
                   {"avg(0.5:0.95)": (0.5, 0.95)},
                   "ActivityNet 1.2 / 1.3 validation: tIoU 0.5:0.95:0.05"),
    ]
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> EvalPreset:
    """The preset called ``name``; an unknown name raises a ``ValueError`` listing the names."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise EvaluationError(
            f"unknown evaluation preset {name!r}; choose one of: {', '.join(preset_names())}"
        ) from None


_PARADIGMS = ("weak", "unsup", "full", "semi")


def resolve_preset(dataset_preset: str | None, paradigm: str, dataset: str = "dataset") -> str:
    """The preset a run uses when ``evaluation.preset`` is not set, from what the dataset names.

    A dataset config names its protocol in ``evaluation_preset``: either a preset
    (``activitynet``: the same thresholds for every paradigm) or a family whose
    ``<family>_<paradigm>`` is one (``thumos14`` -> ``thumos14_weak`` / ``thumos14_unsup``
    (tIoU 0.1:0.7) or ``thumos14_full`` / ``thumos14_semi`` (0.3:0.7), as the papers of each
    paradigm report). A dataset that names none is an error, not a guess: a new benchmark
    would otherwise be scored silently with another benchmark's thresholds.
    """
    if not dataset_preset:
        raise EvaluationError(
            f"{dataset} names no evaluation preset; set evaluation.preset to one of: {', '.join(preset_names())}, "
            "or give the dataset config an evaluation_preset (a preset, or a family such as thumos14)"
        )
    if dataset_preset in PRESETS:
        return dataset_preset
    if paradigm not in _PARADIGMS:
        raise EvaluationError(
            f"no evaluation preset for paradigm {paradigm!r} (known: {', '.join(_PARADIGMS)}); "
            f"set evaluation.preset to one of: {', '.join(preset_names())}"
        )
    name = f"{dataset_preset}_{paradigm}"
    if name not in PRESETS:
        raise EvaluationError(
            f"{dataset}'s evaluation_preset={dataset_preset!r} is neither a preset nor a family with a "
            f"{paradigm!r} preset ({name!r}); choose one of: {', '.join(preset_names())}"
        )
    return name
