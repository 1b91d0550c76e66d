"""The package layout (README "Layout"): no import cycles, a pure domain, no test code in the product.

Read with ``ast`` from the source, so it sees every import: the ones at the top
of a module and the ones inside functions (a lazy import still ties two
modules together). An import made by ``importlib`` is not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

from testkit import REPO

PACKAGE = REPO / "osapi"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """The modules (of osapi, or outside it) that ``name`` imports anywhere in its text."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for alias in node.names:  # ``from osapi.job import store`` imports the module osapi.job.store
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for imported in _imports(name, path):
            while imported and imported not in MODULES:
                imported = imported.rpartition(".")[0]
            if imported and imported not in (name, "osapi"):
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycles():
    graph = _graph()
    assert len(graph) > 50 and graph["osapi.worker.worker"], "the modules or their imports were not found"
    cycles = _cycles(graph)
    assert cycles == [], "\n".join(
        " <-> ".join(c) + ": " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in cycles)


def test_the_domain_is_pure():
    """osapi.domain: no NATS, no web framework, and nothing of the sides that import it."""
    sides = ("osapi.job", "osapi.worker", "osapi.api", "osapi.cli", "osapi.client", "osapi.provider")
    foreign = ("nats", "bottle", "waitress", "psutil", "jwt", "supervisor", "yaml")
    graph = _graph()
    bad = {}
    for name, path in MODULES.items():
        if name.startswith("osapi.domain"):
            imported = _imports(name, path) | graph[name]
            wrong = sorted(i for i in imported if i.split(".")[0] in foreign
                           or any(i == s or i.startswith(s + ".") for s in sides))
            if wrong:
                bad[name] = wrong
    assert bad == {}


def test_the_product_holds_no_test_operations():
    """The test-only operations are the test stack's (tests/testhooks.py): osapi/ (and so osapi.pyz) has none."""
    assert not list(PACKAGE.rglob("testhooks.py"))
    assert not [p for p in PACKAGE.rglob("*.py") if '"test.sleep"' in p.read_text(encoding="utf-8")]


def test_every_import_of_an_osapi_module_names_one_that_exists():
    """A lazy import inside a function is only tried when that path runs: a module moved in the
    layout (osapi.job.errors -> osapi.domain.errors) must not leave one behind that fails at run time."""
    files = {**MODULES, **{_module_name(p): p for p in (REPO / "tests").rglob("*.py")},
             **{_module_name(p): p for p in (REPO / "bench").rglob("*.py")},
             **{_module_name(p): p for p in (REPO / "testkit").rglob("*.py")}}
    missing = []
    for name, path in sorted(files.items()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                # ``from osapi.x import y``: osapi.x must be a module (y may be a module or a name in it)
                wanted = [node.module]
            else:
                continue
            for module in wanted:
                if (module == "osapi" or module.startswith("osapi.")) and module not in MODULES:
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno}: {module}")
    assert missing == [], "imports of osapi modules that do not exist:\n" + "\n".join(missing)
