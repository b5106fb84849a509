"""How the CA's live revocation set pulls the store's change feed when things go wrong.

A real SQLite store behind a gate that can hold the feed's batches: a refresh cancelled while it
waits resumes from the revision it applied (no listing); a feed that stays silent while the
revision has moved is replaced by a full listing after ``catch_up_timeout``; a store without a
feed is followed by listings. Twins: the same writes with an open gate need no listing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from s2s.ca.live_revocations import LiveRevocations
from s2s.core.errors import StoreError
from s2s.core.revocation import RevocationRecord, RevocationSet
from s2s.store.revocation_changes import RevocationChanges
from s2s.store.sqlite import SqliteStore

NOW = datetime(2031, 1, 1, tzinfo=UTC)


def serial(n: int) -> RevocationRecord:
    return RevocationRecord.for_serial(n, revoked_at=NOW, expires_at=NOW + timedelta(hours=1))


class GatedStore:
    """The real store; while ``gate`` is clear, the feed holds every batch after a listing."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = asyncio.Event()  # a batch is waiting at the gate
        self.hold_listings = False  # hold full listings too (a store that cannot be reached)
        self.opened: list[int | None] = []  # the ``since`` of every feed opened

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def follow_revocations(
        self, *, since: int | None = None, poll: float = 30.0
    ) -> AsyncGenerator[RevocationChanges, None]:
        self.opened.append(since)
        async for batch in self._inner.follow_revocations(since=since, poll=poll):
            if (batch.full is None or self.hold_listings) and not self.gate.is_set():
                self.held.set()
                await self.gate.wait()
            yield batch


class Listed:
    """A store without a feed (only the ``Store`` protocol)."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner

    async def revision(self, topic: Any) -> int:
        return await self._inner.revision(topic)

    async def list_revocations(self) -> tuple[RevocationRecord, ...]:
        return await self._inner.list_revocations()

    async def wait_for_change(self, topic: Any, after: int, timeout: float) -> int:
        return await self._inner.wait_for_change(topic, after, timeout)


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "store.db", poll_interval=0.05)
    yield store
    await store.close()


async def equals_store(live: LiveRevocations, store: SqliteStore) -> None:
    current = await live.refresh()
    assert current.records() == RevocationSet.of(await store.list_revocations()).records()


async def test_a_refresh_cancelled_while_pulling_resumes_from_what_it_applied(
    sqlite: SqliteStore,
) -> None:
    gated = GatedStore(sqlite)
    live = LiveRevocations(store=gated)  # type: ignore[arg-type]
    await sqlite.add_revocation(serial(1))
    await live.refresh()
    await sqlite.add_revocation(serial(2))
    applied = live.current().version
    gated.gate.clear()
    waiting = asyncio.create_task(live.refresh())
    await asyncio.wait_for(gated.held.wait(), 5)  # the refresh is inside the feed, held
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gated.gate.set()
    await equals_store(live, sqlite)
    assert live.current().is_serial_revoked_by_any_issuer(2)
    assert gated.opened == [None, applied]  # reopened from the revision applied
    assert live.full_loads == 1


async def test_a_silent_feed_is_replaced_by_a_full_listing(sqlite: SqliteStore) -> None:
    gated = GatedStore(sqlite)
    live = LiveRevocations(store=gated, catch_up_timeout=0.2)  # type: ignore[arg-type]
    await live.refresh()
    gated.gate.clear()  # the feed says nothing from now on
    await sqlite.add_revocation(serial(1))
    current = await asyncio.wait_for(live.refresh(), 5)
    assert current.is_serial_revoked_by_any_issuer(1)
    assert live.full_loads == 2
    assert gated.opened == [None, None]


async def test_a_listing_that_never_comes_fails_the_refresh_then_recovers(
    sqlite: SqliteStore,
) -> None:
    """A feed retries an unreachable store forever; the refresh must not wait forever."""
    gated = GatedStore(sqlite)
    live = LiveRevocations(  # type: ignore[arg-type]
        store=gated, catch_up_timeout=0.1, listing_timeout=0.2
    )
    await live.refresh()
    gated.gate.clear()
    gated.hold_listings = True
    await sqlite.add_revocation(serial(1))
    with pytest.raises(StoreError, match="could not be listed"):
        await asyncio.wait_for(live.refresh(), 5)
    assert not live.current().is_serial_revoked_by_any_issuer(1)  # the last good set kept
    gated.gate.set()  # the store answers again
    live.listing_timeout = 5.0  # the recovery's listing is not racing a 0.2 s deadline
    assert (await asyncio.wait_for(live.refresh(), 10)).is_serial_revoked_by_any_issuer(1)


async def test_an_open_feed_needs_no_listing(sqlite: SqliteStore) -> None:
    gated = GatedStore(sqlite)
    # The default catch-up timeout (5 s): a feed merely slowed by a loaded machine must not be
    # taken for a silent one here; a silent feed still shows as a second full load.
    live = LiveRevocations(store=gated)  # type: ignore[arg-type]
    await live.refresh()
    for n in range(1, 5):
        await sqlite.add_revocation(serial(n))
        await equals_store(live, sqlite)
    assert live.full_loads == 1
    assert gated.opened == [None]


async def test_a_store_without_a_feed_is_followed_by_listings(sqlite: SqliteStore) -> None:
    live = LiveRevocations(store=Listed(sqlite))  # type: ignore[arg-type]
    await live.refresh()
    assert live.epoch == ""
    held = live.current()
    await sqlite.add_revocation(serial(1))
    await equals_store(live, sqlite)
    await sqlite.add_revocation(serial(2))
    await equals_store(live, sqlite)
    assert live.full_loads == 3
    assert b'"epoch"' not in live.feed_json()
    assert live.delta_json(held.version) is not None  # deltas still come from the CA's log
