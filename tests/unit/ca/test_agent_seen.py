"""AgentSeen on a real SQLite store with a fake clock: an agent's last call is written at most
once per interval (not per call), at once when its address changes, and forgotten on eviction."""

from __future__ import annotations

import datetime as dt

from s2s.ca.agent_seen import AgentSeen, SeenRecord, seen_key
from s2s.core.clock import FakeClock
from s2s.core.spiffe_id import SpiffeId
from s2s.store.sqlite import SqliteStore

AGENT = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/a1")
OTHER = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/a2")


async def test_written_once_per_interval(store: SqliteStore, clock: FakeClock) -> None:
    seen = AgentSeen(store=store, clock=clock, interval=dt.timedelta(seconds=60))
    assert await seen.last_seen(AGENT) is None
    first = clock.now()
    await seen.saw(AGENT, "10.0.0.1")
    assert await seen.last_seen(AGENT) == SeenRecord(first, "10.0.0.1")
    clock.advance(dt.timedelta(seconds=59))
    raw = await store.get_state(seen_key(AGENT))
    await seen.saw(AGENT, "10.0.0.1")  # within the interval: no store write
    assert await store.get_state(seen_key(AGENT)) == raw
    clock.advance(dt.timedelta(seconds=1))
    await seen.saw(AGENT, "10.0.0.1")  # the interval passed: written
    assert await seen.last_seen(AGENT) == SeenRecord(first + dt.timedelta(seconds=60), "10.0.0.1")


async def test_a_new_address_is_written_at_once(store: SqliteStore, clock: FakeClock) -> None:
    seen = AgentSeen(store=store, clock=clock)
    await seen.saw(AGENT, "10.0.0.1")
    clock.advance(dt.timedelta(seconds=5))
    await seen.saw(AGENT, "10.0.0.2")
    found = await seen.last_seen(AGENT)
    assert found is not None
    assert found.address == "10.0.0.2"
    assert await seen.last_seen(OTHER) is None  # twin: another agent has no record


async def test_a_second_replica_does_not_move_it_back(store: SqliteStore, clock: FakeClock) -> None:
    ahead = FakeClock(clock.now() + dt.timedelta(seconds=30))
    await AgentSeen(store=store, clock=ahead).saw(AGENT, "10.0.0.1")
    await AgentSeen(store=store, clock=clock).saw(AGENT, "10.0.0.1")  # older look: ignored
    assert await AgentSeen(store=store, clock=clock).last_seen(AGENT) == SeenRecord(
        ahead.now(), "10.0.0.1"
    )


async def test_forget_and_unreadable_records(store: SqliteStore, clock: FakeClock) -> None:
    seen = AgentSeen(store=store, clock=clock)
    await seen.saw(AGENT, "10.0.0.1")
    await seen.forget(AGENT)
    assert await seen.last_seen(AGENT) is None
    await store.cas_state(seen_key(AGENT), None, "not json")
    assert await seen.last_seen(AGENT) is None  # informative only: unreadable is unknown
    await seen.saw(AGENT, "10.0.0.3")  # and it is replaced
    found = await seen.last_seen(AGENT)
    assert found is not None
    assert found.address == "10.0.0.3"
