"""The code's shape, as docs/DEVELOPING.md promises it: small modules and functions, the
FUSE adapter the only user of pyfuse3, no layer that knows which backend it has, and no
import cycles. Checked on the source, so a change that breaks a rule fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sheepfs"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports (at any level, typing-only too)."""
    tree = ast.parse(path.read_text())
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return found


def _known(name: str) -> str | None:
    """The module of this package ``name`` is (or is inside), if any."""
    modules = {_module_name(p) for p in MODULES}
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def test_the_package_has_modules_to_check():
    assert len(MODULES) > 20


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_over_50_lines(path):
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_only_the_fuse_adapter_imports_pyfuse3():
    users = {_module_name(p) for p in MODULES if any(i.startswith("pyfuse3") for i in _imports(p))}
    assert users and all(u.startswith("sheepfs.fuse") for u in users), users


def test_nothing_above_the_backends_knows_which_backend_it_has():
    """Above ``backends/`` only the interface (``backends.base``) and the one factory
    (``backends``, used by the command line) may be imported."""
    for path in MODULES:
        name = _module_name(path)
        if name.startswith("sheepfs.backends"):
            continue
        for imported in map(_known, _imports(path)):
            if imported and imported.startswith("sheepfs.backends"):
                assert imported in ("sheepfs.backends", "sheepfs.backends.base"), (name, imported)


def test_backends_import_nothing_above_them():
    allowed = ("sheepfs.backends", "sheepfs.errors", "sheepfs.buffers")
    for path in MODULES:
        name = _module_name(path)
        if not name.startswith("sheepfs.backends"):
            continue
        for imported in map(_known, _imports(path)):
            if imported and imported != "sheepfs":  # the package itself: from ... import x
                assert imported.startswith(allowed), (name, imported)


@pytest.mark.parametrize(
    ("layer", "above"),
    [("sheepfs.cache", ("sheepfs.core", "sheepfs.fuse")), ("sheepfs.core", ("sheepfs.fuse",))],
)
def test_layers_import_nothing_above_them(layer, above):
    for path in MODULES:
        name = _module_name(path)
        if name.startswith(layer):
            for imported in map(_known, _imports(path)):
                assert not (imported or "").startswith(above), (name, imported)


def test_no_import_cycles():
    graph = {_module_name(p): {m for m in map(_known, _imports(p)) if m} for p in MODULES}
    for name in graph:  # a package's __init__ importing its own modules is not a cycle
        graph[name].discard(name)
        if name.count(".") and (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists():
            graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    seen: dict[str, int] = {}  # 1 on the path being walked, 2 done

    def walk(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert seen.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in seen:
                walk(nxt, [*path, node])
        seen[node] = 2

    for name in sorted(graph):
        if name not in seen:
            walk(name, [])
