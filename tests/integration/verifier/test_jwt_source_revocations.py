"""JwtSource.revocations: the agent's s2s revocation stream, followed by the verifier.

A real Workload API server on a real Unix socket serves ``s2s.agent.v1.Revocations`` from a
small hand-driven feed (the agent's feed in production), and the verifier's ``JwtSource`` and
``JwtValidator`` use it by default. Both sides read one fake clock, so ages and staleness are
exact. Twins: tokens not revoked pass, a stale agent or a dead stream fails closed only past the
limit, an agent without the extension is an explicit configuration error, not a silent accept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import polling
import pytest
from prometheus_client import CollectorRegistry

from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.revocations_api import RevocationsService
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.core.backoff import Backoff
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidConfig, InvalidToken, NotAuthorized
from s2s.core.revocation import RevocationRecord, RevocationSet
from s2s.testing import TestAuthority
from s2s.verifier.feeds import RevocationFeed, RevocationsStale
from s2s.verifier.jwt import JwtMetrics, JwtValidator
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source import JwtSource
from s2s.verifier.sync import open_jwt_source
from s2s.verifier.workload_client import RevocationsUpdate, WorkloadApiClient

ME = "spiffe://example.org/me"
AUD = "spiffe://example.org/api"
FAST = Backoff(initial=0.01, cap=0.05)
HEARTBEAT = 0.05
MAX_STALENESS = 60.0
DEADLINE = 5.0


class ManualFeed(RevocationFeed):
    """The agent's feed, driven by hand: ``put`` publishes and confirms a set."""

    name = "manual feed"

    def put(self, *records: RevocationRecord) -> None:
        self._publish(RevocationSet.of(records, version=self.updates + 1))
        self._confirm(self._now())

    def confirm(self) -> None:
        self._confirm(self._now())

    async def _run(self) -> None:
        await asyncio.Event().wait()


@pytest.fixture
def feed(fake_clock: FakeClock) -> ManualFeed:
    return ManualFeed(clock=fake_clock)


@pytest.fixture
async def agent(
    provider: StaticIdentityProvider, socket_dir: Path, authority: TestAuthority, feed: ManualFeed
) -> AsyncIterator[WorkloadApiServer]:
    """A Workload API server with the revocations extension; this process has an identity."""
    provider.put("me", [f"unix:uid:{os.getuid()}"], authority.issue_x509_svid(ME))
    service = RevocationsService(feed, heartbeat=HEARTBEAT)
    async with WorkloadApiServer(
        provider=provider,
        attestor=UnixAttestor(),
        socket_path=str(socket_dir / "agent.sock"),
        extensions=(service,),
    ) as server:
        yield server
    service.close()


def jwt_source(server: WorkloadApiServer, clock: FakeClock, **kw: Any) -> JwtSource:
    return JwtSource(socket=server.socket_path, backoff=FAST, clock=clock, **kw)


def validator_over(source: Any, **kw: Any) -> JwtValidator:
    return JwtValidator(source, AUD, metrics=JwtMetrics(CollectorRegistry()), **kw)


until = functools.partial(polling.until, timeout=DEADLINE)  # this module's deadline


def outcome(validator: JwtValidator, token: str) -> str:
    try:
        validator.validate(token)
    except InvalidToken as exc:
        return exc.reason
    return "ok"


def jti_record(jti: str, at: dt.datetime) -> RevocationRecord:
    return RevocationRecord.for_jti(jti, revoked_at=at, expires_at=at + dt.timedelta(hours=1))


