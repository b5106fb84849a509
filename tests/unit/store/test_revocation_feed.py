"""Revocations followed change by change: the CA's live set stays equal to a fresh full load.

Both backends, the etcd one against a real etcd. The property: after random sequences of revoke,
revoke again (a merge), prune, restart (a new CA snapshot on a new handle) and writes by a second
replica (another handle on the same store), the CA's incrementally maintained set equals one
built from a full listing, and no full listing was taken after the first. Twins: a revision
older than etcd's compaction, a SQLite change the log does not hold and a revision older than the
SQLite log each get a full listing; a record etcd drops on its own (as a lease does) is a removal.
The store epoch: the same for two handles on one store, different for two stores.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from s2s.ca.live_revocations import LiveRevocations
from s2s.core.revocation import RevocationKind, RevocationRecord, RevocationSet
from s2s.etcd.client import EtcdClient
from s2s.etcd.values import delete_op
from s2s.store import revocation_changes
from s2s.store.codec import encode_doc
from s2s.store.etcd import EtcdStore
from s2s.store.records import Topic
from s2s.store.revocation_changes import RevocationChangeFeed, RevocationChanges
from s2s.store.sqlite import SqliteStore
from s2s.store.sqlite_rows import micros
from s2s.testing_etcd import EtcdServer

pytest_plugins = ("etcd_fixtures",)

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ISSUERS = ("a" * 64, "b" * 64, "")
Opener = Callable[[], Awaitable[SqliteStore | EtcdStore]]


@pytest.fixture(params=["sqlite", "etcd"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens handles on one store (same SQLite file, same etcd prefix); closed at teardown."""
    handles: list[SqliteStore | EtcdStore] = []
    td = f"t{uuid.uuid4().hex[:12]}.example"

    async def open_one() -> SqliteStore | EtcdStore:
        store: SqliteStore | EtcdStore
        if request.param == "sqlite":
            store = await SqliteStore.open(tmp_path / "store.db", poll_interval=0.05)
        else:
            server: EtcdServer = request.getfixturevalue("etcd_server")
            store = await EtcdStore.open(server.endpoint, trust_domain=td, poll_interval=0.05)
        handles.append(store)
        return store

    yield open_one
    for store in handles:
        await store.close()


def serial(n: int, *, issuer: str = "", expires: int = 60) -> RevocationRecord:
    return RevocationRecord.for_serial(
        0x1000 + n, revoked_at=T0, expires_at=T0 + dt.timedelta(minutes=expires), issuer=issuer
    )


def other(n: int, rng: random.Random, expires: int) -> RevocationRecord:
    at, until = T0 + dt.timedelta(seconds=n), T0 + dt.timedelta(minutes=expires)
    if rng.random() < 0.5:
        return RevocationRecord.for_jti(f"j{n}", revoked_at=at, expires_at=until)
    path = f"spiffe://example.org/w{rng.randrange(8)}"
    return RevocationRecord.for_spiffe_id(path, revoked_at=at, expires_at=until)


async def assert_equals_full_load(live: LiveRevocations, store: SqliteStore | EtcdStore) -> None:
    current = await live.refresh()
    fresh = RevocationSet.of(await store.list_revocations())
    assert current.records() == fresh.records()
    assert current.version == await store.revision(Topic.REVOCATIONS)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_incremental_set_equals_a_full_load(opener: Opener, seed: int) -> None:
    rng = random.Random(seed)
    mine, replica = await opener(), await opener()
    live = LiveRevocations(store=mine)
    await live.refresh()
    lives = [live]
    written: list[RevocationRecord] = []
    minute = 0
    for n in range(50):
        writer = mine if rng.random() < 0.6 else replica  # a second replica writes too
        op = rng.choice(["revoke", "revoke", "revoke", "again", "prune", "restart"])
        if op == "revoke" or (op == "again" and not written):
            expires = minute + rng.randrange(1, 30)
            record = (
                serial(n, issuer=rng.choice(ISSUERS), expires=expires)
                if rng.random() < 0.6
                else other(n, rng, expires)
            )
            await writer.add_revocation(record)
            written.append(record)
        elif op == "again":  # the same credential again: merged, a later expiry
            old = rng.choice(written)
            later = RevocationRecord(
                old.kind, old.value, old.revoked_at, old.expires_at + dt.timedelta(minutes=5),
                old.reason, old.issuer,
            )  # fmt: skip
            await writer.add_revocation(later)
        elif op == "prune":
            minute += rng.randrange(1, 10)
            await writer.prune(T0 + dt.timedelta(minutes=minute))
        else:  # a CA restart: a new handle and a new snapshot, loaded once
            mine = await opener()
            live = LiveRevocations(store=mine)
            lives.append(live)
        if rng.random() < 0.4:
            await assert_equals_full_load(live, mine)
    await assert_equals_full_load(live, mine)
    assert live.full_loads == 1  # the start only: every change was applied on its own
    for earlier in lives[:-1]:  # a snapshot on a handle kept open follows as well
        await assert_equals_full_load(earlier, replica)
        assert earlier.full_loads == 1


