"""aiohttp on the pyOpenSSL transport (:mod:`s2s.verifier.pyopenssl_tls`): the opt-in fast path
for new mTLS handshakes, used like :mod:`s2s.verifier.aiohttp`.

Server::

    ctx = pyopenssl_tls.server_context(source, authorize=authorize_member_of("example.org"))
    runner = web.AppRunner(app); await runner.setup()
    await PyOpenSSLSite(runner, "0.0.0.0", 8443, context=ctx).start()
    # in a handler, as on the stdlib path:
    caller = peer_spiffe_id(request)          # from s2s.verifier.aiohttp

Client::

    connector = pyopenssl_connector(source, authorize=authorize_id("spiffe://example.org/api"))
    async with aiohttp.ClientSession(connector=connector,
                                     response_class=SpiffeClientResponse) as s:
        async with s.get("https://...") as response:
            server = server_spiffe_id(response)

The request handler is only created once the client passed the handshake and the SPIFFE checks;
a refused client never reaches aiohttp. A refused server raises
``aiohttp.ClientConnectorCertificateError`` whose ``certificate_error`` is the
:class:`~s2s.verifier.peer.PeerRejected`, as with :func:`s2s.verifier.aiohttp.spiffe_connector`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.client_reqrep import ClientRequest
from yarl import URL

from s2s.core.clock import Clock
from s2s.core.errors import InvalidConfig
from s2s.core.revocation import RevocationLookup
from s2s.core.spiffe_id import SpiffeId
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.pyopenssl_tls import (
    HANDSHAKE_TIMEOUT,
    PyOpenSSLContext,
    TlsProtocol,
    client_context,
    handshake_done,
    server_protocol_factory,
)
from s2s.verifier.x509context import X509SourceLike

__all__ = ["PyOpenSSLConnector", "PyOpenSSLSite", "pyopenssl_connector"]


class PyOpenSSLSite(web.TCPSite):
    """A :class:`aiohttp.web.TCPSite` serving HTTPS through the pyOpenSSL transport; only
    verified, authorized SPIFFE peers reach the application."""

    __slots__ = ("_context", "_handshake_timeout")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None = None,
        port: int | None = None,
        *,
        context: PyOpenSSLContext,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        if "ssl_context" in kwargs:
            raise InvalidConfig("PyOpenSSLSite takes context=, not ssl_context=")
        if not context.server_side:
            raise InvalidConfig("PyOpenSSLSite needs a pyopenssl_tls.server_context()")
        super().__init__(runner, host, 8443 if port is None else port, **kwargs)
        self._context = context
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        host = self._host or "0.0.0.0"  # noqa: S104  # a name, as aiohttp prints it
        return str(URL.build(scheme="https", host=host, port=self.port))

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            server_protocol_factory(
                self._context, server, handshake_timeout=self._handshake_timeout
            ),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


class PyOpenSSLConnector(aiohttp.TCPConnector):
    """A :class:`aiohttp.TCPConnector` whose ``https`` connections run on the pyOpenSSL
    transport with ``context`` (a :func:`~s2s.verifier.pyopenssl_tls.client_context`);
    plain ``http`` URLs are unchanged. It replaces aiohttp's connection step
    (``_wrap_create_connection``, stable across aiohttp 3.x) and nothing else."""

    def __init__(
        self,
        context: PyOpenSSLContext,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        if "ssl" in kwargs:
            raise InvalidConfig("PyOpenSSLConnector takes context=, not ssl=")
        if context.server_side:
            raise InvalidConfig("PyOpenSSLConnector needs a pyopenssl_tls.client_context()")
        super().__init__(**kwargs)
        self.context = context
        self._handshake_timeout = handshake_timeout

    async def _wrap_create_connection(
        self,
        *args: Any,
        req: ClientRequest,
        timeout: aiohttp.ClientTimeout,
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, Any]:
        if not req.is_ssl():
            return await super()._wrap_create_connection(
                *args, req=req, timeout=timeout, client_error=client_error, **kwargs
            )
        for name in ("ssl", "server_hostname", "ssl_shutdown_timeout"):
            kwargs.pop(name, None)
        app_factory: Callable[[], asyncio.BaseProtocol] = args[0]

        def make() -> TlsProtocol:
            return TlsProtocol(self.context, app_factory, handshake_timeout=self._handshake_timeout)

        _, tls = await super()._wrap_create_connection(
            make, *args[1:], req=req, timeout=timeout, client_error=client_error, **kwargs
        )
        assert isinstance(tls, TlsProtocol)
        try:
            transport, app = await handshake_done(tls)
        except ssl.CertificateError as exc:  # PeerRejected
            raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(req.connection_key, exc) from exc
        return transport, app


def pyopenssl_connector(
    source: X509SourceLike,
    *,
    authorize: Callable[[SpiffeId], bool],
    revocations: RevocationLookup | None = None,
    clock: Clock | None = None,
    metrics: PeerMetrics | None = None,
    **kwargs: Any,
) -> PyOpenSSLConnector:
    """:func:`s2s.verifier.aiohttp.spiffe_connector` on the pyOpenSSL transport: presents our
    SVID, verifies the server's on every new connection and asks ``authorize``; follows
    ``source`` (new connections use the newest SVID and bundles). ``revocations`` defaults to
    the source's own; a source without any needs a lookup or ``revocations=no_revocation_check()``
    (:class:`InvalidConfig` otherwise). ``kwargs`` go to :class:`aiohttp.TCPConnector`."""
    ctx = client_context(
        source, authorize=authorize, revocations=revocations, clock=clock, metrics=metrics
    )
    return PyOpenSSLConnector(ctx, **kwargs)
