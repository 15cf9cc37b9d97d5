"""The package's one-way layers, read from the source: nothing under ``audit/`` is imported.

A module may import its own layer and the layers below it, never one above; the report reads
``results.json`` and so imports only the basics and itself.  A function-local import is for
an optional heavy library, not for hiding a cycle or a wrong-way dependency: only the lazy
boundaries (``audit/__init__.py`` and ``audit/plugin.py``, which keep ``import audit`` and
the pytest plugin free of torch) import audit modules inside functions.  An import under
``TYPE_CHECKING`` counts like any other: a lower layer that needs to name a higher layer's
type declares a ``Protocol`` instead (``audit.limits.ClaimLocation``).  Cycles are looked for
among the imports that run (module-level and function-local).
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "audit"

#: first name under ``audit`` -> its layer, lowest first; ``audit`` is the package itself
LAYERS: dict[str, int] = {
    **dict.fromkeys(
        (
            "errors",
            "threat",
            "metrics",
            "objects",
            "config",
            "resources",
            "interrupts",
            "limits",
            "budget",
            "registry",
            "files",
            "schema",
            "environment",
            # progress on the terminal (tqdm), for the session and the plugin
            "progress",
            # which device a run, a worker or a rank uses
            "devices",
        ),
        0,
    ),
    **dict.fromkeys(("model", "data", "certify", "nets", "corruptions"), 1),
    "attacks": 2,
    # Hypothesis strategies over corruptions and perturbations: public, for claims and for
    # users' own tests; above the corruptions they draw, below the engine
    "strategies": 2,
    "engine": 3,
    # evaluations kept on disk across runs, for the engine
    "store": 3,
    # torchrun ranks: shards of the batches and the exchange of their results, for the engine
    "distributed": 3,
    # the engine's batches: planned from the samples' sizes, loaded onto the device
    "batches": 3,
    "evaluations": 4,
    "claims": 5,
    "suite": 5,
    "record": 6,
    "report": 6,
    "session": 7,
    "plugin": 8,
    # pytest-xdist's half of the plugin: hand-over and merge of the workers' evaluations
    "workers": 8,
    "audit": 9,
    # ``python -m audit``: command-line tools over records, at the top like the package
    "__main__": 9,
}
#: the report reads results.json, never evaluations: it imports the basics and itself only
REPORT_MAY_IMPORT = {name for name, layer in LAYERS.items() if layer == 0} | {"report"}
#: where a function-local import of an audit module keeps an import cheap (no torch)
LAZY_BOUNDARIES = {"audit/__init__.py", "audit/plugin.py", "audit/workers.py"}
#: optional or heavy libraries a function may import when it needs them
#: (jsonschema: only the record's validation needs it, and modules every run loads import that)
OPTIONAL_LIBRARIES = {
    "foolbox",
    "torchattacks",
    "adv_lib",
    "orthogonium",
    "jsonschema",
    # the corruptions' reference (the ``reference`` extra) and the shim it needs to import
    "imagecorruptions",
    "pkg_resources",
}
MAX_LINES = 600
#: modules named like a package elsewhere in audit/, each a deliberate parallel -> why
SHARED_NAMES: dict[str, str] = {
    "audit/claims/lipschitz.py": "claim kind 'lipschitz'; certify/lipschitz/ holds the bound",
    "audit/evaluations/lipschitz.py": "evaluation behind kind 'lipschitz', one per kind",
    "audit/report/attacks.py": "the report's Attacks section, one module per section",
    "audit/report/corruptions.py": "the report's Corruptions section, one module per section",
    "audit/report/lipschitz.py": "the report's Lipschitz-source tables, one per kind",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    """The layer table's name for an audit module: ``audit.claims.base`` -> ``claims``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "audit"


def describe(module: str) -> str:
    name = unit(module)
    return f"layer {LAYERS.get(name, '?')} {name!r}"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    where: str  # "audit/engine.py:25"
    target: str  # an audit module, or a library's top-level name
    scope: str  # "module", "type_checking" or "function"

    @property
    def internal(self) -> bool:
        return self.target == "audit" or self.target.startswith("audit.")

    @property
    def scope_note(self) -> str:
        return {"type_checking": ", under TYPE_CHECKING", "function": ", inside a function"}.get(
            self.scope, ""
        )


def _audit_module(dotted: str) -> str:
    """The longest prefix of ``dotted`` that is a module under audit/."""
    parts = dotted.split(".")
    while len(parts) > 1 and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts)


def _targets(node: ast.Import | ast.ImportFrom, source: str, path: Path) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            top = alias.name.partition(".")[0]
            yield _audit_module(alias.name) if top == "audit" else top
        return
    base = node.module or ""
    if node.level:
        package = source.split(".")
        package = package if path.name == "__init__.py" else package[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    if base.partition(".")[0] != "audit":
        yield base.partition(".")[0]
        return
    for alias in node.names:  # ``from audit.attacks import losses`` names a submodule
        yield _audit_module(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, path: Path) -> Iterator[Import]:
    rel = path.relative_to(REPO).as_posix()

    def walk(node: ast.AST, scope: str) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = "function"
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _targets(child, source, path):
                    yield Import(source, f"{rel}:{child.lineno}", target, scope)
            elif isinstance(child, ast.If) and scope == "module" and _is_type_checking(child.test):
                yield from walk(ast.Module(body=child.body, type_ignores=[]), "type_checking")
                yield from walk(ast.Module(body=child.orelse, type_ignores=[]), scope)
            else:
                yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel), "module")


