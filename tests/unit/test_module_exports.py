"""Every name has one home: a module lists only its own definitions in ``__all__``, and every
``from s2s.<module> import name`` names the module that defines ``name``.

Package ``__init__`` files are the public faces (``s2s.verifier``, ``s2s.core``) and may gather
names from their modules; any other module that re-exported a name would give it two homes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "s2s"
IMPORTING_TREES = ("s2s", "tests", "bench", "certs-dev")


def _bound_names(body: list[ast.stmt]) -> Iterator[str]:
    """Names a module body binds itself: defs, classes, assignments (also under if/try)."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                yield from (n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            yield node.target.id
        elif isinstance(node, ast.If | ast.Try):
            yield from _bound_names(node.body)
            yield from _bound_names(node.orelse)
            for handler in getattr(node, "handlers", ()):
                yield from _bound_names(handler.body)


def defined_names(source: str) -> frozenset[str]:
    return frozenset(_bound_names(ast.parse(source).body))


@cache
def _defined_in(path: Path) -> frozenset[str]:
    return defined_names(path.read_text())


def exported_names(source: str) -> tuple[str, ...] | None:
    """The strings of a module's ``__all__``, None when it has none."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list | tuple), "__all__ must be a literal list of strings"
            return tuple(value)
    return None


def foreign_exports(source: str) -> list[str]:
    """Names in ``__all__`` that the module does not define (what a re-export shim lists)."""
    own = defined_names(source)
    return [name for name in exported_names(source) or () if name not in own]


def module_file(module: str) -> tuple[Path | None, bool]:
    """(file, is_package) of an ``s2s`` module, (None, False) if there is none."""
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py", True
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py"), False
    return None, False


def misnamed_imports(source: str) -> list[str]:
    """``from s2s.<module> import name`` where a plain module does not define ``name``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
            continue
        if node.module != "s2s" and not node.module.startswith("s2s."):
            continue
        path, is_package = module_file(node.module)
        if path is None or is_package:
            continue  # a missing module fails at import; packages are public faces
        own = _defined_in(path)
        for alias in node.names:
            if alias.name not in own and module_file(f"{node.module}.{alias.name}")[0] is None:
                found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    return found


def _package_modules() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and not p.name.endswith("_pb2.py")
    )


def _importing_files() -> list[Path]:
    files = (p for tree in IMPORTING_TREES for p in (ROOT / tree).rglob("*.py"))
    return sorted(p for p in files if not p.name.endswith("_pb2.py") and ".venv" not in p.parts)


def test_every_module_lists_only_its_own_definitions_in_all() -> None:
    modules = _package_modules()
    assert len(modules) > 100, "the walk found too few modules: is PACKAGE right?"
    shims = {
        str(p.relative_to(ROOT)): names
        for p in modules
        if (names := foreign_exports(p.read_text()))
    }
    assert not shims, (
        f"__all__ lists names these modules do not define (import them from their own module): "
        f"{shims}"
    )


def test_every_import_names_the_defining_module() -> None:
    files = _importing_files()
    assert len(files) > 200, "the walk found too few files: are the trees right?"
    wrong = {
        str(p.relative_to(ROOT)): found for p in files if (found := misnamed_imports(p.read_text()))
    }
    assert not wrong, f"imports that do not name the defining module: {wrong}"


# Twins: what the two checks accept and what they refuse.

OWN = """
from s2s.core.errors import S2SError
__all__ = ["CONSTANT", "Thing", "helper", "typed", "Alias"]
CONSTANT = 1
typed: int = 2
class Thing: ...
def helper() -> None: ...
try:
    Alias = int
except ImportError:
    Alias = str
"""


def test_a_module_listing_its_own_names_passes() -> None:
    assert foreign_exports(OWN) == []


def test_a_module_without_all_passes() -> None:
    assert foreign_exports("from s2s.core.errors import S2SError\nX = 1\n") == []


@pytest.mark.parametrize(
    ("source", "foreign"),
    [
        ('from s2s.core.errors import S2SError\n__all__ = ["S2SError"]\n', ["S2SError"]),
        (
            'from s2s.core.errors import S2SError as Error\nX = 1\n__all__ = ["Error", "X"]\n',
            ["Error"],
        ),
        ('import s2s.core.errors as errors\n__all__ = ["errors"]\n', ["errors"]),
        ('__all__ = ["missing"]\n', ["missing"]),
    ],
    ids=["imported", "imported-under-alias", "module-alias", "undefined"],
)
def test_a_reexport_in_all_is_refused(source: str, foreign: list[str]) -> None:
    assert foreign_exports(source) == foreign


def test_an_all_that_is_not_a_literal_list_is_refused() -> None:
    with pytest.raises(ValueError, match="malformed"):
        exported_names("__all__ = names()\n")


def test_imports_from_the_defining_module_pass() -> None:
    source = (
        "from s2s.core.x509templates import leaf_template\n"
        "from s2s.core import errors\n"  # a submodule
        "from s2s.verifier import X509Source\n"  # the package's public face
        "from s2s.agent import workload_messages as msg\n"
        "from os import path\n"
    )
    assert misnamed_imports(source) == []


@pytest.mark.parametrize(
    ("source", "reported"),
    [
        (
            "from s2s.core.x509svid import leaf_template\n",
            ["line 1: from s2s.core.x509svid import leaf_template"],
        ),
        (
            "def f():\n    from s2s.ca.app import Path\n",
            ["line 2: from s2s.ca.app import Path"],
        ),
        (
            "from s2s.ca.http import public_app, json_response\n",
            ["line 1: from s2s.ca.http import json_response"],
        ),
    ],
    ids=["re-exported-name", "inner-import-of-a-name-the-module-imports", "one-of-two"],
)
def test_an_import_through_another_module_is_refused(source: str, reported: list[str]) -> None:
    assert misnamed_imports(source) == reported
