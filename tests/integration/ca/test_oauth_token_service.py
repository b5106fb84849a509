"""The CA's token service and OIDC discovery against a real CA on loopback, over real HTTPS:
every accepted request has rejecting twins (wrong secret, unknown client, replayed, expired,
misaddressed, foreign or revoked assertion, revoked certificate, scope or audience not granted,
unsupported grant, malformed body)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from ca_harness import TRUST_DOMAIN, RunningCa, ca_client, stop_ca
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families

from s2s.ca.app import CaServer, ServeOptions
from s2s.ca.audit import AUDIT_LOGGER
from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import Conflict, InvalidRequest, InvalidToken, NotFound, Unavailable
from s2s.core.spiffe_id import SpiffeId
from s2s.verifier.access_token import AccessTokenValidator, certificate_thumbprint
from s2s.verifier.access_token_fetch import JwksFetcher, fetch_metadata
from s2s.verifier.feeds_ca import CaRevocationFeed
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.x509context import X509Context

CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout"
API = "https://billing.example.org"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OAuthCa:
    """A running CA with its issuer set, and helpers for the OAuth endpoints."""

    def __init__(self, ca: RunningCa, issuer: str, clock: FakeClock) -> None:
        self.ca = ca
        self.issuer = issuer
        self.clock = clock
        self.token_endpoint = issuer + "/oauth/token"

    async def post(
        self,
        path: str,
        data: Any,
        *,
        auth: tuple[str, str] | None = None,
        cert: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        ctx = self.ca.client_ssl(cert[0].encode(), cert[1].encode()) if cert else None
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) if ctx else None
        headers = dict(headers or {})
        if auth:
            headers["Authorization"] = aiohttp.encode_basic_auth(*auth)
        try:
            use = session or self.ca.session
            async with use.post(self.ca.url + path, data=data, headers=headers) as resp:
                body = await resp.json(content_type=None) if await resp.read() else None
                return resp.status, body, resp.headers
        finally:
            if session is not None:
                await session.close()

    async def client(self, **body: Any) -> dict[str, Any]:
        body.setdefault("scopes", ["billing.read", "billing.write"])
        body.setdefault("audiences", [API])
        created: dict[str, Any] = await self.ca.admin_call("POST", "/v1/oauth/clients", body)
        return created

    async def jwt_svid(self, audience: str, spiffe_id: str = CLIENT_ID) -> str:
        body = {"spiffe_id": spiffe_id, "audience": [audience]}
        minted = await self.ca.admin_call("POST", "/v1/jwt/mint", body)
        return str(minted["token"])

    async def x509_svid(self, spiffe_id: str = CLIENT_ID) -> dict[str, Any]:
        minted: dict[str, Any] = await self.ca.admin_call(
            "POST", "/v1/x509/mint", {"spiffe_id": spiffe_id}
        )
        return minted

    def validator(self, fetcher: JwksFetcher, **kw: Any) -> AccessTokenValidator:
        kw.setdefault("revocations", no_revocation_check())
        return AccessTokenValidator(
            fetcher, issuer=self.issuer, audience=API, clock=self.clock, **kw
        )

    def fetcher(self) -> JwksFetcher:
        return JwksFetcher(self.issuer.replace("localhost", "127.0.0.1") + "/oauth/jwks.json",
                           ssl_context=self.ca.client_ssl())  # fmt: skip


@pytest.fixture
async def oauth(data_dir: Path) -> AsyncIterator[OAuthCa]:
    port = _free_port()
    issuer = f"https://localhost:{port}"
    clock = FakeClock(dt.datetime.now(dt.UTC))
    options = ServeOptions(
        data_dir=data_dir,
        listen=f"127.0.0.1:{port}",
        tick=0.2,
        json_logs=False,
        config_overrides={"jwt_issuer": issuer},
    )
    server = await CaServer.open(options, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        async with ca_client(server) as running:
            yield OAuthCa(running, issuer, clock)
    finally:
        await stop_ca(server, task, stop)


def _tampered(token: str) -> str:
    """The token with one character in the middle of its signature changed, which changes the
    signature for certain (its last four characters set to 'AAAA' left it unchanged once in
    2**20: they carry 20 bits)."""
    head, body, sig = token.split(".")
    i = len(sig) // 2
    return f"{head}.{body}.{sig[:i]}{'B' if sig[i] == 'A' else 'A'}{sig[i + 1 :]}"


def _grant(**extra: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", **extra}


# ---- discovery -------------------------------------------------------------------------------


async def test_openid_configuration_and_jwks_validate_a_jwt_svid_with_pyjwt(oauth: OAuthCa) -> None:
    status, doc = await oauth.ca.public("GET", "/.well-known/openid-configuration")
    assert status == 200
    assert doc["issuer"] == oauth.issuer
    assert doc["jwks_uri"] == oauth.issuer + "/.well-known/jwks.json"
    assert doc["id_token_signing_alg_values_supported"] == ["ES256"]
    assert doc["subject_types_supported"] == ["public"]
    assert doc["response_types_supported"]
    status, jwks = await oauth.ca.public("GET", "/.well-known/jwks.json")
    assert all(k["use"] == "sig" and k["alg"] == "ES256" for k in jwks["keys"])
    _, bundle = await oauth.ca.public("GET", "/v1/bundle")
    assert {k["use"] for k in bundle["keys"]} == {"x509-svid", "jwt-svid"}

    token = await oauth.jwt_svid("vault")
    ctx = oauth.ca.client_ssl()
    client = jwt.PyJWKClient(doc["jwks_uri"], ssl_context=ctx)
    key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
    claims = jwt.decode(token, key, algorithms=["ES256"], audience="vault", issuer=oauth.issuer)
    assert claims["sub"] == CLIENT_ID
    # twins: another issuer, another audience, and a forged token under a published kid
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(token, key, algorithms=["ES256"], audience="vault", issuer="https://other")
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key, algorithms=["ES256"], audience="other", issuer=oauth.issuer)
    forged = jwt.encode(
        {"sub": CLIENT_ID, "aud": "vault", "iss": oauth.issuer},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": jwt.get_unverified_header(token)["kid"]},
    )
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key, algorithms=["ES256"], audience="vault", issuer=oauth.issuer)


async def test_without_an_issuer_svids_carry_no_iss_and_the_token_service_is_off(
    ca: RunningCa,
) -> None:
    status, doc = await ca.public("GET", "/.well-known/openid-configuration")
    assert status == 200
    assert doc["issuer"] == ca.url.replace("https://", "https://")
    minted = await ca.admin_call(
        "POST", "/v1/jwt/mint", {"spiffe_id": CLIENT_ID, "audience": ["a"]}
    )
    assert "iss" not in jwt.decode(minted["token"], options={"verify_signature": False})
    status, body = await ca.public("GET", "/.well-known/oauth-authorization-server")
    assert (status, body["error"]) == (404, "not_found")
    status, body = await ca.public("POST", "/oauth/token", data={"grant_type": "x"})
    assert status == 404


async def test_authorization_server_metadata(oauth: OAuthCa) -> None:
    status, doc = await oauth.ca.public("GET", "/.well-known/oauth-authorization-server")
    assert status == 200
    assert doc["issuer"] == oauth.issuer
    assert doc["token_endpoint"] == oauth.token_endpoint
    assert doc["grant_types_supported"] == ["client_credentials"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth"
    }  # fmt: skip
    assert doc["tls_client_certificate_bound_access_tokens"] is True
    # the verifier's RFC 8414 reader accepts it (issuer exact, https jwks_uri); twin: another issuer
    fetched = await fetch_metadata(oauth.issuer, ssl_context=oauth.ca.client_ssl())
    assert fetched["jwks_uri"] == oauth.issuer + "/oauth/jwks.json"
    with pytest.raises(Unavailable, match="404"):
        await fetch_metadata(oauth.issuer + "/other", ssl_context=oauth.ca.client_ssl())
    _, jwks = await oauth.ca.public("GET", "/oauth/jwks.json")
    _, svid_jwks = await oauth.ca.public("GET", "/.well-known/jwks.json")
    assert jwks["keys"]
    assert all(k["use"] == "sig" for k in jwks["keys"])
    assert not {k["kid"] for k in jwks["keys"]} & {k["kid"] for k in svid_jwks["keys"]}


# ---- client secrets --------------------------------------------------------------------------


async def test_secret_client_basic_and_post_and_rejecting_twins(oauth: OAuthCa) -> None:
    created = await oauth.client(client_id="reports")
    secret = created["client_secret"]
    assert created["auth"] == "secret"
    assert "secret_hashes" not in created
    shown = await oauth.ca.admin_call("GET", "/v1/oauth/clients/show", client_id="reports")
    assert "client_secret" not in shown
    assert shown["secrets"] == 1

    status, body, headers = await oauth.post(
        "/oauth/token", _grant(scope="billing.read"), auth=("reports", secret)
    )
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "billing.read"
    assert body["expires_in"] == 300
    async with oauth.fetcher() as fetcher:
        token = oauth.validator(fetcher).validate(body["access_token"])
    assert (token.subject, token.client_id, token.scopes) == (
        "reports", "reports", frozenset({"billing.read"})
    )  # fmt: skip
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt"

    status, body, _ = await oauth.post(
        "/oauth/token", _grant(client_id="reports", client_secret=secret)
    )
    assert status == 200
    assert body["scope"] == "billing.read billing.write"

    for auth in (("reports", secret + "x"), ("nobody", secret)):
        status, body, headers = await oauth.post("/oauth/token", _grant(), auth=auth)
        assert (status, body["error"]) == (401, "invalid_client")
        assert headers["WWW-Authenticate"].startswith("Basic")
    status, body, _ = await oauth.post(
        "/oauth/token", _grant(client_id="reports", client_secret="")
    )
    assert (status, body["error"]) == (401, "invalid_client")


async def test_secret_rotation_keeps_two_secrets_until_finished(oauth: OAuthCa) -> None:
    old = (await oauth.client(client_id="reports"))["client_secret"]
    rotated = await oauth.ca.admin_call(
        "POST", "/v1/oauth/clients/rotate-secret", {"client_id": "reports"}
    )
    new = rotated["client_secret"]
    assert rotated["secrets"] == 2
    assert new != old
    for secret in (old, new):
        status, _, _ = await oauth.post("/oauth/token", _grant(), auth=("reports", secret))
        assert status == 200
    await oauth.ca.admin_call(
        "POST", "/v1/oauth/clients/rotate-secret", {"client_id": "reports", "finish": True}
    )
    status, _, _ = await oauth.post("/oauth/token", _grant(), auth=("reports", new))
    assert status == 200
    status, body, _ = await oauth.post("/oauth/token", _grant(), auth=("reports", old))
    assert (status, body["error"]) == (401, "invalid_client")


async def test_scope_audience_grant_and_body_errors(oauth: OAuthCa) -> None:
    secret = (await oauth.client(client_id="reports"))["client_secret"]
    auth = ("reports", secret)
    cases: list[tuple[Any, int, str]] = [
        (_grant(scope="billing.admin"), 400, "invalid_scope"),
        (_grant(scope="billing.read bad\\scope"), 400, "invalid_scope"),
        (_grant(audience="https://other.example.org"), 400, "invalid_target"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({}, 400, "invalid_request"),
        ("grant_type=client_credentials&grant_type=client_credentials", 400, "invalid_request"),
        (_grant(client_id="reports", client_secret=secret), 400, "invalid_request"),  # 2 methods
        ({"grant_type": "client_credentials", "x": "y" * 20_000}, 400, "invalid_request"),
    ]
    for data, status_expected, error in cases:
        headers = (
            {"Content-Type": "application/x-www-form-urlencoded"} if isinstance(data, str) else None
        )
        status, body, _ = await oauth.post("/oauth/token", data, auth=auth, headers=headers)
        assert (status, body["error"]) == (status_expected, error), (data, body)
    status, body, _ = await oauth.post("/oauth/token", '{"grant_type": "x"}', auth=auth,
                                       headers={"Content-Type": "application/json"})  # fmt: skip
    assert (status, body["error"]) == (400, "invalid_request")
    # the accepting twin of the audience case
    status, body, _ = await oauth.post("/oauth/token", _grant(audience=API), auth=auth)
    assert status == 200


# ---- JWT-SVID assertions ---------------------------------------------------------------------


async def test_jwt_svid_assertion_and_rejecting_twins(oauth: OAuthCa) -> None:
    await oauth.client(spiffe_id=CLIENT_ID)

    def form(assertion: str) -> dict[str, str]:
        return _grant(client_assertion_type=ASSERTION_TYPE, client_assertion=assertion)

    assertion = await oauth.jwt_svid(oauth.token_endpoint)
    status, body, _ = await oauth.post("/oauth/token", form(assertion))
    assert status == 200, body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == claims["client_id"] == CLIENT_ID
    assert "cnf" not in claims
    # replayed
    status, body, _ = await oauth.post("/oauth/token", form(assertion))
    assert (status, body["error"]) == (401, "invalid_client")
    assert "already used" in body["error_description"]
    # addressed to the issuer: accepted; to anything else: refused
    status, _, _ = await oauth.post("/oauth/token", form(await oauth.jwt_svid(oauth.issuer)))
    assert status == 200
    status, body, _ = await oauth.post("/oauth/token", form(await oauth.jwt_svid(API)))
    assert (status, body["error"]) == (401, "invalid_client")
    # the wrong client_id beside it, an unregistered SPIFFE ID
    bad = form(await oauth.jwt_svid(oauth.token_endpoint))
    status, body, _ = await oauth.post("/oauth/token", {**bad, "client_id": "someone"})
    assert (status, body["error"]) == (401, "invalid_client")
    other = await oauth.jwt_svid(oauth.token_endpoint, f"spiffe://{TRUST_DOMAIN}/unregistered")
    status, body, _ = await oauth.post("/oauth/token", form(other))
    assert (status, body["error"]) == (401, "invalid_client")
    # a wrong assertion type
    wrong_type = {**form(await oauth.jwt_svid(oauth.token_endpoint)), "client_assertion_type": "x"}
    status, body, _ = await oauth.post("/oauth/token", wrong_type)
    assert (status, body["error"]) == (400, "invalid_request")


async def test_assertion_from_another_trust_domain_is_refused(oauth: OAuthCa) -> None:
    await oauth.client(spiffe_id=CLIENT_ID)
    now = int(oauth.clock.now().timestamp())
    for sub in ("spiffe://other.org/ns/shop/sa/checkout", CLIENT_ID):
        foreign = jwt.encode(
            {"sub": sub, "aud": oauth.token_endpoint, "exp": now + 60, "iat": now, "jti": "j1"},
            ec.generate_private_key(ec.SECP256R1()),
            algorithm="ES256",
            headers={"kid": "other-kid", "typ": "JWT"},
        )
        data = _grant(client_assertion_type=ASSERTION_TYPE, client_assertion=foreign)
        status, body, _ = await oauth.post("/oauth/token", data)
        assert (status, body["error"]) == (401, "invalid_client")


async def test_expired_assertion_is_refused(oauth: OAuthCa) -> None:
    await oauth.client(spiffe_id=CLIENT_ID)
    assertion = await oauth.jwt_svid(oauth.token_endpoint)
    oauth.clock.advance(seconds=6 * 60)
    data = _grant(client_assertion_type=ASSERTION_TYPE, client_assertion=assertion)
    status, body, _ = await oauth.post("/oauth/token", data)
    assert (status, body["error"]) == (401, "invalid_client")
    fresh = await oauth.jwt_svid(oauth.token_endpoint)
    data = _grant(client_assertion_type=ASSERTION_TYPE, client_assertion=fresh)
    status, _, _ = await oauth.post("/oauth/token", data)
    assert status == 200


async def test_assertion_of_a_revoked_spiffe_id_is_refused(oauth: OAuthCa) -> None:
    await oauth.client(spiffe_id=CLIENT_ID)
    by_jti = await oauth.jwt_svid(oauth.token_endpoint)
    jti = jwt.decode(by_jti, options={"verify_signature": False})["jti"]
    await oauth.ca.admin_call("POST", "/v1/revocations", {"jti": jti})
    data = _grant(client_assertion_type=ASSERTION_TYPE, client_assertion=by_jti)
    status, body, _ = await oauth.post("/oauth/token", data)
    assert (status, body["error"]) == (401, "invalid_client")
    before = await oauth.jwt_svid(oauth.token_endpoint)
    await oauth.x509_svid()  # the CA knows the ID by an issued certificate
    await oauth.ca.admin_call("POST", "/v1/revocations", {"spiffe_id": CLIENT_ID})
    data = _grant(client_assertion_type=ASSERTION_TYPE, client_assertion=before)
    status, body, _ = await oauth.post("/oauth/token", data)
    assert (status, body["error"]) == (401, "invalid_client")


# ---- mTLS ------------------------------------------------------------------------------------


async def test_tls_client_auth_binds_the_token_to_the_certificate(oauth: OAuthCa) -> None:
    await oauth.client(spiffe_id=CLIENT_ID)
    svid = await oauth.x509_svid()
    cert = (svid["chain_pem"], svid["key_pem"])
    status, body, _ = await oauth.post("/oauth/token", _grant(scope="billing.read"), cert=cert)
    assert status == 200, body
    leaf = x509.load_pem_x509_certificates(svid["chain_pem"].encode())[0]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(leaf)}
    other = x509.load_pem_x509_certificates((await oauth.x509_svid())["chain_pem"].encode())[0]
    async with oauth.fetcher() as fetcher:
        validator = oauth.validator(fetcher)
        assert validator.validate(body["access_token"], peer_certificate=leaf).thumbprint
        for wrong in (other, None):
            with pytest.raises(InvalidToken, match=r"certificate|cnf|bound"):
                validator.validate(body["access_token"], peer_certificate=wrong)
    # twins: an unregistered SPIFFE ID, and a revoked certificate
    stranger = await oauth.x509_svid(f"spiffe://{TRUST_DOMAIN}/stranger")
    status, body, _ = await oauth.post(
        "/oauth/token", _grant(), cert=(stranger["chain_pem"], stranger["key_pem"])
    )
    assert (status, body["error"]) == (401, "invalid_client")
    await oauth.ca.admin_call("POST", "/v1/revocations", {"serial": svid["serial"]})
    status, body, _ = await oauth.post("/oauth/token", _grant(), cert=cert)
    assert (status, body["error"]) == (401, "invalid_client")
    assert "revoked" in body["error_description"]
    # no credential at all
    status, body, _ = await oauth.post("/oauth/token", _grant())
    assert (status, body["error"]) == (401, "invalid_client")


# ---- introspection and revocation ------------------------------------------------------------


async def test_introspection_and_revocation(oauth: OAuthCa) -> None:
    secret = (await oauth.client(client_id="reports"))["client_secret"]
    rs_secret = (await oauth.client(client_id="billing-api", scopes=[]))["client_secret"]
    outsider = (await oauth.client(client_id="outsider", audiences=["https://x"]))["client_secret"]
    _, issued, _ = await oauth.post("/oauth/token", _grant(), auth=("reports", secret))
    token = issued["access_token"]

    status, body, headers = await oauth.post(
        "/oauth/introspect", {"token": token}, auth=("billing-api", rs_secret)
    )
    assert status == 200
    assert body["active"] is True
    assert body["client_id"] == "reports"
    assert headers["Cache-Control"] == "no-store"
    _, body, _ = await oauth.post(
        "/oauth/introspect", {"token": token}, auth=("outsider", outsider)
    )
    assert body == {"active": False}
    _, body, _ = await oauth.post(
        "/oauth/introspect", {"token": _tampered(token)}, auth=("billing-api", rs_secret)
    )
    assert body == {"active": False}
    status, body, _ = await oauth.post("/oauth/introspect", {"token": token})
    assert (status, body["error"]) == (401, "invalid_client")

    # only the token's client may revoke it
    status, body, _ = await oauth.post(
        "/oauth/revoke", {"token": token}, auth=("billing-api", rs_secret)
    )
    assert (status, body["error"]) == (400, "unauthorized_client")
    status, _, _ = await oauth.post("/oauth/revoke", {"token": token}, auth=("reports", secret))
    assert status == 200
    status, _, _ = await oauth.post("/oauth/revoke", {"token": "junk"}, auth=("reports", secret))
    assert status == 200  # RFC 7009 2.2
    _, body, _ = await oauth.post(
        "/oauth/introspect", {"token": token}, auth=("billing-api", rs_secret)
    )
    assert body == {"active": False}
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    feed = await oauth.ca.admin_call("GET", "/v1/revocations")
    assert jti in str(feed)


async def test_admin_client_routes(oauth: OAuthCa, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    created = await oauth.client(spiffe_id=CLIENT_ID)
    assert created["client_id"] == CLIENT_ID
    assert "client_secret" not in created
    listed = await oauth.ca.admin_call("GET", "/v1/oauth/clients")
    assert [c["client_id"] for c in listed["clients"]] == [CLIENT_ID]
    updated = await oauth.ca.admin_call(
        "POST", "/v1/oauth/clients/update", {"client_id": CLIENT_ID, "scopes": ["a"]}
    )
    assert updated["scopes"] == ["a"]
    with pytest.raises(Conflict):
        await oauth.client(spiffe_id=CLIENT_ID)
    with pytest.raises(InvalidRequest):
        await oauth.client(spiffe_id="spiffe://other.org/x")
    with pytest.raises(InvalidRequest):
        await oauth.client(client_id="x", scopes=["bad\\scope"])
    with pytest.raises(InvalidRequest):
        await oauth.ca.admin_call(
            "POST", "/v1/oauth/clients/rotate-secret", {"client_id": CLIENT_ID}
        )
    await oauth.ca.admin_call("POST", "/v1/oauth/clients/delete", {"client_id": CLIENT_ID})
    audited = [
        (r.action, r.target)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "audit.admin.change"
    ]
    assert [a for a in audited if a[0].startswith("oauth_client.")] == [
        ("oauth_client.create", CLIENT_ID),
        ("oauth_client.update", CLIENT_ID),
        ("oauth_client.delete", CLIENT_ID),
    ]
    with pytest.raises(NotFound):
        await oauth.ca.admin_call("GET", "/v1/oauth/clients/show", client_id=CLIENT_ID)


async def test_a_certificate_under_a_revoked_intermediate_is_refused(oauth: OAuthCa) -> None:
    await oauth.client(spiffe_id=CLIENT_ID)
    svid = await oauth.x509_svid()
    chain = x509.load_pem_x509_certificates(svid["chain_pem"].encode())
    cert = (svid["chain_pem"], svid["key_pem"])
    status, _, _ = await oauth.post("/oauth/token", _grant(), cert=cert)
    assert status == 200
    await oauth.ca.admin_call("POST", "/v1/revocations", {"serial": f"{chain[1].serial_number:x}"})
    status, body, _ = await oauth.post("/oauth/token", _grant(), cert=cert)
    assert (status, body["error"]) == (401, "invalid_client")
    fresh = await oauth.x509_svid()  # under the new intermediate
    status, _, _ = await oauth.post(
        "/oauth/token", _grant(), cert=(fresh["chain_pem"], fresh["key_pem"])
    )
    assert status == 200


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"\xff\xfe=\xff", {"Content-Type": "application/x-www-form-urlencoded"}),
        (b"a=1&" * 100, {"Content-Type": "application/x-www-form-urlencoded"}),
        (b"grant_type=client_credentials", {"Content-Type": "text/plain"}),
        (b"grant_type=client_credentials", {"Authorization": "Basic !!!"}),
        (b"grant_type=client_credentials", {"Authorization": "Basic " + "Og=="}),  # ":"
        (b"grant_type=client_credentials", {"Authorization": "Basic " + "eA=="}),  # "x"
        (b"grant_type=client_credentials", {"Authorization": "Bearer abc"}),
        (b"client_assertion_type=x&client_assertion=a.b.c", {}),
        (b"client_assertion=" + b"A" * 10_000, {}),
        (b"client_assertion=a.b.c&client_assertion_type=" + ASSERTION_TYPE.encode(), {}),
    ],
)
async def test_bad_requests_get_an_oauth_error_never_a_500(
    oauth: OAuthCa, body: bytes, headers: dict[str, str]
) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    for path in ("/oauth/token", "/oauth/introspect", "/oauth/revoke"):
        async with oauth.ca.session.post(oauth.ca.url + path, data=body, headers=headers) as resp:
            answer = await resp.json(content_type=None)
            assert resp.status in (400, 401), (path, resp.status, answer)
            assert answer["error"] in ("invalid_request", "invalid_client"), answer
            assert resp.headers["Cache-Control"] == "no-store"


async def test_a_token_revoked_at_the_revocation_endpoint_is_refused_through_the_feed(
    oauth: OAuthCa,
) -> None:
    """RFC 7009 revocation is a jti record: a resource server following the CA's revocation feed
    refuses the token; another token of the same client still passes."""
    secret = (await oauth.client(client_id="reports"))["client_secret"]
    tokens = []
    for _ in range(2):
        _, issued, _ = await oauth.post("/oauth/token", _grant(), auth=("reports", secret))
        tokens.append(issued["access_token"])
    server = oauth.ca.server
    me = await server.issuer.mint_x509_svid(SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/billing"))
    source = StaticX509Source(X509Context((me,), BundleSet.of(server.authority.bundle)))
    feed = CaRevocationFeed.over_https(oauth.ca.url, source, wait=5.0)
    await feed.start()
    try:
        async with oauth.fetcher() as fetcher:
            validator = oauth.validator(fetcher, revocations=feed)
            validator.validate(tokens[0])
            status, _, _ = await oauth.post(
                "/oauth/revoke", {"token": tokens[0]}, auth=("reports", secret)
            )
            assert status == 200
            deadline = asyncio.get_running_loop().time() + 5
            while not _revoked(validator, tokens[0]):
                assert asyncio.get_running_loop().time() < deadline, "still accepted after 5 s"
                await asyncio.sleep(0.02)
            validator.validate(tokens[1])
    finally:
        await feed.stop()


def _revoked(validator: AccessTokenValidator, token: str) -> bool:
    try:
        validator.validate(token)
    except InvalidToken as exc:
        return exc.reason == "revoked"
    return False


# ---- metrics ---------------------------------------------------------------------------------


async def _scraped(oauth: OAuthCa) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = await oauth.ca.public("GET", "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("s2s_ca_oauth_")
    }


def _value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:  # fmt: skip
    return scraped.get((name, frozenset(labels.items())), 0.0)


async def test_token_service_metrics_count_each_answer_by_method_and_result(
    oauth: OAuthCa,
) -> None:
    """s2s_ca_oauth_*: each answered request once, by its client authentication method and its
    result; the twins (a refused request) count under their error code, never as ok."""
    secret = (await oauth.client(client_id="reports"))["client_secret"]
    await oauth.client(spiffe_id=CLIENT_ID)
    assertion = await oauth.jwt_svid(oauth.token_endpoint)
    by_assertion = _grant(client_assertion_type=ASSERTION_TYPE, client_assertion=assertion)
    svid = await oauth.x509_svid()

    _, issued, _ = await oauth.post("/oauth/token", _grant(), auth=("reports", secret))
    await oauth.post("/oauth/token", _grant(), auth=("reports", secret + "x"))
    await oauth.post("/oauth/token", _grant(client_id="reports", client_secret=secret))
    assert (await oauth.post("/oauth/token", by_assertion))[0] == 200
    assert (await oauth.post("/oauth/token", by_assertion))[0] == 401  # the replay
    cert = (svid["chain_pem"], svid["key_pem"])
    assert (await oauth.post("/oauth/token", _grant(scope="nope"), cert=cert))[0] == 400
    assert (await oauth.post("/oauth/token", _grant(), cert=cert))[0] == 200
    await oauth.post("/oauth/token", _grant())  # no client authentication at all
    await oauth.post("/oauth/token", {"grant_type": "password"}, auth=("reports", secret))
    token = issued["access_token"]
    await oauth.post("/oauth/introspect", {"token": token}, auth=("reports", secret))
    await oauth.post("/oauth/introspect", {"token": "junk"}, auth=("reports", secret))
    await oauth.post("/oauth/introspect", {"token": token})
    await oauth.post("/oauth/revoke", {"token": token}, auth=("reports", secret))
    await oauth.post("/oauth/revoke", {"token": token}, auth=("reports", secret + "x"))

    m = await _scraped(oauth)
    requests = "s2s_ca_oauth_token_requests_total"
    assert {
        (method, result): _value(m, requests, method=method, result=result)
        for method, result in [
            ("client_secret_basic", "ok"),
            ("client_secret_basic", "invalid_client"),
            ("client_secret_basic", "unsupported_grant_type"),
            ("client_secret_post", "ok"),
            ("private_key_jwt", "ok"),
            ("private_key_jwt", "invalid_client"),
            ("tls_client_auth", "ok"),
            ("tls_client_auth", "invalid_scope"),
            ("none", "invalid_client"),
        ]
    } == {
        ("client_secret_basic", "ok"): 1,
        ("client_secret_basic", "invalid_client"): 1,
        ("client_secret_basic", "unsupported_grant_type"): 1,
        ("client_secret_post", "ok"): 1,
        ("private_key_jwt", "ok"): 1,
        ("private_key_jwt", "invalid_client"): 1,
        ("tls_client_auth", "ok"): 1,
        ("tls_client_auth", "invalid_scope"): 1,
        ("none", "invalid_client"): 1,
    }
    total = sum(v for (name, _), v in m.items() if name == requests)
    assert total == 9
    assert _value(m, "s2s_ca_oauth_token_seconds_count", method="private_key_jwt") == 2
    assert _value(m, "s2s_ca_oauth_assertion_replays_total") == 1
    introspections = "s2s_ca_oauth_introspections_total"
    assert _value(m, introspections, result="active") == 1
    assert _value(m, introspections, result="inactive") == 1
    assert _value(m, introspections, result="invalid_client") == 1
    assert _value(m, "s2s_ca_oauth_revocations_total", result="ok") == 1
    assert _value(m, "s2s_ca_oauth_revocations_total", result="invalid_client") == 1
