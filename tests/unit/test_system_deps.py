"""Each make command installs only the Debian packages it needs (scripts/system-deps, run for
real through make with a PATH that holds none of the tools, in dry-run mode: nothing is
installed, what would be is printed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


@pytest.fixture
def bare_path(tmp_path: Path) -> Path:
    """A PATH with sh and python3 only: every other tool counts as missing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sh = shutil.which("sh")
    assert sh is not None
    (bin_dir / "sh").symlink_to(sh)
    python3 = bin_dir / "python3"
    python3.write_text(f'#!{sh}\nexec {sys.executable} "$@"\n')
    python3.chmod(0o755)
    return bin_dir


def would_install(target: str, path: Path, *extra: str) -> tuple[int, list[str]]:
    assert MAKE is not None
    env = {**os.environ, "PATH": str(path), "S2S_SYSTEM_DEPS_DRY_RUN": "1"}
    done = subprocess.run(
        [MAKE, "-s", "-C", str(ROOT), target, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    prefix = "s2s: installing Debian packages:"
    packages: list[str] = []
    for line in done.stderr.splitlines():
        if line.startswith(prefix):
            packages += line.removeprefix(prefix).split()
    return done.returncode, packages


def test_demo_installs_no_etcd_and_no_prometheus(bare_path: Path) -> None:
    assert would_install("deps-demo", bare_path) == (0, [])


def test_test_installs_everything_the_tests_use(bare_path: Path) -> None:
    code, packages = would_install("deps-test", bare_path)
    assert code == 0
    assert sorted(packages) == ["etcd-server", "openssl", "prometheus"]


@pytest.mark.parametrize("target", ["deps-bench", "deps-soak"])
def test_bench_and_soak_install_etcd_only(bare_path: Path, target: str) -> None:
    assert would_install(target, bare_path) == (0, ["etcd-server"])


def test_system_deps_installs_the_union(bare_path: Path) -> None:
    code, packages = would_install("system-deps", bare_path)
    assert code == 0
    assert sorted(packages) == ["etcd-server", "openssl", "prometheus"]


def test_a_tool_found_on_the_path_is_not_installed(bare_path: Path) -> None:
    for tool in ("openssl", "etcd"):
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed here")
        (bare_path / tool).symlink_to(found)
    assert would_install("deps-test", bare_path) == (0, ["prometheus"])


def test_an_unknown_package_is_refused(bare_path: Path) -> None:
    env = {**os.environ, "PATH": str(bare_path), "S2S_SYSTEM_DEPS_DRY_RUN": "1"}
    done = subprocess.run(
        [str(bare_path / "sh"), str(ROOT / "scripts" / "system-deps"), "python3-venv", "nginx"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "does not know the package 'nginx'" in done.stderr


def test_ci_runs_make_test() -> None:
    """CI installs what the tests need through the same target (as root, no terminal)."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in [line.strip() for line in lines]
