"""The layout's rules (DESIGN.md, README "Layout"), checked on the code's own imports.

- `rayloop/serving/` and `rayloop/monitoring/` (the data plane) never import `rayloop.control`;
- nothing in `rayloop/` imports `serve_apps`;
- `rayloop/monitoring/*.py` import no Ray at module level (replicas and the CLI import them);
- the bundle never imports `rayloop.training`;
- rayloop's own modules are imported at the top of a file: a function-local import of one is only
  for a module that itself imports a heavy library at import (torch, mlflow, Ray Data), so the
  import graph is the real one, and that graph has no cycle.

Each rule is a function over a tree of files, also run on a small bad tree, so a check that can
never fail would fail here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT

# rayloop modules that import a heavy library at module level, and which: only these may be
# imported inside a function (where that library is needed), never at the top of a light module
HEAVY = {
    "rayloop.models.mlp": "torch",
    "rayloop.pyfunc": "mlflow",
    "rayloop.data.parquet_stream": "ray",
}


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. rayloop.serving.server
    target: str  # imported module (for `from a import b`: a.b when a.b is a module, else a)
    line: int
    top_level: bool  # executed at import (module body, including `if`/`try` blocks)
    type_checking: bool  # under `if TYPE_CHECKING:`


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(root: Path, package: str = "rayloop") -> Iterator[Import]:
    """Every import statement of every module under root/package."""
    for path in sorted((root / package).rglob("*.py")):
        name = module_name(root, path)
        tree = ast.parse(path.read_text(), filename=str(path))
        yield from _walk(tree, root, name, path.name == "__init__.py", top=True, checking=False)


def _walk(node: ast.AST, root: Path, name: str, is_package: bool, *, top: bool, checking: bool) -> Iterator[Import]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield Import(name, alias.name, child.lineno, top, checking)
        elif isinstance(child, ast.ImportFrom):
            base = _resolve(name, is_package, child)
            for alias in child.names:
                candidate = f"{base}.{alias.name}"
                is_module = (
                    any((root / Path(*candidate.split("."))).with_suffix(s).exists() for s in (".py",))
                    or (root / Path(*candidate.split(".")) / "__init__.py").exists()
                )
                yield Import(name, candidate if is_module else base, child.lineno, top, checking)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, root, name, is_package, top=False, checking=checking)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk(
                    ast.Module(body=[stmt], type_ignores=[]), root, name, is_package, top=top, checking=True
                )
            for stmt in child.orelse:
                yield from _walk(
                    ast.Module(body=[stmt], type_ignores=[]), root, name, is_package, top=top, checking=checking
                )
        else:
            yield from _walk(child, root, name, is_package, top=top, checking=checking)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# ---- the rules -----------------------------------------------------------------------------------
def data_plane_imports_control(found: list[Import]) -> list[str]:
    return [
        f"{i.importer}:{i.line} imports {i.target}"
        for i in found
        if (_within(i.importer, "rayloop.serving") or _within(i.importer, "rayloop.monitoring"))
        and _within(i.target, "rayloop.control")
    ]


def library_imports_serve_apps(found: list[Import]) -> list[str]:
    return [f"{i.importer}:{i.line} imports {i.target}" for i in found if _within(i.target, "serve_apps")]


def monitoring_imports_ray_at_module_level(found: list[Import]) -> list[str]:
    return [
        f"{i.importer}:{i.line} imports {i.target} at module level"
        for i in found
        if _within(i.importer, "rayloop.monitoring")
        and _within(i.target, "ray")
        and i.top_level
        and not i.type_checking
    ]


def bundle_imports_training(found: list[Import]) -> list[str]:
    return [
        f"{i.importer}:{i.line} imports {i.target}"
        for i in found
        if i.importer == "rayloop.bundle" and _within(i.target, "rayloop.training")
    ]


def hidden_own_imports(found: list[Import]) -> list[str]:
    """Function-local or TYPE_CHECKING-only imports of rayloop modules other than HEAVY ones."""
    return [
        f"{i.importer}:{i.line} imports {i.target} inside a function"
        + (" (only for type checking)" if i.type_checking else "")
        for i in found
        if _within(i.target, "rayloop") and (not i.top_level or i.type_checking) and i.target not in HEAVY
    ]


def cycles(found: list[Import]) -> list[list[str]]:
    """Cycles in the graph of rayloop's top-level imports (what runs at import)."""
    graph: dict[str, set[str]] = {}
    for i in found:
        if i.top_level and not i.type_checking and _within(i.target, "rayloop") and i.target != i.importer:
            graph.setdefault(i.importer, set()).add(i.target)
    seen: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            out.append(path[path.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        for nxt in sorted(graph.get(node, ())):
            if _within(nxt, node):  # a package importing its own submodule is not a cycle
                continue
            visit(nxt, [*path, node])

    for start in sorted(graph):
        visit(start, [])
    return out


RULES = (
    data_plane_imports_control,
    library_imports_serve_apps,
    monitoring_imports_ray_at_module_level,
    bundle_imports_training,
    hidden_own_imports,
)


# ---- the tree as it is -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def found() -> list[Import]:
    return list(imports(ROOT))


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_the_tree_keeps_the_rule(found, rule):
    assert rule(found) == []


def test_rayloops_import_graph_has_no_cycle(found):
    assert cycles(found) == []


def test_each_heavy_module_really_imports_its_heavy_library_at_module_level(found):
    for module, library in HEAVY.items():
        assert any(i.importer == module and _within(i.target, library) and i.top_level for i in found), module


# ---- the checks can fail -------------------------------------------------------------------------------
BAD_TREE = {
    "rayloop/__init__.py": "",
    "rayloop/serving/__init__.py": "",
    "rayloop/serving/server.py": "from rayloop.control import deploy\n",
    "rayloop/monitoring/__init__.py": "",
    "rayloop/monitoring/core.py": "import ray\nfrom ..control.up import up\n",
    "rayloop/monitoring/fine.py": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ray\n\ndef f():\n    import ray\n"
    ),
    "rayloop/control/__init__.py": "",
    "rayloop/control/deploy.py": "from serve_apps.tabular import TabularAppArgs\n",
    "rayloop/control/up.py": "from rayloop.control.deploy import x\n",
    "rayloop/bundle.py": "def load():\n    from rayloop.training.torch import build_model\n",
    "rayloop/a.py": "import rayloop.b\n",
    "rayloop/b.py": "from rayloop import a\n",
}


def test_every_rule_catches_its_violation_in_a_bad_tree(tmp_path):
    for relative, text in BAD_TREE.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    bad = list(imports(tmp_path))
    assert data_plane_imports_control(bad) == [
        "rayloop.monitoring.core:2 imports rayloop.control.up",
        "rayloop.serving.server:1 imports rayloop.control.deploy",
    ]
    assert library_imports_serve_apps(bad) == ["rayloop.control.deploy:1 imports serve_apps.tabular"]
    assert monitoring_imports_ray_at_module_level(bad) == ["rayloop.monitoring.core:1 imports ray at module level"]
    assert bundle_imports_training(bad) == ["rayloop.bundle:2 imports rayloop.training.torch"]
    assert hidden_own_imports(bad) == ["rayloop.bundle:2 imports rayloop.training.torch inside a function"]
    assert ["rayloop.a", "rayloop.b", "rayloop.a"] in cycles(bad)


# ---- the README's picture of the layout ------------------------------------------------------------------
def test_the_readme_layout_names_every_package_and_module_of_rayloop():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout") :]
    block = section[section.index("```") + 3 :]
    block = block[: block.index("```")]
    named = set(re.findall(r"\b[a-z_]+\.py\b", block)) | {d + "/" for d in re.findall(r"\b([a-z_]+)/", block)}
    modules = {p.name for p in (ROOT / "rayloop").rglob("*.py") if p.name != "__init__.py"}
    packages = {p.name + "/" for p in (ROOT / "rayloop").iterdir() if (p / "__init__.py").exists()}
    assert modules - named == set(), "modules the README's layout does not name"
    assert packages - named == set(), "packages the README's layout does not name"
    unknown = {n for n in named if n.endswith(".py")} - modules - {p.name for p in ROOT.glob("*/*.py")}
    assert unknown == set(), "files the README's layout names that do not exist"
