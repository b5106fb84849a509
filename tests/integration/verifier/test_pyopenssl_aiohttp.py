"""aiohttp on the pyOpenSSL transport: PyOpenSSLSite and pyopenssl_connector work with the
verifier's aiohttp helpers (peer_spiffe_id, SpiffeClientResponse) and with the stdlib path on
the other end; refused peers never reach the application."""

from __future__ import annotations

import io
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from verifier_support import source_of

from s2s.core.errors import InvalidConfig
from s2s.core.spiffe_id import SpiffeId
from s2s.testing import TestAuthority
from s2s.verifier import pyopenssl_tls, tls
from s2s.verifier.aiohttp import (
    SpiffeClientResponse,
    SpiffeTCPSite,
    peer_spiffe_id,
    server_spiffe_id,
    spiffe_connector,
)
from s2s.verifier.authorize import authorize_any, authorize_id
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected
from s2s.verifier.pyopenssl_aiohttp import PyOpenSSLConnector, PyOpenSSLSite, pyopenssl_connector
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_static import StaticX509Source

SERVER = "spiffe://example.org/server"
CLIENT = "spiffe://example.org/client"
SIDES = ["pyopenssl", "stdlib"]


@asynccontextmanager
async def site(
    side: str, source: StaticX509Source, metrics: PeerMetrics, authorize: object = None
) -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def whoami(request: web.Request) -> web.Response:
        sid = str(peer_spiffe_id(request))
        seen.append(sid)
        body = await request.read()
        return web.Response(text=f"{sid} {len(body)}" if body else sid)

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_get("/", whoami)
    app.router.add_post("/", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    kwargs = {
        "authorize": authorize or authorize_any(),
        "revocations": no_revocation_check(),
        "metrics": metrics,
    }
    tcp: web.TCPSite
    if side == "pyopenssl":
        ctx = pyopenssl_tls.server_context(source, **kwargs)  # type: ignore[arg-type]
        tcp = PyOpenSSLSite(runner, "127.0.0.1", 0, context=ctx)
    else:
        tcp = SpiffeTCPSite(
            runner,
            "127.0.0.1",
            0,
            ssl_context=tls.server_context(source, **kwargs),  # type: ignore[arg-type]
        )
    await tcp.start()
    try:
        yield f"https://127.0.0.1:{tcp.port}/", seen
    finally:
        await runner.cleanup()


def connector(
    side: str, sid: str, ca: TestAuthority, metrics: PeerMetrics, **kwargs: object
) -> aiohttp.TCPConnector:
    factory = pyopenssl_connector if side == "pyopenssl" else spiffe_connector
    return factory(  # type: ignore[operator,no-any-return]
        source_of(ca.issue_x509_svid(sid), ca.bundle()),
        authorize=kwargs.pop("authorize", authorize_id(SERVER)),
        revocations=no_revocation_check(),
        metrics=metrics,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("server", "client"),
    [("pyopenssl", "pyopenssl"), ("pyopenssl", "stdlib"), ("stdlib", "pyopenssl")],
)
async def test_handler_reads_the_verified_peer_id(
    server: str, client: str, ca: TestAuthority, metrics: PeerMetrics
) -> None:
    source = source_of(ca.issue_x509_svid(SERVER), ca.bundle())
    async with site(server, source, metrics) as (url, seen):
        session = aiohttp.ClientSession(
            connector=connector(client, CLIENT, ca, metrics), response_class=SpiffeClientResponse
        )
        async with session:
            async with session.get(url) as resp:
                assert await resp.text() == CLIENT
            assert server_spiffe_id(resp) == SpiffeId.parse(SERVER)
            body = b"x" * (3 * 1024 * 1024)
            async with session.post(
                url, data=io.BytesIO(body)
            ) as resp:  # big request over the same pool
                assert await resp.text() == f"{CLIENT} {len(body)}"
    assert seen == [CLIENT, CLIENT]


@pytest.mark.parametrize("client", SIDES)
async def test_unauthorized_client_never_reaches_the_app(
    client: str, ca: TestAuthority, metrics: PeerMetrics
) -> None:
    source = source_of(ca.issue_x509_svid(SERVER), ca.bundle())
    async with site("pyopenssl", source, metrics, authorize_id(CLIENT)) as (url, seen):
        intruder = connector(
            client, "spiffe://example.org/intruder", ca, PeerMetrics(CollectorRegistry())
        )
        with pytest.raises(aiohttp.ClientError):
            async with aiohttp.ClientSession(connector=intruder) as s, s.get(url) as r:
                await r.text()
        # Twin: the authorized client is served.
        async with (
            aiohttp.ClientSession(
                connector=connector(client, CLIENT, ca, PeerMetrics(CollectorRegistry()))
            ) as s,
            s.get(url) as r,
        ):
            assert await r.text() == CLIENT
    assert seen == [CLIENT]
    # aiohttp retries a GET once when a fresh connection is dropped: one refusal per attempt.
    assert metrics.rejection_count("unauthorized") in {1, 2}
    assert metrics.accepted_count() == 1


@pytest.mark.parametrize("server", SIDES)
async def test_client_rejects_impostor_server_on_each_new_connection(
    server: str, ca: TestAuthority, metrics: PeerMetrics
) -> None:
    server_src = source_of(ca.issue_x509_svid(SERVER), ca.bundle())
    conn = connector("pyopenssl", CLIENT, ca, metrics, force_close=True)
    server_site = site(server, server_src, PeerMetrics(CollectorRegistry()))
    async with server_site as (url, seen), aiohttp.ClientSession(connector=conn) as session:
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


async def test_connector_keeps_plain_http_and_refuses_wrong_settings(
    ca: TestAuthority,
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    plain = web.TCPSite(runner, "127.0.0.1", 0)
    await plain.start()
    try:
        conn = connector("pyopenssl", CLIENT, ca, PeerMetrics(CollectorRegistry()))
        async with aiohttp.ClientSession(connector=conn) as s:
            async with s.get(f"http://127.0.0.1:{plain.port}/") as r:
                assert await r.text() == "hello"
            # An https URL to the same plain server: a clear TLS error, no traceback to parse.
            with pytest.raises(aiohttp.ClientConnectorSSLError):
                await s.get(f"https://127.0.0.1:{plain.port}/")
    finally:
        await runner.cleanup()
    client_ctx = pyopenssl_tls.client_context(
        source_of(ca.issue_x509_svid(CLIENT), ca.bundle()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    server_ctx = pyopenssl_tls.server_context(
        source_of(ca.issue_x509_svid(SERVER), ca.bundle()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    with pytest.raises(InvalidConfig):
        PyOpenSSLConnector(server_ctx)
    with pytest.raises(InvalidConfig):
        PyOpenSSLConnector(client_ctx, ssl=ssl.create_default_context())
    with pytest.raises(InvalidConfig):
        PyOpenSSLSite(runner, context=client_ctx)
