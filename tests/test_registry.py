"""Every registered component has a conf yaml pointing at it, whose keys its signature accepts."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Iterator

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from taltoolkit.registry import KINDS, list_components

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# Arguments the entry point passes at construction time rather than from the yaml.
RUNTIME_ARGS = {
    "backbone": {"in_dim", "num_classes"},
    "branch": {"in_dim", "num_classes"},
    "method": {"model"},
}


def conf_targets(conf_dir: Path = CONF_DIR) -> list[tuple[str, str, DictConfig]]:
    """(file:key, _target_, node) for every _target_ in a config folder (conf/, or a plug-in's)."""
    found = []
    for f in sorted(conf_dir.rglob("*.yaml")):
        cfg = OmegaConf.load(f)
        for path, node in _walk_raw(cfg, ""):
            found.append((f"{f.relative_to(conf_dir)}:{path or '<root>'}", str(node["_target_"]), node))
    return found


def _walk_raw(node: Any, path: str) -> Iterator[tuple[str, DictConfig]]:
    # Walk without resolving interpolations: they refer to other groups.
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for k in node.keys():
            child = node._get_node(k)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _walk_raw(child, f"{path}.{k}" if path else str(k))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            child = node._get_node(i)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _walk_raw(child, f"{path}[{i}]")


COMPONENTS = list_components()
TARGETS = conf_targets()


def test_components_exist():
    kinds = {c.kind for c in COMPONENTS}
    assert {"dataset", "method", "postprocessor", "backbone"} <= kinds, kinds
    assert all(c.kind in KINDS for c in COMPONENTS)


def check_component_has_conf(component, targets) -> None:
    where = [w for w, t, _ in targets if t == component.target]
    assert where, f"{component.kind} {component.name!r} ({component.target}) has no conf yaml with _target_ pointing at it"


def check_conf_target(where: str, target: str, node: DictConfig, components, package: str = "taltoolkit.") -> None:
    if not target.startswith(package):
        return  # third-party targets (e.g. torch.optim) are checked by Hydra at run time
    if where.split(":", 1)[1].startswith("hydra."):
        return  # Hydra's own plug-ins (the sweep-summary callback) are not components
    registered = {c.target: c for c in components}
    assert target in registered, f"{where}: _target_ {target} is not a registered component"
    comp = registered[target]
    obj = get_object(target)
    assert obj is comp.obj
    sig = inspect.signature(obj)
    params = sig.parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    keys = {k for k in node.keys() if not str(k).startswith("_")}
    if not accepts_any:
        unknown = keys - set(params)
        assert not unknown, f"{where}: keys {sorted(unknown)} are not arguments of {target}{sig}"
    if node.get("_partial_", False) or comp.kind == "postprocessor":
        return  # the rest is supplied per call (e.g. a video's activation sequence)
    required = {
        n for n, p in params.items()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    missing = required - keys - RUNTIME_ARGS.get(comp.kind, set())
    assert not missing, f"{where}: required arguments {sorted(missing)} of {target} are not set"


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: f"{c.kind}:{c.name}")
def test_registered_component_has_conf(component):
    if component.target.startswith("taltoolkit."):  # a plug-in registered by another test has its own conf
        check_component_has_conf(component, TARGETS)


@pytest.mark.parametrize("where,target,node", TARGETS, ids=[w for w, _, _ in TARGETS])
def test_conf_target_is_registered_and_keys_match_signature(where, target, node):
    check_conf_target(where, target, node, COMPONENTS)


def test_the_methods_table_lists_every_method_config():
    """tests/methods_table.py is what the per-method tests (AMP, sweeps) run: a method config
    without a line there would go untested."""
    from methods_table import METHODS

    assert set(METHODS) == {f.stem for f in (CONF_DIR / "method").glob("*.yaml")}
