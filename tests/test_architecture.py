"""The apps depend one way, codevector → gateway → usage: `usage` never imports `gateway`, neither
imports `codevector`, and no two modules import each other in a loop. Read from the source with
`ast`, so an import inside a function counts as much as one at the top."""

import ast
import re
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
    assert {"gateway.app", "gateway.pipeline", "usage.ledger", "usage.reads.queries", "codevector.asgi"} <= set(modules)
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


# --- the dependencies that imports do not show ---------------------------------------------------
#
# `usage` never imports `gateway`, yet it depends on gateway's models: through string foreign keys
# (the sanctioned way, DESIGN) and by reaching through a foreign key's `related_model` to the model
# at its other end. Both are invisible to the import graph above, so each is listed here by name with
# the reason it exists. A new one fails these tests until it is added with its reason; one that is
# gone fails them until it is removed, so the lists stay the whole truth.

# (module, "app_label.Model"): why the module names that model.
STRING_MODEL_REFERENCES = {
    ("usage.models", "gateway.ApiKey"):
        "the bucket tables' key column (usage is counted per API key) and a budget's key (a key may have a cap)",
    ("usage.models", "gateway.ModelFacade"): "the bucket tables' facade column: every usage row points at a facade",
    ("usage.models", "gateway.Project"): "a budget's project (a project may have a cap)",
    ("gateway.apps", "gateway.Project"):
        "the post_migrate handler asks the migrated state for Project, so a database migrated back to before "
        "projects is left alone",
}

# (module, the expression that ends in `.related_model`): what the module needs from the model there.
RELATED_MODEL_REACHES = {
    ("usage.web.api_budgets", "Budget._meta.get_field(field).related_model"):
        "the API's key and project fields of a budget choose among gateway's keys and projects",
    ("usage.budgets.setting", "Budget._meta.get_field('key').related_model"):
        "set_budget finds a budget's key by its prefix",
    ("usage.budgets.setting", "Budget._meta.get_field('project').related_model"):
        "set_budget finds a budget's project by its public id",
    ("usage.reads.engine", "FiveMinuteUsage._meta.get_field('key').related_model"):
        "reads per key and per project join the keys' table (its name, its project column)",
    ("usage.reads.engine", "key_model()._meta.get_field('project').related_model"):
        "reads per project name each project (public id, name) from the projects' table",
    ("usage.reads.engine", "FiveMinuteUsage._meta.get_field('facade').related_model"):
        "reads per model join the facades' table for the facade's name; the costs' line items price each "
        "model's quantities at its facade's prices",
    ("usage.ledger.plan", "FiveMinuteUsage._meta.get_field('key').related_model"):
        "the ledger makes each user's reserved key (usage without a key) in the keys' table, by raw SQL",
    ("usage.web.admin_urls", "FiveMinuteUsage._meta.get_field('key').related_model"):
        "an API key's usage page looks the key up through the key's registered ModelAdmin",
    ("usage.web.permissions", "FiveMinuteUsage._meta.get_field('key').related_model"):
        "the way to gateway's Project, through the key of the usage rows",
    ("usage.web.permissions",
     "FiveMinuteUsage._meta.get_field('key').related_model._meta.get_field('project').related_model"):
        "project_model(): the projects whose usage the API and the OpenAI-shaped API read, and who may read them",
}

# A model's name, not a system check's id (codevector.E003).
MODEL_REFERENCE = re.compile(r"(auth|contenttypes|admin|sessions|django_q|codevector|gateway|usage)\.[A-Z][a-z]\w*")


def string_model_references() -> set[tuple[str, str]]:
    """Every "app_label.Model" string in the apps' code (migrations aside), and every
    get_model("app_label", "Model") call, as (module, "app_label.Model")."""
    found = set()
    for name, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and MODEL_REFERENCE.fullmatch(node.value):
                found.add((name, node.value))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get_model"
                  and len(node.args) == 2 and all(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                                  for a in node.args)):
                found.add((name, f"{node.args[0].value}.{node.args[1].value}"))
    return found


def related_model_reaches() -> set[tuple[str, str]]:
    """Every expression ending in `.related_model` in the apps' code (migrations aside), as
    (module, the expression's source)."""
    return {(name, ast.unparse(node)) for name, path in project_modules().items()
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
            if isinstance(node, ast.Attribute) and node.attr == "related_model"}


def test_every_string_model_reference_is_listed_with_its_reason():
    found = string_model_references()
    assert sorted(found - STRING_MODEL_REFERENCES.keys()) == [], "new: list each in STRING_MODEL_REFERENCES, with why"
    assert sorted(STRING_MODEL_REFERENCES.keys() - found) == [], "gone: remove each from STRING_MODEL_REFERENCES"
    assert all(reason.strip() for reason in STRING_MODEL_REFERENCES.values())


def test_every_related_model_reach_through_is_listed_with_its_reason():
    found = related_model_reaches()
    assert sorted(found - RELATED_MODEL_REACHES.keys()) == [], "new: list each in RELATED_MODEL_REACHES, with why"
    assert sorted(RELATED_MODEL_REACHES.keys() - found) == [], "gone: remove each from RELATED_MODEL_REACHES"
    assert all(reason.strip() for reason in RELATED_MODEL_REACHES.values())


# --- inside usage: the write path, the reads and the presentation ------------------------------
#
# The write path runs on every request: a delta's way from the store (usage.store) through the
# ledger (usage.ledger) to the database, or to the disk while it is away (usage.degraded). It
# imports no read, budget or presentation module, so nothing a page needs can slow or break a
# request. Presentation (usage.web, usage.admin, the template tags) reads through usage.reads and
# usage.budgets, never through the write path. Inside the write path the ledger is at the bottom:
# degraded mode replays through it, the store puts both together.

WRITE_PATH = ("usage.ledger", "usage.degraded", "usage.store")
READS = ("usage.reads", "usage.budgets")
PRESENTATION = ("usage.web", "usage.admin", "usage.templatetags")
NEVER = {
    WRITE_PATH: READS + PRESENTATION,
    PRESENTATION: WRITE_PATH,
    ("usage.ledger",): ("usage.degraded", "usage.store"),
    ("usage.degraded",): ("usage.store",),
}


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


@pytest.mark.parametrize("side", list(NEVER), ids=lambda side: "+".join(side))
def test_the_write_path_and_the_presentation_import_each_other_only_one_way(side):
    offenders = [f"{name} imports {imported}" for name, path in sorted(project_modules().items()) if within(name, side)
                 for imported in sorted(imports_of(path)) if within(imported, NEVER[side])]
    assert offenders == []


def test_the_write_path_rule_sees_the_modules_on_each_side():
    names = set(project_modules())
    for packages in (*NEVER, *NEVER.values()):
        assert all(any(within(name, (package,)) for name in names) for package in packages), packages
