"""Where the Workload API socket may be created: only in a directory no one else can change."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.socket_path import prepare_socket_path
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.core.errors import InvalidConfig

as_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown")


@pytest.fixture
def base() -> Iterator[Path]:
    """A 0755 directory of ours under /tmp (as the Workload API tests use)."""
    path = Path(tempfile.mkdtemp(prefix="s2s-sock-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def subdir(base: Path, name: str, mode: int) -> Path:
    path = base / name
    path.mkdir()
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o755, 0o700, 0o750])
def test_own_directory_is_accepted(base: Path, mode: int) -> None:
    prepare_socket_path(str(subdir(base, "run", mode) / "agent.sock"))


def test_tmp_itself_is_refused() -> None:
    with pytest.raises(InvalidConfig, match=r"'/tmp' is writable by others \(mode 1777\)") as err:
        prepare_socket_path("/tmp/s2s-agent.sock")
    assert "install -d" in str(err.value)  # the fix


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777, 0o1770])
def test_group_or_world_writable_directory_is_refused(base: Path, mode: int) -> None:
    shared = subdir(base, "shared", mode)
    with pytest.raises(InvalidConfig, match="writable by others") as err:
        prepare_socket_path(str(shared / "agent.sock"))
    assert str(shared) in str(err.value)


@as_root
def test_directory_of_another_user_is_refused(base: Path) -> None:
    theirs = subdir(base, "theirs", 0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(InvalidConfig, match="belongs to uid 65534"):
        prepare_socket_path(str(theirs / "agent.sock"))


def test_directory_inside_one_others_may_write_is_refused(base: Path) -> None:
    outer = subdir(base, "outer", 0o777)  # no sticky bit: anyone may rename "run" away
    run = subdir(outer, "run", 0o755)
    with pytest.raises(InvalidConfig, match=r"inside .*outer.*others may write to"):
        prepare_socket_path(str(run / "agent.sock"))
    # Twin: with the sticky bit only the owner of "run" may rename it.
    outer.chmod(0o1777)
    prepare_socket_path(str(run / "agent.sock"))


@as_root
def test_directory_inside_one_of_another_user_is_refused(base: Path) -> None:
    outer = subdir(base, "outer", 0o755)
    os.chown(outer, 65534, 65534)
    run = subdir(outer, "run", 0o755)
    with pytest.raises(InvalidConfig, match="belongs to uid 65534"):
        prepare_socket_path(str(run / "agent.sock"))


async def test_server_refuses_tmp_before_creating_anything(
    provider: StaticIdentityProvider,
) -> None:
    path = f"/tmp/s2s-refused-{os.getpid()}.sock"
    server = WorkloadApiServer(provider=provider, attestor=UnixAttestor(), socket_path=path)
    with pytest.raises(InvalidConfig, match="'/tmp' is writable by others"):
        await server.start()
    assert not os.path.exists(path)
