"""The Bearer access-token middleware on a real aiohttp HTTPS server on 127.0.0.1: RFC 6750
answers, scopes, and certificate-bound tokens checked against the connection's client
certificate."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from verifier_support import source_of

from s2s.core.clock import FakeClock
from s2s.core.errors import NotAuthorized, Unavailable
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.testing_oauth import AUDIENCE, CLIENT, ISSUER, TestTokenIssuer
from s2s.verifier.access_token import AccessTokenValidator, certificate_thumbprint, require_scopes
from s2s.verifier.access_token_aiohttp import access_token_middleware, access_token_of
from s2s.verifier.access_token_keys import SigningKeySet
from s2s.verifier.aiohttp import SpiffeTCPSite, spiffe_connector
from s2s.verifier.authorize import authorize_any
from s2s.verifier.memcert import load_cert_chain_from_memory
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.tls import server_context


@dataclass
class Server:
    url: str
    ca: TestAuthority
    issuer: TestTokenIssuer

    def client_context(self, svid: X509Svid | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca.bundle_pem().decode())
        if svid is not None:
            load_cert_chain_from_memory(context, svid.chain_pem(), svid.key_pem())
        return context

    async def get(
        self,
        path: str = "/read",
        *,
        token: str | None = None,
        svid: X509Svid | None = None,
        headers: Any = None,
    ) -> tuple[int, str | None, Any]:
        sent = list(headers or [])
        if token is not None:
            sent.append(("Authorization", f"Bearer {token}"))
        connector = aiohttp.TCPConnector(ssl=self.client_context(svid))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(self.url + path, headers=sent) as resp,
        ):
            body = (
                await resp.json() if resp.content_type == "application/json" else await resp.text()
            )
            return resp.status, resp.headers.get("WWW-Authenticate"), body


async def _read(request: web.Request) -> web.Response:
    token = access_token_of(request)
    return web.json_response({"sub": token.subject, "scopes": sorted(token.scopes)})


async def _write(request: web.Request) -> web.Response:
    token = require_scopes(access_token_of(request), "billing.write")
    return web.json_response({"sub": token.subject})


async def _health(request: web.Request) -> web.Response:
    try:
        access_token_of(request)
    except NotAuthorized:
        return web.Response(text="ok")
    return web.Response(text="authenticated")


async def _start(
    authority: TestAuthority, validator: AccessTokenValidator, **kwargs: Any
) -> tuple[web.AppRunner, int]:
    middleware = access_token_middleware(validator, exempt_paths=["/healthz"], **kwargs)
    app = web.Application(middlewares=[middleware])
    app.router.add_get("/read", _read)
    app.router.add_get("/write", _write)
    app.router.add_get("/healthz", _health)
    svid = authority.issue_x509_svid("spiffe://example.org/billing", dns_names=["localhost"])
    context = ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH, cadata=authority.bundle_pem().decode()
    )
    context.verify_mode = ssl.CERT_OPTIONAL  # bearer and certificate-bound clients alike
    load_cert_chain_from_memory(context, svid.chain_pem(), svid.key_pem())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def server(fake_clock: FakeClock, authority: TestAuthority) -> AsyncIterator[Server]:
    issuer = TestTokenIssuer(clock=fake_clock)
    validator = AccessTokenValidator(
        issuer.key_set(),
        issuer=ISSUER,
        audience=AUDIENCE,
        revocations=no_revocation_check(),
        clock=fake_clock,
    )
    runner, port = await _start(authority, validator, realm="billing")
    yield Server(f"https://localhost:{port}", authority, issuer)
    await runner.cleanup()


async def test_a_valid_token_reaches_the_handler(server: Server) -> None:
    status, _, body = await server.get(token=server.issuer.mint())
    assert status == 200
    assert body == {"sub": CLIENT, "scopes": ["billing.read", "billing.write"]}


async def test_no_token_is_a_bare_challenge(server: Server) -> None:
    status, header, body = await server.get()
    assert (status, header) == (401, 'Bearer realm="billing"')
    assert body["error"] == "unauthorized"
    status, header, _ = await server.get(headers=[("Authorization", "Basic dXNlcjpwdw==")])
    assert (status, header) == (401, 'Bearer realm="billing"')


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/read", [("Authorization", "Bearer a.b.c"), ("Authorization", "Bearer d.e.f")]),
        ("/read?access_token=a.b.c", []),
        ("/read?access_token=a.b.c", [("Authorization", "Bearer a.b.c")]),
    ],
)
async def test_a_malformed_request_is_invalid_request(
    server: Server, path: str, headers: list[tuple[str, str]]
) -> None:
    status, header, body = await server.get(path, headers=headers)
    assert status == 400
    assert header == 'Bearer realm="billing", error="invalid_request"'
    assert body["error"] == "invalid_request"


async def test_a_refused_token_is_invalid_token_with_its_reason(
    server: Server, fake_clock: FakeClock
) -> None:
    token = server.issuer.mint()
    fake_clock.advance(seconds=400)
    status, header, body = await server.get(token=token)
    assert status == 401
    assert header == 'Bearer realm="billing", error="invalid_token", error_description="exp"'
    assert body["error"] == "invalid_token"
    status, header, _ = await server.get(token="not-a-jws")
    assert (status, header and "malformed" in header) == (401, True)
    status, _, _ = await server.get(token=server.issuer.mint(aud="https://other.example"))
    assert status == 401


async def test_a_missing_scope_is_403_insufficient_scope(server: Server) -> None:
    status, header, body = await server.get(
        "/write", token=server.issuer.mint(scope="billing.read")
    )
    assert status == 403
    assert header == 'Bearer realm="billing", error="insufficient_scope", scope="billing.write"'
    assert body["error"] == "insufficient_scope"
    status, _, _ = await server.get("/write", token=server.issuer.mint(scope="billing.write"))
    assert status == 200


async def test_middleware_scopes_apply_to_every_route(
    fake_clock: FakeClock, authority: TestAuthority
) -> None:
    issuer = TestTokenIssuer(clock=fake_clock)
    validator = AccessTokenValidator(
        issuer.key_set(),
        issuer=ISSUER,
        audience=AUDIENCE,
        revocations=no_revocation_check(),
        clock=fake_clock,
    )
    runner, port = await _start(authority, validator, scopes=["admin"])
    try:
        server = Server(f"https://localhost:{port}", authority, issuer)
        status, header, _ = await server.get(token=issuer.mint())
        assert (status, header) == (403, 'Bearer error="insufficient_scope", scope="admin"')
        assert (await server.get(token=issuer.mint(scope="admin")))[0] == 200
        assert (await server.get("/healthz"))[2] == "ok"  # exempt, and no token attached
    finally:
        await runner.cleanup()


async def test_a_bound_token_needs_its_own_certificate_on_the_connection(
    server: Server, authority: TestAuthority
) -> None:
    mine = authority.issue_x509_svid(CLIENT)
    other = authority.issue_x509_svid(CLIENT)  # same SPIFFE ID, another key and certificate
    token = server.issuer.mint(thumbprint=certificate_thumbprint(mine.leaf))
    assert (await server.get(token=token, svid=mine))[0] == 200
    status, header, _ = await server.get(token=token, svid=other)
    assert status == 401
    assert 'error_description="cnf"' in str(header)
    status, header, _ = await server.get(token=token)  # no client certificate at all
    assert status == 401
    assert 'error_description="cnf"' in str(header)


async def test_no_keys_yet_is_503(fake_clock: FakeClock, authority: TestAuthority) -> None:
    class NoKeys:
        def current(self) -> SigningKeySet:
            raise Unavailable("no JWKS from the AS yet")

        async def refresh(self) -> SigningKeySet:
            raise Unavailable("no JWKS from the AS yet")

    validator = AccessTokenValidator(
        NoKeys(), issuer=ISSUER, audience=AUDIENCE, revocations=no_revocation_check()
    )
    runner, port = await _start(authority, validator)
    try:
        server = Server(f"https://localhost:{port}", authority, TestTokenIssuer(clock=fake_clock))
        status, _, body = await server.get(token=server.issuer.mint())
        assert status == 503
        assert body["error"] == "temporarily_unavailable"
    finally:
        await runner.cleanup()


async def test_a_spiffe_mtls_resource_server_checks_the_binding(
    fake_clock: FakeClock, authority: TestAuthority
) -> None:
    """The verifier's own mTLS site (SVIDs checked in the handshake) with the middleware: a
    bound token passes only over the connection of the certificate it is bound to."""
    issuer = TestTokenIssuer(clock=fake_clock)
    validator = AccessTokenValidator(
        issuer.key_set(),
        issuer=ISSUER,
        audience=AUDIENCE,
        revocations=no_revocation_check(),
        clock=fake_clock,
    )
    app = web.Application(middlewares=[access_token_middleware(validator)])
    app.router.add_get("/read", _read)
    server_source = source_of(
        authority.issue_x509_svid("spiffe://example.org/billing"), authority.bundle()
    )
    context = server_context(
        server_source, authorize=authorize_any(), revocations=no_revocation_check()
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = SpiffeTCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    url = f"https://127.0.0.1:{site.port}/read"
    mine = authority.issue_x509_svid(CLIENT)
    other = authority.issue_x509_svid(CLIENT)
    token = issuer.mint(thumbprint=certificate_thumbprint(mine.leaf))

    async def get(svid: X509Svid) -> int:
        connector = spiffe_connector(
            source_of(svid, authority.bundle()),
            authorize=authorize_any(),
            revocations=no_revocation_check(),
        )
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(url, headers=headers) as resp,
        ):
            return resp.status

    try:
        assert await get(mine) == 200
        assert await get(other) == 401
    finally:
        await runner.cleanup()
