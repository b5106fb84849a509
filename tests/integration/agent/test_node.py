"""Node attestation and the CA client against a real CA on 127.0.0.1 (and fake CAs with
certificates from the test authority, for what a real CA never does: a wrong identity, garbage).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web

from s2s.agent.ca_client import CaClient
from s2s.agent.ca_mismatch import CaMisconfigured
from s2s.agent.ca_wire import AgentUnknown
from s2s.agent.issuance import build_csr, new_key
from s2s.agent.node import IDENTITY_FILE, NodeAttestor
from s2s.core.bundle import Bundle
from s2s.core.clock import FakeClock, SystemClock
from s2s.core.errors import (
    AttestationFailed,
    Conflict,
    InvalidConfig,
    NotACa,
    NotFound,
    TrustBundleMismatch,
    Unavailable,
)
from s2s.testing import TestAuthority
from s2s.verifier.memcert import load_cert_chain_from_memory


async def test_attest_persists_identity_and_restart_needs_no_token(
    harness: Any, make_node: Any
) -> None:
    token, agent_id = await harness.ca.join_token()
    config = harness.config(token=token)
    node = make_node(config)
    identity = await node.start()
    assert identity.svid.spiffe_id == agent_id
    assert node.attestations == 1
    assert (config.data_dir.stat().st_mode & 0o777) == 0o700
    assert ((config.data_dir / IDENTITY_FILE).stat().st_mode & 0o777) == 0o600
    # Restart with the CA down and no token: the stored identity is enough.
    await harness.ca.stop()
    again = make_node(harness.config(token=None))
    restored = await again.start()
    assert again.attestations == 0
    assert restored.svid.spiffe_id == agent_id
    assert restored.svid.serial == identity.svid.serial
    assert restored.bundle == identity.bundle


async def test_reused_join_token_is_refused_clearly(harness: Any, make_node: Any) -> None:
    token, _ = await harness.ca.join_token()
    first = make_node(harness.config(token=token))
    await first.start()
    second = make_node(harness.config(token=token, data_dir=harness.tmp_path / "other"))
    with pytest.raises(AttestationFailed, match=r"refused the join token.*token generate"):
        await second.start()


async def test_expired_join_token_is_refused(make_harness: Any) -> None:
    clock = FakeClock()
    h = await make_harness(clock=clock)
    token, _ = await h.ca.join_token(ttl=timedelta(minutes=1))
    clock.advance(seconds=61)
    config = h.config(token=token)
    node = NodeAttestor(
        config=config,
        client=CaClient(urls=config.ca_urls, trust_domain=config.trust_domain, clock=clock),
        clock=clock,
    )
    with pytest.raises(AttestationFailed, match="join token"):
        await node.start()
    await node._client.close()
    # Twin: a fresh token at the same (advanced) time works.
    fresh, agent_id = await h.ca.join_token(ttl=timedelta(minutes=1))
    ok = h.config(token=fresh)
    node2 = NodeAttestor(
        config=ok,
        client=CaClient(urls=ok.ca_urls, trust_domain=ok.trust_domain, clock=clock),
        clock=clock,
    )
    assert (await node2.start()).svid.spiffe_id == agent_id
    await node2._client.close()


async def test_no_identity_and_no_token_is_a_config_error(harness: Any, make_node: Any) -> None:
    node = make_node(harness.config(token=None))
    with pytest.raises(InvalidConfig, match="no join token"):
        await node.start()


async def test_no_bootstrap_bundle_is_a_config_error(harness: Any, make_node: Any) -> None:
    token, _ = await harness.ca.join_token()
    node = make_node(harness.config(token=token, trust_bundle=None))
    with pytest.raises(InvalidConfig, match="--trust-bundle"):
        await node.start()


async def test_group_readable_identity_file_is_refused(harness: Any, make_node: Any) -> None:
    token, _ = await harness.ca.join_token()
    config = harness.config(token=token)
    node = make_node(config)
    await node.start()
    (config.data_dir / IDENTITY_FILE).chmod(0o640)
    again = make_node(config)
    with pytest.raises(InvalidConfig, match="chmod 600"):
        await again.start()


async def test_renewal_keeps_the_id_with_a_new_key_and_serial(harness: Any, make_node: Any) -> None:
    token, agent_id = await harness.ca.join_token()
    config = harness.config(token=token)
    node = make_node(config)
    first = await node.start()
    renewed = await node.renew()
    assert renewed.svid.spiffe_id == agent_id
    assert renewed.svid.serial != first.svid.serial
    assert renewed.svid.leaf.public_key() != first.svid.leaf.public_key()
    assert (node.attestations, node.renewals) == (1, 1)
    # The CA accepts the new SVID (and promotes it); the stored identity is the new one.
    answer = await node._client.entries(since=-1, wait=0)
    assert answer.entries == ()
    restored = make_node(harness.config(token=None))
    assert (await restored.start()).svid.serial == renewed.svid.serial


async def test_the_renewal_comes_due_at_half_life_and_stays_due(make_harness: Any) -> None:
    """The due time of the agent SVID's renewal does not move ahead of the clock: once past
    half-life it is due (it used to be re-clamped to "now + 1 s" on every look, so the loop only
    renewed as the SVID expired, and a CA replica away at that instant cost the node its
    identity)."""
    clock = FakeClock()
    h = await make_harness(clock=clock, agent_svid_ttl=timedelta(minutes=10))
    token, _ = await h.ca.join_token()
    config = h.config(token=token)
    node = NodeAttestor(
        config=config,
        client=CaClient(urls=config.ca_urls, trust_domain=config.trust_domain, clock=clock),
        clock=clock,
        rand=lambda: 0.5,  # no jitter: renewal at exactly half of the remaining life
    )
    try:
        identity = await node.start()
        life = identity.svid.not_after - identity.received_at
        # Twin: before half-life nothing is due, and the due time stays put as time passes.
        due = node.next_renewal()
        assert abs(due - (identity.received_at + life / 2)) < timedelta(milliseconds=5)
        clock.advance(seconds=life.total_seconds() / 4)
        assert node.next_renewal() == due
        assert node.next_renewal() > clock.now()
        # Past half-life the renewal is due now, not a second from now on every look.
        clock.advance(seconds=life.total_seconds() / 4 + 1)
        assert node.next_renewal() == due
        assert node.next_renewal() <= clock.now()
    finally:
        await node._client.close()


async def test_a_renewal_that_races_another_update_of_the_agent_record_is_retried(
    harness: Any, make_node: Any
) -> None:
    """The CA answers Conflict when the agent's record changed between authorizing the renewal
    and recording its new serial (another replica recorded the agent's bundle report); the
    agent retries instead of ending (it used to exit on that answer)."""
    token, _ = await harness.ca.join_token()
    node = make_node(harness.config(token=token))
    first = await node.start()
    registry = harness.ca.server.registry
    stage = registry.stage_agent_serial
    raced: list[int] = []

    async def racing_stage(agent: Any, **kwargs: Any) -> Any:
        if not raced:  # a concurrent write moves the record on, once
            raced.append(1)
            await registry.record_bundle_sequence(agent, agent.bundle_sequence + 1)
        return await stage(agent, **kwargs)

    registry.stage_agent_serial = racing_stage
    # Twin: the renewal itself meets the Conflict (what the agent saw) ...
    with pytest.raises(Conflict, match="re-read and retry"):
        await node.renew()
    # ... and the renewal loop's step retries it and gets a new SVID.
    raced.clear()
    renewed = await asyncio.wait_for(node._retrying(node.renew), 10)
    assert renewed.svid.serial != first.svid.serial
    assert len(raced) == 1


async def test_evicted_agent_reattests_only_when_the_ca_says_unknown(
    harness: Any, make_node: Any
) -> None:
    token, agent_id = await harness.ca.join_token()
    node = make_node(harness.config(token=token))
    await node.start()
    await harness.ca.server.registry.evict_agent(agent_id)
    with pytest.raises(NotFound):
        await harness.ca.server.registry.get_agent(agent_id)
    with pytest.raises(AgentUnknown):
        await node._client.entries(since=-1, wait=0)
    # Restart with a new token: the stored identity is loaded (no attestation yet) ...
    new_token, new_id = await harness.ca.join_token()
    again = make_node(harness.config(token=new_token))
    await again.start()
    assert again.attestations == 0
    # ... and the renewal the CA refuses as unknown turns into an attestation with it.
    identity = await again.renew()
    assert again.attestations == 1
    assert identity.svid.spiffe_id == new_id != agent_id
    assert (await again._client.entries(since=-1, wait=0)).entries == ()


async def test_bootstrap_bundle_of_another_root_refuses_the_ca_before_sending_the_token(
    harness: Any, authority: TestAuthority
) -> None:
    token, agent_id = await harness.ca.join_token()
    client = CaClient(urls=(harness.ca.url,), trust_domain=harness.ca.td, clock=SystemClock())
    try:
        client.set_trust(authority.bundle(), None)  # example.org, but another root
        with pytest.raises(
            CaMisconfigured, match="does not chain to the agent's trust bundle"
        ) as info:
            await client.attest(token, build_csr(new_key()))
        assert isinstance(info.value.problem, TrustBundleMismatch)
        # The token was not burnt: with the right bundle it still works.
        right = Bundle.from_x509_pem(harness.ca.td, harness.ca.bundle_pem())
        client.set_trust(right, None)
        answer = await client.attest(token, build_csr(new_key()))
        assert answer.svid.spiffe_id == agent_id
    finally:
        await client.close()


# ---- fake CAs: a wrong server identity, garbage answers, fail-over ------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def fake_ca(
    authority: TestAuthority, spiffe_id: str, handler: Handler
) -> tuple[web.AppRunner, str]:
    svid = authority.issue_x509_svid(spiffe_id)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_cert_chain_from_memory(ctx, svid.chain_pem(), svid.key_pem())
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    return runner, f"https://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def fake_client(authority: TestAuthority) -> AsyncIterator[Any]:
    made: list[tuple[web.AppRunner, CaClient]] = []

    async def make(spiffe_id: str, handler: Handler) -> CaClient:
        runner, url = await fake_ca(authority, spiffe_id, handler)
        client = CaClient(urls=(url,), trust_domain=authority.trust_domain, clock=SystemClock())
        client.set_trust(authority.bundle(), None)
        made.append((runner, client))
        return client

    yield make
    for runner, client in made:
        await client.close()
        await runner.cleanup()


async def test_a_server_that_is_not_a_ca_never_sees_the_request(fake_client: Any) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({})

    impostor = await fake_client("spiffe://example.org/billing", handler)
    with pytest.raises(CaMisconfigured, match=r"is not an s2s CA.*example\.org/billing") as info:
        await impostor.attest("secret-token", build_csr(new_key()))
    assert isinstance(info.value.problem, NotACa)
    assert seen == []
    # Twin: the same server with a CA server ID is talked to (and its empty answer refused).
    real = await fake_client("spiffe://example.org/s2s/ca/ca-1", handler)
    with pytest.raises(Unavailable, match="malformed"):
        await real.attest("secret-token", build_csr(new_key()))
    assert seen == ["/v1/agent/attest"]


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected", "message"),
    [
        (200, b"<html>hello</html>", "text/html", CaMisconfigured, "not the CA's JSON"),
        (200, b"[1, 2]", "application/json", Unavailable, "not a JSON object"),
        (200, b'{"revision": "7", "entries": []}', "application/json", Unavailable, "malformed"),
        (
            200,
            b'{"revision": 7, "entries": [{"id": 1}]}',
            "application/json",
            Unavailable,
            "malformed",
        ),
        (502, b"bad gateway", "text/plain", Unavailable, "HTTP 502"),
        (404, b"not json", "text/plain", CaMisconfigured, "HTTP 404.*not the base URL"),
        (
            403,
            b'{"error": "not_authorized", "message": "agent x is banned"}',
            "application/json",
            Exception,
            "banned",
        ),
        (
            403,
            b'{"error": "not_authorized", "message": "agent x is not attested (unknown)"}',
            "application/json",
            AgentUnknown,
            "not attested",
        ),
    ],
)
async def test_garbage_and_errors_from_the_ca_are_clear(
    fake_client: Any, status: int, body: bytes, content_type: str, expected: type, message: str
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    client = await fake_client("spiffe://example.org/s2s/ca/ca-1", handler)
    with pytest.raises(expected, match=message) as info:
        await client.entries(since=-1, wait=0)
    if expected is Exception:
        assert type(info.value).__name__ == "NotAuthorized"


async def test_fail_over_to_the_next_ca_url(harness: Any, make_node: Any) -> None:
    # A port that refuses connections, then the real CA.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    dead = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()
    token, agent_id = await harness.ca.join_token()
    config = harness.config(token=token, ca_urls=(dead, harness.ca.url))
    node = make_node(config)
    assert (await node.start()).svid.spiffe_id == agent_id
    assert node._client._preferred == 1
    # Twin: with only the dead URL every call fails with Unavailable naming it.
    client = CaClient(urls=(dead,), trust_domain=config.trust_domain, clock=SystemClock())
    client.set_trust(node.identity.bundle, None)
    with pytest.raises(Unavailable, match=r"no CA replica answered.*unreachable"):
        await client.attest("x", build_csr(new_key()))
    await client.close()


async def test_a_large_answer_is_read_whole(fake_client: Any) -> None:
    # read(n) on a stream returns what has arrived; a multi-MiB answer arrives in many pieces.
    body = json.dumps({"revision": 3, "entries": [], "padding": "x" * (3 << 20)}).encode()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    client = await fake_client("spiffe://example.org/s2s/ca/ca-1", handler)
    answer = await client.entries(since=-1, wait=0)
    assert answer.revision == 3


async def test_an_idle_connection_to_the_ca_outlives_aiohttps_default_keepalive(
    fake_client: Any,
) -> None:
    """Renewals are minutes apart: the agent keeps its connection to the CA across a gap longer
    than aiohttp's default idle limit (15 s), so a renewal pays no new mTLS handshake."""
    peers: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response({})

    client = await fake_client("spiffe://example.org/s2s/ca/ca-1", handler)
    for pause in (0.0, 16.0):  # 16 s: past aiohttp's 15 s default
        await asyncio.sleep(pause)
        with pytest.raises(Unavailable, match="malformed"):
            await client.attest("secret-token", build_csr(new_key()))
    assert len(peers) == 2
    assert peers[0] == peers[1]  # the same client address and port: the same connection
