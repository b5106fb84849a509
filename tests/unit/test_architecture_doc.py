"""docs/architecture.md's module map names every module of s2s/, and only modules that exist.

The map is how a newcomer finds where something lives, so a module added, moved or removed
without its line there is a wrong answer waiting for them.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"

# "### `s2s/agent/`" followed by a plain code block: one module per unindented line.
_SECTION = re.compile(r"^### `(s2s/[\w/]*)`[^\n]*\n\n```\n(.*?)^```", re.M | re.S)


def module_map(text: str) -> dict[str, set[str]]:
    """Package path -> the names its section lists (``cache.py``, ``attestors/unix.py``)."""
    sections: dict[str, set[str]] = {}
    for package, block in _SECTION.findall(text):
        names = {line.split()[0] for line in block.splitlines() if line and not line[0].isspace()}
        sections[package.rstrip("/")] = names
    return sections


def mismatches(sections: dict[str, set[str]], root: Path) -> list[str]:
    """What the map and the tree under ``root`` disagree on (empty when they agree)."""
    problems = []
    for package, names in sections.items():
        for name in sorted(names):
            if name.endswith("/"):
                if not (root / package / name).is_dir():
                    problems.append(f"{package}/{name} is listed but is not a directory")
            elif not (root / package / name).is_file():
                problems.append(f"{package}/{name} is listed but does not exist")
    for path in sorted((root / "s2s").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if path.name == "__init__.py" or path.name.endswith("_pb2.py"):
            continue  # package markers and generated code need no line of their own
        owners = [p for p in sections if rel.startswith(p + "/")]
        if not owners:
            problems.append(f"{rel} is in no section of the module map")
            continue
        package = max(owners, key=len)
        name = rel[len(package) + 1 :]
        if "/" in name and name.split("/")[0] + "/" not in sections[package]:
            problems.append(f"{rel} is in no section of the module map")
        elif name not in sections[package]:
            problems.append(f"{rel} has no line in the `{package}/` section")
    return problems


def test_the_module_map_matches_the_tree() -> None:
    sections = module_map(DOC.read_text())
    assert {"s2s", "s2s/core", "s2s/store", "s2s/ca", "s2s/agent", "s2s/verifier"} <= set(sections)
    problems = mismatches(sections, ROOT)
    assert not problems, "docs/architecture.md, Module map:\n" + "\n".join(problems)


_DOC = """
### `s2s/` (top level)

```
aio.py              helpers
```

### `s2s/pkg/`

```
one.py              the first module,
                    on two lines
sub/                a folder
sub/two.py          the second
```
"""


def _tree(tmp_path: Path, *files: str) -> Path:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    return tmp_path


def test_a_map_that_matches_passes(tmp_path: Path) -> None:
    root = _tree(tmp_path, "s2s/aio.py", "s2s/__init__.py", "s2s/pkg/one.py", "s2s/pkg/sub/two.py")
    assert module_map(_DOC) == {"s2s": {"aio.py"}, "s2s/pkg": {"one.py", "sub/", "sub/two.py"}}
    assert mismatches(module_map(_DOC), root) == []


def test_a_module_without_a_line_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, "s2s/aio.py", "s2s/pkg/one.py", "s2s/pkg/sub/two.py", "s2s/pkg/new.py")
    assert mismatches(module_map(_DOC), root) == [
        "s2s/pkg/new.py has no line in the `s2s/pkg/` section"
    ]


def test_a_listed_module_that_is_gone_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, "s2s/aio.py", "s2s/pkg/sub/two.py")
    assert mismatches(module_map(_DOC), root) == ["s2s/pkg/one.py is listed but does not exist"]


def test_a_package_without_a_section_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, "s2s/aio.py", "s2s/pkg/one.py", "s2s/pkg/sub/two.py", "s2s/other/mod.py")
    assert mismatches(module_map(_DOC), root) == [
        "s2s/other/mod.py is in no section of the module map"
    ]