async def test_feed_since_a_revision_gives_only_the_changes(opener: Opener) -> None:
    store = await opener()
    assert isinstance(store, RevocationChangeFeed)
    await store.add_revocation(serial(1, expires=5))
    await store.add_revocation(serial(2, expires=60))
    since = await store.revision(Topic.REVOCATIONS)
    await store.add_revocation(serial(3, issuer="a" * 64))
    await store.prune(T0 + dt.timedelta(minutes=10))  # serial 1 goes: a removal
    changes = store.follow_revocations(since=since, poll=0.1)
    put: dict[str, RevocationRecord] = {}
    removed: set[tuple[RevocationKind, str]] = set()
    try:
        while not (put and removed):
            change = await asyncio.wait_for(anext(changes), 5)
            assert change.full is None
            put |= {r.value: r for r in change.put}
            removed |= set(change.removed)
    finally:
        await changes.aclose()
    assert set(put) == {serial(3).value}
    assert put[serial(3).value].issuer == "a" * 64
    assert removed == {(RevocationKind.SERIAL, serial(1).value)}


async def test_the_same_revision_from_the_start_is_empty_and_a_listing_is_whole(
    opener: Opener,
) -> None:
    store = await opener()
    assert isinstance(store, RevocationChangeFeed)
    await store.add_revocation(serial(1))
    changes = store.follow_revocations()
    try:
        first = await asyncio.wait_for(anext(changes), 5)
    finally:
        await changes.aclose()
    assert first.full is not None
    assert [r.value for r in first.full] == [serial(1).value]


async def test_a_serial_whose_issuer_is_unknown_to_the_feed_is_removed_by_its_key(
    opener: Opener,
) -> None:
    """Removals carry (kind, value); the CA finds the issuer of the record it holds."""
    store = await opener()
    live = LiveRevocations(store=store)
    await store.add_revocation(serial(1, issuer="a" * 64, expires=5))
    await store.add_revocation(serial(2, expires=5))
    await store.add_revocation(serial(3, issuer="b" * 64, expires=60))
    assert len(await live.refresh()) == 3
    await store.prune(T0 + dt.timedelta(minutes=10))
    current = await live.refresh()
    assert [r.value for r in current.records()] == [serial(3).value]
    assert current.is_serial_revoked(0x1003, "b" * 64)
    assert not current.is_serial_revoked(0x1001, "a" * 64)
    assert live.full_loads == 1


async def test_store_epoch_is_one_per_store(opener: Opener, tmp_path: Path) -> None:
    first, second = await opener(), await opener()
    assert isinstance(first, RevocationChangeFeed)
    assert isinstance(second, RevocationChangeFeed)
    epoch = await first.store_epoch()
    assert len(epoch) == 32
    assert await second.store_epoch() == epoch  # another handle on the same store
    another = await SqliteStore.open(tmp_path / "another.db")
    try:
        assert await another.store_epoch() not in ("", epoch)
    finally:
        await another.close()


async def test_an_etcd_record_dropped_by_etcd_itself_is_a_removal(etcd_server: EtcdServer) -> None:
    """As a lease drops an expired record: a delete the CA did not make, no topic bump."""
    td = f"t{uuid.uuid4().hex[:12]}.example"
    store = await EtcdStore.open(etcd_server.endpoint, trust_domain=td, poll_interval=0.05)
    raw = await EtcdClient.connect(etcd_server.endpoint)
    try:
        live = LiveRevocations(store=store)
        await store.add_revocation(serial(1))
        await store.add_revocation(serial(2))
        await live.refresh()
        await raw.txn([], [delete_op(store.key("revoked", "serial", serial(1).value))])
        await store.add_revocation(serial(3))  # the next change brings the drop along
        current = await live.refresh()
        assert [r.value for r in current.records()] == [serial(2).value, serial(3).value]
        assert live.full_loads == 1
    finally:
        await raw.close()
        await store.close()


