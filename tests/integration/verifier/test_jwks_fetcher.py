"""JwksFetcher against a real HTTPS server on 127.0.0.1: trust by CA file or by our bundle,
refresh on a schedule and (rate limited) on an unknown kid, the last good set kept on failure."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from verifier_support import source_of

from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidToken, Unavailable
from s2s.core.spiffe_id import TrustDomain
from s2s.testing import TestAuthority
from s2s.testing_oauth import AUDIENCE, ISSUER, TestTokenIssuer
from s2s.verifier.access_token import AccessTokenValidator
from s2s.verifier.access_token_fetch import JwksFetcher, fetch_metadata
from s2s.verifier.memcert import load_cert_chain_from_memory
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.x509context import X509Context

CA_ID = "spiffe://example.org/s2s/ca/ca-0"


@dataclass
class JwksServer:
    port: int
    jwks: dict[str, Any]
    status: int = 200
    hits: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"https://localhost:{self.port}/jwks.json"


async def _serve(
    authority: TestAuthority, spiffe_id: str, keys: TestTokenIssuer
) -> AsyncIterator[JwksServer]:
    state = JwksServer(0, {"keys": [keys.jwk()]})

    async def jwks(request: web.Request) -> web.Response:
        state.hits += 1
        return web.json_response(state.jwks, status=state.status)

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response(state.metadata)

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    app.router.add_get("/.well-known/oauth-authorization-server", metadata)
    svid = authority.issue_x509_svid(spiffe_id, dns_names=["localhost"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load_cert_chain_from_memory(context, svid.chain_pem(), svid.key_pem())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    state.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
def keys(fake_clock: FakeClock) -> TestTokenIssuer:
    return TestTokenIssuer(clock=fake_clock)


@pytest.fixture
async def server(authority: TestAuthority, keys: TestTokenIssuer) -> AsyncIterator[JwksServer]:
    async for state in _serve(authority, CA_ID, keys):
        yield state


@pytest.fixture
def ca_file(authority: TestAuthority, tmp_path: Path) -> str:
    path = tmp_path / "bundle.pem"
    path.write_bytes(authority.bundle_pem())
    return str(path)


async def test_keys_come_over_https_trusting_a_ca_file(
    server: JwksServer, ca_file: str, keys: TestTokenIssuer, fake_clock: FakeClock
) -> None:
    async with JwksFetcher.trusting_ca_file(server.uri, ca_file) as fetcher:
        assert fetcher.current().get(keys.kid) is not None
        validator = AccessTokenValidator(
            fetcher,
            issuer=ISSUER,
            audience=AUDIENCE,
            revocations=no_revocation_check(),
            clock=fake_clock,
        )
        assert validator.validate(keys.mint()).subject


async def test_a_server_outside_the_ca_file_is_refused(
    server: JwksServer, ca_file: str, tmp_path: Path
) -> None:
    other = tmp_path / "other.pem"
    other.write_bytes(TestAuthority("example.org").bundle_pem())
    with pytest.raises(Unavailable, match="unreachable"):
        async with JwksFetcher.trusting_ca_file(server.uri, str(other)):
            pass
    # twin: the host name is checked too (the certificate names localhost, not 127.0.0.1)
    ip_uri = server.uri.replace("localhost", "127.0.0.1")
    with pytest.raises(Unavailable, match="unreachable"):
        async with JwksFetcher.trusting_ca_file(ip_uri, ca_file):
            pass


async def test_a_bad_jwks_or_status_is_unavailable(
    server: JwksServer, ca_file: str, keys: TestTokenIssuer
) -> None:
    server.jwks = {"keys": [keys.jwk(d="AAAA")]}
    with pytest.raises(Unavailable, match="private key material"):
        async with JwksFetcher.trusting_ca_file(server.uri, ca_file):
            pass
    server.jwks, server.status = {"error": "nope"}, 500
    with pytest.raises(Unavailable, match="answered 500"):
        async with JwksFetcher.trusting_ca_file(server.uri, ca_file):
            pass


async def test_refresh_is_rate_limited_and_keeps_the_last_good_set(
    server: JwksServer, ca_file: str, keys: TestTokenIssuer, fake_clock: FakeClock
) -> None:
    async with JwksFetcher.trusting_ca_file(server.uri, ca_file, min_refresh_interval=3600) as f:
        first = f.current()
        assert await f.refresh() is first
        assert server.hits == 1  # inside the interval: no request
    async with JwksFetcher.trusting_ca_file(server.uri, ca_file, min_refresh_interval=0) as f:
        first = f.current()
        server.status = 503
        assert await f.refresh() is first  # the failure keeps the last good set
        server.status = 200
        rotated = TestTokenIssuer(clock=fake_clock, kid="as-2")
        server.jwks = {"keys": [keys.jwk(), rotated.jwk()]}
        assert (await f.refresh()).get("as-2") is not None


async def test_an_unknown_kid_fetches_the_rotated_key_once(
    server: JwksServer, ca_file: str, keys: TestTokenIssuer, fake_clock: FakeClock
) -> None:
    async with JwksFetcher.trusting_ca_file(server.uri, ca_file, min_refresh_interval=3600) as f:
        validator = AccessTokenValidator(
            f, issuer=ISSUER, audience=AUDIENCE, revocations=no_revocation_check(), clock=fake_clock
        )
        rotated = TestTokenIssuer(clock=fake_clock, kid="as-2")
        server.jwks = {"keys": [keys.jwk(), rotated.jwk()]}
        f.min_refresh_interval = 0  # the first fetch was just now: allow the kid-triggered one
        token = await validator.validate_async(rotated.mint())
        assert token.subject
        hits = server.hits
        assert hits == 2
        f.min_refresh_interval = 3600
        for _ in range(3):  # unknown kids inside the interval: refused with no new request
            with pytest.raises(InvalidToken):
                await validator.validate_async(TestTokenIssuer(clock=fake_clock, kid="as-9").mint())
        assert server.hits == hits


async def test_the_set_is_refreshed_on_schedule(server: JwksServer, ca_file: str) -> None:
    async with JwksFetcher.trusting_ca_file(
        server.uri, ca_file, refresh_interval=0.05, min_refresh_interval=0
    ) as f:
        deadline = asyncio.get_running_loop().time() + 10
        while f.fetches < 3:
            assert asyncio.get_running_loop().time() < deadline, "no scheduled refresh within 10 s"
            await asyncio.sleep(0.02)


async def test_over_spiffe_trusts_the_bundle_and_requires_the_ca_id(
    authority: TestAuthority, keys: TestTokenIssuer
) -> None:
    source = source_of(
        authority.issue_x509_svid("spiffe://example.org/billing"), authority.bundle()
    )
    async for state in _serve(authority, CA_ID, keys):
        async with JwksFetcher.over_spiffe(state.uri, source) as f:
            assert f.current().get(keys.kid) is not None
    # twin: a server of our trust domain that is not a CA
    async for state in _serve(authority, "spiffe://example.org/impostor", keys):
        with pytest.raises(Unavailable):
            async with JwksFetcher.over_spiffe(state.uri, source):
                pass


async def test_metadata_must_name_its_own_issuer(server: JwksServer, ca_file: str) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    issuer = f"https://localhost:{server.port}"
    server.metadata = {"issuer": issuer, "jwks_uri": server.uri}
    assert (await fetch_metadata(issuer, ssl_context=context))["jwks_uri"] == server.uri
    server.metadata = {"issuer": "https://evil.example", "jwks_uri": server.uri}
    with pytest.raises(Unavailable, match="does not describe"):
        await fetch_metadata(issuer, ssl_context=context)
    server.metadata = {"issuer": issuer, "jwks_uri": "http://localhost/jwks"}
    with pytest.raises(Unavailable, match="no https jwks_uri"):
        await fetch_metadata(issuer, ssl_context=context)


async def test_over_spiffe_reaches_a_real_ca(live_ca: Any) -> None:
    """The CA's own server SVID (spiffe://example.org/s2s/ca/<replica>) passes the check, and
    the JWK Set it serves parses (whatever keys it holds for signature use)."""
    assert live_ca.server is not None
    me = await live_ca.server.issuer.mint_x509_svid(live_ca.td.id("/billing"))
    source = StaticX509Source(X509Context((me,), BundleSet.of(live_ca.server.authority.bundle)))
    uri = f"{live_ca.url}/.well-known/jwks.json"
    async with JwksFetcher.over_spiffe(uri, source) as fetcher:
        assert fetcher.fetches == 1
    # twin: the same CA under a trust domain we do not expect is refused
    with pytest.raises(Unavailable):
        async with JwksFetcher.over_spiffe(uri, source, trust_domain=TrustDomain("other.org")):
            pass
