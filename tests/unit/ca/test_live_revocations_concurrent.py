"""Concurrent refreshes of the CA's live revocation set do not take turns for the store.

Every revocations long-poll and every issued-serial group write refreshes the set; when they
took turns (one store round trip each, under the set's lock), a replica with its store 100 ms
away did about 9 refreshes a second and renewals queued behind long-polls until agents gave up.
A real SQLite store behind a wrapper whose revision reads wait at a gate: unchanged, all the
refreshes are in the store at once. Twins: a revocation written before a refresh starts is in
the set it returns, with concurrent refreshes held at the gate; the first refresh still loads.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polling
import pytest

from s2s.ca.live_revocations import LiveRevocations
from s2s.core.revocation import RevocationRecord
from s2s.store.sqlite import SqliteStore

NOW = datetime(2031, 1, 1, tzinfo=UTC)
CALLERS = 8


def serial(n: int) -> RevocationRecord:
    return RevocationRecord.for_serial(n, revoked_at=NOW, expires_at=NOW + timedelta(hours=1))


class SlowRevision:
    """The real store; while ``gate`` is clear, each revision read waits at it."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_store = 0  # revision reads under way
        self.most = 0  # the most at once

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def revision(self, topic: Any) -> int:
        self.in_store += 1
        self.most = max(self.most, self.in_store)
        try:
            await self.gate.wait()
            return await self._inner.revision(topic)
        finally:
            self.in_store -= 1


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "store.db", poll_interval=0.05)
    yield store
    await store.close()


until = functools.partial(polling.until, timeout=5)  # this module's deadline


async def all_done(tasks: list[asyncio.Task[Any]]) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*tasks), 10)


def refreshes(live: LiveRevocations) -> list[asyncio.Task[Any]]:
    return [asyncio.create_task(live.refresh()) for _ in range(CALLERS)]


async def test_unchanged_refreshes_ask_the_store_at_once(sqlite: SqliteStore) -> None:
    slow = SlowRevision(sqlite)
    live = LiveRevocations(store=slow)  # type: ignore[arg-type]
    await sqlite.add_revocation(serial(1))
    loaded = await live.refresh()
    slow.gate.clear()
    tasks = refreshes(live)
    await until(lambda: slow.in_store == CALLERS, f"{CALLERS} revision reads at once")
    slow.gate.set()
    assert all(r is loaded for r in await all_done(tasks))
    assert live.full_loads == 1


async def test_a_revocation_written_before_the_refreshes_is_in_what_they_return(
    sqlite: SqliteStore,
) -> None:
    slow = SlowRevision(sqlite)
    live = LiveRevocations(store=slow)  # type: ignore[arg-type]
    await live.refresh()
    await sqlite.add_revocation(serial(7))
    slow.gate.clear()
    tasks = refreshes(live)
    await until(lambda: slow.in_store == CALLERS, f"{CALLERS} revision reads at once")
    slow.gate.set()
    for current in await all_done(tasks):
        assert current.is_serial_revoked_by_any_issuer(7)
    assert live.current().is_serial_revoked_by_any_issuer(7)
    assert live.full_loads == 1  # the change came from the feed, pulled once


async def test_the_first_refresh_loads_the_set(sqlite: SqliteStore) -> None:
    slow = SlowRevision(sqlite)
    live = LiveRevocations(store=slow)  # type: ignore[arg-type]
    await sqlite.add_revocation(serial(3))
    current = await asyncio.wait_for(live.refresh(), 10)
    assert current.is_serial_revoked_by_any_issuer(3)
    assert live.full_loads == 1
