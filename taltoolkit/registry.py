"""A small registry of components, used to list them and to parametrize tests.

Construction never goes through the registry: configs name a ``_target_`` and Hydra's
``instantiate`` imports it directly, so an import error is reported as itself rather than
as "not found". The registry only records what exists so that ``list_components()`` and
the test-suite can see every component (``tests/test_registry.py`` ties each to a conf yaml
whose keys its signature accepts).

Registered are the pieces a config swaps, one kind per config group: datasets
(``conf/dataset``), backbone networks (``conf/model``), branches a method can carry
(``conf/memory_branch``), post-processors (``conf/postprocess``), methods (``conf/method``)
and the trainer with its learning-rate schedules (``conf/trainer``). Losses and
pseudo-label makers are plain functions that methods call; no config names them.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Callable, TypeVar

from taltoolkit.tables import format_table

KINDS = (
    "dataset",
    "backbone",
    "branch",
    "postprocessor",
    "method",
    "trainer",
    "scheduler",
)

# Modules that register components when imported; list_components() imports them all.
COMPONENT_MODULES = (
    "taltoolkit.data",
    "taltoolkit.models",
    "taltoolkit.postprocess",
    "taltoolkit.methods",
    "taltoolkit.engine.trainer",
    "taltoolkit.engine.schedules",
)


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    target: str  # dotted import path, what a conf's _target_ must say
    doc: str  # first line of the docstring
    obj: Callable


_REGISTRY: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
T = TypeVar("T")


def register(kind: str, name: str | None = None) -> Callable[[T], T]:
    """Class/function decorator: ``@register("postprocessor", "segment_nms")`` on
    :func:`taltoolkit.postprocess.proposals.segment_postprocess`."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown component kind {kind!r}; choose one of {KINDS}")

    def wrap(obj: T) -> T:
        key = name or obj.__name__  # type: ignore[attr-defined]
        target = f"{obj.__module__}.{obj.__qualname__}"  # type: ignore[attr-defined]
        old = _REGISTRY[kind].get(key)
        if old is not None and old.target != target:
            raise ValueError(f"{kind} {key!r} registered twice: {old.target} and {target}")
        doc = (inspect.getdoc(obj) or "").strip().splitlines()
        _REGISTRY[kind][key] = Component(kind, key, target, doc[0] if doc else "", obj)  # type: ignore[arg-type]
        return obj

    return wrap


def _import_all() -> None:
    for mod in COMPONENT_MODULES:
        importlib.import_module(mod)


def list_components(kind: str | None = None) -> list[Component]:
    """Every registered component (of one kind if given), sorted by kind then name."""
    _import_all()
    kinds = KINDS if kind is None else (kind,)
    return [c for k in kinds for c in sorted(_REGISTRY[k].values(), key=lambda c: c.name)]


def get(kind: str, name: str) -> Component:
    _import_all()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY.get(kind, {}))) or "none"
        raise KeyError(f"no {kind} named {name!r}; registered: {known}") from None


def _main() -> None:
    rows = [(c.kind, c.name, c.target, c.doc) for c in list_components()]
    print(format_table(("kind", "name", "target", "doc"), rows, align="<<<<"))


if __name__ == "__main__":
    # Run as a script this file is a second copy of the module; components register into
    # the importable taltoolkit.registry, so list through that one.
    from taltoolkit.registry import _main as _registry_main

    _registry_main()
