"""Tokens from a maintained RFC 9068 implementation (Authlib's JWTBearerTokenGenerator, signing
with joserfc) are accepted by AccessTokenValidator, its keys fetched from a real HTTPS jwks_uri
serving the JWKS as joserfc writes it; each accepted case has its rejecting twins."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from feed_support import eventually
from joserfc.jwk import ECKey, KeySet
from verifier_support import source_of

from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidToken
from s2s.core.revocation import RevocationRecord, RevocationSet, StaticRevocations
from s2s.testing import TestAuthority
from s2s.verifier.access_token import AccessTokenValidator, certificate_thumbprint
from s2s.verifier.access_token_aiohttp import access_token_middleware, access_token_of
from s2s.verifier.access_token_fetch import JwksFetcher
from s2s.verifier.aiohttp import SpiffeTCPSite, spiffe_connector
from s2s.verifier.authorize import authorize_any
from s2s.verifier.feeds_ca import CaRevocationFeed
from s2s.verifier.memcert import load_cert_chain_from_memory
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import server_context
from s2s.verifier.x509context import X509Context

ISSUER = "https://as.example.org"
RESOURCE = "https://billing.example.org"
CLIENT = "spiffe://example.org/ns/shop/sa/checkout"


class _Client:
    """What Authlib asks of a client record."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    def get_client_id(self) -> str:
        return self.client_id

    def get_allowed_scope(self, scope: str) -> str:
        return scope


class AuthlibIssuer(JWTBearerTokenGenerator):  # type: ignore[misc]
    """Authlib's RFC 9068 generator with an ES256 key set, an audience and optional cnf."""

    def __init__(self, keys: KeySet, *, issuer: str = ISSUER, audience: str = RESOURCE) -> None:
        super().__init__(issuer, alg="ES256", expires_generator=lambda client, grant: 300)
        self.keys, self.audience = keys, audience
        self.extra: dict[str, Any] = {}

    def get_jwks(self) -> KeySet:
        return self.keys

    def get_audiences(self, client: Any, user: Any, scope: Any) -> str:
        return self.audience

    def get_extra_claims(
        self, client: Any, grant_type: Any, user: Any, scope: Any
    ) -> dict[str, Any]:
        return self.extra

    def token(self, scope: str = "billing.read", client_id: str = CLIENT) -> str:
        answer = self.generate(
            grant_type="client_credentials", client=_Client(client_id), scope=scope
        )
        return str(answer["access_token"])


def _key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig", "alg": "ES256"})


@dataclass
class Jwks:
    uri: str
    keys: KeySet


