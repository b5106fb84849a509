"""aiohttp integration over real mTLS: the server drops unauthorized peers before any request
is parsed; the client connector checks the server's SPIFFE ID on every new connection."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from verifier_support import source_of

from s2s.core.errors import NotAuthorized
from s2s.core.spiffe_id import SpiffeId
from s2s.testing import TestAuthority
from s2s.verifier.aiohttp import (
    SpiffeClientResponse,
    SpiffeTCPSite,
    peer_spiffe_id,
    server_spiffe_id,
    spiffe_connector,
)
from s2s.verifier.authorize import authorize_any, authorize_id
from s2s.verifier.memcert import load_cert_chain_from_memory
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected, PeerVerifier
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import client_context, server_context

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVER = "spiffe://example.org/server"
CLIENT = "spiffe://example.org/client"


@asynccontextmanager
async def site(
    ctx: ssl.SSLContext, verifier: PeerVerifier | None = None
) -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def whoami(request: web.Request) -> web.Response:
        sid = str(peer_spiffe_id(request))
        seen.append(sid)
        return web.Response(text=sid)

    app = web.Application()
    app.router.add_get("/", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = SpiffeTCPSite(runner, "127.0.0.1", 0, ssl_context=ctx, verifier=verifier)  # type: ignore[arg-type]
    await tcp.start()
    try:
        yield f"https://127.0.0.1:{tcp.port}/", seen
    finally:
        await runner.cleanup()


@asynccontextmanager
async def plain_site(handler: Handler) -> AsyncIterator[str]:
    """A plain HTTP (no TLS) site answering ``GET /`` with ``handler``; yields its URL."""
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    try:
        yield f"http://127.0.0.1:{tcp.port}/"
    finally:
        await runner.cleanup()


def client_source(ca: TestAuthority, sid: str = CLIENT) -> StaticX509Source:
    return source_of(ca.issue_x509_svid(sid), ca.bundle())


async def get(url: str, connector: aiohttp.BaseConnector) -> str:
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as resp:
        return await resp.text()


async def test_handler_reads_the_verified_peer_id(ca: TestAuthority, metrics: PeerMetrics) -> None:
    ctx = server_context(
        source_of(ca.issue_x509_svid(SERVER), ca.bundle()),
        metrics=metrics,
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    async with site(ctx) as (url, seen):
        text = await get(
            url,
            spiffe_connector(
                client_source(ca), authorize=authorize_id(SERVER), revocations=no_revocation_check()
            ),
        )
    assert text == CLIENT
    assert seen == [CLIENT]


async def test_unauthorized_client_never_reaches_the_app(
    ca: TestAuthority, metrics: PeerMetrics
) -> None:
    ctx = server_context(
        source_of(ca.issue_x509_svid(SERVER), ca.bundle()),
        authorize=authorize_id(CLIENT),
        metrics=metrics,
        revocations=no_revocation_check(),
    )
    async with site(ctx) as (url, seen):
        intruder = spiffe_connector(
            client_source(ca, "spiffe://example.org/intruder"),
            authorize=authorize_any(),
            revocations=no_revocation_check(),
        )
        with pytest.raises(aiohttp.ClientError):
            await get(url, intruder)
    assert seen == []
    # aiohttp retries an idempotent request once on a dropped connection: 1 or 2 rejections.
    assert metrics.rejection_count("unauthorized") >= 1
    assert metrics.accepted_count() == 0


async def test_guard_aborts_in_connection_made_with_a_plain_context(
    ca: TestAuthority, metrics: PeerMetrics
) -> None:
    """A plain ssl context cannot verify SPIFFE IDs in the handshake; the guard wrapped around
    aiohttp's protocol factory must drop the peer before a request byte is parsed."""
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    plain.verify_mode = ssl.CERT_REQUIRED
    plain.load_verify_locations(cadata=ca.bundle_pem().decode())
    svid = ca.issue_x509_svid(SERVER)
    load_cert_chain_from_memory(plain, svid.chain_pem(), svid.key_pem())
    server_src = source_of(svid, ca.bundle())
    verifier = PeerVerifier(
        lambda: server_src.current().bundles, authorize=authorize_id(CLIENT), metrics=metrics
    )
    async with site(plain, verifier) as (url, seen):
        good = await get(
            url,
            spiffe_connector(
                client_source(ca), authorize=authorize_any(), revocations=no_revocation_check()
            ),
        )
        assert good == CLIENT
        # Raw TLS client: send a full request, get no HTTP byte back.
        port = int(url.rsplit(":", 1)[1].strip("/"))
        ctx = client_context(
            client_source(ca, "spiffe://example.org/intruder"),
            authorize=authorize_any(),
            revocations=no_revocation_check(),
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = await asyncio.wait_for(reader.read(), 10)
        except (ConnectionResetError, ssl.SSLError):
            answer = b""
        writer.close()
    assert answer == b""
    assert seen == [CLIENT]
    assert metrics.rejection_count("unauthorized") == 1


async def test_client_rejects_impostor_server_on_each_new_connection(
    ca: TestAuthority, metrics: PeerMetrics
) -> None:
    server_src = source_of(ca.issue_x509_svid(SERVER), ca.bundle())
    ctx = server_context(server_src, authorize=authorize_any(), revocations=no_revocation_check())
    connector = spiffe_connector(
        client_source(ca),
        authorize=authorize_id(SERVER),
        metrics=metrics,
        force_close=True,
        revocations=no_revocation_check(),
    )
    async with site(ctx) as (url, seen), aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as resp:
            assert await resp.text() == CLIENT
        server_src.set_svids(ca.issue_x509_svid("spiffe://example.org/impostor"))
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
            await session.get(url)
    error = info.value.certificate_error
    assert isinstance(error, PeerRejected)
    assert error.reason == "unauthorized"
    assert seen == [CLIENT]
    assert metrics.rejection_count("unauthorized") == 1


async def test_peer_spiffe_id_without_tls_is_not_authorized(ca: TestAuthority) -> None:
    async def whoami(request: web.Request) -> web.Response:
        try:
            return web.Response(text=str(peer_spiffe_id(request)))
        except NotAuthorized as exc:
            return web.Response(status=403, text=str(exc))

    async with plain_site(whoami) as url, aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 403
        assert "mTLS" in await r.text()


async def test_client_response_keeps_the_server_id_after_the_connection_is_released(
    ca: TestAuthority,
) -> None:
    server_src = source_of(ca.issue_x509_svid(SERVER), ca.bundle())
    ctx = server_context(server_src, authorize=authorize_any(), revocations=no_revocation_check())
    connector = spiffe_connector(
        client_source(ca),
        authorize=authorize_any(),
        force_close=True,
        revocations=no_revocation_check(),
    )
    session = aiohttp.ClientSession(connector=connector, response_class=SpiffeClientResponse)
    async with site(ctx) as (url, _), session:
        async with session.get(url) as resp:
            assert await resp.text() == CLIENT
        assert resp.connection is None  # released after the small body: only the record is left
        assert server_spiffe_id(resp) == SpiffeId.parse(SERVER)
        other = "spiffe://example.org/other-server"
        server_src.set_svids(ca.issue_x509_svid(other))
        async with session.get(url) as resp2:
            await resp2.read()
        assert server_spiffe_id(resp2) == SpiffeId.parse(other)  # each connection's own peer


async def test_server_spiffe_id_without_the_response_class_is_not_authorized(
    ca: TestAuthority,
) -> None:
    ctx = server_context(
        source_of(ca.issue_x509_svid(SERVER), ca.bundle()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    connector = spiffe_connector(
        client_source(ca), authorize=authorize_id(SERVER), revocations=no_revocation_check()
    )
    session = aiohttp.ClientSession(connector=connector)
    async with site(ctx) as (url, _), session, session.get(url) as resp:
        assert await resp.text() == CLIENT
    with pytest.raises(NotAuthorized, match="mTLS"):
        server_spiffe_id(resp)


async def test_server_spiffe_id_over_plain_http_is_not_authorized() -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async with plain_site(hello) as url:
        session = aiohttp.ClientSession(response_class=SpiffeClientResponse)
        async with session, session.get(url) as resp:
            assert await resp.text() == "hello"
    assert isinstance(resp, SpiffeClientResponse)
    assert resp.server_spiffe_id is None
    with pytest.raises(NotAuthorized, match="mTLS"):
        server_spiffe_id(resp)