async def test_the_default_validator_refuses_what_the_agent_revoked(
    agent: WorkloadApiServer, feed: ManualFeed, fake_clock: FakeClock, authority: TestAuthority
) -> None:
    feed.put()
    async with jwt_source(agent, fake_clock) as source:
        validator = validator_over(source)  # no revocations=: the agent's, by default
        revoked = authority.issue_jwt_svid(ME, AUD, jti="gone")
        kept = authority.issue_jwt_svid(ME, AUD, jti="kept")
        assert outcome(validator, revoked) == "ok"  # right after start: synced, not stale
        now = fake_clock.now()
        feed.put(jti_record("gone", now))
        await until(lambda: outcome(validator, revoked) == "revoked", "the jti refused")
        assert outcome(validator, kept) == "ok"  # twin: another jti
        # By SPIFFE ID: what was issued before the instant is refused, what comes after is not.
        fake_clock.advance(seconds=2)
        cut = fake_clock.now()
        feed.put(
            jti_record("gone", now),
            RevocationRecord.for_spiffe_id(
                ME, revoked_at=cut, expires_at=cut + dt.timedelta(hours=1)
            ),
        )
        await until(lambda: outcome(validator, kept) == "revoked", "the ID refused")
        fake_clock.advance(seconds=1)
        assert outcome(validator, authority.issue_jwt_svid(ME, AUD, jti="new")) == "ok"
        # An explicit lookup still wins over the source's.
        assert outcome(validator_over(source, revocations=no_revocation_check()), kept) == "ok"


async def test_the_agents_own_staleness_carries_over_to_the_verifier(
    agent: WorkloadApiServer, feed: ManualFeed, fake_clock: FakeClock, authority: TestAuthority
) -> None:
    feed.put()
    async with jwt_source(agent, fake_clock, revocations_max_staleness=MAX_STALENESS) as source:
        validator = validator_over(source)
        token = authority.issue_jwt_svid(ME, AUD)
        assert outcome(validator, token) == "ok"
        # The agent's feed stops confirming (its CA is gone): its heartbeats say how old it is.
        fake_clock.advance(seconds=MAX_STALENESS - 1)
        seen = source.revocations.messages
        await until(lambda: source.revocations.messages > seen + 1, "heartbeats")
        assert source.revocations.status() == "lagging"  # from the first missed update
        assert outcome(validator, token) == "ok"  # twin: still answering below the limit
        fake_clock.advance(seconds=2)
        assert outcome(validator, token) == "revocations-stale"
        with pytest.raises(RevocationsStale):
            source.revocations.current()
        feed.confirm()  # the agent's feed is back: the next heartbeat makes us fresh again
        await until(lambda: outcome(validator, token) == "ok", "fresh again")
        assert source.revocations.status() == "ok"


async def test_a_dead_stream_keeps_the_last_set_then_fails_closed(
    agent: WorkloadApiServer, feed: ManualFeed, fake_clock: FakeClock, authority: TestAuthority
) -> None:
    feed.put(jti_record("gone", fake_clock.now()))
    source = jwt_source(agent, fake_clock, revocations_max_staleness=MAX_STALENESS)
    async with source:
        validator = validator_over(source)
        token, revoked = (
            authority.issue_jwt_svid(ME, AUD),
            authority.issue_jwt_svid(ME, AUD, jti="gone"),
        )
        assert (outcome(validator, token), outcome(validator, revoked)) == ("ok", "revoked")
        await agent.stop()
        await until(lambda: source.revocations.reconnects > 0, "the stream to break")
        fake_clock.advance(seconds=MAX_STALENESS - 1)
        # The last set still answers: the good token passes, the revoked one stays refused.
        assert (outcome(validator, token), outcome(validator, revoked)) == ("ok", "revoked")
        assert source.revocations.status() == "lagging"
        fake_clock.advance(seconds=2)
        assert outcome(validator, token) == "revocations-stale"
        assert source.revocations.status() == "stale"


async def test_before_the_agent_has_synced_tokens_are_refused_as_stale(
    agent: WorkloadApiServer, feed: ManualFeed, fake_clock: FakeClock, authority: TestAuthority
) -> None:
    async with jwt_source(agent, fake_clock) as source:  # the agent's feed has no set yet
        validator = validator_over(source)
        token = authority.issue_jwt_svid(ME, AUD)
        assert outcome(validator, token) == "revocations-stale"
        assert source.revocations.status() == "unsynced"
        feed.put()
        await until(lambda: outcome(validator, token) == "ok", "accepted once synced")


