"""Entries followed change by change: the CA's snapshot stays equal to a fresh full load.

Both backends, the etcd one against a real etcd. The property: after random create / update /
delete sequences (some written through the cache as the CA's own admin path does, some by
"another replica" straight to the store), the incrementally maintained snapshot equals one built
from a full listing, and no full listing was needed after the first. Twins: a revision older than
etcd's compaction, and a SQLite change the log does not hold, each get a full listing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from contract import AGENT_A, AGENT_B, entry, sid

from s2s.ca.registry_cache import RegistryCache, _Entries
from s2s.core.registration import RegistrationEntry
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.etcd.client import EtcdClient
from s2s.store import entry_changes
from s2s.store.entry_changes import EntryChangeFeed, EntryChanges
from s2s.store.etcd import EtcdStore
from s2s.store.records import Topic
from s2s.store.sqlite import SqliteStore
from s2s.store.sqlite_rows import write_entry
from s2s.testing_etcd import EtcdServer

pytest_plugins = ("etcd_fixtures",)

PARENTS = (AGENT_A, AGENT_B, SpiffeId.parse("spiffe://example.org/agent/c"))


@pytest.fixture(params=["sqlite", "etcd"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqliteStore | EtcdStore]:
    opened: SqliteStore | EtcdStore
    if request.param == "sqlite":
        opened = await SqliteStore.open(tmp_path / "store.db", poll_interval=0.05)
    else:
        server: EtcdServer = request.getfixturevalue("etcd_server")
        td = f"t{uuid.uuid4().hex[:12]}.example"
        opened = await EtcdStore.open(server.endpoint, trust_domain=td, poll_interval=0.05)
    yield opened
    await opened.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Followed:
    """A RegistryCache following ``store``, counting the full listings it installs."""

    def __init__(self, store: SqliteStore | EtcdStore) -> None:
        self.store = store
        self.cache = RegistryCache(store)
        self.full_loads = 0
        real = self.cache.apply_changes

        def counted(change: EntryChanges) -> None:
            if change.full is not None:
                self.full_loads += 1
            real(change)

        self.cache.apply_changes = counted  # type: ignore[method-assign]

    async def caught_up(self) -> None:
        async def done() -> bool:
            entries = self.cache._entries
            return (
                entries is not None
                and not self.cache._entries_dirty
                and entries.revision >= await self.store.revision(Topic.ENTRIES)
            )

        await eventually(done, "the cache to apply the store's latest entries")

    async def assert_equals_full_load(self) -> None:
        await self.caught_up()
        entries = self.cache._entries
        assert entries is not None
        fresh = _Entries.of(await self.store.list_entries(), entries.revision)
        assert entries.by_id == fresh.by_id
        assert entries.by_parent == fresh.by_parent


@pytest.fixture
async def followed(store: SqliteStore | EtcdStore) -> AsyncIterator[Followed]:
    f = Followed(store)
    task = asyncio.create_task(f.cache.follow(timeout=1.0))

    async def loaded() -> bool:
        return f.cache.loaded

    await eventually(loaded, "the first load")
    yield f
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def random_step(
    rng: random.Random, f: Followed, live: dict[str, RegistrationEntry], n: int
) -> None:
    store, cache = f.store, f.cache
    through = rng.random() < 0.5  # this process's admin path writes through; another replica not
    op = rng.choice(["create", "create", "update", "delete"]) if live else "create"
    if op == "create":
        new = entry(
            f"e{n:04d}-{rng.randrange(10**6):06d}",
            f"/w/{n}",
            parent=rng.choice(PARENTS),
            selectors=[f"unix:uid:{n}"],
        )
        stored = await store.create_entry(new)
        live[stored.id] = stored
        if through:
            cache.entry_written(stored)
    elif op == "update":
        current = live[rng.choice(sorted(live))]
        changed = dataclasses.replace(
            current,
            parent_id=rng.choice(PARENTS),
            hint=f"h{n}",
            selectors=parse_selectors([f"unix:uid:{n}", "unix:gid:7"]),
        )
        stored = await store.update_entry(changed, expected_revision=current.revision)
        live[stored.id] = stored
        if through:
            cache.entry_written(stored)
    else:
        victim = rng.choice(sorted(live))
        await store.delete_entry(victim)
        del live[victim]
        if through:
            cache.entry_deleted(victim)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_incremental_snapshot_equals_a_full_load(followed: Followed, seed: int) -> None:
    rng = random.Random(seed)
    live: dict[str, RegistrationEntry] = {}
    for n in range(60):
        await random_step(rng, followed, live, n)
        if rng.random() < 0.3:
            await followed.assert_equals_full_load()
    await followed.assert_equals_full_load()
    assert set(followed.cache._entries.by_id) == set(live)  # type: ignore[union-attr]
    assert followed.full_loads == 1  # the start only: every change was applied on its own


async def test_a_change_rebuilds_only_its_parents_tuple(followed: Followed) -> None:
    store, cache = followed.store, followed.cache
    await store.create_entry(entry("a1", "/a1", parent=AGENT_A))
    await store.create_entry(entry("b1", "/b1", parent=AGENT_B))
    await followed.caught_up()
    a_before = (await cache.entries_for_parent(AGENT_A)).entries
    b_before = (await cache.entries_for_parent(AGENT_B)).entries
    await store.create_entry(entry("a0", "/a0", parent=AGENT_A))
    await followed.caught_up()
    a_after = (await cache.entries_for_parent(AGENT_A)).entries
    assert [e.id for e in a_before] == ["a1"]  # what a reader was given did not change
    assert [e.id for e in a_after] == ["a0", "a1"]  # the store's order
    assert (await cache.entries_for_parent(AGENT_B)).entries is b_before  # shared, not copied


async def test_feed_since_a_revision_gives_only_the_changes(store: SqliteStore | EtcdStore) -> None:
    assert isinstance(store, EntryChangeFeed)
    await store.create_entry(entry("keep", "/keep"))
    gone = await store.create_entry(entry("gone", "/gone"))
    since = await store.revision(Topic.ENTRIES)
    await store.create_entry(entry("new", "/new"))
    await store.delete_entry(gone.id)
    changes = store.follow_entries(since=since, poll=0.1)
    seen: dict[str, Any] = {}
    try:
        while set(seen) != {"new", "gone"}:
            change = await asyncio.wait_for(anext(changes), 5)
            assert change.full is None
            seen |= {e.id: e for e in change.changed} | dict.fromkeys(change.deleted)
    finally:
        await changes.aclose()
    assert seen["gone"] is None
    assert seen["new"].spiffe_id == sid("/new")


async def test_etcd_revision_older_than_compaction_gets_a_full_listing(
    etcd_server: EtcdServer,
) -> None:
    td = f"t{uuid.uuid4().hex[:12]}.example"
    store = await EtcdStore.open(etcd_server.endpoint, trust_domain=td, poll_interval=0.05)
    raw = await EtcdClient.connect(etcd_server.endpoint)
    try:
        await store.create_entry(entry("old", "/old"))
        since = await store.revision(Topic.ENTRIES)
        await store.create_entry(entry("new", "/new"))
        await store.create_entry(entry("newer", "/newer"))
        _, now = await raw.get_prefix(b"/none/")
        await raw.compact(now)  # history before ``now`` is gone, since + 1 among it
        changes = store.follow_entries(since=since)
        try:
            first = await asyncio.wait_for(anext(changes), 10)
        finally:
            await changes.aclose()
        assert first.full is not None
        assert [e.id for e in first.full] == ["new", "newer", "old"]
    finally:
        await raw.close()
        await store.close()


async def test_sqlite_change_missing_from_the_log_gets_a_full_load(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await SqliteStore.open(path, poll_interval=0.05)
    f = Followed(store)
    task = asyncio.create_task(f.cache.follow(timeout=1.0))
    try:

        async def loaded() -> bool:
            return f.cache.loaded

        await eventually(loaded, "the first load")
        await store.create_entry(entry("logged", "/logged"))
        await f.assert_equals_full_load()
        assert f.full_loads == 1
        # A write the log does not hold, as an older build writing to this file makes it.
        with sqlite3.connect(path) as conn:
            write_entry(
                conn, dataclasses.replace(entry("unlogged", "/u", parent=AGENT_B), revision=1)
            )
            conn.execute("UPDATE topics SET revision = revision + 1 WHERE topic = 'entries'")
        await f.assert_equals_full_load()
        assert "unlogged" in f.cache._entries.by_id  # type: ignore[union-attr]
        assert f.full_loads == 2
        await store.create_entry(entry("after", "/after"))
        await f.assert_equals_full_load()
        assert set(f.cache._entries.by_id) == {"logged", "unlogged", "after"}  # type: ignore[union-attr]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.close()


async def test_sqlite_revision_older_than_the_log_gets_a_full_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(entry_changes, "LOG_LENGTH", 2)
    store = await SqliteStore.open(tmp_path / "store.db", poll_interval=0.05)
    try:
        since = await store.revision(Topic.ENTRIES)
        for n in range(3):
            await store.create_entry(entry(f"e{n}", f"/e{n}"))
        too_old = store.follow_entries(since=since)
        recent = store.follow_entries(since=since + 1)
        try:
            first = await asyncio.wait_for(anext(too_old), 5)
            second = await asyncio.wait_for(anext(recent), 5)
        finally:
            await too_old.aclose()
            await recent.aclose()
        assert first.full is not None
        assert [e.id for e in first.full] == ["e0", "e1", "e2"]
        assert second.full is None  # the twin: the log still covers since + 1
        assert [e.id for e in second.changed] == ["e1", "e2"]
    finally:
        await store.close()
