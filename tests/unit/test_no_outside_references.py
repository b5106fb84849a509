"""The repository stands alone: no tracked text file points at design notes kept outside it.

s2s was designed from notes that live beside the project, not in it. A docstring, comment, log
line or document that cites them ("see ARCHITECTURE.md section 2") sends a reader to a file they
do not have; the project's own account is docs/architecture.md, which may be named freely.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve()

# Each pattern names something that is not in the repository. Built from pieces so that this
# file does not match itself.
_OUTSIDE = re.compile(
    "|".join(
        (
            # the design notes (case matters: docs/architecture.md is ours)
            r"\bARCHITECTURE" + r"\.md\b",
            # the code conventions, also cited as "CONVENTIONS 7" or "conventions rule 9"
            r"\bCONVENTIONS" + r"(\.md)?\b",
            r"\bconventions" + r" rule\b",
            r"\.\./" + r"shared\b",
            r"/work/" + r"shared\b",
            r"performance" + r"-baselines\.md",
            r"spiffe-and" + r"-spire\.md",
            r"python" + r"-ecosystem\.md",
        )
    )
)

# Never part of the product: dependencies and caches that may sit in the tree.
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}


def outside_references(text: str) -> list[str]:
    """Every mention in ``text`` of a file kept outside the repository."""
    return [m.group(0) for m in _OUTSIDE.finditer(text)]


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        # Not a git checkout (an unpacked archive): every file but the usual caches.
        return [
            p
            for p in ROOT.rglob("*")
            if p.is_file() and not _SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
        ]
    return [ROOT / name for name in out.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:  # listed by git but deleted in the work tree
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_tracked_file_refers_to_files_outside_the_repository() -> None:
    files = _tracked_files()
    assert len(files) > 100, f"only {len(files)} files found under {ROOT}"
    found = []
    for path in files:
        if path.resolve() == THIS:
            continue
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for hit in outside_references(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {hit!r} in {line.strip()[:100]}")
    assert not found, "files outside the repository are cited:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "text",
    [
        "The architecture is in docs/architecture.md.",
        "see [the architecture](docs/architecture.md#layers)",
        "build, sign, check (see the conventions of this project)",
        "shared by the CA and the agent; a shared 2-core VM",
        "tests/unit/verifier/shared_fixtures.py",
    ],
)
def test_own_documents_and_ordinary_words_are_not_flagged(text: str) -> None:
    assert outside_references(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "Defaults are " + "ARCHITECTURE.md section 2",
        "(see ../" + "shared/CONVENTIONS.md)",
        "Build, sign, check (" + "CONVENTIONS 7)",
        "statuses are chosen here only (conventions" + " rule 11)",
        'Path("/work/' + 'shared/vectors/wycheproof/x.json")',
        "O(N^2); performance" + "-baselines.md 4",
        "the design notes in " + "docs/ARCHITECTURE.md",
    ],
)
def test_references_to_outside_files_are_flagged(text: str) -> None:
    assert outside_references(text) != []
