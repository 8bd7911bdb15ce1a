"""Opt-in wall-clock timing of the evaluation path, split by stage.

The evaluation code marks its stages with :func:`stage`; nothing is measured (one global
read per call) unless a caller asks for it with :func:`record_stages`::

    from taltoolkit.evaluation.stages import record_stages

    with record_stages() as timer:
        evaluator.evaluate(method)
    timer.seconds  # {"prediction": ..., "proposals": ..., "nms": ..., "mAP": ...}

Stages nest; each one's time is *exclusive* (the time of the stages opened inside it is
counted there, not in the enclosing one), so the values add up to the time spent inside
the outermost stages. ``tools/bench.py evalstages`` prints them. Not thread-safe: one
recording at a time, from the thread that evaluates.
"""
from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["StageTimer", "record_stages", "stage", "timed", "STAGES"]

# Names the library's evaluation path uses, in pipeline order (tools/bench.py prints them so).
STAGES = ("prediction", "clustering_assisted", "proposals", "nms", "mAP", "results_writing", "plots")


class StageTimer:
    """Seconds and call counts per stage name, exclusive of nested stages."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []  # [start, seconds spent in nested stages]

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        frame = [time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - frame[0]
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - frame[1]
            self.calls[name] = self.calls.get(name, 0) + 1
            if self._stack:
                self._stack[-1][1] += elapsed

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


_ACTIVE: Optional[StageTimer] = None


@contextmanager
def record_stages(timer: Optional[StageTimer] = None) -> Iterator[StageTimer]:
    """Time every :func:`stage` entered inside the block into ``timer`` (a new one if None)."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, timer if timer is not None else StageTimer()
    try:
        yield _ACTIVE
    finally:
        _ACTIVE = previous


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def stage(name: str):  # noqa: ANN201 - a context manager
    """A context manager that times the block as stage ``name`` while :func:`record_stages`
    is active, and does nothing otherwise."""
    timer = _ACTIVE
    return _nothing() if timer is None else timer.stage(name)


def timed(name: str) -> Callable[[F], F]:
    """Decorator: every call of the function is stage ``name`` (see :func:`stage`)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with stage(name):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
