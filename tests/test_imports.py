"""Every module imports on its own, and no two modules import each other (directly or round a circle)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "taltoolkit"


def module_files() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (taltoolkit/conf holds configs only)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "conf" in path.relative_to(PACKAGE).parts:
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = module_files()

# One fresh interpreter that has loaded only third-party packages forks a child per module:
# each child starts with no taltoolkit module loaded, as a fresh interpreter would, without
# paying torch's import once per module.
_IMPORT_EACH = """
import importlib, json, os, sys, traceback
import hydra, numpy, omegaconf, scipy, torch  # third-party only
assert not [m for m in sys.modules if m.split(".")[0] == "taltoolkit"]
failures = {}
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code, message = 0, b""
        try:
            importlib.import_module(name)
        except BaseException:
            code, message = 1, traceback.format_exc().encode()
        os.write(write, message[-4000:])
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failures[name] = message or f"exit status {status}"
print(json.dumps(failures))
"""


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    assert len(MODULES) > 50  # the walk found the package
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *MODULES], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, "\n\n".join(f"{name}:\n{tb}" for name, tb in failures.items())


def _imports(name: str, path: Path) -> set[str]:
    """The taltoolkit modules ``name`` imports anywhere in its file: a lazy import inside a
    function that closes a circle only hides it (imports under ``if TYPE_CHECKING`` are skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from taltoolkit import collectives`` imports a module; ``from x import name`` imports x.
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names)
    targets = set()
    for target in found:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            targets.add(target)
    return targets


def import_graph() -> dict[str, set[str]]:
    return {name: _imports(name, path) for name, path in MODULES.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_a_circle_through_a_lazy_import():
    # The control for the test below: the two circles this package once had.
    assert import_cycles({"a.reporting": {"a.entry"}, "a.entry": {"a.reporting"}, "a.x": set()}) == [
        ["a.entry", "a.reporting"]]
    assert import_cycles({"p.detection": {"p.presets"}, "p.presets": {"p.errors", "p.detection"},
                          "p.errors": set()}) == [["p.detection", "p.presets"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert graph["taltoolkit.engine.reporting"], "the graph lost the imports it should see"
    assert "taltoolkit.evaluation.presets" in graph["taltoolkit.evaluation.detection"]
    cycles = import_cycles(graph)
    assert not cycles, "modules that import each other (directly or round a circle): " + "; ".join(
        " <-> ".join(c) for c in cycles)


# Layers, bottom up: a module may import its own layer and those below (docs/architecture.md).
LOWER = ("taltoolkit.structures", "taltoolkit.collectives", "taltoolkit.atomicio", "taltoolkit.jsonio",
         "taltoolkit.tables", "taltoolkit._version", "taltoolkit.registry", "taltoolkit.data",
         "taltoolkit.evaluation", "taltoolkit.postprocess", "taltoolkit.models", "taltoolkit.losses",
         "taltoolkit.pseudo")
UPPER = ("taltoolkit.engine", "taltoolkit.methods", "taltoolkit.entry", "taltoolkit.cli")


def _in(name: str, layers: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in layers)


def test_lower_layers_never_import_the_engine_methods_or_entry():
    graph = import_graph()
    upward = {m: sorted(t for t in targets if _in(t, UPPER)) for m, targets in graph.items() if _in(m, LOWER)}
    assert not {m: t for m, t in upward.items() if t}
    # methods use the engine's protocol and nothing else of it (engine.distributed re-exports
    # taltoolkit.collectives for the methods written against it)
    allowed = {"taltoolkit.engine.method", "taltoolkit.engine.distributed"}
    methods = ("taltoolkit.methods",)
    from_methods = {m: sorted(t for t in targets if _in(t, UPPER) and not _in(t, methods) and t not in allowed)
                    for m, targets in graph.items() if _in(m, methods)}
    assert not {m: t for m, t in from_methods.items() if t}