async def test_etcd_revision_older_than_compaction_gets_a_full_listing(
    etcd_server: EtcdServer,
) -> None:
    td = f"t{uuid.uuid4().hex[:12]}.example"
    store = await EtcdStore.open(etcd_server.endpoint, trust_domain=td, poll_interval=0.05)
    raw = await EtcdClient.connect(etcd_server.endpoint)
    try:
        await store.add_revocation(serial(1))
        since = await store.revision(Topic.REVOCATIONS)
        await store.add_revocation(serial(2))
        await store.add_revocation(serial(3))
        _, now = await raw.get_prefix(b"/none/")
        await raw.compact(now)  # history before ``now`` is gone, since + 1 among it
        too_old = store.follow_revocations(since=since)
        try:
            first = await asyncio.wait_for(anext(too_old), 10)
        finally:
            await too_old.aclose()
        assert first.full is not None
        assert [r.value for r in first.full] == [serial(n).value for n in (1, 2, 3)]
        recent = store.follow_revocations(since=now - 1)  # the twin: still in etcd's history
        try:
            second = await asyncio.wait_for(anext(recent), 10)
        finally:
            await recent.aclose()
        assert second.full is None
        assert [r.value for r in second.put] == [serial(3).value]
    finally:
        await raw.close()
        await store.close()


def _unlogged_write(path: Path, record: RevocationRecord) -> None:
    """A revocation written as an older build writes it: no change log row."""
    with sqlite3.connect(path) as conn:
        row = (str(record.kind), record.value, micros(record.expires_at), encode_doc(record))
        conn.execute("INSERT OR REPLACE INTO revocations VALUES (?, ?, ?, ?)", row)
        conn.execute("UPDATE topics SET revision = revision + 1 WHERE topic = 'revocations'")


async def test_sqlite_change_missing_from_the_log_gets_a_full_load(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await SqliteStore.open(path, poll_interval=0.05)
    try:
        live = LiveRevocations(store=store)
        await store.add_revocation(serial(1))
        await assert_equals_full_load(live, store)
        await store.add_revocation(serial(2))
        await assert_equals_full_load(live, store)
        assert live.full_loads == 1  # the twin: logged changes need no listing
        _unlogged_write(path, serial(3))
        await assert_equals_full_load(live, store)
        assert live.current().is_serial_revoked_by_any_issuer(0x1003)
        assert live.full_loads == 2
        await store.add_revocation(serial(4))
        await assert_equals_full_load(live, store)
        assert live.full_loads == 2  # back on the log
        # The step over the listing is still a delta: what the listing changed, nothing more.
        body = live.delta_json(live.current().version - 2)
        assert body is not None
    finally:
        await store.close()


async def test_sqlite_revision_older_than_the_log_gets_a_full_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(revocation_changes, "LOG_LENGTH", 2)
    store = await SqliteStore.open(tmp_path / "store.db", poll_interval=0.05)
    try:
        since = await store.revision(Topic.REVOCATIONS)
        for n in range(3):
            await store.add_revocation(serial(n))
        too_old = store.follow_revocations(since=since)
        recent = store.follow_revocations(since=since + 1)
        try:
            first: RevocationChanges = await asyncio.wait_for(anext(too_old), 5)
            second: RevocationChanges = await asyncio.wait_for(anext(recent), 5)
        finally:
            await too_old.aclose()
            await recent.aclose()
        assert first.full is not None
        assert len(first.full) == 3
        assert second.full is None  # the twin: the log still covers since + 1
        assert sorted(r.value for r in second.put) == [serial(1).value, serial(2).value]
    finally:
        await store.close()


async def test_sqlite_log_table_is_created_in_an_older_store(tmp_path: Path) -> None:
    """A store made before the log existed: the table (and an epoch) appear on open."""
    path = tmp_path / "store.db"
    store = await SqliteStore.open(path)
    await store.add_revocation(serial(1))
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE revocation_changes")
        conn.execute("DELETE FROM meta")
    reopened = await SqliteStore.open(path, poll_interval=0.05)
    try:
        live = LiveRevocations(store=reopened)
        await live.refresh()
        await reopened.add_revocation(serial(2))
        await assert_equals_full_load(live, reopened)
        assert live.full_loads == 1
        assert len(await reopened.store_epoch()) == 32
    finally:
        await reopened.close()
