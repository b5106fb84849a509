"""The public Workload API socket: a byte-forwarding front that knows who connected.

grpcio cannot tell a servicer anything about a Unix-socket caller (``context.peer()`` is
``"unix:"``) and cannot adopt an accepted fd. So the public socket is served by asyncio: for each
connection we read ``SO_PEERCRED``, count it against the connection limits of the caller's uid,
attest the caller as it is now (``admit``: start time, binary, ids), open a connection to grpc's
private socket from a random abstract address, remember ``address -> credentials``, and copy bytes
both ways. grpc reports that abstract address as the call's peer (``unix-abstract:<tag>``), which
:meth:`PeerTaggingProxy.credentials` maps back. The private socket lives in a 0700 directory so that
workloads cannot connect to it directly and choose their own address; an unknown peer fails closed.
The server tells the proxy when calls start and end (:meth:`PeerTaggingProxy.call`) so that a
connection without a call in progress can be closed after the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator

from s2s.agent.attestors.peercred import PeerCredentials, socket_peer
from s2s.agent.socket_path import prepare_socket_path
from s2s.agent.workload_limits import ConnectionCounter, WorkloadLimits
from s2s.core.errors import AttestationFailed, NotAuthorized, S2SError, Unavailable

__all__ = ["Admit", "ConnectionEvent", "PeerTaggingProxy"]

Admit = Callable[[int, int, int], Awaitable[PeerCredentials]]  # (pid, uid, gid) -> attested
ConnectionEvent = Callable[[str, str], None]  # ("refused" | "closed", reason)

log = logging.getLogger(__name__)

_TAG_PREFIX = "s2s-wl-"
_GRPC_PEER_PREFIX = "unix-abstract:"
_UNKNOWN_UID = -1  # SO_PEERCRED unreadable: such connections share one budget
_REFUSAL_LOG_EVERY = 10.0  # seconds
_MAX_PENDING_BYTES = 256 * 1024  # held per side until the inner connection is linked


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
    """Serves ``public_path`` (mode 0777) and forwards every connection to ``inner_path``.

    Each accepted connection is counted against ``limits`` by the caller's uid (refused ones are
    closed at once and reported to ``on_event("refused", reason)``), attested by ``admit``
    before any of its bytes reach grpc, and closed once it has had no call in progress for
    ``limits.idle_timeout`` seconds (``on_event("closed", "idle")``).
    """

    def __init__(
        self,
        public_path: str,
        inner_path: str,
        *,
        admit: Admit,
        limits: WorkloadLimits | None = None,
        on_event: ConnectionEvent | None = None,
    ) -> None:
        self.public_path = public_path
        self._inner = inner_path
        self._admit = admit
        self._limits = limits or WorkloadLimits()
        self._counter = ConnectionCounter(self._limits)
        self._on_event = on_event
        self._conns: dict[str, _Connection] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_refusal_log: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        prepare_socket_path(self.public_path)
        loop = self._loop = asyncio.get_running_loop()
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
        for conn in list(self._conns.values()):
            self._drop(conn)

    @property
    def open_connections(self) -> int:
        """Workload connections currently open (counted against the limits)."""
        return self._counter.total

    def credentials(self, grpc_peer: str) -> PeerCredentials:
        """The credentials of the connection grpc names ``grpc_peer``; fails closed."""
        conn = self._conn(grpc_peer)
        if conn is None or conn.peer is None:
            raise AttestationFailed("the call did not come through the workload socket")
        if isinstance(conn.peer, S2SError):
            raise conn.peer
        return conn.peer

    def memo(self, grpc_peer: str) -> object:
        """What :meth:`remember` kept for this connection (``None`` if nothing or unknown)."""
        conn = self._conn(grpc_peer)
        return conn.memo if conn is not None else None

    def remember(self, grpc_peer: str, value: object) -> None:
        """Keep ``value`` for this connection until it closes (the server's attestation)."""
        conn = self._conn(grpc_peer)
        if conn is not None:
            conn.memo = value

    def refuse_calls(self, grpc_peer: str, reason: NotAuthorized) -> None:
        """Every later call on this connection fails with ``reason`` (its caller changed)."""
        conn = self._conn(grpc_peer)
        if conn is not None and not isinstance(conn.peer, S2SError):
            if conn.peer is not None:
                conn.peer.close()
            conn.peer = reason
            conn.memo = None
            self._event("closed", "caller_changed")

    @contextlib.contextmanager
    def call(self, grpc_peer: str) -> Iterator[None]:
        """A call in progress on this connection: it is not idle until the call ends."""
        conn = self._conn(grpc_peer)
        if conn is None:
            yield
            return
        conn.calls += 1
        try:
            yield
        finally:
            conn.calls -= 1
            if conn.calls == 0 and conn.tag in self._conns:
                conn.idle_from_now(self._limits.idle_timeout, self._idle)

    def _conn(self, grpc_peer: str) -> _Connection | None:
        if not grpc_peer.startswith(_GRPC_PEER_PREFIX):
            return None
        return self._conns.get(grpc_peer.removeprefix(_GRPC_PEER_PREFIX))

    def _accept(self) -> _Front:
        return _Front(self._connected)

    def _connected(self, front: _Forward, transport: asyncio.Transport) -> None:
        # Hold the caller's bytes until it is attested and the inner link is up.
        transport.pause_reading()
        sock = transport.get_extra_info("socket")
        ucred: tuple[int, int, int] | AttestationFailed
        try:
            ucred = socket_peer(sock)
        except AttestationFailed as exc:
            ucred = exc
        uid = ucred[1] if isinstance(ucred, tuple) else _UNKNOWN_UID
        refused = self._counter.admit(uid)
        if refused is not None:
            transport.close()
            self._refused(uid, refused)
            return
        loop = self._loop or asyncio.get_running_loop()
        conn = _Connection(f"{_TAG_PREFIX}{secrets.token_hex(16)}", uid, transport, loop)
        self._conns[conn.tag] = conn
        conn.idle_from_now(self._limits.idle_timeout, self._idle)
        task = loop.create_task(self._serve(conn, front, ucred))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, conn: _Connection, front: _Forward, ucred: tuple[int, int, int] | AttestationFailed
    ) -> None:
        transport = conn.transport
        try:
            conn.peer = await self._attest(ucred)
            back = await self._open_inner(conn.tag)
        except BaseException as exc:
            # Whatever went wrong, the connection must not stay counted against its uid.
            self._drop(conn)
            transport.close()
            if not isinstance(exc, OSError | Unavailable):
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
            self._drop(conn)
            transport.close()

    async def _attest(
        self, ucred: tuple[int, int, int] | AttestationFailed
    ) -> PeerCredentials | AttestationFailed:
        try:
            if isinstance(ucred, AttestationFailed):
                raise ucred
            return await self._admit(*ucred)
        except AttestationFailed as exc:
            # Keep the connection so the caller gets a gRPC UNAVAILABLE rather than a reset.
            log.info("workload_api.peercred_failed", extra={"error": str(exc)})
            return exc

    def _drop(self, conn: _Connection) -> None:
        if self._conns.pop(conn.tag, None) is not None:
            conn.stop_idle_timer()
            self._counter.release(conn.uid)
            if isinstance(conn.peer, PeerCredentials):
                conn.peer.close()  # the /proc entry it holds

    def _idle(self, conn: _Connection) -> None:
        if not conn.idle_for(self._limits.idle_timeout, self._idle):
            return
        if conn.calls == 0 and conn.tag in self._conns:
            log.debug("workload_api.idle_closed", extra={"uid": conn.uid})
            self._event("closed", "idle")
            conn.transport.close()

    def _refused(self, uid: int, reason: str) -> None:
        self._event("refused", reason)
        # One line per reason every few seconds: a flood must not become a log flood.
        now = time.monotonic()
        if now - self._last_refusal_log.get(reason, -_REFUSAL_LOG_EVERY) >= _REFUSAL_LOG_EVERY:
            self._last_refusal_log[reason] = now
            log.warning(
                "workload_api.connection_refused",
                extra={
                    "uid": uid,
                    "reason": reason,
                    "uid_connections": self._counter.held_by(uid),
                    "connections": self._counter.total,
                },
            )

    def _event(self, event: str, reason: str) -> None:
        if self._on_event is not None:
            self._on_event(event, reason)

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


