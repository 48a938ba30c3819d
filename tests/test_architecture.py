"""The package's shape: no import cycle, no upward import between layers, no oversized module.

Every module under ``framestream/`` is parsed with ``ast`` (never imported): *all* its imports
count, including those under ``if TYPE_CHECKING:`` and inside functions, because a lazy or
type-only import is still a coupling that the layering must allow.

Layers, lowest first (a module may import its own layer and the ones below)::

    _errors, _units < io < format < decode < stream, validate < batch < datasets < config
        < lerobot, cli, bench, testing

``framestream/__init__.py`` and ``framestream/__main__.py`` may import anything.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import framestream

PACKAGE = Path(framestream.__file__).resolve().parent
MAX_LINES = 450

LAYERS: dict[str, int] = {
    "_errors": 0,
    "_units": 0,
    "io": 1,
    "format": 2,
    "decode": 3,
    "stream": 4,
    "validate": 4,
    "batch": 5,
    "datasets": 6,
    "config": 7,
    "lerobot": 8,
    "cli": 8,
    "bench": 8,
    "testing": 8,
}
# May import anything: the public API and ``python -m framestream``.
UNLAYERED = {"framestream", "framestream.__main__"}

# Known upward imports, each to be removed by the change that fixes it. An entry that no longer
# occurs makes the test fail too, so that the list only ever shrinks.
ALLOWED_UPWARD: set[tuple[str, str]] = set()
# Modules allowed over MAX_LINES for now, with the reason (none at the moment).
ALLOWED_LONG: dict[str, str] = {}


# ----------------------------------------------------------------------------- the graph
def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _resolve(name: str, known: Iterable[str]) -> str | None:
    """The deepest known module that ``name`` (a module or a name inside one) refers to."""
    known = set(known)
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package modules ``module`` imports anywhere in its source (not their parents)."""
    known = set(known)
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
            targets = [f"{prefix}.{alias.name}" for alias in node.names] or [prefix]
        for target in targets:
            if target.split(".")[0] != "framestream":
                continue
            hit = _resolve(target, known)
            if hit is not None and hit != module:
                out.add(hit)
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = package_modules(root)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def connect(v: str) -> None:  # Tarjan; graphs here are small, recursion is fine
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
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
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(sorted(c), graph) for c in components]


def _cycle_in(component: list[str], graph: Mapping[str, Iterable[str]]) -> list[str]:
    """A concrete cycle through the component's first module (breadth-first, shortest)."""
    members, start = set(component), component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def layer_of(module: str) -> int | None:
    if module in UNLAYERED:
        return None
    top = module.split(".")[1]
    if top not in LAYERS:
        raise KeyError(f"{module}: top-level name {top!r} has no layer; add it to LAYERS")
    return LAYERS[top]


def upward_imports(graph: Mapping[str, Iterable[str]]) -> set[tuple[str, str]]:
    out = set()
    for src, targets in graph.items():
        mine = layer_of(src)
        if mine is None:
            continue
        for dst in targets:
            theirs = layer_of(dst)
            if theirs is not None and theirs > mine:
                out.add((src, dst))
    return out


# ----------------------------------------------------------------------------- the checks
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_walk_sees_every_kind_of_import(graph):
    """Imports inside functions and ``from pkg import submodule`` (TYPE_CHECKING: see below)."""
    assert "framestream.testing.synth" in graph["framestream"]  # inside a function
    assert "framestream.format.checks" in graph["framestream.format.tables"]  # from pkg import m
    assert "framestream.io.source" in graph["framestream.format.meta"]


def test_no_import_cycle(graph):
    allowed = {(a, b) for a, b in ALLOWED_UPWARD}
    pruned = {m: {t for t in ts if (m, t) not in allowed} for m, ts in graph.items()}
    cycles = find_cycles(pruned)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_upward_import(graph):
    found = upward_imports(graph)
    new = sorted(found - ALLOWED_UPWARD)
    assert not new, "upward imports (layer order in this file's docstring):\n" + "\n".join(
        f"{a} imports {b}" for a, b in new
    )
    gone = sorted(ALLOWED_UPWARD - found)
    assert not gone, f"fixed, remove from ALLOWED_UPWARD: {gone}"


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_module_over_the_line_limit():
    long = {
        module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    new = {m: n for m, n in long.items() if m not in ALLOWED_LONG}
    assert not new, f"modules over {MAX_LINES} lines (split them): {new}"
    gone = sorted(set(ALLOWED_LONG) - set(long))
    assert not gone, f"now short enough, remove from ALLOWED_LONG: {gone}"


def test_typed_marker_is_shipped():
    assert (PACKAGE / "py.typed").is_file()
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert 'framestream = ["py.typed"]' in pyproject


def test_public_testing_kit_needs_no_test_extras():
    """``framestream.testing`` (and importing its servers module) must not pull in moto,
    werkzeug or boto3: they are test extras, loaded only when a server is started."""
    code = (
        "import sys, framestream.testing, framestream.testing.synth, framestream.testing.servers\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'moto', 'werkzeug', 'boto3'})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", f"imported at module import: {out.stdout.strip()}"


# ----------------------------------------------------------------------------- the checker
def test_cycle_finder_on_small_graphs():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]
    two = find_cycles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"z"}, "z": {"x", "a"}})
    assert sorted(two) == [["a", "b", "a"], ["x", "y", "z", "x"]]


def test_walk_finds_a_cycle_and_an_upward_import_in_a_fake_package(tmp_path):
    pkg = tmp_path / "framestream"
    for rel, text in {
        "__init__.py": "",
        "io/__init__.py": "",
        "io/source.py": "def f():\n    from framestream.format.meta import X\n",
        "format/__init__.py": "",
        "format/meta.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from ..io import source\nX = 1\n"
        ),
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    g = import_graph(pkg)
    assert g["framestream.io.source"] == {"framestream.format.meta"}
    assert g["framestream.format.meta"] == {"framestream.io.source"}
    assert find_cycles(g) == [
        ["framestream.format.meta", "framestream.io.source", "framestream.format.meta"]
    ]
    assert upward_imports(g) == {("framestream.io.source", "framestream.format.meta")}
