"""``AgentSync.wait_for_entries``: when an agent's entries long-poll is answered. A real SQLite
store and registry (following its store, as in the CA); the deadline runs on an injected clock and
``hold`` is the test's, so each wait's outcome is decided by the test, not by sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from s2s.ca.agent_sync import AgentSync, EntriesAnswer
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.lifecycle import AuthorityLifecycle
from s2s.ca.registry import Registry
from s2s.core.clock import FakeClock
from s2s.core.registration import RegistrationEntry
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId
from s2s.store.sqlite import SqliteStore

MINE = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/mine")
THEIRS = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/theirs")


class Monotonic:
    """An injected monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    sync: AgentSync
    registry: Registry
    monotonic: Monotonic
    holds: list[int] = field(default_factory=list)  # the entries revision at each hold

    async def entry(self, parent: SpiffeId, path: str) -> RegistrationEntry:
        return await self.registry.create_entry(
            spiffe_id=SpiffeId.parse(f"spiffe://example.org{path}"),
            parent_id=parent,
            selectors=[Selector.parse("unix:uid:1000")],
        )

    async def revision(self) -> int:
        return (await self.registry.entries_for_agent(MINE)).revision

    def hold(
        self, *steps: Callable[[], Awaitable[object]]
    ) -> Callable[[Callable[[], Awaitable[object]]], Awaitable[None]]:
        """A ``hold`` that runs ``steps[i]`` at its i-th wait, then waits (at most 5 s)."""
        queue = list(steps)

        async def hold(waiting: Callable[[], Awaitable[object]]) -> None:
            self.holds.append(await self.revision())
            assert queue, "waited more often than the test expected"
            await queue.pop(0)()
            await asyncio.wait_for(waiting(), 5)

        return hold


@pytest.fixture
async def rig(
    config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock
) -> AsyncIterator[Rig]:
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    authority = Authority(config=config, store=store, kek=kek, clock=clock)
    await authority.start()
    registry = Registry(config=config, store=store, clock=clock)
    lifecycle = AuthorityLifecycle(
        authority=authority, store=store, clock=clock, replica_name=config.replica_name
    )
    monotonic = Monotonic()
    sync = AgentSync(
        store=store,
        authority=authority,
        registry=registry,
        lifecycle=lifecycle,
        monotonic=monotonic,
    )
    following = asyncio.create_task(registry.follow(timeout=0.5))
    deadline = time.monotonic() + 10
    while not registry.following:
        assert time.monotonic() < deadline, "the registry did not load its snapshots"
        await asyncio.sleep(0.01)
    try:
        yield Rig(sync, registry, monotonic)
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


def ids(answer: EntriesAnswer) -> list[str]:
    return [e.id for e in answer.snapshot.entries]


async def test_entries_past_since_are_answered_without_waiting(rig: Rig) -> None:
    since = await rig.revision()
    mine = await rig.entry(MINE, "/billing")
    answer = await rig.sync.wait_for_entries(MINE, since=since, timeout=30, hold=rig.hold())
    assert ids(answer) == [mine.id]
    assert rig.holds == []


async def test_no_timeout_answers_at_once_with_nothing_new(rig: Rig) -> None:
    since = await rig.revision()
    answer = await rig.sync.wait_for_entries(MINE, since=since, timeout=0, hold=rig.hold())
    assert (answer.snapshot.revision, rig.holds) == (since, [])


async def test_authorities_the_agent_has_not_seen_answer_without_waiting(rig: Rig) -> None:
    since = await rig.revision()
    current = (await rig.sync.view()).tainted.revision
    answer = await rig.sync.wait_for_entries(
        MINE, since=since, timeout=30, authorities_seen=current + 1, hold=rig.hold()
    )
    assert (answer.snapshot.revision, rig.holds) == (since, [])


async def test_another_agents_change_goes_on_waiting_and_its_own_answers(rig: Rig) -> None:
    since = await rig.revision()
    created: list[RegistrationEntry] = []

    async def theirs() -> None:
        await rig.entry(THEIRS, "/theirs")

    async def mine() -> None:
        created.append(await rig.entry(MINE, "/mine"))

    answer = await rig.sync.wait_for_entries(
        MINE, since=since, timeout=30, hold=rig.hold(theirs, mine)
    )
    assert ids(answer) == [created[0].id]
    assert len(rig.holds) == 2  # waited again after the other agent's change
    assert rig.holds[1] > since


async def test_the_deadline_on_the_injected_clock_ends_the_wait(rig: Rig) -> None:
    """Twin: the same change of another agent's, but the wait's time is up meanwhile."""
    since = await rig.revision()

    async def theirs_and_late() -> None:
        await rig.entry(THEIRS, "/theirs")
        rig.monotonic.now += 31

    answer = await rig.sync.wait_for_entries(
        MINE, since=since, timeout=30, hold=rig.hold(theirs_and_late)
    )
    assert ids(answer) == []
    assert answer.snapshot.revision > since
    assert len(rig.holds) == 1


async def test_stop_ends_the_wait(rig: Rig) -> None:
    since = await rig.revision()
    stop = asyncio.Event()

    async def theirs_and_stop() -> None:
        await rig.entry(THEIRS, "/theirs")
        stop.set()

    answer = await rig.sync.wait_for_entries(
        MINE, since=since, timeout=30, hold=rig.hold(theirs_and_stop), stop=stop
    )
    assert (ids(answer), len(rig.holds)) == ([], 1)


async def test_a_hold_that_gives_up_answers_with_nothing_new(rig: Rig) -> None:
    """A caller with no long-poll slot left does not wait: the answer is what is current."""
    since = await rig.revision()
    calls: list[int] = []

    async def full(waiting: Callable[[], Awaitable[object]]) -> None:
        calls.append(1)

    answer = await rig.sync.wait_for_entries(MINE, since=since, timeout=30, hold=full)
    assert (answer.snapshot.revision, ids(answer), calls) == (since, [], [1])
