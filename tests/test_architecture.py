"""The layering keeps: no import cycle between crmmaint's modules, and the task modules never
import what sits above them (playbooks, the runner, the CLI). Read from the source with ast,
lazy imports inside functions included, `if TYPE_CHECKING:` imports (never run) left out."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "crmmaint"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module and the crmmaint modules it imports (a package import names the package)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {  # `if TYPE_CHECKING:` imports never run
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("crmmaint") and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules():
    graph = imports()
    # A package's __init__ that re-exports its own modules is not a cycle of design.
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    assert cycles(graph) == []


def test_tasks_import_nothing_above_them():
    above = ("crmmaint.playbook", "crmmaint.cli", "crmmaint.demo", "crmmaint.reporting")
    upward = {
        (name, target)
        for name, targets in imports().items()
        if name.startswith("crmmaint.tasks")
        for target in targets
        if target.startswith(above)
    }
    assert upward == set()


def test_task_modules_do_not_import_each_other():
    """Tasks share knowledge through the layers below them (engines, the host adapter in
    engines/host.py, repository), never by importing another task module: only tasks.api."""
    allowed = {
        ("crmmaint.tasks.api", "crmmaint.tasks"),  # load_task_modules imports the package
    }
    sideways = {
        (name, target)
        for name, targets in imports().items()
        if name.startswith("crmmaint.tasks.")
        for target in targets
        if target.startswith("crmmaint.tasks") and target != "crmmaint.tasks.api"
    }
    assert sideways - allowed == set()


def test_engines_import_no_task():
    """The adapters (engines/, host knowledge included) sit below the tasks."""
    upward = {
        (name, target)
        for name, targets in imports().items()
        if name.startswith("crmmaint.engines")
        for target in targets
        if target.startswith(("crmmaint.tasks", "crmmaint.playbook", "crmmaint.cli"))
    }
    assert upward == set()
