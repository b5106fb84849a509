"""What one client may hold of the CA's HTTPS listener: connections (in total and per address,
counted from accept), time to finish the TLS handshake, time to send a request's headers, and
long-polls held at once (``ServerLimits``).

aiohttp's own site can do none of the first three: it learns the peer only after the handshake
and has no header deadline (its keep-alive timer starts after a first request). So
:class:`GuardedSite` accepts connections itself, refuses one over a limit before any TLS work,
runs the handshake under a deadline (``connect_accepted_socket``) and hands the connection to
aiohttp's protocol through :class:`_GuardedConnection`, which closes it when a request's headers
do not arrive in time. ``request_deadlines`` (a middleware) tells the connection when a request
has been parsed and when it is done; while idle between requests aiohttp's keep-alive timeout
applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, cast

from aiohttp import web

from s2s.ca.config import ServerLimits
from s2s.log import F

__all__ = [
    "ClientGone",
    "ConnectionGuard",
    "GuardedSite",
    "LongPollSlots",
    "client_gone",
    "connection_lost",
    "request_deadlines",
]

log = logging.getLogger(__name__)

_HANDSHAKE_ERRORS: Final = (OSError, ssl.SSLError, TimeoutError, EOFError)


class LongPollSlots:
    """At most ``limit`` requests held waiting for a change; past it, requests are answered at
    once (a held request costs a connection for up to a minute)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[bool]:
        """``with slots.hold() as held:`` -- wait only if ``held``."""
        if self.held >= self.limit:
            yield False
            return
        self.held += 1
        try:
            yield True
        finally:
            self.held -= 1


