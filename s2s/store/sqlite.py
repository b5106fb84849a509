"""The embedded ``Store``: one SQLite file (stdlib ``sqlite3``, WAL), for a single CA process.

Every call runs on one worker thread that owns the connection, so the event loop never blocks on
disk. Writes are ``BEGIN IMMEDIATE`` transactions committed with ``synchronous=FULL``: a call that
returns has reached the disk, and one that fails wrote nothing. Other processes may read the file
at the same time (WAL). Change notification is in-process (an event per topic), backed by a slow
re-read of the revision counters so that writes through another handle are seen too.

Records are stored as their JSON form (``doc``) beside the columns used for keys, filters and
expiry. Opening refuses, with :class:`InvalidConfig`, a file that is not SQLite or is corrupt, the
database of another application, or a schema newer than this build. Run-time failures raise
:class:`StoreError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import sqlite3
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from s2s.core.errors import Conflict, NotFound
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.core.spiffe_id import SpiffeId
from s2s.store.codec import Revised, check_revision, check_text, decode_doc, encode_doc, revised
from s2s.store.entry_changes import EntryChanges, log_entry_change, read_entry_changes
from s2s.store.records import (
    AgentRecord,
    AuthorityKind,
    AuthorityRecord,
    AuthorityState,
    IssuedSerial,
    JoinTokenRecord,
    PruneResult,
    Topic,
    UsedMark,
    check_key_hash,
)
from s2s.store.revocation_changes import (
    RevocationChanges,
    log_revocation_changes,
    read_revocation_changes,
)
from s2s.store.sqlite_rows import (
    issued_row,
    micros,
    read_agent,
    read_authority,
    read_docs,
    read_entry,
    read_one,
    scalar,
    serial_key,
    where_clause,
    write_agent,
    write_authority,
    write_entry,
)
from s2s.store.sqlite_worker import SqliteWorker, Tx

__all__ = [
    "SqliteStore",
]

_V = TypeVar("_V", bound=Revised)

# (table, expiry column, PruneResult field, topic bumped when rows go)
_PRUNE: tuple[tuple[str, str, str, Topic | None], ...] = (
    ("join_tokens", "expires_at", "join_tokens", None),
    ("join_tokens_used", "expires_at", "join_tokens", None),
    ("revocations", "expires_at", "revocations", Topic.REVOCATIONS),
    ("issued", "not_after", "issued", None),
    ("agents", "not_after", "agents", Topic.AGENTS),
    ("authorities", "not_after", "authorities", Topic.AUTHORITIES),
    ("used_marks", "expires_at", "used_marks", None),
)


class SqliteStore(SqliteWorker):
    """The SQLite ``Store``. Create with ``await SqliteStore.open(path)``; ``await close()``.

    The worker thread, transactions and change notification come from
    :class:`~s2s.store.sqlite_worker.SqliteWorker`."""

    async def _update(
        self,
        what: str,
        new: _V,
        expected_revision: int,
        *,
        read: Callable[[sqlite3.Connection], _V],
        write: Callable[[sqlite3.Connection, _V], None],
        topic: Topic,
    ) -> _V:
        """Write ``new`` over the record ``read`` finds: its revision must be
        ``expected_revision``; ``new`` gets the next one and keeps its ``created_at``."""

        def run(tx: Tx) -> _V:
            stored = revised(what, read(tx.conn), new, expected_revision)
            write(tx.conn, stored)
            tx.bump(topic)
            return stored

        return await self._write(run)

    # -- settings and generic state --

    async def get_setting(self, key: str) -> str | None:
        return await self._read(lambda c: scalar(c, "SELECT value FROM settings WHERE key=?", key))

    async def set_setting(self, key: str, value: str, *, only_if_absent: bool = False) -> None:
        check_text("setting", key, value)

        def run(tx: Tx) -> None:
            if only_if_absent and scalar(tx.conn, "SELECT 1 FROM settings WHERE key=?", key):
                raise Conflict(f"setting {key!r} is already set")
            tx.conn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, value))

        await self._write(run)

    async def list_settings(self) -> Mapping[str, str]:
        rows = await self._read(lambda c: c.execute("SELECT key, value FROM settings").fetchall())
        return {str(k): str(v) for k, v in rows}

    async def get_state(self, key: str) -> str | None:
        return await self._read(lambda c: scalar(c, "SELECT value FROM state WHERE key=?", key))

    async def cas_state(
        self, key: str, expected: str | None, new: str | None, *, topic: Topic | None = None
    ) -> None:
        check_text("state", key, new)

        def run(tx: Tx) -> None:
            current = scalar(tx.conn, "SELECT value FROM state WHERE key=?", key)
            if current != expected:
                raise Conflict(f"state {key!r} was changed by someone else (compare-and-swap lost)")
            if new is None:
                tx.conn.execute("DELETE FROM state WHERE key=?", (key,))
            else:
                tx.conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, new))
            if topic is not None:
                tx.bump(Topic(topic))

        await self._write(run)

    # -- authorities --

    async def create_authority(self, record: AuthorityRecord) -> None:
        def run(tx: Tx) -> None:
            if scalar(tx.conn, "SELECT 1 FROM authorities WHERE id=?", record.id):
                raise Conflict(f"authority {record.id} already exists")
            write_authority(tx.conn, record)
            tx.bump(Topic.AUTHORITIES)

        await self._write(run)

    async def get_authority(self, authority_id: str) -> AuthorityRecord:
        return await self._read(lambda c: read_authority(c, authority_id))

    async def list_authorities(
        self, *, kind: AuthorityKind | None = None, owner: str | None = None
    ) -> tuple[AuthorityRecord, ...]:
        where, args = where_clause(kind=None if kind is None else AuthorityKind(kind), owner=owner)
        query = f"SELECT doc FROM authorities {where} ORDER BY not_before, id"  # noqa: S608 (fixed columns)
        return await self._read(lambda c: read_docs(c, query, args, AuthorityRecord.from_json))

    async def cas_authority_state(
        self, authority_id: str, expected: AuthorityState, new: AuthorityState
    ) -> AuthorityRecord:
        expected, new = AuthorityState(expected), AuthorityState(new)

        def run(tx: Tx) -> AuthorityRecord:
            record = read_authority(tx.conn, authority_id)
            if record.state != expected:
                raise Conflict(
                    f"authority {authority_id} is {record.state}, not {expected}: "
                    f"it cannot move to {new}"
                )
            moved = dataclasses.replace(record, state=new)
            write_authority(tx.conn, moved)
            tx.bump(Topic.AUTHORITIES)
            return moved

        return await self._write(run)

    async def delete_authority(self, authority_id: str) -> None:
        def run(tx: Tx) -> None:
            read_authority(tx.conn, authority_id)
            tx.conn.execute("DELETE FROM authorities WHERE id=?", (authority_id,))
            tx.bump(Topic.AUTHORITIES)

        await self._write(run)

    # -- registration entries --

    async def create_entry(self, entry: RegistrationEntry) -> RegistrationEntry:
        stored = dataclasses.replace(entry, revision=1)

        def run(tx: Tx) -> RegistrationEntry:
            if scalar(tx.conn, "SELECT 1 FROM entries WHERE id=?", entry.id):
                raise Conflict(f"entry {entry.id} already exists")
            write_entry(tx.conn, stored)
            tx.bump(Topic.ENTRIES)
            log_entry_change(tx.conn, entry.id)
            return stored

        return await self._write(run)

    async def update_entry(
        self, entry: RegistrationEntry, *, expected_revision: int
    ) -> RegistrationEntry:
        def run(tx: Tx) -> RegistrationEntry:
            current = read_entry(tx.conn, entry.id)
            stored = revised(f"entry {entry.id}", current, entry, expected_revision)
            write_entry(tx.conn, stored)
            tx.bump(Topic.ENTRIES)
            log_entry_change(tx.conn, entry.id)
            return stored

        return await self._write(run)

    async def delete_entry(
        self, entry_id: str, *, expected_revision: int | None = None
    ) -> RegistrationEntry:
        def run(tx: Tx) -> RegistrationEntry:
            current = read_entry(tx.conn, entry_id)
            if expected_revision is not None:
                check_revision(f"entry {entry_id}", current.revision, expected_revision)
            tx.conn.execute("DELETE FROM entries WHERE id=?", (entry_id,))
            tx.bump(Topic.ENTRIES)
            log_entry_change(tx.conn, entry_id)
            return current

        return await self._write(run)

    async def get_entry(self, entry_id: str) -> RegistrationEntry:
        return await self._read(lambda c: read_entry(c, entry_id))

    async def list_entries(
        self, *, parent_id: SpiffeId | None = None, spiffe_id: SpiffeId | None = None
    ) -> tuple[RegistrationEntry, ...]:
        where, args = where_clause(parent_id=parent_id, spiffe_id=spiffe_id)
        query = f"SELECT doc FROM entries {where} ORDER BY id"  # noqa: S608 (fixed columns)
        return await self._read(lambda c: read_docs(c, query, args, RegistrationEntry.from_json))

    async def follow_entries(
        self, *, since: int | None = None, poll: float = 30.0
    ) -> AsyncGenerator[EntryChanges, None]:
        """Every entry, then each batch of changes read from the change log (a full listing
        again when the log cannot say what changed)."""
        while True:
            if since is None:

                def listing(c: sqlite3.Connection) -> EntryChanges:
                    revision = int(scalar(c, "SELECT revision FROM topics WHERE topic='entries'"))
                    query = "SELECT doc FROM entries ORDER BY id"
                    return EntryChanges(
                        revision, full=read_docs(c, query, (), RegistrationEntry.from_json)
                    )

                full = await self._read(listing)  # one read transaction: content == revision
                since = full.revision
                yield full
                continue
            if await self.wait_for_change(Topic.ENTRIES, since, poll) == since:
                continue
            changes = await self._read(functools.partial(_changes_since, since=since))
            if changes is None:
                since = None
                continue
            since = changes.revision
            yield changes

    # -- agents --

    async def create_agent(self, record: AgentRecord) -> AgentRecord:
        stored = dataclasses.replace(record, revision=1)

        def run(tx: Tx) -> AgentRecord:
            if scalar(tx.conn, "SELECT 1 FROM agents WHERE spiffe_id=?", str(record.spiffe_id)):
                raise Conflict(f"agent {record.spiffe_id} already exists")
            write_agent(tx.conn, stored)
            tx.bump(Topic.AGENTS)
            return stored

        return await self._write(run)

    async def get_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        return await self._read(lambda c: read_agent(c, spiffe_id))

    async def list_agents(self) -> tuple[AgentRecord, ...]:
        query = "SELECT doc FROM agents ORDER BY spiffe_id"
        return await self._read(lambda c: read_docs(c, query, (), AgentRecord.from_json))

    async def update_agent(self, record: AgentRecord, *, expected_revision: int) -> AgentRecord:
        return await self._update(
            f"agent {record.spiffe_id}",
            record,
            expected_revision,
            read=lambda c: read_agent(c, record.spiffe_id),
            write=write_agent,
            topic=Topic.AGENTS,
        )

    async def delete_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        def run(tx: Tx) -> AgentRecord:
            current = read_agent(tx.conn, spiffe_id)
            tx.conn.execute("DELETE FROM agents WHERE spiffe_id=?", (str(spiffe_id),))
            tx.bump(Topic.AGENTS)
            return current

        return await self._write(run)

    # -- join tokens --

    async def create_join_token(self, record: JoinTokenRecord) -> None:
        row = (record.id, record.token_hash, micros(record.expires_at), encode_doc(record))

        def run(tx: Tx) -> None:
            query = (
                "SELECT 1 FROM join_tokens WHERE id=?1 OR token_hash=?2 UNION ALL "
                "SELECT 1 FROM join_tokens_used WHERE id=?1 OR token_hash=?2"
            )
            if scalar(tx.conn, query, record.id, record.token_hash):
                raise Conflict(f"join token {record.id} (or its hash) already exists")
            tx.conn.execute("INSERT INTO join_tokens VALUES (?, ?, ?, ?)", row)

        await self._write(run)

    async def consume_join_token(
        self, token_hash: bytes, *, now: dt.datetime, key_hash: bytes
    ) -> JoinTokenRecord:
        moment = micros(now)
        check_key_hash(key_hash)
        token_hash = bytes(token_hash)

        def run(tx: Tx) -> JoinTokenRecord:
            # Under BEGIN IMMEDIATE: exactly one consumer moves the token to the used table.
            # A used token lives in its own table, so a CA that predates retries finds no
            # token there and refuses it, whatever the key.
            query = "SELECT doc FROM join_tokens_used WHERE token_hash=?"
            row = tx.conn.execute(query, (token_hash,)).fetchone()
            if row is not None:
                record = decode_doc(row[0], JoinTokenRecord.from_json)
                if micros(record.expires_at) <= moment:
                    tx.conn.execute("DELETE FROM join_tokens_used WHERE id=?", (record.id,))
                return record
            query = "DELETE FROM join_tokens WHERE token_hash=? RETURNING doc"
            row = tx.conn.execute(query, (token_hash,)).fetchone()
            if row is None:
                raise NotFound("join token is unknown or was already used")
            record = decode_doc(row[0], JoinTokenRecord.from_json)
            if micros(record.expires_at) > moment:  # an expired token is only removed
                used = dataclasses.replace(record, used_by=key_hash)
                values = (record.id, token_hash, micros(record.expires_at), encode_doc(used))
                tx.conn.execute("INSERT INTO join_tokens_used VALUES (?, ?, ?, ?)", values)
            return record

        record = await self._write(run)
        if micros(record.expires_at) <= moment:
            raise NotFound(f"join token {record.id} expired at {record.expires_at.isoformat()}")
        return record

    # -- revocations --

    # -- single-use marks --

    async def claim_once(self, mark: UsedMark) -> None:
        row = (mark.key, micros(mark.expires_at))

        def run(tx: Tx) -> None:
            if not tx.conn.execute("INSERT OR IGNORE INTO used_marks VALUES (?, ?)", row).rowcount:
                raise Conflict(f"{mark.key!r} was already used")

        await self._write(run)

    async def add_revocation(self, record: RevocationRecord) -> bool:
        key = (str(record.kind), record.value)

        def run(tx: Tx) -> bool:
            query = "SELECT doc FROM revocations WHERE kind=? AND value=?"
            found = scalar(tx.conn, query, *key)
            merged = record
            if found is not None:
                existing = decode_doc(found, RevocationRecord.from_json)
                merged = existing.merged(record)
                if merged == existing:
                    return False
            row = (*key, micros(merged.expires_at), encode_doc(merged))
            tx.conn.execute("INSERT OR REPLACE INTO revocations VALUES (?, ?, ?, ?)", row)
            tx.bump(Topic.REVOCATIONS)
            log_revocation_changes(tx.conn, [key])
            return True

        return await self._write(run)

    async def get_revocation(self, kind: RevocationKind, value: str) -> RevocationRecord:
        query = "SELECT doc FROM revocations WHERE kind=? AND value=?"
        missing = f"no revocation record for {kind} {value!r}"
        key = (str(kind), value)
        return await self._read(
            lambda c: read_one(c, query, key, RevocationRecord.from_json, missing)
        )

    async def list_revocations(self) -> tuple[RevocationRecord, ...]:
        query = "SELECT doc FROM revocations ORDER BY kind, value"
        return await self._read(lambda c: read_docs(c, query, (), RevocationRecord.from_json))

    async def follow_revocations(
        self, *, since: int | None = None, poll: float = 30.0
    ) -> AsyncGenerator[RevocationChanges, None]:
        """Every record, then each batch of changes read from the change log (a full listing
        again when the log cannot say what changed)."""
        while True:
            if since is None:
                full = await self._read(_revocation_listing)  # content == revision
                since = full.revision
                yield full
                continue
            if await self.wait_for_change(Topic.REVOCATIONS, since, poll) == since:
                continue
            changes = await self._read(functools.partial(read_revocation_changes, since=since))
            if changes is None:
                since = None
                continue
            since = changes.revision
            yield changes

    async def store_epoch(self) -> str:
        epoch = await self._read(lambda c: scalar(c, "SELECT value FROM meta WHERE key='epoch'"))
        return str(epoch or "")

    # -- issued serials --

    async def add_issued(self, records: Sequence[IssuedSerial]) -> None:
        rows = [issued_row(r) for r in records]

        def run(tx: Tx) -> None:
            for row in rows:
                if scalar(tx.conn, "SELECT 1 FROM issued WHERE serial=?", row[0]):
                    raise Conflict(f"serial {int(row[0], 16):x} is already in the issued index")
            tx.conn.executemany("INSERT INTO issued VALUES (?, ?, ?, ?, ?, ?)", rows)

        if rows:
            await self._write(run)

    async def get_issued(self, serial: int) -> IssuedSerial:
        query = "SELECT doc FROM issued WHERE serial=?"
        missing = f"serial {serial:x} is not in the issued index"
        return await self._read(
            lambda c: read_one(c, query, serial_key(serial), IssuedSerial.from_json, missing)
        )

    async def list_issued(
        self,
        *,
        spiffe_id: SpiffeId | None = None,
        agent_id: SpiffeId | None = None,
        issuer_id: str | None = None,
    ) -> tuple[IssuedSerial, ...]:
        where, args = where_clause(spiffe_id=spiffe_id, agent_id=agent_id, issuer_id=issuer_id)
        query = f"SELECT doc FROM issued {where} ORDER BY serial"  # noqa: S608 (fixed columns)
        return await self._read(lambda c: read_docs(c, query, args, IssuedSerial.from_json))

    # -- maintenance and change notification --

    async def prune(self, now: dt.datetime) -> PruneResult:
        moment = micros(now)

        def run(tx: Tx) -> PruneResult:
            counts: dict[str, int] = {}
            for table, column, field, topic in _PRUNE:
                if topic is Topic.REVOCATIONS:  # the removals reach the change log
                    query = "DELETE FROM revocations WHERE expires_at <= ? RETURNING kind, value"
                    gone = tx.conn.execute(query, (moment,)).fetchall()
                    counts[field] = len(gone)
                    if gone:
                        tx.bump(topic)
                        log_revocation_changes(tx.conn, gone)
                    continue
                query = f"DELETE FROM {table} WHERE {column} <= ?"  # noqa: S608 (fixed names)
                removed = tx.conn.execute(query, (moment,)).rowcount
                counts[field] = counts.get(field, 0) + removed
                if removed and topic is not None:
                    tx.bump(topic)
            return PruneResult(**counts)

        return await self._write(run)


def _changes_since(conn: sqlite3.Connection, *, since: int) -> EntryChanges | None:
    return read_entry_changes(conn, since)


def _revocation_listing(conn: sqlite3.Connection) -> RevocationChanges:
    revision = int(scalar(conn, "SELECT revision FROM topics WHERE topic='revocations'") or 0)
    query = "SELECT doc FROM revocations ORDER BY kind, value"
    return RevocationChanges(revision, full=read_docs(conn, query, (), RevocationRecord.from_json))


if TYPE_CHECKING:
    from s2s.store.base import Store
    from s2s.store.entry_changes import EntryChangeFeed
    from s2s.store.revocation_changes import RevocationChangeFeed

    def _conforms(store: SqliteStore) -> Store:  # mypy proves SqliteStore implements Store
        return store

    def _follows_entries(store: SqliteStore) -> EntryChangeFeed:
        return store

    def _follows_revocations(store: SqliteStore) -> RevocationChangeFeed:
        return store
