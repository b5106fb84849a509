"""Workload attestation from the kernel: who is on the other end of a Unix socket.

``SO_PEERCRED`` gives the caller's pid, uid and gid as of ``connect()``. :func:`peer_credentials`
reads them together with the process start time (``/proc/<pid>/stat`` field 22). Later,
:meth:`UnixAttestor.attest` derives the ``unix`` selectors from ``/proc/<pid>`` and then checks
that the pid still names the same process (same start time, same effective uid/gid): a caller that
exited and had its pid reused, or that changed its uid after connecting, fails attestation rather
than lending its identity to someone else (SPIRE's peertracker does the same).

A connection outlives the exec of the process that opened it: a process can connect, fork, and
exec a registered binary while its child keeps using the connection. :meth:`UnixAttestor.admit`
therefore records the caller's :class:`ProcessImage` (binary, uid/gids) when the connection is
accepted, and :meth:`UnixAttestor.attest` refuses (:class:`NotAuthorized`) a call made when the
process behind the connection no longer has that image. What this cannot see is an exec between
``connect()`` and the agent's accept-time look, a window of the accept latency.

Selectors: ``unix:uid:<n>``, ``unix:user:<name>``, ``unix:gid:<n>``, ``unix:group:<name>``,
``unix:supplementary_gid:<n>``, ``unix:supplementary_group:<name>`` (names only when the account
exists), ``unix:path:<exe>`` (``readlink /proc/<pid>/exe``) and ``unix:sha256:<hex>`` (of the
running binary, read through ``/proc/<pid>/exe`` so a replaced file cannot fool it; skipped when the
binary is larger than the configured limit, which can only match fewer entries, never more).

Interpreted programs share their interpreter's path and hash: two Python services of one user look
alike to ``unix:path`` and ``unix:sha256``; tell them apart by uid or gid.
"""

from __future__ import annotations

import grp
import hashlib
import logging
import os
import pwd
import socket
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from s2s.core.errors import AttestationFailed, InvalidConfig, NotAuthorized
from s2s.core.selectors import Selector

__all__ = [
    "DEFAULT_HASH_CACHE_SIZE",
    "DEFAULT_SHA256_MAX_BYTES",
    "AttestorConfig",
    "PeerCredentials",
    "ProcessImage",
    "UnixAttestor",
    "peer_credentials",
    "process_start_time",
    "socket_peer",
]

log = logging.getLogger(__name__)

