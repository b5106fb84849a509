"""The store epoch in revocation answers: a delta is never applied to a set of another store.

Two real SQLite stores brought to the same revision with different records. A subscriber that
follows the CA on the first is moved to a CA on the second (as when a CA moves to another store):
the second answers its ``since`` with an (empty) delta, since the revision matches, but names
another epoch, so the subscriber takes the whole set instead. Twins: deltas of the same epoch
are applied; answers without an epoch (older CAs) still work; a malformed epoch is refused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from s2s.ca.live_revocations import LiveRevocations
from s2s.core.errors import InvalidRequest
from s2s.core.revocation import RevocationRecord
from s2s.store.records import Topic
from s2s.store.sqlite import SqliteStore
from s2s.verifier.feeds_ca import CaRevocationFeed, RevocationPage, parse_revocation_page

NOW = datetime(2031, 1, 1, tzinfo=UTC)


def serial(n: int) -> RevocationRecord:
    return RevocationRecord.for_serial(n, revoked_at=NOW, expires_at=NOW + timedelta(hours=1))


class StorePoller:
    """Answers as ``GET /v1/revocations?since=R&wait=S&delta=1`` does, from ``live``;
    ``strip_epoch`` answers as a CA that names no epoch."""

    def __init__(self, live: LiveRevocations, *, strip_epoch: bool = False) -> None:
        self.live = live
        self.strip_epoch = strip_epoch
        self.kinds: list[str] = []

    async def fetch_revocations(self, *, since: int, wait: float) -> RevocationPage:
        current = await self.live.refresh()
        if wait > 0 and current.version == since:
            await self.live.wait(since, min(wait, 0.2))
        body = self.live.delta_json(since) if since >= 0 else None
        data: dict[str, Any] = json.loads(body if body is not None else self.live.feed_json())
        if self.strip_epoch:
            data.pop("epoch", None)
        page = parse_revocation_page(data)
        self.kinds.append("delta" if page.delta else "full")
        return page


class Switching:
    """A poller that asks ``target`` (one of several)."""

    def __init__(self, *pollers: StorePoller) -> None:
        self.pollers = pollers
        self.target = 0

    async def fetch_revocations(self, *, since: int, wait: float) -> RevocationPage:
        return await self.pollers[self.target].fetch_revocations(since=since, wait=wait)


@pytest.fixture
async def two_stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    first = await SqliteStore.open(tmp_path / "first.db", poll_interval=0.05)
    second = await SqliteStore.open(tmp_path / "second.db", poll_interval=0.05)
    yield first, second
    await first.close()
    await second.close()


async def eventually(check: Any, what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


async def test_a_subscriber_moved_to_another_store_takes_the_whole_set(
    two_stores: tuple[SqliteStore, SqliteStore],
) -> None:
    first, second = two_stores
    for n in (1, 2, 3):
        await first.add_revocation(serial(0x100 + n))
    for n in (1, 2, 3):
        await second.add_revocation(serial(0x200 + n))
    same = await first.revision(Topic.REVOCATIONS)
    assert await second.revision(Topic.REVOCATIONS) == same  # equal revisions, other records
    a, b = LiveRevocations(store=first), LiveRevocations(store=second)
    await a.refresh()
    await b.refresh()
    assert a.epoch
    assert b.epoch
    assert a.epoch != b.epoch
    poller = Switching(StorePoller(a), StorePoller(b))
    feed = CaRevocationFeed(poller, wait=0.2)
    await feed.start(timeout=5)
    try:
        assert feed.epoch == a.epoch
        await first.add_revocation(serial(0x104))  # the twin: a delta of the same epoch
        await eventually(lambda: feed.current().is_serial_revoked_by_any_issuer(0x104), "delta")
        assert "delta" in poller.pollers[0].kinds
        assert feed.revision == same + 1
        await second.add_revocation(serial(0x204))  # the second store reaches that revision
        poller.target = 1
        await eventually(lambda: feed.epoch == b.epoch, "the whole set of the second store")
        assert poller.pollers[1].kinds[0] == "delta"  # asked with since: answered by a delta...
        assert "full" in poller.pollers[1].kinds  # ...that was refused, then the whole set
        current = feed.current()
        assert sorted(r.value for r in current.records()) == ["201", "202", "203", "204"]
        assert not current.is_serial_revoked_by_any_issuer(0x101)
    finally:
        await feed.stop()


async def test_answers_without_an_epoch_still_work(
    two_stores: tuple[SqliteStore, SqliteStore],
) -> None:
    first, _ = two_stores
    await first.add_revocation(serial(0x101))
    live = LiveRevocations(store=first)
    poller = StorePoller(live, strip_epoch=True)
    feed = CaRevocationFeed(poller, wait=0.2)
    await feed.start(timeout=5)
    try:
        await first.add_revocation(serial(0x102))
        await eventually(lambda: feed.current().is_serial_revoked_by_any_issuer(0x102), "delta")
        assert feed.epoch == ""
        assert poller.kinds[0] == "full"
        assert "delta" in poller.kinds[1:]
        assert "full" not in poller.kinds[1:]
    finally:
        await feed.stop()


def test_every_answer_names_the_epoch_and_a_bad_epoch_is_refused() -> None:
    good = {"revision": 2, "records": [serial(7).to_json()], "epoch": "ab" * 16}
    assert parse_revocation_page(good).epoch == "ab" * 16
    assert parse_revocation_page({"revision": 2, "records": []}).epoch == ""
    delta = {"delta": True, "base": 1, "revision": 2, "added": [], "removed": []}
    assert parse_revocation_page({**delta, "epoch": "0f"}).epoch == "0f"
    for bad in (7, None, "A" * 8, "z1", "0" * 65, "ab\n"):
        with pytest.raises(InvalidRequest, match="epoch"):
            parse_revocation_page({**good, "epoch": bad})
        with pytest.raises(InvalidRequest, match="epoch"):
            parse_revocation_page({**delta, "epoch": bad})


async def test_the_ca_names_its_store_epoch_in_full_and_delta_answers(
    two_stores: tuple[SqliteStore, SqliteStore],
) -> None:
    first, _ = two_stores
    live = LiveRevocations(store=first)
    held = await live.refresh()
    await first.add_revocation(serial(0x101))
    await live.refresh()
    full = json.loads(live.feed_json())
    delta = json.loads(live.delta_json(held.version) or b"null")
    assert full["epoch"] == delta["epoch"] == await first.store_epoch()
    assert delta["delta"] is True