class _Connection:
    """One workload connection: who it is, its calls in progress, its idle timer.

    The timer is not moved on every call (a busy connection would create and cancel a timer
    handle per call): it fires at the earliest time the connection could have been idle long
    enough, and :meth:`idle_for` re-arms it for the rest when a call came in between.
    """

    def __init__(
        self, tag: str, uid: int, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.tag = tag
        self.loop = loop  # kept: asking asyncio for the running loop costs a getpid() each time
        self.uid = uid
        self.transport = transport
        self.peer: PeerCredentials | S2SError | None = None  # None until attested
        self.memo: object = None
        self.calls = 0
        self.idle_since = 0.0  # loop time at which its last call ended (or it was accepted)
        self._timer: asyncio.TimerHandle | None = None

    def idle_from_now(self, timeout: float, fire: Callable[[_Connection], None]) -> None:
        """No call in progress from now on; the timer is armed if it is not already."""
        loop = self.loop
        self.idle_since = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self.idle_since + timeout, fire, self)

    def idle_for(self, timeout: float, fire: Callable[[_Connection], None]) -> bool:
        """When the timer fires: True if the connection has been idle ``timeout`` seconds;
        otherwise the timer is re-armed for when it could be (or left to the next call's end)."""
        self._timer = None
        if self.calls:
            return False  # the end of the last call in progress arms it again
        loop = self.loop
        due = self.idle_since + timeout
        if loop.time() < due:
            self._timer = loop.call_at(due, fire, self)
            return False
        return True

    def stop_idle_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


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