async def test_an_agent_without_the_extension_is_a_configuration_error(
    server: WorkloadApiServer,
    provider: StaticIdentityProvider,
    fake_clock: FakeClock,
    authority: TestAuthority,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider.put("me", [f"unix:uid:{os.getuid()}"], authority.issue_x509_svid(ME))
    async with jwt_source(server, fake_clock) as source:  # bundles and tokens still work
        svid = await source.fetch_jwt_svid(AUD)
        assert source.revocations.not_served is not None
        assert "UNIMPLEMENTED" in source.revocations.not_served
        assert "revocations.agent_not_served" in caplog.text
        with pytest.raises(InvalidConfig) as info:
            validator_over(source)
        message = str(info.value)
        assert "does not serve" in message
        assert "revocations=<a lookup>" in message
        assert "revocations=no_revocation_check()" in message
        with pytest.raises(RevocationsStale, match="no_revocation_check"):
            source.revocations.current()
        assert source.revocations.status() == "not-served"
        # Twin: the explicit opt-out is the caller's choice, and it validates.
        chosen = validator_over(source, revocations=no_revocation_check())
        assert str(chosen.validate(svid.token).spiffe_id) == ME


async def test_the_sync_facade_carries_the_revocations(
    agent: WorkloadApiServer, feed: ManualFeed, authority: TestAuthority, fake_clock: FakeClock
) -> None:
    feed.put()
    source = await asyncio.to_thread(open_jwt_source, agent.socket_path, timeout=5)
    try:
        validator = validator_over(source)  # any thread may validate
        token = authority.issue_jwt_svid(ME, AUD, jti="sync")
        assert await asyncio.to_thread(outcome, validator, token) == "ok"
        feed.put(jti_record("sync", fake_clock.now()))
        await until(lambda: outcome(validator, token) == "revoked", "refused through the facade")
    finally:
        await asyncio.to_thread(source.close)


# --- the stream itself -------------------------------------------------------------------------


async def test_the_stream_sends_the_set_then_heartbeats_then_each_change(
    agent: WorkloadApiServer, feed: ManualFeed, fake_clock: FakeClock
) -> None:
    feed.put(jti_record("a", fake_clock.now()))
    updates: list[RevocationsUpdate] = []
    async with WorkloadApiClient(agent.socket_path) as client:
        stream = client.watch_revocations()
        updates.append(await anext(stream))
        updates.append(await anext(stream))
        feed.put(jti_record("a", fake_clock.now()), jti_record("b", fake_clock.now()))
        while updates[-1].records is None:
            updates.append(await asyncio.wait_for(anext(stream), DEADLINE))
        await stream.aclose()
    first, beat, change = updates[0], updates[1], updates[-1]
    assert first.records is not None
    assert [r.value for r in first.records] == ["a"]
    assert (first.age, first.heartbeat) == (0.0, HEARTBEAT)
    assert beat.records is None  # a heartbeat: no records, the same revision
    assert beat.revision == first.revision
    assert change.records is not None
    assert [r.value for r in change.records] == ["a", "b"]
    assert change.revision > first.revision


async def test_the_stream_needs_the_security_header_and_an_identity(
    agent: WorkloadApiServer, provider: StaticIdentityProvider, feed: ManualFeed
) -> None:
    feed.put()
    async with grpc.aio.insecure_channel(f"unix:{agent.socket_path}") as channel:
        call = channel.unary_stream(
            "/s2s.agent.v1.Revocations/WatchRevocations",
            request_serializer=lambda _m: b"",
            response_deserializer=lambda data: data,
        )(None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    provider.remove("me")
    async with WorkloadApiClient(agent.socket_path) as client:
        with pytest.raises(NotAuthorized):
            await anext(client.watch_revocations())
