"""Registry snapshots: agent calls without store round trips, and never a stale allow in-process."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from ca_helpers import Ca, build_ca, make_csr

from s2s.ca.issuance import CsrRequest
from s2s.core.errors import NotAuthorized, NotFound
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.store.records import AgentRecord, Topic
from s2s.store.sqlite import SqliteStore

WORKLOAD = SpiffeId.parse("spiffe://example.org/billing")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def start_following(ca: Ca) -> asyncio.Task[None]:
    task = asyncio.create_task(ca.registry.follow(timeout=1.0))

    async def loaded() -> bool:
        return ca.registry.following

    await eventually(loaded, "the registry snapshots to load")
    return task


@pytest.fixture
async def following(ca: Ca) -> AsyncIterator[Ca]:
    task = await start_following(ca)
    yield ca
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def caught_up(ca: Ca) -> None:
    """Wait until the follower installed the store's current entries and agents."""

    async def installed() -> bool:
        cache = ca.registry._cache
        entries = cache._entries
        return (
            entries is not None
            and not cache._entries_dirty
            and entries.revision == await ca.store.revision(Topic.ENTRIES)
        )

    await eventually(installed, "the follower to install the latest entries")


async def attested(ca: Ca) -> AgentRecord:
    token = await ca.registry.generate_join_token()
    result = await ca.attestor.attest_join_token(token.token, make_csr())
    return result.agent


def count_calls(store: SqliteStore, name: str) -> list[int]:
    calls = [0]
    real = getattr(store, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await real(*args, **kwargs)

    setattr(store, name, counted)
    return calls


async def test_agent_calls_make_no_store_reads(following: Ca) -> None:
    ca = following
    agent = await attested(ca)
    entry = await ca.registry.create_entry(
        spiffe_id=WORKLOAD, parent_id=agent.spiffe_id, selectors=parse_selectors(["unix:uid:1"])
    )
    await caught_up(ca)  # the follower's own reload of that write is not an agent call
    reads = [count_calls(ca.store, n) for n in ("get_agent", "get_entry", "list_entries")]
    record = await ca.registry.authorize_agent(agent.spiffe_id, agent.serial)
    token = await ca.issuer.mint_jwt_svid(record, entry.id, ["aud"])
    (result,) = await ca.issuer.sign_x509_svids(record, [CsrRequest(entry.id, make_csr())])
    assert token.spiffe_id == WORKLOAD
    assert result.svid is not None
    assert [r[0] for r in reads] == [0, 0, 0]


async def test_in_process_ban_and_evict_apply_at_once(following: Ca) -> None:
    ca = following
    one, two = await attested(ca), await attested(ca)
    await ca.registry.authorize_agent(one.spiffe_id, one.serial)
    await ca.registry.ban_agent(one.spiffe_id)
    with pytest.raises(NotAuthorized, match="banned"):
        await ca.registry.authorize_agent(one.spiffe_id, one.serial)
    await ca.registry.authorize_agent(two.spiffe_id, two.serial)
    await ca.registry.evict_agent(two.spiffe_id)
    with pytest.raises(NotAuthorized, match="evicted"):
        await ca.registry.authorize_agent(two.spiffe_id, two.serial)


async def test_a_listing_taken_before_a_ban_never_unbans(following: Ca) -> None:
    ca = following
    agent = await attested(ca)
    gate, entered = asyncio.Event(), asyncio.Event()
    real = ca.store.list_agents

    async def slow_listing() -> tuple[AgentRecord, ...]:
        listing = await real()  # taken before the ban ...
        entered.set()
        await gate.wait()  # ... and installed after it
        return listing

    ca.store.list_agents = slow_listing  # type: ignore[method-assign]
    await ca.registry.register_agent(  # moves the agents revision: the follower re-lists
        SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/other"),
        serial=5,
        not_after=ca.clock.now() + dt.timedelta(hours=1),
    )
    await asyncio.wait_for(entered.wait(), 5)
    ca.store.list_agents = real  # type: ignore[method-assign]
    await ca.registry.ban_agent(agent.spiffe_id)
    gate.set()
    # Check on every loop turn (the window a stale install would open is a few turns wide),
    # then for a while longer.
    for turn in range(200):
        await asyncio.sleep(0 if turn < 150 else 0.01)
        with pytest.raises(NotAuthorized, match="banned"):
            await ca.registry.authorize_agent(agent.spiffe_id, agent.serial)


async def test_changes_by_another_replica_arrive(following: Ca) -> None:
    ca = following
    agent = await attested(ca)
    other_store = await SqliteStore.open(ca.config.store_path, create=False, poll_interval=0.05)
    try:
        other = await build_ca(
            dataclasses.replace(ca.config, replica_name="ca-1"), other_store, ca.kek, ca.clock
        )
        # a renewal on the other replica: the new serial works here at once (fresh read)
        record = await other.registry.authorize_agent(agent.spiffe_id, agent.serial)
        renewed = await other.attestor.renew_agent(record, make_csr())
        promoted = await ca.registry.authorize_agent(agent.spiffe_id, renewed.svid.serial)
        assert promoted.serial == renewed.svid.serial
        # a new entry made there is usable here at once (read-through)
        entry = await other.registry.create_entry(
            spiffe_id=WORKLOAD, parent_id=agent.spiffe_id, selectors=parse_selectors(["unix:uid:7"])
        )
        (result,) = await ca.issuer.sign_x509_svids(promoted, [CsrRequest(entry.id, make_csr())])
        assert result.svid is not None
        # a ban there is seen here once the store reports it
        await other.registry.ban_agent(agent.spiffe_id)

        async def refused() -> bool:
            try:
                await ca.registry.authorize_agent(agent.spiffe_id, renewed.svid.serial)
            except NotAuthorized:
                return True
            return False

        await eventually(refused, "the other replica's ban")
    finally:
        await other_store.close()


async def test_deleted_entry_is_refused_at_once(following: Ca) -> None:
    ca = following
    agent = await attested(ca)
    entry = await ca.registry.create_entry(
        spiffe_id=WORKLOAD, parent_id=agent.spiffe_id, selectors=parse_selectors(["unix:uid:7"])
    )
    assert (await ca.registry.entries_for_agent(agent.spiffe_id)).entries == (entry,)
    await ca.registry.delete_entry(entry.id)
    (result,) = await ca.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, make_csr())])
    assert isinstance(result.error, NotFound)
    with pytest.raises(NotFound):
        await ca.issuer.mint_jwt_svid(agent, entry.id, ["aud"])


