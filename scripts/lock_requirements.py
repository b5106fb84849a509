"""Print deploy/requirements.lock: the runtime dependencies of s2s and everything they need, pinned
to the versions installed in this Python environment (pip freeze's format, this closure only).

    .venv/bin/python scripts/lock_requirements.py > deploy/requirements.lock

Only [project.dependencies] and what they require (markers evaluated for this interpreter, which
must be the image's Python minor version); test and dev extras stay out of the image.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
HEADER = """\
# Pinned runtime dependencies of the s2s image (deploy/Dockerfile installs exactly these, then s2s
# with --no-deps, then runs pip check). Generated from a venv with the project installed:
#   .venv/bin/python scripts/lock_requirements.py > deploy/requirements.lock
# Python {python} (the image's python:{python}-slim-bookworm).
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_dependencies() -> list[Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [Requirement(r) for r in data["project"]["dependencies"]]


def closure(roots: list[Requirement]) -> dict[str, str]:
    """Canonical name -> installed version of ``roots`` and everything they require."""
    found: dict[str, str] = {}
    todo = [(r, frozenset(r.extras)) for r in roots]
    while todo:
        req, extras = todo.pop()
        name = canonical(req.name)
        if name in found:
            continue
        dist = md.distribution(req.name)
        found[name] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            envs = [{"extra": e} for e in ("", *extras)]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append((sub, frozenset(sub.extras)))
    return found


def main() -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    sys.stdout.write(HEADER.format(python=python))
    for name, version in sorted(closure(project_dependencies()).items()):
        sys.stdout.write(f"{name}=={version}\n")


if __name__ == "__main__":
    main()