class ConnectionGuard:
    """Open connections per client address and in total; the connections being served."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.total = 0
        self._by_ip: dict[str, int] = {}
        self._connections: dict[object, _GuardedConnection] = {}
        self.refused = {"total_limit": 0, "ip_limit": 0}
        self.timed_out = {"handshake": 0, "headers": 0}

    def admit(self, ip: str) -> str | None:
        """Count a new connection from ``ip``; or the limit that refuses it."""
        if self.total >= self.limits.max_connections:
            reason = "total_limit"
        elif self._by_ip.get(ip, 0) >= self.limits.max_connections_per_ip:
            reason = "ip_limit"
        else:
            self.total += 1
            self._by_ip[ip] = self._by_ip.get(ip, 0) + 1
            return None
        self.refused[reason] += 1
        return reason

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self._by_ip[ip] - 1
        if left:
            self._by_ip[ip] = left
        else:
            del self._by_ip[ip]

    def open_from(self, ip: str) -> int:
        return self._by_ip.get(ip, 0)

    def connection_of(self, protocol: object) -> _GuardedConnection | None:
        return self._connections.get(protocol)


class _GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a header deadline; releases the
    connection's slot when it ends."""

    def __init__(self, inner: Any, guard: ConnectionGuard, ip: str) -> None:
        self._inner = inner  # aiohttp's RequestHandler
        self._guard = guard
        self._ip = ip
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._in_request = False
        self.lost = asyncio.Event()  # set when the connection ends (a held request stops)

    # -- what the middleware reports ------------------------------------------------------

    def request_started(self) -> None:
        self._in_request = True
        self._disarm()

    def request_finished(self) -> None:
        self._in_request = False  # idle now: aiohttp's keep-alive timeout applies

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._guard._connections[self._inner] = self
        self._arm()  # a new connection owes its first request's headers at once
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._in_request and self._deadline is None:
            self._arm()  # the first bytes of the next request start its header deadline
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.lost.set()
        self._guard._connections.pop(self._inner, None)
        self._guard.release(self._ip)
        self._inner.connection_lost(exc)

    # -- the header deadline --------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        timeout = self._guard.limits.header_timeout
        self._deadline = self._loop.call_later(timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self._in_request or self._transport is None:
            return
        self._guard.timed_out["headers"] += 1
        log.info("ca.http.header_timeout", extra={F.ADDRESS: self._ip})
        self._transport.abort()


@web.middleware
async def request_deadlines(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Stop a connection's header deadline while its request is handled (a long-poll holds
    it for up to a minute); the next request's first byte starts the next deadline."""
    guard = request.app.get(GUARD)
    connection = None if guard is None else guard.connection_of(request.protocol)
    if connection is None:
        return await handler(request)
    connection.request_started()
    try:
        return await handler(request)
    finally:
        connection.request_finished()


GUARD: Final = web.AppKey("connection_guard", ConnectionGuard)


class ClientGone(ConnectionResetError):
    """The client closed its connection while its request was held (a long-poll): there is
    no one left to answer."""


def client_gone(request: web.Request) -> bool:
    """Whether ``request``'s connection has ended or is being closed (its client went away)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def connection_lost(request: web.Request) -> asyncio.Event | None:
    """An event set when ``request``'s connection ends, for a request that waits; None when
    the connection is not watched (an application without a guard)."""
    guard = request.app.get(GUARD)
    connection = None if guard is None else guard.connection_of(request.protocol)
    return None if connection is None else connection.lost


class _Listener:
    """The listening socket and its accept loop, shaped like the ``asyncio.Server`` aiohttp's
    runner expects of a site (``sockets``, ``close``)."""

    def __init__(self, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self._sock = sock
        self._task = task
        self.handshakes: set[asyncio.Task[None]] = set()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._sock.fileno() < 0 else (self._sock,)

    def close(self) -> None:
        self._task.cancel()
        for task in self.handshakes:
            task.cancel()
        self._sock.close()


class GuardedSite(web.BaseSite):
    """An HTTPS site on ``host:port`` under ``guard``'s limits (see the module docstring)."""

    __slots__ = ("_guard", "_host", "_listener", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        guard: ConnectionGuard,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port = host, port
        self._guard = guard
        self._listener: _Listener | None = None

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        listener = self._listener
        if listener is None or not listener.sockets:
            return self._port
        return int(listener.sockets[0].getsockname()[1])

    async def start(self) -> None:
        await super().start()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family, backlog=self._backlog)
        sock.setblocking(False)
        accepting = asyncio.create_task(self._accept(sock))
        self._listener = _Listener(sock, accepting)
        self._server = self._listener  # type: ignore[assignment]  # runner.addresses reads it

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("ca.http.accept_failed", extra={F.ERROR: str(exc)})
                await asyncio.sleep(0.1)
                continue
            ip = str(address[0])
            refused = self._guard.admit(ip)
            if refused is not None:
                _close_at_once(conn)
                log.debug("ca.http.refused", extra={F.ADDRESS: ip, F.REASON: refused})
                continue
            assert self._listener is not None
            task = asyncio.create_task(self._handshake(conn, ip))
            self._listener.handshakes.add(task)
            task.add_done_callback(self._listener.handshakes.discard)

    async def _handshake(self, conn: socket.socket, ip: str) -> None:
        """TLS under the handshake deadline, then aiohttp's protocol behind the guard (which
        releases the slot when the connection ends); a failed handshake releases it here."""
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        assert self._ssl_context is not None

        def protocol() -> _GuardedConnection:
            return _GuardedConnection(server(), self._guard, ip)

        timeout = self._guard.limits.tls_handshake_timeout
        started = loop.time()
        try:
            await loop.connect_accepted_socket(
                protocol, conn, ssl=self._ssl_context, ssl_handshake_timeout=timeout
            )
        except asyncio.CancelledError:
            conn.close()
            self._guard.release(ip)
            raise
        except _HANDSHAKE_ERRORS as exc:
            conn.close()
            self._guard.release(ip)
            if loop.time() - started >= timeout:  # asyncio says ConnectionAbortedError
                self._guard.timed_out["handshake"] += 1
            log.debug("ca.http.handshake_failed", extra={F.ADDRESS: ip, F.ERROR: str(exc)})


def _close_at_once(conn: socket.socket) -> None:
    """Close a refused connection without lingering in TIME_WAIT on our side (RST)."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