@pytest.fixture
async def jwks(authority: TestAuthority) -> AsyncIterator[Jwks]:
    """The AS's public JWKS, as joserfc writes it, on https://localhost:<port>/jwks."""
    served = Jwks("", KeySet([_key("as-1")]))

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(served.keys.as_dict(private=False))

    app = web.Application()
    app.router.add_get("/jwks", handler)
    svid = authority.issue_x509_svid("spiffe://example.org/s2s/ca/ca-0", dns_names=["localhost"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load_cert_chain_from_memory(context, svid.chain_pem(), svid.key_pem())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    served.uri = f"https://localhost:{site._server.sockets[0].getsockname()[1]}/jwks"  # type: ignore[union-attr]
    try:
        yield served
    finally:
        await runner.cleanup()


@pytest.fixture
def ca_file(authority: TestAuthority, tmp_path: Path) -> str:
    path = tmp_path / "bundle.pem"
    path.write_bytes(authority.bundle_pem())
    return str(path)


@pytest.fixture
def revocations() -> StaticRevocations:
    return StaticRevocations()


@pytest.fixture
async def validator(
    jwks: Jwks, ca_file: str, fake_clock: FakeClock, revocations: StaticRevocations
) -> AsyncIterator[AccessTokenValidator]:
    async with JwksFetcher.trusting_ca_file(jwks.uri, ca_file, min_refresh_interval=0) as keys:
        yield AccessTokenValidator(
            keys, issuer=ISSUER, audience=RESOURCE, revocations=revocations, clock=fake_clock
        )


def reason(validator: AccessTokenValidator, token: str) -> str:
    with pytest.raises(InvalidToken) as info:
        validator.validate(token)
    return info.value.reason


async def test_an_authlib_token_is_accepted(jwks: Jwks, validator: AccessTokenValidator) -> None:
    token = validator.validate(AuthlibIssuer(jwks.keys).token(scope="billing.read billing.write"))
    assert token.subject == CLIENT
    assert token.client_id == CLIENT
    assert token.scopes == {"billing.read", "billing.write"}
    assert str(token.spiffe_id) == CLIENT


async def test_authlib_tokens_for_another_audience_or_issuer_are_refused(
    jwks: Jwks, validator: AccessTokenValidator
) -> None:
    assert reason(validator, AuthlibIssuer(jwks.keys, audience="https://other").token()) == "aud"
    assert reason(validator, AuthlibIssuer(jwks.keys, issuer="https://evil").token()) == "iss"


async def test_an_expired_authlib_token_is_refused(
    jwks: Jwks, validator: AccessTokenValidator, fake_clock: FakeClock
) -> None:
    token = AuthlibIssuer(jwks.keys).token()
    validator.validate(token)
    fake_clock.advance(seconds=300 + 31)  # past exp and the 30 s leeway
    assert reason(validator, token) == "exp"


async def test_a_key_outside_the_jwks_is_refused_and_a_published_one_is_fetched(
    jwks: Jwks, validator: AccessTokenValidator
) -> None:
    rogue = AuthlibIssuer(KeySet([_key("as-2")])).token()
    with pytest.raises(InvalidToken) as info:
        await validator.validate_async(rogue)
    assert info.value.reason == "kid"
    # The AS publishes its next key: the same kind of token is now accepted after one refresh.
    rotated = _key("as-3")
    jwks.keys = KeySet([*jwks.keys.keys, rotated])
    token = await validator.validate_async(AuthlibIssuer(KeySet([rotated])).token())
    assert token.subject == CLIENT
    # twin: a token signed by another key under a published kid fails the signature
    impostor = AuthlibIssuer(KeySet([_key("as-3")])).token()
    assert reason(validator, impostor) == "signature"


async def test_a_revoked_authlib_token_is_refused(
    jwks: Jwks,
    validator: AccessTokenValidator,
    revocations: StaticRevocations,
    fake_clock: FakeClock,
) -> None:
    token = AuthlibIssuer(jwks.keys).token()
    checked = validator.validate(token)
    record = RevocationRecord.for_jti(
        checked.jti, revoked_at=fake_clock.now(), expires_at=checked.expiry
    )
    revocations.replace(RevocationSet.of([record]))
    assert reason(validator, token) == "revoked"
    validator.validate(AuthlibIssuer(jwks.keys).token())  # another jti


async def test_a_bound_authlib_token_passes_only_over_its_certificate(
    jwks: Jwks, validator: AccessTokenValidator, authority: TestAuthority
) -> None:
    mine, other = authority.issue_x509_svid(CLIENT), authority.issue_x509_svid(CLIENT)
    issuer = AuthlibIssuer(jwks.keys)
    issuer.extra = {"cnf": {"x5t#S256": certificate_thumbprint(mine.leaf)}}
    token = issuer.token()

    async def read(request: web.Request) -> web.Response:
        return web.Response(text=access_token_of(request).subject)

    app = web.Application(middlewares=[access_token_middleware(validator)])
    app.router.add_get("/", read)
    server_svid = authority.issue_x509_svid("spiffe://example.org/billing")
    context = server_context(
        source_of(server_svid, authority.bundle()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = SpiffeTCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()

    async def status_with(svid: Any) -> int:
        connector = spiffe_connector(
            source_of(svid, authority.bundle()),
            authorize=authorize_any(),
            revocations=no_revocation_check(),
        )
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(
                f"https://127.0.0.1:{site.port}/", headers={"Authorization": f"Bearer {token}"}
            ) as resp,
        ):
            return resp.status

    try:
        assert await status_with(mine) == 200
        assert await status_with(other) == 401
    finally:
        await runner.cleanup()


async def test_a_jti_revoked_at_the_ca_is_refused_through_its_feed(
    jwks: Jwks, ca_file: str, live_ca: Any
) -> None:
    """`s2s-ca revoke --jti` (the CA's revocation service) reaches an access-token validator
    through the same CaRevocationFeed that carries every other revocation."""
    assert live_ca.server is not None
    me = await live_ca.server.issuer.mint_x509_svid(live_ca.td.id("/billing"))
    bundles = BundleSet.of(live_ca.server.authority.bundle)
    source = StaticX509Source(X509Context((me,), bundles))
    feed = CaRevocationFeed.over_https(live_ca.url, source, wait=5.0)
    await feed.start()
    try:
        async with JwksFetcher.trusting_ca_file(jwks.uri, ca_file) as keys:
            validator = AccessTokenValidator(
                keys, issuer=ISSUER, audience=RESOURCE, revocations=feed
            )
            token = AuthlibIssuer(jwks.keys).token()
            other = AuthlibIssuer(jwks.keys).token()
            checked = validator.validate(token)
            await live_ca.server.revocations.revoke_jti(checked.jti, reason="test")
            took = await eventually(lambda: _refused(validator, token), "the jti refused")
            assert took < 1.0
            validator.validate(other)  # twin: another token of the same client still passes
    finally:
        await feed.stop()


def _refused(validator: AccessTokenValidator, token: str) -> bool:
    try:
        validator.validate(token)
    except InvalidToken as exc:
        return exc.reason == "revoked"
    return False
