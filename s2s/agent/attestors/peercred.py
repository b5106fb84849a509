"""What the kernel says about the process on the other end of a Unix socket.

``SO_PEERCRED`` gives the caller's pid, uid and gid as of ``connect()``; :func:`peer_credentials`
reads them together with the process start time (``/proc/<pid>/stat`` field 22), which later
tells whether the pid still names the same process (:func:`check_same_process`: a caller that
exited and had its pid reused fails rather than lending its identity to someone else, as SPIRE's
peertracker does). :func:`process_image` reads what a process is now from ``/proc/<pid>``: its
effective ids, supplementary groups and the binary it runs (path and device/inode);
:func:`process_reading` adds the binary's full file identity (device, inode, size, change times),
which is what a remembered ``unix:sha256`` is keyed by.

Everything here reads ``/proc`` (a few system calls, no file contents). Attestors call the
path-based functions from worker threads. The per-call check on the Workload API's event loop
goes through a :class:`ProcHandle` instead: ``/proc/<pid>`` and its ``status`` held open for the
connection's life, ``status`` re-read with ``pread`` (:func:`recheck_reading`). An open
``/proc/<pid>`` entry stays bound to the process it was opened for: once that process is gone,
every read through it fails (``ESRCH``) even if the pid number names another process by then;
off procfs (a ``/proc`` laid out by tests) the start time is compared as well. The binary is
looked at with ``statx`` and ``AT_STATX_DONT_SYNC`` where the C library has it, so that a binary
on a network or FUSE filesystem is described from the attributes the kernel holds rather than by
asking its server (which could block the loop); the full attestation, in a worker thread, opens
the binary and sees fresh attributes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from s2s.core.errors import AttestationFailed

__all__ = [
    "PeerCredentials",
    "ProcHandle",
    "ProcessImage",
    "check_same_process",
    "file_key",
    "open_peer",
    "peer_credentials",
    "process_image",
    "process_reading",
    "process_start_time",
    "recheck_reading",
    "socket_peer",
]

_PEERCRED = struct.Struct("3i")
_START_TIME_FIELD = 22  # proc(5): (22) starttime, in clock ticks since boot
_READ_SIZE = 8192
_AT_STATX_DONT_SYNC = 0x4000  # linux/fcntl.h: the attributes the kernel holds, no server round trip
_STATX_BASIC_STATS = 0x7FF
_STATX_SIZE = 256  # sizeof(struct statx)
# From offset 32: stx_ino, stx_size, (blocks, attributes_mask, atime, btime), stx_ctime (sec,
# nsec, pad), stx_mtime, (rdev), stx_dev_major, stx_dev_minor.
_STATX_FIELDS = struct.Struct("=QQ48xqI4xqI4x8xII")


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
    # /proc/<pid> held open for the connection (Workload API only; event loop only)
    proc: ProcHandle | None = field(default=None, compare=False, repr=False)

    def close(self) -> None:
        """Release the held ``/proc`` entry, if any (when the connection closes)."""
        if self.proc is not None:
            self.proc.close()


class ProcHandle:
    """``/proc/<pid>`` of a connected caller and its ``status``, held open (two fds).

    Re-reading ``status`` costs a ``pread`` instead of a path lookup, an open and a close, and
    the entry cannot come to name another process: on procfs, reads through it fail once the
    process it was opened for is gone. Used and closed on one thread (the Workload API's event
    loop); fds that are never closed are closed when the object is collected.
    """

    __slots__ = ("__weakref__", "_buf", "_close", "_dir", "_status", "bound", "pid")

    def __init__(self, pid: int, *, proc_root: str = "/proc") -> None:
        self.pid = pid
        try:
            self._dir = os.open(f"{proc_root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise AttestationFailed(f"cannot open /proc of process {pid}: {exc}") from exc
        try:
            self._status = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir)
        except OSError as exc:
            _close_fds([self._dir])
            raise AttestationFailed(f"cannot open /proc of process {pid}: {exc}") from exc
        self._buf = ctypes.create_string_buffer(_STATX_SIZE)
        # On procfs the entry is bound to the process it was opened for (reads fail with ESRCH
        # once it is gone), so a pid that names another process is caught without the start time.
        self.bound = _is_procfs(self._dir)
        self._close = weakref.finalize(self, _close_fds, [self._dir, self._status])

    def close(self) -> None:
        self._close()

    @property
    def closed(self) -> bool:
        return not self._close.alive

    def start_time(self) -> int:
        """Field 22 of the process's ``stat``, read through the held entry (opened and closed:
        needed at admission, and per call only off procfs); :class:`AttestationFailed` once the
        process is gone."""
        try:
            if not self._close.alive:
                raise OSError(f"the /proc entry of process {self.pid} was released")
            fd = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir)
            try:
                data = os.read(fd, _READ_SIZE)
            finally:
                os.close(fd)
            return _start_time(data)
        except (OSError, ValueError, IndexError) as exc:
            raise AttestationFailed(
                f"cannot read the start time of process {self.pid}: {exc}"
            ) from exc

    def reading(
        self, peer: PeerCredentials, *, with_binary: bool
    ) -> tuple[ProcessImage, tuple[int, ...] | None]:
        """:func:`process_reading` through the held entry."""
        try:
            status = b"\n" + self._pread(self._status)
        except OSError as exc:
            raise AttestationFailed(f"cannot read the status of process {self.pid}: {exc}") from exc
        key: tuple[int, ...] | None = None
        exe: str | None = None
        if with_binary:
            try:
                exe = os.readlink("exe", dir_fd=self._dir)
                key = self._binary_key()
            except OSError as exc:
                raise AttestationFailed(
                    f"cannot read the binary path of process {self.pid}: {exc}"
                ) from exc
        return _image(peer, status, exe, key), key

    def _binary_key(self) -> tuple[int, ...]:
        """:func:`file_key` of the binary, from the attributes the kernel holds
        (``AT_STATX_DONT_SYNC``: a network or FUSE filesystem is not asked; ``os.stat`` where
        the C library has no ``statx``)."""
        if _statx is None:
            return file_key(os.stat("exe", dir_fd=self._dir))
        if _statx(self._dir, b"exe", _AT_STATX_DONT_SYNC, _STATX_BASIC_STATS, self._buf):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), "exe")
        ino, size, c_sec, c_nsec, m_sec, m_nsec, major, minor = _STATX_FIELDS.unpack_from(
            self._buf, 32
        )
        ns = 1_000_000_000
        return (os.makedev(major, minor), ino, size, m_sec * ns + m_nsec, c_sec * ns + c_nsec)

    def _pread(self, fd: int) -> bytes:
        if not self._close.alive:
            raise OSError(f"the /proc entry of process {self.pid} was released")
        size = _READ_SIZE
        while True:  # generated whole at offset 0; a full buffer may have been cut short
            data = os.pread(fd, size, 0)
            if len(data) < size:
                return data
            size *= 4


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def open_peer(pid: int, uid: int, gid: int, *, proc_root: str = "/proc") -> PeerCredentials:
    """A caller's :class:`PeerCredentials` with its ``/proc`` entry held open (``proc``) and its
    start time read through it; the caller closes it (:meth:`PeerCredentials.close`)."""
    handle = ProcHandle(pid, proc_root=proc_root)
    try:
        return PeerCredentials(pid, uid, gid, handle.start_time(), proc=handle)
    except BaseException:
        handle.close()
        raise


def recheck_reading(
    peer: PeerCredentials, *, proc_root: str = "/proc", with_binary: bool = True
) -> tuple[ProcessImage, tuple[int, ...] | None]:
    """:func:`process_reading` and then the pid-reuse guard (:func:`check_same_process`), through
    ``peer.proc`` when it is held (the event loop's per-call check), else by path."""
    handle = peer.proc
    if handle is None:
        reading = process_reading(peer, proc_root=proc_root, with_binary=with_binary)
        check_same_process(peer, proc_root=proc_root)
        return reading
    reading = handle.reading(peer, with_binary=with_binary)
    # On procfs the reads above fail once the process is gone, whatever its pid names by then;
    # elsewhere (a /proc laid out by tests) what was read named it if its start time matches.
    if not handle.bound and handle.start_time() != peer.start_time:
        raise AttestationFailed(f"process {peer.pid} exited; its pid now names another process")
    return reading


def process_start_time(pid: int, *, proc_root: str = "/proc") -> int:
    """Field 22 of ``/proc/<pid>/stat``; :class:`AttestationFailed` if the process is gone."""
    try:
        return _start_time(_read(f"{proc_root}/{pid}/stat"))
    except (OSError, ValueError, IndexError) as exc:
        raise AttestationFailed(f"cannot read the start time of process {pid}: {exc}") from exc


def _start_time(data: bytes) -> int:
    # Field 2 (comm) is parenthesised and may hold spaces or ')': split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split(None, _START_TIME_FIELD - 2)
    return int(rest[_START_TIME_FIELD - 3])


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
    exe: str | None = None
    key: tuple[int, ...] | None = None
    if with_binary:
        exe, key = _binary(peer.pid, proc_root)
    return _image(peer, status, exe, key), key


def _image(
    peer: PeerCredentials, status: bytes, exe: str | None, key: tuple[int, ...] | None
) -> ProcessImage:
    if _effective(status, b"Uid") != peer.uid or _effective(status, b"Gid") != peer.gid:
        raise AttestationFailed(f"process {peer.pid} changed its uid or gid after connecting")
    binary = (key[0], key[1]) if key is not None else None
    return ProcessImage(peer.uid, peer.gid, _groups(status), exe, binary)


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
        return os.readlink(exe), file_key(os.stat(exe))  # a worker thread: fresh attributes
    except OSError as exc:
        raise AttestationFailed(f"cannot read the binary path of process {pid}: {exc}") from exc


def _libc(name: str) -> Callable[..., int] | None:
    """A function of the C library (ints, bytes and buffers as arguments), if it has it."""
    try:
        fn: Callable[..., int] = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError):
        return None
    return fn


_statx = _libc("statx")  # (dirfd, path, flags, mask, 256-byte buffer)
_fstatfs = _libc("fstatfs")  # (fd, buffer of a struct statfs)
_PROC_SUPER_MAGIC = 0x9FA0  # linux/magic.h


def _is_procfs(fd: int) -> bool:
    """Whether ``fd`` is on a procfs (``fstatfs``'s ``f_type``; False when it cannot tell)."""
    if _fstatfs is None:
        return False
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _fstatfs(fd, buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value == _PROC_SUPER_MAGIC


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