DEFAULT_SHA256_MAX_BYTES = 128 * 1024 * 1024
_PEERCRED = struct.Struct("3i")
DEFAULT_HASH_CACHE_SIZE = 256
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
    :meth:`UnixAttestor.admit` saw it when the connection was accepted."""

    pid: int
    uid: int
    gid: int
    start_time: int  # /proc/<pid>/stat field 22, read when the connection was accepted
    image: ProcessImage | None = None


@dataclass(frozen=True, slots=True)
class AttestorConfig:
    """What :class:`UnixAttestor` derives.

    ``sha256_max_bytes`` bounds the binary size that is hashed (0 = no limit).
    """

    discover_path: bool = True
    sha256: bool = True
    sha256_max_bytes: int = DEFAULT_SHA256_MAX_BYTES
    hash_cache_size: int = DEFAULT_HASH_CACHE_SIZE  # binaries whose hash is remembered

    def __post_init__(self) -> None:
        if self.sha256_max_bytes < 0:
            raise InvalidConfig("sha256_max_bytes must be 0 (no limit) or a positive size")
        if self.hash_cache_size < 1:
            raise InvalidConfig("hash_cache_size must be at least 1")
        if self.sha256 and not self.discover_path:
            raise InvalidConfig("the sha256 selector needs discover_path (it hashes that binary)")


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


class UnixAttestor:
    """Derives ``unix:*`` selectors for a caller; thread-safe (runs in worker threads)."""

    def __init__(
        self,
        config: AttestorConfig | None = None,
        *,
        proc_root: str = "/proc",
        user_name: Callable[[int], str | None] | None = None,
        group_name: Callable[[int], str | None] | None = None,
    ) -> None:
        self._config = config or AttestorConfig()
        self._proc = proc_root
        self._user_name = user_name or _user_name
        self._group_name = group_name or _group_name
        self._hashes: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, peer: PeerCredentials) -> PeerCredentials:
        """``peer`` with the :class:`ProcessImage` it has now; called when its connection is
        accepted, so that later calls can be held to it. :class:`AttestationFailed` if the
        process cannot be read or is no longer the one that connected."""
        image = self._image(peer)
        self._check_same_process(peer)
        return replace(peer, image=image)

    def attest(self, peer: PeerCredentials) -> frozenset[Selector]:
        """The caller's selectors; :class:`AttestationFailed` if it cannot be established,
        :class:`NotAuthorized` if the process no longer has the image ``peer`` was admitted with
        (it exec'd another binary or changed its groups since its connection was accepted)."""
        image = self._image(peer)
        _held_to_admission(peer, image)
        out = [Selector("unix", f"uid:{peer.uid}"), Selector("unix", f"gid:{peer.gid}")]
        if (user := self._user_name(peer.uid)) is not None:
            out.append(Selector("unix", f"user:{user}"))
        if (group := self._group_name(peer.gid)) is not None:
            out.append(Selector("unix", f"group:{group}"))
        for gid in image.groups:
            out.append(Selector("unix", f"supplementary_gid:{gid}"))
            if (name := self._group_name(gid)) is not None:
                out.append(Selector("unix", f"supplementary_group:{name}"))
        if image.exe is not None:
            out.append(Selector("unix", f"path:{image.exe}"))
            if self._config.sha256:
                digest = self._sha256(peer.pid, image)
                if digest is not None:
                    out.append(Selector("unix", f"sha256:{digest}"))
        self._check_same_process(peer)
        return frozenset(out)

    def recheck(self, peer: PeerCredentials) -> None:
        """What :meth:`attest` checks about the caller, without deriving selectors: the process
        still has its admitted image and start time (errors as :meth:`attest`). Selectors
        derive from that image, so ones obtained earlier for ``peer`` still hold (bar renamed
        accounts, which the next :meth:`attest` picks up)."""
        _held_to_admission(peer, self._image(peer))
        self._check_same_process(peer)

    def _image(self, peer: PeerCredentials) -> ProcessImage:
        """The process's image now; its effective ids must still be the connect-time ones."""
        status = self._status(peer.pid)
        if _effective(status, "Uid") != peer.uid or _effective(status, "Gid") != peer.gid:
            raise AttestationFailed(f"process {peer.pid} changed its uid or gid after connecting")
        exe: str | None = None
        binary: tuple[int, int] | None = None
        if self._config.discover_path:
            exe, binary = self._binary(peer.pid)
        return ProcessImage(peer.uid, peer.gid, _groups(status), exe, binary)

    def _status(self, pid: int) -> dict[str, str]:
        try:
            with open(f"{self._proc}/{pid}/status", "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError as exc:
            raise AttestationFailed(f"cannot read the status of process {pid}: {exc}") from exc
        return dict(line.partition(":")[::2] for line in lines)

    def _binary(self, pid: int) -> tuple[str, tuple[int, int]]:
        """Path and (device, inode) of the binary process ``pid`` runs."""
        exe = f"{self._proc}/{pid}/exe"
        try:
            path = os.readlink(exe)
            st = os.stat(exe)
        except OSError as exc:
            raise AttestationFailed(f"cannot read the binary path of process {pid}: {exc}") from exc
        return path, (st.st_dev, st.st_ino)

    def _sha256(self, pid: int, image: ProcessImage) -> str | None:
        """Hash of the running binary, remembered (least recently used first out) by device,
        inode, size and change times, so a busy caller costs one hash per binary version."""
        limit = self._config.sha256_max_bytes
        try:
            with open(f"{self._proc}/{pid}/exe", "rb") as f:
                before = _file_key(os.fstat(f.fileno()))
                if before[:2] != image.binary:
                    raise AttestationFailed(f"process {pid} exec'd while it was attested")
                if (cached := self._cached_hash(before)) is not None:
                    return cached
                if limit and before[2] > limit:
                    log.info("attest.sha256_skipped", extra={"pid": pid, "size": before[2]})
                    return None
                digest = hashlib.file_digest(f, "sha256").hexdigest()
                after = _file_key(os.fstat(f.fileno()))
        except OSError as exc:
            raise AttestationFailed(f"cannot hash the binary of process {pid}: {exc}") from exc
        if after != before:
            raise AttestationFailed(f"the binary of process {pid} changed while it was hashed")
        with self._lock:
            self._hashes[before] = digest
            while len(self._hashes) > self._config.hash_cache_size:
                self._hashes.popitem(last=False)
        return digest

    def _cached_hash(self, key: tuple[int, ...]) -> str | None:
        with self._lock:
            digest = self._hashes.get(key)
            if digest is not None:
                self._hashes.move_to_end(key)
            return digest

    @property
    def cached_hashes(self) -> int:
        """Binaries whose hash is remembered (bounded by ``hash_cache_size``)."""
        with self._lock:
            return len(self._hashes)

    def _check_same_process(self, peer: PeerCredentials) -> None:
        """Pid-reuse guard: the process we read must be the one that connected."""
        # Everything above was read from /proc/<pid> after connect(); if the start time still
        # matches, the pid named the connecting process throughout (SPIRE peertracker IsAlive).
        if process_start_time(peer.pid, proc_root=self._proc) != peer.start_time:
            raise AttestationFailed(f"process {peer.pid} exited; its pid now names another process")


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


def _held_to_admission(peer: PeerCredentials, image: ProcessImage) -> None:
    if peer.image is not None and image != peer.image:
        raise NotAuthorized(
            f"process {peer.pid} is not the process that opened this connection: "
            f"{_what_changed(peer.image, image)}; reconnect from the process that calls"
        )


def _what_changed(before: ProcessImage, now: ProcessImage) -> str:
    if before.binary != now.binary or before.exe != now.exe:
        return f"it now runs {now.exe!r}, it ran {before.exe!r} when it connected"
    if before.groups != now.groups:
        return "its supplementary groups changed after it connected"
    return "its uid or gid changed after it connected"


def _file_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None
