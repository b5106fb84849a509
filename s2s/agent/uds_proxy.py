"""The public Workload API socket: a byte-forwarding front that knows who connected.

grpcio cannot tell a servicer anything about a Unix-socket caller (``context.peer()`` is
``"unix:"``) and cannot adopt an accepted fd. So the public socket is served by asyncio: for each
connection we read ``SO_PEERCRED`` (and the caller's start time), open a connection to grpc's
private socket from a random abstract address, remember ``address -> credentials``, and copy bytes
both ways. grpc reports that abstract address as the call's peer (``unix-abstract:<tag>``), which
:meth:`PeerTaggingProxy.credentials` maps back. The private socket lives in a 0700 directory so that
workloads cannot connect to it directly and choose their own address; an unknown peer fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import stat
from collections.abc import Callable

from s2s.agent.attestor import PeerCredentials, peer_credentials
from s2s.core.errors import AttestationFailed, InvalidConfig

__all__ = ["PeerTaggingProxy", "prepare_socket_path"]

log = logging.getLogger(__name__)

_TAG_PREFIX = "s2s-wl-"
_GRPC_PEER_PREFIX = "unix-abstract:"
_MAX_UNIX_PATH = 107
_MAX_PENDING_BYTES = 256 * 1024  # held per side until the inner connection is linked


def prepare_socket_path(path: str) -> None:
    """Check that a socket can be created at ``path``; remove a stale socket left there.

    Raises :class:`InvalidConfig` for a relative or overlong path, a missing directory, one that
    others may write to (without the sticky bit), a path that is not a socket (a regular file is
    never deleted), or a socket another server answers on.
    """
    if not os.path.isabs(path):
        raise InvalidConfig(f"the socket path {path!r} must be absolute")
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise InvalidConfig(f"the socket path {path!r} is longer than {_MAX_UNIX_PATH} bytes")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise InvalidConfig(f"the directory {parent!r} of the socket {path!r} does not exist")
    mode = os.stat(parent).st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        # Anyone who can write there can swap the socket for their own and impersonate the agent.
        raise InvalidConfig(f"the socket directory {parent!r} is writable by others; make it 0755")
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


class _Forward(asyncio.Protocol):
    """One direction-pair of a proxied connection; writes to ``other`` with flow control.

    Bytes that arrive before the two halves are linked are held and flushed by :meth:`link`:
    ``pause_reading()`` in ``connection_made`` is not honoured on every Python 3.11 release
    (3.11.2 starts reading anyway), and gRPC's server sends its SETTINGS frame as soon as the
    inner connection opens, so either side may speak first.
    """

    def __init__(self, on_lost: asyncio.Future[None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _Forward | None = None
        self.got_eof = False
        self._on_lost = on_lost
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def link(self, other: _Forward) -> None:
        """Start forwarding to ``other``, first whatever arrived before."""
        self.other = other
        held, self._pending, self._pending_bytes = b"".join(self._pending), [], 0
        if held and other.transport is not None:
            other.transport.write(held)

    def data_received(self, data: bytes) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > _MAX_PENDING_BYTES and self.transport is not None:
            # A gRPC client's opening is a few hundred bytes; this is not one.
            log.warning("workload_api.proxy_flood", extra={"bytes": self._pending_bytes})
            self.transport.close()

    def eof_received(self) -> bool:
        # Pass the half-close on; once both directions have ended, close both sides.
        self.got_eof = True
        other = self.other.transport if self.other is not None else None
        if other is None or self.other is None or self.other.got_eof:
            if other is not None:
                other.close()
            return False
        if other.can_write_eof():
            other.write_eof()
            return True
        other.close()
        return False

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()
        if self._on_lost is not None and not self._on_lost.done():
            self._on_lost.set_result(None)


class PeerTaggingProxy:
    """Serves ``public_path`` (mode 0777) and forwards every connection to ``inner_path``."""

    def __init__(self, public_path: str, inner_path: str, *, proc_root: str = "/proc") -> None:
        self.public_path = public_path
        self._inner = inner_path
        self._proc = proc_root
        self._peers: dict[str, PeerCredentials | AttestationFailed] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        prepare_socket_path(self.public_path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._accept, path=self.public_path)
        # Any local process may connect; who it is decides what it gets (Workload Endpoint 2).
        os.chmod(self.public_path, 0o777)  # noqa: S103

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                os.unlink(self.public_path)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def open_connections(self) -> int:
        """Workload connections currently proxied."""
        return len(self._peers)

    def credentials(self, grpc_peer: str) -> PeerCredentials:
        """The credentials of the connection grpc names ``grpc_peer``; fails closed."""
        found = self._peers.get(grpc_peer.removeprefix(_GRPC_PEER_PREFIX))
        if not grpc_peer.startswith(_GRPC_PEER_PREFIX) or found is None:
            raise AttestationFailed("the call did not come through the workload socket")
        if isinstance(found, AttestationFailed):
            raise found
        return found

    def _accept(self) -> _Front:
        return _Front(self._connected)

    def _connected(self, front: _Forward, transport: asyncio.Transport) -> None:
        # Hold the caller's bytes until the inner link is up.
        transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._connect_inner(front, transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_inner(self, front: _Forward, transport: asyncio.Transport) -> None:
        tag = f"{_TAG_PREFIX}{secrets.token_hex(16)}"
        try:
            self._peers[tag] = self._read_credentials(transport)
            back = await self._open_inner(tag)
        except (OSError, asyncio.CancelledError) as exc:
            self._peers.pop(tag, None)
            transport.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("workload_api.proxy_failed", extra={"error": str(exc)})
            return
        front.link(back)
        back.link(front)
        if transport.is_closing():
            back.close()
        transport.resume_reading()
        try:
            await back.lost()
        finally:
            self._peers.pop(tag, None)
            transport.close()

    def _read_credentials(
        self, transport: asyncio.Transport
    ) -> PeerCredentials | AttestationFailed:
        sock = transport.get_extra_info("socket")
        try:
            return peer_credentials(sock, proc_root=self._proc)
        except AttestationFailed as exc:
            # Keep the connection so the caller gets a gRPC UNAVAILABLE rather than a reset.
            log.info("workload_api.peercred_failed", extra={"error": str(exc)})
            return exc

    async def _open_inner(self, tag: str) -> _Back:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + tag)
            sock.setblocking(False)
            await loop.sock_connect(sock, self._inner)
            _, back = await loop.create_unix_connection(_Back, sock=sock)
        except BaseException:
            sock.close()
            raise
        return back


class _Front(_Forward):
    """The workload-facing half; tells the proxy when it is connected."""

    def __init__(self, on_made: Callable[[_Forward, asyncio.Transport], None]) -> None:
        super().__init__()
        self._on_made = on_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self._on_made(self, self.transport)


class _Back(_Forward):
    """The grpc-facing half; :meth:`lost` resolves when that connection closes."""

    def __init__(self) -> None:
        super().__init__(asyncio.get_running_loop().create_future())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def lost(self) -> None:
        assert self._on_lost is not None
        await self._on_lost
