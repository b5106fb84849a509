"""aiohttp integration: an mTLS server that drops unauthorized peers before any request is
parsed, and a client connector that checks the server's SPIFFE ID on each new connection.

Server::

    ctx = server_context(source, authorize=authorize_member_of("example.org"))  # X509Source:
    # its own revocations (the agent's CRLs); other sources: revocations=<lookup> or
    # revocations=no_revocation_check()
    runner = web.AppRunner(app); await runner.setup()
    await SpiffeTCPSite(runner, "0.0.0.0", 8443, ssl_context=ctx).start()
    # in a handler:
    caller = peer_spiffe_id(request)

Client::

    async with aiohttp.ClientSession(connector=spiffe_connector(source, authorize=...),
                                     response_class=SpiffeClientResponse) as s:
        async with s.get(url) as response:
            server = server_spiffe_id(response)   # the ID verified in that request's handshake
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.connector import Connection

from s2s.core.clock import Clock
from s2s.core.errors import NotAuthorized
from s2s.core.revocation import RevocationLookup
from s2s.core.spiffe_id import SpiffeId
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected, PeerVerifier
from s2s.verifier.revocation_choice import resolve_revocations
from s2s.verifier.tls import SpiffeSSLContext, client_context, peer_spiffe_id_of
from s2s.verifier.x509context import X509SourceLike

__all__ = [
    "SpiffeClientResponse",
    "SpiffeTCPSite",
    "guard_protocol_factory",
    "peer_spiffe_id",
    "server_spiffe_id",
    "spiffe_connector",
]


class _GuardProtocol(asyncio.Protocol):
    """Checks the peer in ``connection_made``; a rejected connection is aborted and its
    protocol (aiohttp's request handler) never sees a byte."""

    def __init__(self, inner: asyncio.Protocol, verifier: PeerVerifier | None) -> None:
        self._inner = inner
        self._verifier = verifier
        self._open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        try:
            _ensure_verified(ssl_object, self._verifier)
        except PeerRejected:
            assert isinstance(transport, asyncio.Transport)
            transport.abort()
            return
        self._open = True
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._open:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._open else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._open:
            self._open = False
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._open:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._open:
            self._inner.resume_writing()


def _ensure_verified(ssl_object: Any, verifier: PeerVerifier | None) -> SpiffeId:
    if ssl_object is None:
        raise PeerRejected("the connection is not TLS", reason="no-certificate")
    sid = peer_spiffe_id_of(ssl_object)
    if sid is not None:
        return sid  # verified inside the handshake by a server_context
    if verifier is None:
        raise PeerRejected("no SPIFFE verifier for this context", reason="handshake-failed")
    sid = verifier.verify(ssl_object)
    ssl_object.peer_spiffe_id = sid
    return sid


def guard_protocol_factory(
    factory: Callable[[], asyncio.Protocol], verifier: PeerVerifier | None
) -> Callable[[], asyncio.Protocol]:
    """Wrap an asyncio protocol factory so each connection's peer is verified first.

    With a :func:`~s2s.verifier.tls.server_context` the handshake already verified the peer and
    this only reads the result; ``verifier`` serves plain contexts (it must not be None then).
    """

    def make() -> asyncio.Protocol:
        return _GuardProtocol(factory(), verifier)

    return make


class SpiffeTCPSite(web.TCPSite):
    """A :class:`aiohttp.web.TCPSite` that serves only verified, authorized SPIFFE peers."""

    __slots__ = ("_verifier",)

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None = None,
        port: int | None = None,
        *,
        ssl_context: SpiffeSSLContext,
        verifier: PeerVerifier | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, **kwargs)
        state = getattr(ssl_context, "s2s", None)
        self._verifier = verifier or (state.verifier if state is not None else None)
        if self._verifier is None:
            raise NotAuthorized("SpiffeTCPSite needs a server_context() or a verifier")

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            guard_protocol_factory(server, self._verifier),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def peer_spiffe_id(request: web.BaseRequest) -> SpiffeId:
    """The verified SPIFFE ID of the peer that sent ``request``; NotAuthorized if none."""
    transport = request.transport
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    sid = peer_spiffe_id_of(ssl_object)
    if sid is None:
        raise NotAuthorized("the request did not come over a verified SPIFFE mTLS connection")
    return sid


def spiffe_connector(
    source: X509SourceLike,
    *,
    authorize: Callable[[SpiffeId], bool],
    revocations: RevocationLookup | None = None,
    clock: Clock | None = None,
    metrics: PeerMetrics | None = None,
    **kwargs: Any,
) -> aiohttp.TCPConnector:
    """A connector presenting our SVID; every new connection verifies the server's SVID and
    asks ``authorize``. The context follows ``source`` in place, so pooled sessions keep working
    across rotations. ``revocations`` defaults to the source's own; a source without any needs a
    lookup or ``revocations=no_revocation_check()`` (:class:`InvalidConfig` otherwise)."""
    checked = resolve_revocations(source, revocations, what="spiffe_connector")
    ctx = client_context(
        source, authorize=authorize, revocations=checked, clock=clock, metrics=metrics
    )
    return aiohttp.TCPConnector(ssl=ctx, **kwargs)


class SpiffeClientResponse(aiohttp.ClientResponse):
    """A client response that keeps the server's verified SPIFFE ID.

    aiohttp releases the connection as soon as a small body has been read, after which the
    response no longer reaches the TLS object; this records the ID when the response starts.
    Pass it as ``aiohttp.ClientSession(response_class=SpiffeClientResponse)``.
    """

    server_spiffe_id: SpiffeId | None = None

    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        transport = connection.transport
        ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
        self.server_spiffe_id = peer_spiffe_id_of(ssl_object)
        return await super().start(connection)


def server_spiffe_id(response: aiohttp.ClientResponse) -> SpiffeId:
    """The verified SPIFFE ID of the server that sent ``response``; NotAuthorized if none.

    ``response`` must come from a session with ``response_class=SpiffeClientResponse`` and a
    :func:`spiffe_connector` (or another :func:`~s2s.verifier.tls.client_context`).
    """
    sid = response.server_spiffe_id if isinstance(response, SpiffeClientResponse) else None
    if sid is None:
        raise NotAuthorized("the response did not come over a verified SPIFFE mTLS connection")
    return sid