async def test_long_poll_wakes_with_the_new_entries(following: Ca) -> None:
    ca = following
    agent = await attested(ca)
    before = await ca.registry.entries_for_agent(agent.spiffe_id)
    assert await ca.registry.wait_for_entries(before.revision, 0.05) == before.revision
    waiter = asyncio.create_task(ca.registry.wait_for_entries(before.revision, 10))
    await asyncio.sleep(0)
    entry = await ca.registry.create_entry(
        spiffe_id=WORKLOAD, parent_id=agent.spiffe_id, selectors=parse_selectors(["unix:uid:7"])
    )
    revision = await asyncio.wait_for(waiter, 5)
    assert revision > before.revision
    after = await ca.registry.entries_for_agent(agent.spiffe_id)
    assert after.revision == revision
    assert after.entries == (entry,)


async def test_without_follow_reads_go_to_the_store(ca: Ca) -> None:
    agent = await attested(ca)
    reads = count_calls(ca.store, "get_agent")
    await ca.registry.authorize_agent(agent.spiffe_id, agent.serial)
    assert reads[0] == 1
    assert not ca.registry.following


async def test_a_listing_is_never_older_than_its_content(following: Ca) -> None:
    """Right after an in-process write, an agent's listing carries the store's new revision:
    the revision an agent is given is never older than the entries it is given."""
    ca = following
    agent = await attested(ca)
    for uid in (1, 2):
        await ca.registry.create_entry(
            spiffe_id=SpiffeId.parse(f"spiffe://example.org/w{uid}"),
            parent_id=agent.spiffe_id,
            selectors=parse_selectors([f"unix:uid:{uid}"]),
        )
        snapshot = await ca.registry.entries_for_agent(agent.spiffe_id)
        assert len(snapshot.entries) == uid
        assert snapshot.revision == await ca.store.revision(Topic.ENTRIES)
    # once the follower has caught up, the snapshot answers again, at the same revision
    store_revision = await ca.store.revision(Topic.ENTRIES)

    async def caught_up() -> bool:
        return (await ca.registry.entries_for_agent(agent.spiffe_id)).revision == store_revision

    await eventually(caught_up, "the follower to install the new listing")
    lists = count_calls(ca.store, "list_entries")
    snapshot = await ca.registry.entries_for_agent(agent.spiffe_id)
    assert (len(snapshot.entries), snapshot.revision, lists[0]) == (2, store_revision, 0)
