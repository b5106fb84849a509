"""The SQLite backend: the shared contract, plus what only a file can get wrong."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from contract import T0, StoreContract, agent, authority, entry, issued, revocation, token

from s2s.core.errors import Conflict, InvalidConfig, InvalidRequest, StoreError
from s2s.store.records import (
    AgentRecord,
    AuthorityRecord,
    IssuedSerial,
    JoinTokenRecord,
    Topic,
    UsedMark,
)
from s2s.store.sqlite import SqliteStore
from s2s.store.sqlite_schema import SCHEMA_VERSION

OpenSqlite = Callable[..., Awaitable[SqliteStore]]


class TestSqliteContract(StoreContract):
    @pytest.fixture
    def open_store(self, open_sqlite: OpenSqlite) -> OpenSqlite:
        # A short poll so that writes through another handle are seen quickly.
        return lambda: open_sqlite(poll_interval=0.05)


async def _filled(path: Path) -> None:
    store = await SqliteStore.open(path)
    await store.create_entry(entry("e1"))
    await store.add_issued([issued(i) for i in range(1, 200)])
    await store.close()


# -- the file itself --


async def test_files_are_private(open_sqlite: OpenSqlite, sqlite_path: Path) -> None:
    store = await open_sqlite()
    await store.create_entry(entry("e1"))
    for suffix in ("", "-wal", "-shm"):
        mode = stat.S_IMODE(os.stat(f"{sqlite_path}{suffix}").st_mode)
        assert mode == 0o600, (suffix, oct(mode))


async def test_loose_permissions_are_tightened(open_sqlite: OpenSqlite, sqlite_path: Path) -> None:
    await _filled(sqlite_path)
    os.chmod(sqlite_path, 0o644)
    store = await open_sqlite()
    assert stat.S_IMODE(os.stat(sqlite_path).st_mode) == 0o600
    assert len(await store.list_entries()) == 1


async def test_uses_wal(open_sqlite: OpenSqlite, sqlite_path: Path) -> None:
    await open_sqlite()
    with sqlite3.connect(sqlite_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION


async def test_missing_file_without_create(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="s2s-ca init"):
        await SqliteStore.open(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


async def test_unusable_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidConfig, match="cannot use the store"):
        await SqliteStore.open(tmp_path / "file" / "store.db")
    with pytest.raises(InvalidConfig, match="cannot use the store"):
        await SqliteStore.open(tmp_path / "missing-dir" / "store.db")


async def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="not a regular file"):
        await SqliteStore.open(tmp_path)


async def test_non_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\n" + os.urandom(4000))
    with pytest.raises(InvalidConfig, match="not an s2s store"):
        await SqliteStore.open(path)


async def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    with pytest.raises(InvalidConfig, match="another application"):
        await SqliteStore.open(path)
    with sqlite3.connect(path) as raw:  # untouched
        assert raw.execute("SELECT name FROM sqlite_master").fetchall() == [("moz_places",)]


async def test_foreign_database_with_our_table_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE schema_version (id INTEGER, app TEXT, version INTEGER)")
    with pytest.raises(InvalidConfig, match="another application"):
        await SqliteStore.open(path)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await _filled(path)
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(InvalidConfig, match="newer than this s2s"):
        await SqliteStore.open(path)


async def test_corrupt_pages_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await _filled(path)
    data = bytearray(path.read_bytes())
    assert len(data) > 8192
    data[4096:] = os.urandom(len(data) - 4096)  # keep the header page, garble the rest
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidConfig, match="corrupt"):
        await SqliteStore.open(path)


async def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await _filled(path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(InvalidConfig, match="corrupt"):
        await SqliteStore.open(path)


async def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.touch(mode=0o600)
    async with await SqliteStore.open(path) as store:
        assert await store.revision(Topic.ENTRIES) == 0


async def test_a_store_made_before_used_marks_gets_their_table(tmp_path: Path) -> None:
    """A store created by a build without single-use marks (no used_marks table) is opened as
    it is and gains the table; its records stay."""
    path = tmp_path / "store.db"
    await _filled(path)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE used_marks")
    async with await SqliteStore.open(path) as store:
        assert [e.id for e in await store.list_entries()] == ["e1"]
        await store.claim_once(UsedMark("assertion/1", T0))
        with pytest.raises(Conflict):
            await store.claim_once(UsedMark("assertion/1", T0))


async def test_a_store_made_before_join_token_retries_gets_the_used_table(tmp_path: Path) -> None:
    """A store from a build where a used token was deleted (no join_tokens_used table) gains the
    table; its unused tokens work, and a used token leaves join_tokens, where a CA of that build
    looks (so it refuses the token whatever the key)."""
    path = tmp_path / "store.db"
    await _filled(path)
    token_hash, record = token("t1")
    async with await SqliteStore.open(path) as store:
        await store.create_join_token(record)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE join_tokens_used")
    key = bytes(range(32))
    async with await SqliteStore.open(path) as store:
        assert await store.consume_join_token(token_hash, now=T0, key_hash=key) == record
        again = await store.consume_join_token(token_hash, now=T0, key_hash=key)
        assert again == dataclasses.replace(record, used_by=key)
        with pytest.raises(Conflict):  # the id and hash stay taken while it is kept
            await store.create_join_token(dataclasses.replace(record, id="t2"))
    with sqlite3.connect(path) as conn:
        query = "DELETE FROM join_tokens WHERE token_hash=? RETURNING doc"  # the older consume
        assert conn.execute(query, (token_hash,)).fetchone() is None


# -- run time --


async def test_sqlite_errors_become_store_errors(
    open_sqlite: OpenSqlite, sqlite_path: Path
) -> None:
    store = await open_sqlite()
    with sqlite3.connect(sqlite_path) as raw:
        raw.execute("DROP TABLE entries")
    with pytest.raises(StoreError, match="nothing was written") as info:
        await store.create_entry(entry("e1"))
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert await store.revision(Topic.ENTRIES) == 0  # the bump was rolled back too


async def test_unreadable_record_is_a_store_error(
    open_sqlite: OpenSqlite, sqlite_path: Path
) -> None:
    store = await open_sqlite()
    await store.create_entry(entry("e1"))
    with sqlite3.connect(sqlite_path) as raw:
        raw.execute("UPDATE entries SET doc = '{\"id\": 5}'")
    with pytest.raises(StoreError, match="unreadable"):
        await store.get_entry("e1")


async def test_readers_do_not_block_writes(open_sqlite: OpenSqlite, sqlite_path: Path) -> None:
    store = await open_sqlite()
    await store.create_entry(entry("e1"))
    reader = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM entries").fetchone()[0] == 1
        await store.create_entry(entry("e2", "/other"))  # a read transaction is open meanwhile
        assert reader.execute("SELECT count(*) FROM entries").fetchone()[0] == 1  # its snapshot
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM entries").fetchone()[0] == 2
    finally:
        reader.close()


async def test_own_writes_wake_waiters_without_polling(open_sqlite: OpenSqlite) -> None:
    store = await open_sqlite(poll_interval=600)
    current = await store.revision(Topic.ENTRIES)
    waiter = asyncio.create_task(store.wait_for_change(Topic.ENTRIES, current, timeout=600))
    await asyncio.sleep(0)
    started = time.monotonic()
    await store.create_entry(entry("e1"))
    assert await asyncio.wait_for(waiter, 5) == current + 1
    assert time.monotonic() - started < 5


async def test_only_the_written_topic_moves(open_sqlite: OpenSqlite) -> None:
    store = await open_sqlite()
    await store.create_entry(entry("e1"))
    assert {t: await store.revision(t) for t in Topic} == {
        t: int(t is Topic.ENTRIES) for t in Topic
    }


async def test_join_token_text_never_reaches_the_file(
    open_sqlite: OpenSqlite, sqlite_path: Path
) -> None:
    store = await open_sqlite()
    _, record = token("t1")
    await store.create_join_token(record)
    await store.close()
    raw = b"".join(
        Path(f"{sqlite_path}{s}").read_bytes()
        for s in ("", "-wal")
        if Path(f"{sqlite_path}{s}").exists()
    )
    assert b"secret-t1" not in raw


async def test_calls_run_off_the_event_loop(open_sqlite: OpenSqlite) -> None:
    store = await open_sqlite()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        await store.add_issued([issued(i) for i in range(1, 3000)])
    finally:
        task.cancel()
    assert ticks > 10  # the loop kept running while the batch was written


# -- record values and their JSON form (the SQLite storage format) --

RECORDS: list[Any] = [
    authority("int-1"),
    agent(next_serial=2**150, banned=True, bundle_sequence=4, revision=3),
    agent(),
    token("t1")[1],
    issued(2**159 + 3),
    issued(9, agent_id=None),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_record_json_round_trip(record: Any) -> None:
    assert type(record).from_json(record.to_json()) == record


@pytest.mark.parametrize(
    ("cls", "doc", "message"),
    [
        (AuthorityRecord, [], "JSON object"),
        (AuthorityRecord, {**authority("a").to_json(), "kind": "x509-leaf"}, "kind must be one of"),
        (AuthorityRecord, {**authority("a").to_json(), "state": "gone"}, "state must be one of"),
        (AuthorityRecord, {**authority("a").to_json(), "public_der": "%%"}, "base64"),
        (AuthorityRecord, {**authority("a").to_json(), "not_after": "soon"}, "ISO 8601"),
        (AgentRecord, {**agent().to_json(), "serial": "zz"}, "hex serial"),
        (AgentRecord, {**agent().to_json(), "serial": "0"}, "positive"),
        (AgentRecord, {**agent().to_json(), "banned": 1}, "banned"),
        (AgentRecord, {**agent().to_json(), "revision": True}, "revision"),
        (AgentRecord, {**agent().to_json(), "spiffe_id": "spiffe://x/../y"}, "spiffe_id"),
        (AgentRecord, {**agent().to_json(), "created_at": "2030-01-01T00:00:00"}, "aware"),
        (JoinTokenRecord, {**token("t")[1].to_json(), "token_hash": "nothex"}, "hex"),
        (JoinTokenRecord, {**token("t")[1].to_json(), "token_hash": "abcd"}, "16-64 bytes"),
        (IssuedSerial, {**issued(1).to_json(), "kind": "jwt"}, "kind must be one of"),
        (IssuedSerial, {**issued(1).to_json(), "serial": "f" * 41}, "20 octets"),
    ],
)
def test_bad_record_json_is_refused(cls: Any, doc: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        cls.from_json(doc)


def test_records_refuse_naive_times_and_bad_values() -> None:
    with pytest.raises(InvalidRequest, match="aware"):
        dataclasses.replace(agent(), not_after=dt.datetime(2030, 1, 1))
    with pytest.raises(InvalidRequest, match="not_after must be after"):
        dataclasses.replace(authority("a"), not_after=T0 - dt.timedelta(days=1))
    with pytest.raises(InvalidRequest, match="1-128"):
        authority("")
    with pytest.raises(InvalidRequest, match="serial"):
        issued(0)
    with pytest.raises(InvalidRequest, match="serial"):
        agent(serial=True)  # a bool is not a serial
    assert revocation(1).value == "1"
