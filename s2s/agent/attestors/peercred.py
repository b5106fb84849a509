"""What the kernel says about the process on the other end of a Unix socket.

``SO_PEERCRED`` gives the caller's pid, uid and gid as of ``connect()``; :func:`peer_credentials`
reads them together with the process start time (``/proc/<pid>/stat`` field 22), which later
tells whether the pid still names the same process (:func:`check_same_process`: a caller that
exited and had its pid reused fails rather than lending its identity to someone else, as SPIRE's
peertracker does). :func:`process_image` reads what a process is now from ``/proc/<pid>``: its
effective ids, supplementary groups and the binary it runs (path and device/inode).

Everything here blocks on ``/proc`` reads; attestors call it from worker threads.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from s2s.core.errors import AttestationFailed

__all__ = [
    "PeerCredentials",
    "ProcessImage",
    "check_same_process",
    "peer_credentials",
    "process_image",
    "process_start_time",
    "socket_peer",
]

_PEERCRED = struct.Struct("3i")
_START_TIME_FIELD = 22  # proc(5): (22) starttime, in clock ticks since boot


@dataclass(frozen=True, slots=True)
class ProcessImage:
    """What a process is, as far as its selectors go: its ids and the binary it runs.

    ``exe`` and ``binary`` (``st_dev``, ``st_ino`` of the running binary) are ``None`` when the
    attestor does not look at binaries (``discover_path`` off).
    """

    uid: int  # effective
    gid: int  # effective
    groups: tuple[int, ...]
    exe: str | None
    binary: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The kernel's view of a Unix-socket peer at connect time, and (``image``) the process as
    an attestor's ``admit`` saw it when the connection was accepted."""

    pid: int
    uid: int
    gid: int
    start_time: int  # /proc/<pid>/stat field 22, read when the connection was accepted
    image: ProcessImage | None = None


def process_start_time(pid: int, *, proc_root: str = "/proc") -> int:
    """Field 22 of ``/proc/<pid>/stat``; :class:`AttestationFailed` if the process is gone."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
        # Field 2 (comm) is parenthesised and may hold spaces or ')': split after the last ')'.
        rest = text[text.rindex(")") + 2 :].split()
        return int(rest[_START_TIME_FIELD - 3])
    except (OSError, ValueError, IndexError) as exc:
        raise AttestationFailed(f"cannot read the start time of process {pid}: {exc}") from exc


def socket_peer(sock: socket.socket) -> tuple[int, int, int]:
    """``SO_PEERCRED`` of a connected Unix socket: (pid, uid, gid) as of ``connect()``."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError as exc:
        raise AttestationFailed(f"cannot read the caller's credentials: {exc}") from exc
    pid, uid, gid = _PEERCRED.unpack(raw)
    if pid <= 0:
        raise AttestationFailed("the caller's pid is not visible here (another pid namespace?)")
    return pid, uid, gid


def peer_credentials(sock: socket.socket, *, proc_root: str = "/proc") -> PeerCredentials:
    """``SO_PEERCRED`` of a connected Unix socket plus the peer's start time."""
    pid, uid, gid = socket_peer(sock)
    return PeerCredentials(pid, uid, gid, process_start_time(pid, proc_root=proc_root))


def process_image(
    peer: PeerCredentials, *, proc_root: str = "/proc", with_binary: bool = True
) -> ProcessImage:
    """The process's image now; its effective ids must still be the connect-time ones
    (:class:`AttestationFailed` otherwise, or when ``/proc`` cannot be read)."""
    status = _status(peer.pid, proc_root)
    if _effective(status, "Uid") != peer.uid or _effective(status, "Gid") != peer.gid:
        raise AttestationFailed(f"process {peer.pid} changed its uid or gid after connecting")
    exe: str | None = None
    binary: tuple[int, int] | None = None
    if with_binary:
        exe, binary = _binary(peer.pid, proc_root)
    return ProcessImage(peer.uid, peer.gid, _groups(status), exe, binary)


def check_same_process(peer: PeerCredentials, *, proc_root: str = "/proc") -> None:
    """Pid-reuse guard: the process behind ``peer.pid`` is still the one that connected."""
    # Whatever was read from /proc/<pid> after connect() named the connecting process if the
    # start time still matches now (SPIRE peertracker IsAlive).
    if process_start_time(peer.pid, proc_root=proc_root) != peer.start_time:
        raise AttestationFailed(f"process {peer.pid} exited; its pid now names another process")


def _status(pid: int, proc_root: str) -> dict[str, str]:
    try:
        with open(f"{proc_root}/{pid}/status", "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as exc:
        raise AttestationFailed(f"cannot read the status of process {pid}: {exc}") from exc
    return dict(line.partition(":")[::2] for line in lines)


def _binary(pid: int, proc_root: str) -> tuple[str, tuple[int, int]]:
    """Path and (device, inode) of the binary process ``pid`` runs."""
    exe = f"{proc_root}/{pid}/exe"
    try:
        path = os.readlink(exe)
        st = os.stat(exe)
    except OSError as exc:
        raise AttestationFailed(f"cannot read the binary path of process {pid}: {exc}") from exc
    return path, (st.st_dev, st.st_ino)


def _effective(status: dict[str, str], key: str) -> int:
    try:
        return int(status[key].split()[1])  # real, effective, saved, filesystem
    except (KeyError, IndexError, ValueError) as exc:
        raise AttestationFailed(f"malformed {key} line in /proc status") from exc


def _groups(status: dict[str, str]) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(g) for g in status.get("Groups", "").split()}))
    except ValueError as exc:
        raise AttestationFailed("malformed Groups line in /proc status") from exc
