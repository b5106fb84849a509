"""The Bearer JWT-SVID middleware on a real aiohttp server on 127.0.0.1, with real HTTP requests."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import NotAuthorized, Unavailable
from s2s.testing import TestAuthority
from s2s.verifier.jwt import JwtMetrics, JwtValidator
from s2s.verifier.jwt_aiohttp import jwt_middleware, jwt_spiffe_id, jwt_svid_of
from s2s.verifier.revocation_choice import no_revocation_check

AUD = "spiffe://example.org/api"
WORKLOAD = "spiffe://example.org/billing"


@dataclass
class Server:
    url: str
    session: aiohttp.ClientSession
    clock: FakeClock
    ca: TestAuthority

    async def get(self, path: str = "/whoami", **headers: str) -> tuple[int, Any, Any]:
        async with self.session.get(self.url + path, headers=headers) as resp:
            body = (
                await resp.json() if resp.content_type == "application/json" else await resp.text()
            )
            return resp.status, resp.headers.get("WWW-Authenticate"), body


async def _whoami(request: web.Request) -> web.Response:
    svid = jwt_svid_of(request)
    return web.json_response(
        {"spiffe_id": str(jwt_spiffe_id(request)), "aud": svid.claims.audience}
    )


async def _health(request: web.Request) -> web.Response:
    try:
        jwt_svid_of(request)
    except NotAuthorized:
        return web.Response(text="ok, anonymous")
    return web.Response(text="ok, authenticated")


@pytest.fixture
async def server(fake_clock: FakeClock, authority: TestAuthority) -> AsyncIterator[Server]:
    validator = JwtValidator(
        BundleSet.of(authority.bundle()),
        AUD,
        revocations=no_revocation_check(),
        clock=fake_clock,
        metrics=JwtMetrics(CollectorRegistry()),
    )
    app = web.Application(middlewares=[jwt_middleware(validator, exempt_paths=["/healthz"])])
    app.router.add_get("/whoami", _whoami)
    app.router.add_get("/healthz", _health)
    # A larger header limit than aiohttp's 8190 bytes, so the validator's own size limit is reached.
    runner = web.AppRunner(app, max_field_size=64 * 1024, max_line_size=64 * 1024)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        yield Server(f"http://127.0.0.1:{port}", session, fake_clock, authority)
    await runner.cleanup()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_valid_bearer_token_reaches_the_handler_with_its_identity(server: Server) -> None:
    status, challenge, body = await server.get(**bearer(server.ca.issue_jwt_svid(WORKLOAD, AUD)))
    assert (status, challenge) == (200, None)
    assert body == {"spiffe_id": WORKLOAD, "aud": [AUD]}


async def test_scheme_is_case_insensitive(server: Server) -> None:
    token = server.ca.issue_jwt_svid(WORKLOAD, AUD)
    status, _, _ = await server.get(Authorization=f"bEaReR {token}")
    assert status == 200


async def test_missing_token_gets_the_bare_challenge(server: Server) -> None:
    status, challenge, body = await server.get()
    assert (status, challenge) == (401, "Bearer")
    assert body["reason"] == "missing"
    status, challenge, body = await server.get(Authorization="Basic dXNlcjpwYXNz")
    assert (status, challenge, body["reason"]) == (401, "Bearer", "missing")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda ca: ca.issue_jwt_svid(WORKLOAD, "spiffe://example.org/other"), "aud"),
        (lambda ca: ca.issue_jwt_svid(WORKLOAD, AUD, drop_claims=["aud"]), "aud"),
        (lambda ca: ca.issue_jwt_svid(WORKLOAD, AUD, alg="none"), "alg"),
        (lambda ca: ca.issue_jwt_svid(WORKLOAD, AUD, kid="unknown"), "kid"),
        (lambda ca: ca.issue_jwt_svid(WORKLOAD, AUD, extra_headers={"jku": "https://x"}), "header"),
        (
            lambda ca: TestAuthority("example.org").issue_jwt_svid(WORKLOAD, AUD, kid=ca.jwt_kid),
            "signature",
        ),
        (lambda ca: "not-a-jwt", "malformed"),
        (lambda ca: "a.b.c" + "A" * 9000, "too-large"),
    ],
)
async def test_rejected_tokens_get_401_invalid_token_naming_the_reason(
    server: Server, make: Any, reason: str
) -> None:
    status, challenge, body = await server.get(**bearer(make(server.ca)))
    assert status == 401
    assert challenge == f'Bearer error="invalid_token", error_description="{reason}"'
    assert body["error"] == "invalid_token"
    assert body["reason"] == reason


async def test_expired_token_is_rejected_after_the_clock_moves(server: Server) -> None:
    token = server.ca.issue_jwt_svid(WORKLOAD, AUD, ttl=dt.timedelta(seconds=30))
    assert (await server.get(**bearer(token)))[0] == 200
    server.clock.advance(seconds=61)
    status, _, body = await server.get(**bearer(token))
    assert (status, body["reason"]) == (401, "exp")


async def test_two_authorization_headers_are_rejected(server: Server) -> None:
    token = server.ca.issue_jwt_svid(WORKLOAD, AUD)
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    async with server.session.get(server.url + "/whoami", headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["reason"] == "malformed"


async def test_megabyte_token_never_reaches_the_application(server: Server) -> None:
    status, _, _ = await server.get(**bearer("A" * (1024 * 1024)))
    assert status in (400, 431)  # the HTTP parser refuses the header before any middleware runs


async def test_exempt_path_needs_no_token(server: Server) -> None:
    assert await server.get("/healthz") == (200, None, "ok, anonymous")


class _Toggle:
    """A BundleLookup that has no bundles until ``ready`` (a JwtSource before its first update)."""

    def __init__(self, bundles: BundleSet) -> None:
        self.bundles = bundles
        self.ready = False

    def current(self) -> BundleSet:
        if not self.ready:
            raise Unavailable("the JWT source has not received bundles yet")
        return self.bundles


async def test_no_bundles_yet_is_503_then_the_same_token_passes(authority: TestAuthority) -> None:
    lookup = _Toggle(BundleSet.of(authority.bundle()))
    validator = JwtValidator(
        lookup, AUD, revocations=no_revocation_check(), metrics=JwtMetrics(CollectorRegistry())
    )
    app = web.Application(middlewares=[jwt_middleware(validator)])
    app.router.add_get("/whoami", _whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    token = authority.issue_jwt_svid(WORKLOAD, AUD, now=dt.datetime.now(dt.UTC))
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/whoami"
            async with session.get(url, headers=bearer(token)) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert (await resp.json())["error"] == "unavailable"
            lookup.ready = True
            async with session.get(url, headers=bearer(token)) as resp:
                assert resp.status == 200
                assert (await resp.json())["spiffe_id"] == WORKLOAD
    finally:
        await runner.cleanup()
