"""Where the Workload API socket may live, and clearing a stale one left by a previous run.

Whoever can write to the socket's directory can replace the socket with their own and answer
workloads as the agent (handing them identities and trust bundles of their choosing). So the
directory must belong to the agent's uid or root and be writable by its owner only; a shared
directory such as /tmp is refused even with its sticky bit, since anyone may create the socket
name there before the agent does. The directories above it must not let others rename it
away: they belong to the agent's uid or root and are not writable by others, unless sticky.
"""

from __future__ import annotations

import os
import socket
import stat

from s2s.core.errors import InvalidConfig

__all__ = ["prepare_socket_path"]

_MAX_UNIX_PATH = 107
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def prepare_socket_path(path: str) -> None:
    """Check that a socket can be created at ``path``; remove a stale socket left there.

    Raises :class:`InvalidConfig` for a relative or overlong path, a missing directory, one that
    is not the agent's (see the module docstring), a path that is not a socket (a regular file
    is never deleted), or a socket another server answers on.
    """
    if not os.path.isabs(path):
        raise InvalidConfig(f"the socket path {path!r} must be absolute")
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise InvalidConfig(f"the socket path {path!r} is longer than {_MAX_UNIX_PATH} bytes")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise InvalidConfig(f"the directory {parent!r} of the socket {path!r} does not exist")
    check_socket_dir(parent)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidConfig(f"{path!r} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale socket of a previous run
            return
    raise InvalidConfig(f"another process is already serving on {path!r}")


def check_socket_dir(directory: str) -> None:
    """:class:`InvalidConfig` unless only the agent (or root) can change ``directory``."""
    me = os.geteuid()
    fix = f"use a directory of the agent's own, e.g. install -d -o {me} -m 0755 /run/s2s"
    st = os.stat(directory)
    if st.st_uid not in (me, 0):
        raise InvalidConfig(
            f"the socket directory {directory!r} belongs to uid {st.st_uid}, not to the agent "
            f"(uid {me}) or root, so its owner could replace the socket; {fix}"
        )
    if st.st_mode & _OTHERS_WRITE:
        raise InvalidConfig(
            f"the socket directory {directory!r} is writable by others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}), who could replace the socket; {fix}"
        )
    current = os.path.dirname(os.path.realpath(directory))
    while True:
        st = os.stat(current)
        shared = st.st_mode & _OTHERS_WRITE and not st.st_mode & stat.S_ISVTX
        if st.st_uid not in (me, 0) or shared:
            raise InvalidConfig(
                f"the socket directory {directory!r} is inside {current!r}, which "
                f"{'others may write to' if shared else f'belongs to uid {st.st_uid}'}, so the "
                f"socket directory could be renamed and replaced; {fix}"
            )
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent
