"""vae_infer's own imports, read with `ast` (nothing is executed): no import cycle among its modules at module
level, and no import of torch or train anywhere, not even inside a function or behind TYPE_CHECKING.

Imports inside functions run when the function is called, after every module has finished loading, so they
may point back up the tree (vae_infer.native.check loads a model with `from .. import load`); at module level
the same import would be a cycle that only works in some import orders."""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vae_infer"
FORBIDDEN = ("torch", "train")  # the runtime installs without them (see DESIGN.md)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. vae_infer.native.build
    target: str  # the absolute module it needs, e.g. vae_infer.errors
    line: int
    module_level: bool  # runs when the importing module loads (not inside a function, not TYPE_CHECKING only)


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package, by dotted name; a folder's __init__.py is the package itself. Folders
    that cannot be Python packages (node_modules, names with dashes) are not walked."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if not all(p.isidentifier() for p in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, module_level: bool):
    """(import node, module_level) for every import below node; function bodies are not module level, class
    bodies are (they run at import), `if TYPE_CHECKING:` bodies never run."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, module_level
        elif isinstance(child, ast.Call) and _dynamic_target(child):
            yield child, module_level
        inner = module_level and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        if isinstance(child, ast.If) and _is_type_checking(child):
            for stmt in child.body:
                yield from _walk_one(stmt, False)
            for stmt in child.orelse:
                yield from _walk_one(stmt, module_level)
            continue
        yield from _walk(child, inner)


def _walk_one(stmt: ast.AST, module_level: bool):
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        yield stmt, module_level
    yield from _walk(stmt, module_level and not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef))


def _dynamic_target(call: ast.Call) -> str | None:
    """The module named by importlib.import_module("...") or __import__("...") with a literal name."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name in ("import_module", "__import__") and call.args and isinstance(call.args[0], ast.Constant):
        value = call.args[0].value
        return value if isinstance(value, str) else None
    return None


def _resolve(source: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of `from {'.' * level}{module} import ...` written in module `source`."""
    if level == 0:
        return module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def read_imports(package_dir: Path) -> tuple[dict[str, Path], list[Import]]:
    modules = module_names(package_dir)
    found = []
    for source, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, module_level in _walk(tree, True):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(source, is_package, node.level, node.module)
                # `from pkg import name` needs pkg.name when that is a module of ours, else pkg's namespace
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                targets = [_dynamic_target(node)]
            found += [Import(source, t, node.lineno, module_level) for t in dict.fromkeys(targets)]
    return modules, found


def forbidden_imports(imports: list[Import]) -> list[str]:
    return [f"{i.source} line {i.line}: imports {i.target}" for i in imports
            if i.target.split(".")[0] in FORBIDDEN]


def import_cycles(modules: dict[str, Path], imports: list[Import]) -> list[list[str]]:
    """Each group of our modules that import one another at module level, as a sorted list of names."""
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    graph.add_edges_from((i.source, i.target) for i in imports if i.module_level and i.target in modules)
    groups = [sorted(c) for c in nx.strongly_connected_components(graph)
              if len(c) > 1 or graph.has_edge(next(iter(c)), next(iter(c)))]
    return sorted(groups)


@pytest.fixture(scope="module")
def runtime():
    return read_imports(ROOT / PACKAGE)


def test_the_runtime_never_imports_torch_or_train(runtime):
    _, imports = runtime
    assert forbidden_imports(imports) == []


def test_the_runtime_has_no_import_cycle_at_module_level(runtime):
    modules, imports = runtime
    assert import_cycles(modules, imports) == []


def test_the_runtime_has_no_import_cycle_even_through_imports_inside_functions(runtime):
    """A cycle hidden in a function-level import (an optional dependency's import, a late import to dodge a
    cycle) still ties two modules together: the data flow stays one-directional everywhere."""
    modules, imports = runtime
    every = [dataclasses.replace(i, module_level=True) for i in imports]
    assert import_cycles(modules, every) == []


def test_the_reader_sees_the_runtime_as_it_is(runtime):
    """The scan covers the subpackages and resolves relative imports, or the two tests above prove nothing."""
    modules, imports = runtime
    assert {"vae_infer", "vae_infer.cli", "vae_infer.native", "vae_infer.sessions"} <= set(modules)
    edges = {(i.source, i.target) for i in imports if i.module_level}
    assert ("vae_infer.sessions", "vae_infer.errors") in edges
    assert ("vae_infer.sessions", "onnxruntime") in edges
    assert any(s.startswith("vae_infer.cli.") and t.startswith("vae_infer.") for s, t in edges)
    assert any(s.startswith("vae_infer.native.") and t.startswith("vae_infer.native.") for s, t in edges)


# -- the checker fails where it should: a synthetic package -----------------------------------------------


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "pkg"


def test_a_module_level_cycle_is_found_through_relative_imports(tmp_path):
    pkg = write(tmp_path, {
        "pkg/__init__.py": "from .a import f\n",
        "pkg/a.py": "from .sub.b import g\n\ndef f():\n    return g()\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "import pkg.c as c\n\ndef g():\n    return c.h()\n",
        "pkg/c.py": "from . import a\n\ndef h():\n    return 1\n",
        "pkg/d.py": "from .c import h\n",  # imports into the cycle, is not part of it
        "pkg/web/node_modules/x-y/setup.py": "import torch\n",  # not a Python package of ours
    })
    modules, imports = read_imports(pkg)
    assert "pkg.sub.b" in modules and not any("node_modules" in m for m in modules)
    assert import_cycles(modules, imports) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert forbidden_imports(imports) == []


def test_a_cycle_through_a_package_namespace_and_a_self_import_are_found(tmp_path):
    pkg = write(tmp_path, {
        "pkg/__init__.py": "from .model import Model\nVERSION = 1\n",
        "pkg/model.py": "from . import VERSION\n\nclass Model:\n    pass\n",  # needs pkg's namespace: a cycle
        "pkg/self.py": "import pkg.self\n",
    })
    modules, imports = read_imports(pkg)
    assert import_cycles(modules, imports) == [["pkg", "pkg.model"], ["pkg.self"]]


def test_imports_inside_functions_and_type_checking_make_no_cycle(tmp_path):
    pkg = write(tmp_path, {
        "pkg/__init__.py": "from .a import f\n",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n\n"
                    "def f():\n    from .b import g\n    return g()\n",
        "pkg/b.py": "from .a import f\n\nclass B:\n    pass\n\ndef g():\n    return 1\n",
    })
    modules, imports = read_imports(pkg)
    assert import_cycles(modules, imports) == []
    assert {(i.source, i.target, i.module_level) for i in imports} >= {
        ("pkg.a", "pkg.b", False), ("pkg.b", "pkg.a", True)}


def test_torch_and_train_are_found_anywhere(tmp_path):
    pkg = write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    import torch.nn\n    return torch.nn\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from train.model import VAE\n",
        "pkg/c.py": "import importlib\n\nclass C:\n    def m(self):\n        return importlib.import_module('train')\n",
        "pkg/d.py": "import torchvision_free_helper\nfrom . import train_utils\n",  # names that only look alike
        "pkg/train_utils.py": "",
    })
    _, imports = read_imports(pkg)
    assert forbidden_imports(imports) == [
        "pkg.a line 2: imports torch.nn", "pkg.b line 3: imports train.model", "pkg.c line 5: imports train"]
