"""deploy/requirements.lock pins every runtime dependency of the image, and the Dockerfile uses it.

Every [project.dependencies] entry of pyproject.toml is pinned with ``==`` to a version its
specifier allows, everything those need (as installed here) is pinned too, nothing of the test or
dev extras is, and the Dockerfile installs the lock with ``--no-deps``, then s2s with
``--no-deps``, then runs ``pip check``. Twins: a lock without a dependency, with a pin outside
the specifier, with a range instead of a pin, are each reported.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "deploy" / "requirements.lock"


def lock_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lock_requirements", ROOT / "scripts/lock_requirements.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """name -> version of each ``name==version`` line; a line of another form is an error."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
        assert match, f"not a name==version pin: {line!r}"
        out[canonical(match[1])] = match[2]
    return out


def runtime_requirements() -> list[Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [Requirement(r) for r in data["project"]["dependencies"]]


def lock_problems(text: str) -> list[str]:
    try:
        pinned = pins(text)
    except AssertionError as exc:
        return [str(exc)]
    problems = []
    for req in runtime_requirements():
        version = pinned.get(canonical(req.name))
        if version is None:
            problems.append(f"{req.name} (pyproject.toml) is not pinned")
        elif not req.specifier.contains(Version(version), prereleases=True):
            problems.append(f"{req.name}=={version} is outside pyproject.toml's {req}")
    for name in sorted(lock_script().closure(runtime_requirements())):
        if name not in pinned:
            problems.append(f"{name} (required by a runtime dependency) is not pinned")
    return problems


def test_the_lock_pins_every_runtime_dependency() -> None:
    assert not lock_problems(LOCK.read_text())


def test_the_lock_holds_nothing_of_the_test_or_dev_extras() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = {
        canonical(Requirement(r).name)
        for group in data["project"]["optional-dependencies"].values()
        for r in group
    }
    runtime = set(lock_script().closure(runtime_requirements()))
    assert not (set(pins(LOCK.read_text())) & (extras - runtime))


@pytest.mark.parametrize(
    ("edit", "reported"),
    [
        (
            lambda t: re.sub(r"^grpcio==.*\n", "", t, flags=re.M),
            "grpcio (pyproject.toml) is not pinned",
        ),
        (
            lambda t: re.sub(r"^grpcio==.*$", "grpcio==1.0.0", t, flags=re.M),
            "grpcio==1.0.0 is outside",
        ),
        (lambda t: re.sub(r"^multidict==.*\n", "", t, flags=re.M), "multidict (required by"),
        (lambda t: re.sub(r"^click==.*$", "click>=8.1", t, flags=re.M), "not a name==version pin"),
    ],
)
def test_a_broken_lock_is_reported(edit: object, reported: str) -> None:
    text = edit(LOCK.read_text())  # type: ignore[operator]
    assert any(reported in p for p in lock_problems(text)), lock_problems(text)


def test_the_dockerfile_installs_exactly_the_lock() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "COPY deploy/requirements.lock ./" in text
    installs = re.findall(r"pip install ([^\\\n&]*)", text)
    assert installs == ["--no-deps -r requirements.lock", "--no-deps . "], installs
    assert "pip check" in text
    assert not re.search(r"pip install --upgrade", text)  # nothing unpinned goes in