IMPORTS: list[Import] = [imp for mod, p in MODULES.items() for imp in imports_of(mod, p)]


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if unit(m) not in LAYERS)
    if missing:
        pytest.fail(
            f"modules in no layer (add them to LAYERS in {__file__}): {missing}", pytrace=False
        )


def test_imports_point_down_the_layers() -> None:
    wrong = [
        f"{imp.where} imports {imp.target} ({describe(imp.target)}) from "
        f"{describe(imp.source)}{imp.scope_note}"
        for imp in IMPORTS
        if imp.internal and LAYERS.get(unit(imp.target), 99) > LAYERS.get(unit(imp.source), -1)
    ]
    if wrong:
        pytest.fail("imports against the layers:\n" + "\n".join(wrong), pytrace=False)


def test_report_imports_only_the_basics_and_itself() -> None:
    wrong = [
        f"{imp.where} imports {imp.target} ({describe(imp.target)}){imp.scope_note}, but "
        "audit.report reads results.json and may import only layer 0 and itself"
        for imp in IMPORTS
        if imp.internal
        and unit(imp.source) == "report"
        and unit(imp.target) not in REPORT_MAY_IMPORT
    ]
    if wrong:
        pytest.fail("\n".join(wrong), pytrace=False)


def test_function_local_imports_are_for_optional_libraries_only() -> None:
    wrong = []
    for imp in IMPORTS:
        if imp.scope != "function":
            continue
        file = imp.where.partition(":")[0]
        if imp.internal and file not in LAZY_BOUNDARIES:
            wrong.append(
                f"{imp.where} imports {imp.target} inside a function: only "
                f"{' and '.join(sorted(LAZY_BOUNDARIES))} import audit modules lazily; import "
                "it at module level (a cycle that forces it there is a layering bug)"
            )
        elif not imp.internal and imp.target not in OPTIONAL_LIBRARIES:
            wrong.append(
                f"{imp.where} imports {imp.target} inside a function, but it is not one of "
                f"the optional libraries ({', '.join(sorted(OPTIONAL_LIBRARIES))}); import "
                "it at module level"
            )
    if wrong:
        pytest.fail("\n".join(wrong), pytrace=False)


def find_cycles(edges: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle per strongly connected component of ``edges`` (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            components.append([node, *component])

    for node in sorted(edges):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        if len(component) == 1 and start not in edges.get(start, {}):
            continue
        came_from: dict[str, str] = {}  # breadth first from start, back to start
        queue, end = [start], start
        while queue and start not in edges[end := queue.pop(0)]:
            for nxt in sorted(edges[end]):
                if nxt in members and nxt not in came_from and nxt != start:
                    came_from[nxt] = end
                    queue.append(nxt)
        path = [end]
        while path[-1] != start:
            path.append(came_from[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def test_import_graph_has_no_cycle() -> None:
    edges: dict[str, dict[str, str]] = {}
    for imp in IMPORTS:  # what runs: module-level and function-local imports
        if imp.internal and imp.scope != "type_checking" and imp.target != imp.source:
            edges.setdefault(imp.source, {}).setdefault(imp.target, imp.where)
    found = [
        " -> ".join([cycle[0], *(f"{b} ({edges[a][b]})" for a, b in itertools.pairwise(cycle))])
        for cycle in find_cycles(edges)
    ]
    if found:
        pytest.fail("import cycles:\n" + "\n".join(found), pytrace=False)


def test_find_cycles_reports_a_path() -> None:
    edges = {"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}
    assert find_cycles(edges) == [["a", "b", "c", "a"]]
    edges = {"a": {"b": "", "c": ""}, "b": {"b2": ""}, "b2": {}, "c": {"a": ""}}
    assert find_cycles(edges) == [["a", "c", "a"]]
    assert find_cycles({"a": {"a": ""}}) == [["a", "a"]]
    assert find_cycles({"a": {"b": ""}}) == []


@pytest.mark.parametrize(
    "module", ["audit", "audit.plugin", "audit.claims.parsing", "audit.__main__"]
)
def test_import_does_not_load_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.strip()
    assert out == "False", (
        f"import {module} imports torch; find the culprit with "
        f"python -X importtime -c 'import {module}'"
    )


def test_no_module_is_too_long() -> None:
    long = {
        p.relative_to(REPO).as_posix(): n
        for p in MODULES.values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


def test_no_module_is_named_like_a_package_elsewhere() -> None:
    packages = {p.parent.relative_to(REPO).as_posix() for p in PACKAGE.rglob("__init__.py")}
    by_name: dict[str, list[str]] = {}
    for package in packages - {"audit"}:
        by_name.setdefault(package.rpartition("/")[2], []).append(f"{package}/")
    clashes = {}
    for path in MODULES.values():
        rel = path.relative_to(REPO).as_posix()
        if path.stem in by_name and rel not in SHARED_NAMES:
            clashes[rel] = by_name[path.stem]
    for name, dirs in by_name.items():
        if len(dirs) > 1:
            clashes[name] = dirs
    if clashes:
        pytest.fail(
            f"names that mislead (rename, or add the module to SHARED_NAMES in {__file__} "
            f"with the reason): {clashes}",
            pytrace=False,
        )
    modules = {p.relative_to(REPO).as_posix() for p in MODULES.values()}
    stale = [m for m in SHARED_NAMES if m not in modules or Path(m).stem not in by_name]
    assert not stale, f"SHARED_NAMES lists modules that no longer share a name: {stale}"
