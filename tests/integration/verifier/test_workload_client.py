"""Our asyncio Workload API client against our Workload API server, on a real Unix socket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.core.clock import FakeClock
from s2s.core.errors import (
    InvalidConfig,
    InvalidRequest,
    InvalidSvid,
    InvalidToken,
    NotAuthorized,
    Unavailable,
)
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.workload_client import WorkloadApiClient, resolve_endpoint

ME = f"unix:uid:{os.getuid()}"
WEB = "spiffe://example.org/web"
API = "spiffe://example.org/api"


@pytest.fixture
def socket_path(socket_dir: Path) -> str:
    return str(socket_dir / "agent.sock")


@pytest.fixture
async def client(server: WorkloadApiServer) -> AsyncIterator[WorkloadApiClient]:
    async with WorkloadApiClient(f"unix://{server.socket_path}") as c:
        yield c


def der(svid: X509Svid) -> bytes:
    return svid.leaf.public_bytes(serialization.Encoding.DER)


# -- endpoint resolution ----------------------------------------------------------------------


def test_resolve_endpoint_accepts() -> None:
    env = {"SPIFFE_ENDPOINT_SOCKET": "unix:///run/s2s/agent.sock"}
    assert resolve_endpoint(environ=env) == "/run/s2s/agent.sock"
    assert resolve_endpoint(environ={"SPIFFE_ENDPOINT_SOCKET": "unix:/run/a.sock"}) == "/run/a.sock"
    assert resolve_endpoint("/explicit.sock", environ=env) == "/explicit.sock"
    assert resolve_endpoint("unix:///explicit.sock", environ=env) == "/explicit.sock"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no Workload API socket"),
        ("/run/agent.sock", "did you mean 'unix:///run/agent.sock'"),
        ("tcp://127.0.0.1:8081", "TCP endpoints are not supported"),
        ("unix://host/run/agent.sock", "must not have an authority"),
        ("unix:///run/agent.sock?x=1", "query or fragment"),
        ("unix:///run/agent.sock#frag", "query or fragment"),
        ("unix:relative.sock", "absolute path"),
        ("http:///run/agent.sock", "unix scheme"),
    ],
)
def test_resolve_endpoint_rejects(value: str, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        resolve_endpoint(environ={"SPIFFE_ENDPOINT_SOCKET": value})


async def test_missing_socket_is_unavailable(socket_path: str) -> None:
    async with WorkloadApiClient(socket_path) as c:
        with pytest.raises(Unavailable, match="is the agent running"):
            await c.fetch_x509_context()


# -- X.509 ------------------------------------------------------------------------------------


async def test_fetch_x509_context(
    client: WorkloadApiClient, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    web, api = authority.issue_x509_svid(WEB), authority.issue_x509_svid(API)
    provider.put("web", [ME], web)
    provider.put("api", [ME], api)
    provider.set_crls([b"crl"])
    update = await client.fetch_x509_update()
    context = update.context
    assert [str(s.spiffe_id) for s in context.svids] == [WEB, API]
    assert der(context.default_svid) == der(web)
    assert context.default_svid.key_pkcs8_der() == web.key_pkcs8_der()
    assert context.default_svid.cert_chain == web.cert_chain
    own = context.bundles.get(TrustDomain.parse("example.org"))
    assert own is not None
    assert own.x509_authorities == (authority.root,)
    assert len(context.bundles) == 1
    assert update.crls == (b"crl",)
    bundles = await client.fetch_x509_bundles()
    (bundle,) = bundles
    assert bundle.x509_authorities == (authority.root,)


async def test_served_svid_must_match_its_id_and_key(
    client: WorkloadApiClient, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    web, api = authority.issue_x509_svid(WEB), authority.issue_x509_svid(API)
    provider.put("liar", [ME], X509Svid(SpiffeId.parse(API), web.cert_chain, web.private_key))
    with pytest.raises(InvalidSvid) as err:
        await client.fetch_x509_context()
    assert err.value.rule == "uri-san"
    provider.put("liar", [ME], X509Svid(web.spiffe_id, web.cert_chain, api.private_key))
    with pytest.raises(InvalidSvid) as err:
        await client.fetch_x509_context()
    assert err.value.rule == "key"
    provider.put("liar", [ME], web)
    assert (await client.fetch_x509_context()).default_svid.spiffe_id == web.spiffe_id


async def test_no_identity_is_not_authorized(client: WorkloadApiClient) -> None:
    with pytest.raises(NotAuthorized):
        await client.fetch_x509_context()
    with pytest.raises(NotAuthorized):
        await client.fetch_jwt_svid("a")
    with pytest.raises(NotAuthorized):
        await client.fetch_jwt_bundles()


async def test_watch_x509_sees_rotation_and_removal(
    client: WorkloadApiClient, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    first = authority.issue_x509_svid(WEB)
    provider.put("web", [ME], first)
    provider.put("api", [ME], authority.issue_x509_svid(API))
    watch = client.watch_x509_context()
    context = await asyncio.wait_for(anext(watch), 10)
    assert context.default_svid.serial == first.serial
    second = authority.issue_x509_svid(WEB)
    provider.put("web", [ME], second)
    context = await asyncio.wait_for(anext(watch), 10)
    assert context.default_svid.serial == second.serial
    provider.remove("web")
    context = await asyncio.wait_for(anext(watch), 10)
    assert [str(s.spiffe_id) for s in context.svids] == [API]
    provider.remove("api")
    with pytest.raises(NotAuthorized):
        await asyncio.wait_for(anext(watch), 10)


# -- JWT --------------------------------------------------------------------------------------


async def test_fetch_jwt_svids(
    client: WorkloadApiClient, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid(WEB))
    provider.put("api", [ME], authority.issue_x509_svid(API))
    default = await client.fetch_jwt_svid("orders")
    assert str(default.spiffe_id) == WEB
    assert default.audience == ("orders",)
    named = await client.fetch_jwt_svid(["orders", "billing"], spiffe_id=API)
    assert str(named.spiffe_id) == API
    assert set(named.audience) == {"orders", "billing"}
    assert len(await client.fetch_jwt_svids("orders")) == 2
    with pytest.raises(NotAuthorized):
        await client.fetch_jwt_svid("orders", spiffe_id="spiffe://example.org/db")
    with pytest.raises(InvalidRequest):
        await client.fetch_jwt_svid([])


async def test_jwt_bundles_fetch_and_watch(
    client: WorkloadApiClient, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid(WEB))
    bundles = await client.fetch_jwt_bundles()
    (bundle,) = bundles
    assert [a.kid for a in bundle.jwt_authorities] == [authority.jwt_kid]
    watch = client.watch_jwt_bundles()
    assert len(await asyncio.wait_for(anext(watch), 10)) == 1
    provider.set_bundles(provider.bundles().with_bundle(TestAuthority("other.org").bundle()))
    changed = await asyncio.wait_for(anext(watch), 10)
    assert {str(td) for td in changed.trust_domains()} == {"example.org", "other.org"}
    await watch.aclose()


async def test_validate_jwt_svid_and_its_twins(
    client: WorkloadApiClient,
    provider: StaticIdentityProvider,
    authority: TestAuthority,
    fake_clock: FakeClock,
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid(WEB))
    token = (await client.fetch_jwt_svid("orders")).token
    sid, claims = await client.validate_jwt_svid(token, "orders")
    assert str(sid) == WEB
    assert claims["sub"] == WEB
    assert isinstance(claims["exp"], int)
    foreign = TestAuthority("example.org").issue_jwt_svid(WEB, "orders")
    other_td = TestAuthority("other.org").issue_jwt_svid("spiffe://other.org/x", "orders")
    for bad, audience, reason in (
        (token, "billing", "aud"),
        (foreign, "orders", "kid"),
        (other_td, "orders", "untrusted"),
        ("garbage", "orders", "malformed"),
    ):
        with pytest.raises(InvalidToken) as err:
            await client.validate_jwt_svid(bad, audience)
        assert err.value.reason == reason
    fake_clock.advance(seconds=3600)
    with pytest.raises(InvalidToken) as err:
        await client.validate_jwt_svid(token, "orders")
    assert err.value.reason == "exp"


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_connections_are_released_and_stop_ends_streams(
    provider: StaticIdentityProvider, authority: TestAuthority, socket_path: str
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid(WEB))
    server = WorkloadApiServer(provider=provider, attestor=UnixAttestor(), socket_path=socket_path)
    await server.start()
    try:
        for _ in range(20):
            async with WorkloadApiClient(socket_path) as c:
                await c.fetch_x509_context()
        await wait_until(lambda: server.open_connections == 0, "closed connections to be released")
        async with WorkloadApiClient(socket_path) as c:
            watch = c.watch_x509_context()
            await asyncio.wait_for(anext(watch), 10)
            assert server.open_connections == 1
            await asyncio.wait_for(server.stop(), 10)
            with pytest.raises(Unavailable):
                await asyncio.wait_for(anext(watch), 10)
    finally:
        await server.stop()
    assert not os.path.exists(socket_path)


async def test_endpoint_from_environment_and_hints(
    provider: StaticIdentityProvider, authority: TestAuthority, socket_path: str
) -> None:
    web = authority.issue_x509_svid(WEB)
    provider.put("web", [ME], X509Svid(web.spiffe_id, web.cert_chain, web.private_key, "internal"))
    env = {"SPIFFE_ENDPOINT_SOCKET": f"unix://{socket_path}"}
    async with (
        WorkloadApiServer(provider=provider, attestor=UnixAttestor(), socket_path=socket_path),
        WorkloadApiClient(environ=env) as c,
    ):
        assert c.socket_path == socket_path
        assert (await c.fetch_x509_context()).default_svid.hint == "internal"
        assert (await c.fetch_jwt_svid("orders")).hint == "internal"
