"""What the kernel says about the process on the other end of a Unix socket.

``SO_PEERCRED`` gives the caller's pid, uid and gid as of ``connect()``; :func:`peer_credentials`
reads them together with the process start time (``/proc/<pid>/stat`` field 22), which later
tells whether the pid still names the same process (:func:`check_same_process`: a caller that
exited and had its pid reused fails rather than lending its identity to someone else, as SPIRE's
peertracker does). :func:`process_image` reads what a process is now from ``/proc/<pid>``: its
effective ids, supplementary groups and the binary it runs (path and device/inode);
:func:`process_reading` adds the binary's full file identity (device, inode, size, change times),
which is what a remembered ``unix:sha256`` is keyed by.

Everything here reads ``/proc`` (a few system calls, no file contents): attestors call it from
worker threads, and the Workload API runs :func:`process_reading` on its event loop.
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
    "file_key",
    "process_image",
    "process_reading",
    "process_start_time",
    "socket_peer",
]

_PEERCRED = struct.Struct("3i")
_START_TIME_FIELD = 22  # proc(5): (22) starttime, in clock ticks since boot
_READ_SIZE = 8192


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
        data = _read(f"{proc_root}/{pid}/stat")
        # Field 2 (comm) is parenthesised and may hold spaces or ')': split after the last ')'.
        rest = data[data.rindex(b")") + 2 :].split(None, _START_TIME_FIELD - 2)
        return int(rest[_START_TIME_FIELD - 3])
    except (OSError, ValueError, IndexError) as exc:
        raise AttestationFailed(f"cannot read the start time of process {pid}: {exc}") from exc


def _read(path: str) -> bytes:
    """The whole of a small ``/proc`` file (os.read: no buffered file object per call).

    A read that returns less than asked for has reached the end: ``/proc/<pid>/stat`` and
    ``status`` are generated whole and copied out as far as the buffer goes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, _READ_SIZE)]
        while len(chunks[-1]) == _READ_SIZE:
            chunks.append(os.read(fd, _READ_SIZE))
    finally:
        os.close(fd)
    return b"".join(chunks)


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
    return process_reading(peer, proc_root=proc_root, with_binary=with_binary)[0]


def process_reading(
    peer: PeerCredentials, *, proc_root: str = "/proc", with_binary: bool = True
) -> tuple[ProcessImage, tuple[int, ...] | None]:
    """:func:`process_image` and the file identity of the binary (``st_dev``, ``st_ino``,
    ``st_size``, ``st_mtime_ns``, ``st_ctime_ns``; ``None`` without ``with_binary``)."""
    status = _status(peer.pid, proc_root)
    if _effective(status, b"Uid") != peer.uid or _effective(status, b"Gid") != peer.gid:
        raise AttestationFailed(f"process {peer.pid} changed its uid or gid after connecting")
    exe: str | None = None
    key: tuple[int, ...] | None = None
    if with_binary:
        exe, key = _binary(peer.pid, proc_root)
    binary = (key[0], key[1]) if key is not None else None
    image = ProcessImage(peer.uid, peer.gid, _groups(status), exe, binary)
    return image, key


def check_same_process(peer: PeerCredentials, *, proc_root: str = "/proc") -> None:
    """Pid-reuse guard: the process behind ``peer.pid`` is still the one that connected."""
    # Whatever was read from /proc/<pid> after connect() named the connecting process if the
    # start time still matches now (SPIRE peertracker IsAlive).
    if process_start_time(peer.pid, proc_root=proc_root) != peer.start_time:
        raise AttestationFailed(f"process {peer.pid} exited; its pid now names another process")


def _status(pid: int, proc_root: str) -> bytes:
    try:
        return b"\n" + _read(f"{proc_root}/{pid}/status")
    except OSError as exc:
        raise AttestationFailed(f"cannot read the status of process {pid}: {exc}") from exc


def _line(status: bytes, key: bytes) -> bytes | None:
    """The value of line ``key:`` of a status text (``status`` starts with a newline)."""
    start = status.find(b"\n" + key + b":")
    if start < 0:
        return None
    start += len(key) + 2
    end = status.find(b"\n", start)
    return status[start:] if end < 0 else status[start:end]


def file_key(st: os.stat_result) -> tuple[int, ...]:
    """What tells one version of a file from another: device, inode, size, change times."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _binary(pid: int, proc_root: str) -> tuple[str, tuple[int, ...]]:
    """Path and :func:`file_key` of the binary process ``pid`` runs."""
    exe = f"{proc_root}/{pid}/exe"
    try:
        path = os.readlink(exe)
        st = os.stat(exe)
    except OSError as exc:
        raise AttestationFailed(f"cannot read the binary path of process {pid}: {exc}") from exc
    return path, file_key(st)


def _effective(status: bytes, key: bytes) -> int:
    try:
        line = _line(status, key)
        if line is None:
            raise KeyError(key)
        return int(line.split()[1])  # real, effective, saved, filesystem
    except (KeyError, IndexError, ValueError) as exc:
        raise AttestationFailed(f"malformed {key.decode()} line in /proc status") from exc


def _groups(status: bytes) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(g) for g in (_line(status, b"Groups") or b"").split()}))
    except ValueError as exc:
        raise AttestationFailed("malformed Groups line in /proc status") from exc
