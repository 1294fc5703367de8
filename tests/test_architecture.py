"""The apps depend one way, codevector → gateway → usage: `usage` never imports `gateway`, neither
imports `codevector`, and no two modules import each other in a loop. Read from the source with
`ast`, so an import inside a function counts as much as one at the top."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

ROOT = Path(__file__).resolve().parent.parent
APPS = ("codevector", "gateway", "usage")
FORBIDDEN = {"usage": {"gateway", "codevector"}, "gateway": {"codevector"}, "codevector": set()}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement in the file (absolute and relative)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from usage import ledger`
    return names


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for app in APPS for path in (ROOT / app).rglob("*.py")
            if "migrations" not in path.parts}


def test_it_finds_the_modules_it_checks():
    modules = project_modules()
    assert {"gateway.app", "gateway.pipeline", "usage.ledger", "usage.queries", "codevector.asgi"} <= set(modules)
    assert "usage.ledger" in imports_of(modules["gateway.pipeline"]) | {m.rsplit(".", 1)[0] for m in imports_of(modules["gateway.pipeline"])}


@pytest.mark.parametrize("app", APPS)
def test_an_app_imports_only_the_apps_below_it(app):
    offenders = []
    for name, path in sorted(project_modules().items()):
        if name.split(".")[0] != app:
            continue
        for imported in sorted(imports_of(path)):
            if imported.split(".")[0] in FORBIDDEN[app]:
                offenders.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert offenders == []


def test_no_two_modules_import_each_other_in_a_loop():
    modules = project_modules()
    graph = {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how a package exposes them, not a loop.
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(cycle, cycle[1:])):
                    cycles.append(" → ".join(cycle))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
