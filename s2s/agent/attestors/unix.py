"""The unix workload attestor: a caller's ``unix`` selectors from what the kernel says about it.

:meth:`UnixAttestor.attest` derives the selectors from ``/proc/<pid>``
(:mod:`s2s.agent.attestors.peercred`) and then checks that the pid still names the same process
(same start time, same effective uid/gid): a caller that exited and had its pid reused, or that
changed its uid after connecting, fails attestation rather than lending its identity to someone
else.

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
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

from s2s.agent.attestors.base import AttestorOptions
from s2s.agent.attestors.peercred import (
    PeerCredentials,
    ProcessImage,
    check_same_process,
    file_key,
    process_image,
    recheck_reading,
)
from s2s.core.errors import AttestationFailed, InvalidConfig, NotAuthorized
from s2s.core.selectors import Selector

__all__ = [
    "DEFAULT_HASH_CACHE_SIZE",
    "DEFAULT_SHA256_MAX_BYTES",
    "UnixAttestor",
    "UnixAttestorConfig",
    "unix_attestor",
]

log = logging.getLogger(__name__)

DEFAULT_SHA256_MAX_BYTES = 128 * 1024 * 1024
DEFAULT_HASH_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class UnixAttestorConfig:
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


class UnixAttestor:
    """Derives ``unix:*`` selectors for a caller; thread-safe (runs in worker threads)."""

    def __init__(
        self,
        config: UnixAttestorConfig | None = None,
        *,
        proc_root: str = "/proc",
        user_name: Callable[[int], str | None] | None = None,
        group_name: Callable[[int], str | None] | None = None,
    ) -> None:
        self._config = config or UnixAttestorConfig()
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

    def recheck(self, peer: PeerCredentials) -> Hashable:
        """What :meth:`attest` checks about the caller, without deriving selectors: the process
        still has its admitted image and start time (errors as :meth:`attest`). Returns the
        reading the selectors derive from (the image and the binary's file identity): selectors
        obtained for ``peer`` when an equal reading was taken before and after still hold (bar
        renamed accounts, which the next :meth:`attest` picks up). A few ``pread`` calls on the
        ``/proc`` entry ``peer.proc`` holds open (path lookups without one) and no hashing,
        cheap enough for every call."""
        binaries = self._config.discover_path
        reading = recheck_reading(peer, proc_root=self._proc, with_binary=binaries)
        _held_to_admission(peer, reading[0])  # the pid-reuse guard passed: this process's image
        return reading

    def _image(self, peer: PeerCredentials) -> ProcessImage:
        """The process's image now; its effective ids must still be the connect-time ones."""
        return process_image(peer, proc_root=self._proc, with_binary=self._config.discover_path)

    def _sha256(self, pid: int, image: ProcessImage) -> str | None:
        """Hash of the running binary, remembered (least recently used first out) by device,
        inode, size and change times, so a busy caller costs one hash per binary version."""
        limit = self._config.sha256_max_bytes
        try:
            with open(f"{self._proc}/{pid}/exe", "rb") as f:
                before = file_key(os.fstat(f.fileno()))
                if before[:2] != image.binary:
                    raise AttestationFailed(f"process {pid} exec'd while it was attested")
                if (cached := self._cached_hash(before)) is not None:
                    return cached
                if limit and before[2] > limit:
                    log.info("attest.sha256_skipped", extra={"pid": pid, "size": before[2]})
                    return None
                digest = hashlib.file_digest(f, "sha256").hexdigest()
                after = file_key(os.fstat(f.fileno()))
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
        check_same_process(peer, proc_root=self._proc)


def unix_attestor(options: AttestorOptions) -> UnixAttestor:
    """The ``unix`` attestor as the agent configures it (registered as ``"unix"``)."""
    return UnixAttestor(
        UnixAttestorConfig(sha256_max_bytes=options.sha256_max_bytes), proc_root=options.proc_root
    )


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
