"""The admin socket's bind: a path too long for a Unix socket is refused with a message that says
why and what to do (it used to end in "None"); a path that fits is bound, mode 0600."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

import pytest

from s2s.ca.admin import MAX_SOCKET_PATH, bind_admin_socket
from s2s.core.errors import InvalidConfig


def test_a_path_too_long_is_refused_saying_why(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (MAX_SOCKET_PATH - len(str(tmp_path))))
    deep.mkdir()
    path = deep / "admin.sock"
    with pytest.raises(InvalidConfig) as info:
        bind_admin_socket(path)
    message = str(info.value)
    assert "path too long" in message
    assert "use a shorter --data-dir" in message
    assert not message.endswith("None")


def test_a_path_that_fits_is_bound_owner_only() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp) / "admin.sock"
        sock = bind_admin_socket(path)
        try:
            assert stat.S_ISSOCK(path.stat().st_mode)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        finally:
            sock.close()
