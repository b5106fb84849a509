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

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from s2s.core.errors import (
    Conflict,
    InvalidConfig,
    InvalidRequest,
    NotFound,
    S2SError,
    StoreError,
)
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.core.spiffe_id import SpiffeId
from s2s.store.base import ChangeNotifier, wait_for_revision
from s2s.store.records import (
    AgentRecord,
    AuthorityKind,
    AuthorityRecord,
    AuthorityState,
    IssuedSerial,
    JoinTokenRecord,
    PruneResult,
    Topic,
    check_aware,
)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SqliteStore"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_R_co = TypeVar("_R_co", covariant=True)

APPLICATION_ID = 0x73327301  # PRAGMA application_id: "s2s" + 1, marks the file as ours
SCHEMA_VERSION = 1
_APP = "s2s-ca-store"
_HEADER = b"SQLite format 3\x00"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_SCHEMA = """
CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), app TEXT NOT NULL,
    version INTEGER NOT NULL);
CREATE TABLE topics (topic TEXT PRIMARY KEY, revision INTEGER NOT NULL);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE authorities (id TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT NOT NULL,
    not_before INTEGER NOT NULL, not_after INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE entries (id TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, parent_id TEXT NOT NULL,
    selectors TEXT NOT NULL, doc TEXT NOT NULL, UNIQUE (spiffe_id, parent_id, selectors));
CREATE INDEX entries_by_parent ON entries (parent_id);
CREATE TABLE agents (spiffe_id TEXT PRIMARY KEY, not_after INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX agents_by_expiry ON agents (not_after);
CREATE TABLE join_tokens (id TEXT PRIMARY KEY, token_hash BLOB NOT NULL UNIQUE,
    expires_at INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX join_tokens_by_expiry ON join_tokens (expires_at);
CREATE TABLE revocations (kind TEXT NOT NULL, value TEXT NOT NULL, expires_at INTEGER NOT NULL,
    doc TEXT NOT NULL, PRIMARY KEY (kind, value));
CREATE INDEX revocations_by_expiry ON revocations (expires_at);
CREATE TABLE issued (serial TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, agent_id TEXT,
    issuer_id TEXT NOT NULL, not_after INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX issued_by_spiffe_id ON issued (spiffe_id);
CREATE INDEX issued_by_agent ON issued (agent_id);
CREATE INDEX issued_by_issuer ON issued (issuer_id);
CREATE INDEX issued_by_expiry ON issued (not_after);
INSERT INTO topics VALUES ('entries', 0), ('agents', 0), ('revocations', 0), ('authorities', 0);
"""

# (table, expiry column, PruneResult field, topic bumped when rows go)
_PRUNE: tuple[tuple[str, str, str, Topic | None], ...] = (
    ("join_tokens", "expires_at", "join_tokens", None),
    ("revocations", "expires_at", "revocations", Topic.REVOCATIONS),
    ("issued", "not_after", "issued", None),
    ("agents", "not_after", "agents", Topic.AGENTS),
    ("authorities", "not_after", "authorities", Topic.AUTHORITIES),
)


class _FromJson(Protocol[_R_co]):
    def __call__(self, d: Any, /) -> _R_co: ...


class _Tx:
    """One write transaction: the connection and the topics it changed."""

    __slots__ = ("conn", "topics")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.topics: list[Topic] = []

    def bump(self, topic: Topic) -> None:
        if topic not in self.topics:
            self.conn.execute("UPDATE topics SET revision = revision + 1 WHERE topic = ?", (topic,))
            self.topics.append(topic)


class SqliteStore:
    """The SQLite ``Store``. Create with ``await SqliteStore.open(path)``; ``await close()``."""

    def __init__(
        self, path: Path, executor: ThreadPoolExecutor, conn: sqlite3.Connection, poll: float
    ) -> None:
        self._path = path
        self._executor = executor
        self._conn: sqlite3.Connection | None = conn
        self._poll = poll
        self._notifier = ChangeNotifier()

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, create: bool = True, poll_interval: float = 1.0
    ) -> SqliteStore:
        """Open the store at ``path``; with ``create``, a missing file is created with mode 0600.

        ``poll_interval`` bounds how late ``wait_for_change`` sees writes made by another handle.
        """
        where = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2s-sqlite")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(
                executor, _connect, where, create
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(where, executor, conn, poll_interval)

    @property
    def path(self) -> Path:
        return self._path

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        finally:
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing: one worker thread, errors translated once --

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        if conn is None:
            raise StoreError(f"the store {self._path} is closed")
        try:
            return fn(conn)
        except S2SError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path} failed, nothing was written: {exc}") from exc

    async def _submit(self, fn: Callable[[sqlite3.Connection], _T]) -> asyncio.Future[_T]:
        if self._conn is None:
            raise StoreError(f"the store {self._path} is closed")
        return asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await (await self._submit(lambda c: _snapshot(c, fn)))

    async def _write(self, fn: Callable[[_Tx], _T]) -> _T:
        future = await self._submit(lambda c: _transact(c, fn))

        def notify(done: asyncio.Future[tuple[_T, list[Topic]]]) -> None:
            # Runs even when the caller was cancelled: a committed change always wakes waiters.
            if not done.cancelled() and done.exception() is None:
                self._notifier.notify(done.result()[1])

        future.add_done_callback(notify)
        result, _ = await future
        return result

    # -- settings and generic state --

    async def get_setting(self, key: str) -> str | None:
        return await self._read(lambda c: _scalar(c, "SELECT value FROM settings WHERE key=?", key))

    async def set_setting(self, key: str, value: str, *, only_if_absent: bool = False) -> None:
        _check_text("setting", key, value)

        def run(tx: _Tx) -> None:
            if only_if_absent and _scalar(tx.conn, "SELECT 1 FROM settings WHERE key=?", key):
                raise Conflict(f"setting {key!r} is already set")
            tx.conn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, value))

        await self._write(run)

    async def list_settings(self) -> Mapping[str, str]:
        rows = await self._read(lambda c: c.execute("SELECT key, value FROM settings").fetchall())
        return {str(k): str(v) for k, v in rows}

    async def get_state(self, key: str) -> str | None:
        return await self._read(lambda c: _scalar(c, "SELECT value FROM state WHERE key=?", key))

    async def cas_state(self, key: str, expected: str | None, new: str | None) -> None:
        _check_text("state", key, new)

        def run(tx: _Tx) -> None:
            current = _scalar(tx.conn, "SELECT value FROM state WHERE key=?", key)
            if current != expected:
                raise Conflict(f"state {key!r} was changed by someone else (compare-and-swap lost)")
            if new is None:
                tx.conn.execute("DELETE FROM state WHERE key=?", (key,))
            else:
                tx.conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, new))

        await self._write(run)

    # -- authorities --

    async def create_authority(self, record: AuthorityRecord) -> None:
        def run(tx: _Tx) -> None:
            if _scalar(tx.conn, "SELECT 1 FROM authorities WHERE id=?", record.id):
                raise Conflict(f"authority {record.id} already exists")
            _put_authority(tx.conn, record)
            tx.bump(Topic.AUTHORITIES)

        await self._write(run)

    async def get_authority(self, authority_id: str) -> AuthorityRecord:
        return await self._read(lambda c: _get_authority(c, authority_id))

    async def list_authorities(
        self, *, kind: AuthorityKind | None = None, owner: str | None = None
    ) -> tuple[AuthorityRecord, ...]:
        where, args = _where(kind=None if kind is None else AuthorityKind(kind), owner=owner)
        query = f"SELECT doc FROM authorities {where} ORDER BY not_before, id"  # noqa: S608 (fixed columns)
        return await self._read(lambda c: _docs(c, query, args, AuthorityRecord.from_json))

    async def cas_authority_state(
        self, authority_id: str, expected: AuthorityState, new: AuthorityState
    ) -> AuthorityRecord:
        expected, new = AuthorityState(expected), AuthorityState(new)

        def run(tx: _Tx) -> AuthorityRecord:
            record = _get_authority(tx.conn, authority_id)
            if record.state != expected:
                raise Conflict(
                    f"authority {authority_id} is {record.state}, not {expected}: "
                    f"it cannot move to {new}"
                )
            moved = dataclasses.replace(record, state=new)
            _put_authority(tx.conn, moved)
            tx.bump(Topic.AUTHORITIES)
            return moved

        return await self._write(run)

    async def delete_authority(self, authority_id: str) -> None:
        def run(tx: _Tx) -> None:
            _get_authority(tx.conn, authority_id)
            tx.conn.execute("DELETE FROM authorities WHERE id=?", (authority_id,))
            tx.bump(Topic.AUTHORITIES)

        await self._write(run)

    # -- registration entries --

    async def create_entry(self, entry: RegistrationEntry) -> RegistrationEntry:
        stored = dataclasses.replace(entry, revision=1)

        def run(tx: _Tx) -> RegistrationEntry:
            if _scalar(tx.conn, "SELECT 1 FROM entries WHERE id=?", entry.id):
                raise Conflict(f"entry {entry.id} already exists")
            _put_entry(tx.conn, stored)
            tx.bump(Topic.ENTRIES)
            return stored

        return await self._write(run)

    async def update_entry(
        self, entry: RegistrationEntry, *, expected_revision: int
    ) -> RegistrationEntry:
        def run(tx: _Tx) -> RegistrationEntry:
            current = _get_entry(tx.conn, entry.id)
            _check_revision(f"entry {entry.id}", current.revision, expected_revision)
            stored = dataclasses.replace(
                entry, revision=current.revision + 1, created_at=current.created_at
            )
            _put_entry(tx.conn, stored)
            tx.bump(Topic.ENTRIES)
            return stored

        return await self._write(run)

    async def delete_entry(
        self, entry_id: str, *, expected_revision: int | None = None
    ) -> RegistrationEntry:
        def run(tx: _Tx) -> RegistrationEntry:
            current = _get_entry(tx.conn, entry_id)
            if expected_revision is not None:
                _check_revision(f"entry {entry_id}", current.revision, expected_revision)
            tx.conn.execute("DELETE FROM entries WHERE id=?", (entry_id,))
            tx.bump(Topic.ENTRIES)
            return current

        return await self._write(run)

    async def get_entry(self, entry_id: str) -> RegistrationEntry:
        return await self._read(lambda c: _get_entry(c, entry_id))

    async def list_entries(
        self, *, parent_id: SpiffeId | None = None, spiffe_id: SpiffeId | None = None
    ) -> tuple[RegistrationEntry, ...]:
        where, args = _where(parent_id=parent_id, spiffe_id=spiffe_id)
        query = f"SELECT doc FROM entries {where} ORDER BY id"  # noqa: S608 (fixed columns)
        return await self._read(lambda c: _docs(c, query, args, RegistrationEntry.from_json))

    # -- agents --

    async def create_agent(self, record: AgentRecord) -> AgentRecord:
        stored = dataclasses.replace(record, revision=1)

        def run(tx: _Tx) -> AgentRecord:
            if _scalar(tx.conn, "SELECT 1 FROM agents WHERE spiffe_id=?", str(record.spiffe_id)):
                raise Conflict(f"agent {record.spiffe_id} already exists")
            _put_agent(tx.conn, stored)
            tx.bump(Topic.AGENTS)
            return stored

        return await self._write(run)

    async def get_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        return await self._read(lambda c: _get_agent(c, spiffe_id))

    async def list_agents(self) -> tuple[AgentRecord, ...]:
        query = "SELECT doc FROM agents ORDER BY spiffe_id"
        return await self._read(lambda c: _docs(c, query, (), AgentRecord.from_json))

    async def update_agent(self, record: AgentRecord, *, expected_revision: int) -> AgentRecord:
        def run(tx: _Tx) -> AgentRecord:
            current = _get_agent(tx.conn, record.spiffe_id)
            _check_revision(f"agent {record.spiffe_id}", current.revision, expected_revision)
            stored = dataclasses.replace(
                record, revision=current.revision + 1, created_at=current.created_at
            )
            _put_agent(tx.conn, stored)
            tx.bump(Topic.AGENTS)
            return stored

        return await self._write(run)

    async def delete_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        def run(tx: _Tx) -> AgentRecord:
            current = _get_agent(tx.conn, spiffe_id)
            tx.conn.execute("DELETE FROM agents WHERE spiffe_id=?", (str(spiffe_id),))
            tx.bump(Topic.AGENTS)
            return current

        return await self._write(run)

    # -- join tokens --

    async def create_join_token(self, record: JoinTokenRecord) -> None:
        row = (record.id, record.token_hash, _micros(record.expires_at), _doc(record))

        def run(tx: _Tx) -> None:
            query = "SELECT 1 FROM join_tokens WHERE id=? OR token_hash=?"
            if _scalar(tx.conn, query, record.id, record.token_hash):
                raise Conflict(f"join token {record.id} (or its hash) already exists")
            tx.conn.execute("INSERT INTO join_tokens VALUES (?, ?, ?, ?)", row)

        await self._write(run)

    async def consume_join_token(self, token_hash: bytes, *, now: dt.datetime) -> JoinTokenRecord:
        moment = _micros(now)

        def run(tx: _Tx) -> JoinTokenRecord:
            # DELETE ... RETURNING under BEGIN IMMEDIATE: the row goes to exactly one consumer.
            query = "DELETE FROM join_tokens WHERE token_hash=? RETURNING doc"
            row = tx.conn.execute(query, (bytes(token_hash),)).fetchone()
            if row is None:
                raise NotFound("join token is unknown or was already used")
            return _decode(row[0], JoinTokenRecord.from_json)

        record = await self._write(run)  # an expired token is used up as well
        if _micros(record.expires_at) <= moment:
            raise NotFound(f"join token {record.id} expired at {record.expires_at.isoformat()}")
        return record

    # -- revocations --

    async def add_revocation(self, record: RevocationRecord) -> bool:
        key = (str(record.kind), record.value)

        def run(tx: _Tx) -> bool:
            query = "SELECT doc FROM revocations WHERE kind=? AND value=?"
            found = _scalar(tx.conn, query, *key)
            merged = record
            if found is not None:
                existing = _decode(found, RevocationRecord.from_json)
                merged = existing.merged(record)
                if merged == existing:
                    return False
            row = (*key, _micros(merged.expires_at), _doc(merged))
            tx.conn.execute("INSERT OR REPLACE INTO revocations VALUES (?, ?, ?, ?)", row)
            tx.bump(Topic.REVOCATIONS)
            return True

        return await self._write(run)

    async def get_revocation(self, kind: RevocationKind, value: str) -> RevocationRecord:
        query = "SELECT doc FROM revocations WHERE kind=? AND value=?"
        missing = f"no revocation record for {kind} {value!r}"
        key = (str(kind), value)
        return await self._read(lambda c: _one(c, query, key, RevocationRecord.from_json, missing))

    async def list_revocations(self) -> tuple[RevocationRecord, ...]:
        query = "SELECT doc FROM revocations ORDER BY kind, value"
        return await self._read(lambda c: _docs(c, query, (), RevocationRecord.from_json))

    # -- issued serials --

    async def add_issued(self, records: Sequence[IssuedSerial]) -> None:
        rows = [_issued_row(r) for r in records]

        def run(tx: _Tx) -> None:
            for row in rows:
                if _scalar(tx.conn, "SELECT 1 FROM issued WHERE serial=?", row[0]):
                    raise Conflict(f"serial {int(row[0], 16):x} is already in the issued index")
            tx.conn.executemany("INSERT INTO issued VALUES (?, ?, ?, ?, ?, ?)", rows)

        if rows:
            await self._write(run)

    async def get_issued(self, serial: int) -> IssuedSerial:
        query = "SELECT doc FROM issued WHERE serial=?"
        missing = f"serial {serial:x} is not in the issued index"
        return await self._read(
            lambda c: _one(c, query, _serial(serial), IssuedSerial.from_json, missing)
        )

    async def list_issued(
        self,
        *,
        spiffe_id: SpiffeId | None = None,
        agent_id: SpiffeId | None = None,
        issuer_id: str | None = None,
    ) -> tuple[IssuedSerial, ...]:
        where, args = _where(spiffe_id=spiffe_id, agent_id=agent_id, issuer_id=issuer_id)
        query = f"SELECT doc FROM issued {where} ORDER BY serial"  # noqa: S608 (fixed columns)
        return await self._read(lambda c: _docs(c, query, args, IssuedSerial.from_json))

    # -- maintenance and change notification --

    async def prune(self, now: dt.datetime) -> PruneResult:
        moment = _micros(now)

        def run(tx: _Tx) -> PruneResult:
            counts: dict[str, int] = {}
            for table, column, field, topic in _PRUNE:
                query = f"DELETE FROM {table} WHERE {column} <= ?"  # noqa: S608 (fixed names)
                counts[field] = tx.conn.execute(query, (moment,)).rowcount
                if counts[field] and topic is not None:
                    tx.bump(topic)
            return PruneResult(**counts)

        return await self._write(run)

    async def revision(self, topic: Topic) -> int:
        name = Topic(topic).value
        value = await self._read(
            lambda c: _scalar(c, "SELECT revision FROM topics WHERE topic=?", name)
        )
        return int(value or 0)

    async def wait_for_change(self, topic: Topic, after: int, timeout: float) -> int:
        return await wait_for_revision(
            lambda: self.revision(topic),
            self._notifier,
            Topic(topic),
            after,
            timeout,
            poll_interval=self._poll,
        )


# -- helpers that run on the worker thread --


def _transact(conn: sqlite3.Connection, fn: Callable[[_Tx], _T]) -> tuple[_T, list[Topic]]:
    tx = _Tx(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(tx)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result, tx.topics


def _snapshot(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    conn.execute("BEGIN")  # one read transaction: a consistent view of the whole call
    try:
        return fn(conn)
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _scalar(conn: sqlite3.Connection, query: str, *args: Any) -> Any:
    row = conn.execute(query, args).fetchone()
    return None if row is None else row[0]


def _docs(
    conn: sqlite3.Connection, query: str, args: Sequence[Any], parse: _FromJson[_T]
) -> tuple[_T, ...]:
    return tuple(_decode(row[0], parse) for row in conn.execute(query, tuple(args)))


def _decode(doc: str, parse: _FromJson[_T]) -> _T:
    try:
        return parse(json.loads(doc))
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"a stored record is unreadable (corrupt store?): {exc}") from exc


def _doc(record: Any) -> str:
    return json.dumps(record.to_json(), separators=(",", ":"), sort_keys=True)


def _where(**filters: object) -> tuple[str, list[str]]:
    """A WHERE clause over fixed column names (the keyword names) for the non-None filters."""
    pairs = [(name, str(value)) for name, value in filters.items() if value is not None]
    if not pairs:
        return "", []
    return "WHERE " + " AND ".join(f"{name}=?" for name, _ in pairs), [v for _, v in pairs]


def _micros(value: dt.datetime) -> int:
    check_aware("time", value)
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def _serial(serial: int) -> str:
    return f"{serial:040x}"  # fixed width: text order is numeric order


def _check_text(what: str, key: object, value: object) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"a {what} key must be non-empty text")
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"a {what} value must be text")


def _check_revision(what: str, current: int, expected: int) -> None:
    if current != expected:
        raise Conflict(f"{what} is at revision {current}, not {expected}: re-read and retry")


def _put_authority(conn: sqlite3.Connection, r: AuthorityRecord) -> None:
    row = (r.id, r.kind.value, r.owner, _micros(r.not_before), _micros(r.not_after), _doc(r))
    conn.execute("INSERT OR REPLACE INTO authorities VALUES (?, ?, ?, ?, ?, ?)", row)


def _one(conn: sqlite3.Connection, query: str, key: Any, parse: _FromJson[_T], missing: str) -> _T:
    found = _scalar(conn, query, *(key if isinstance(key, tuple) else (key,)))
    if found is None:
        raise NotFound(missing)
    return _decode(found, parse)


def _get_authority(conn: sqlite3.Connection, authority_id: str) -> AuthorityRecord:
    query = "SELECT doc FROM authorities WHERE id=?"
    return _one(
        conn, query, authority_id, AuthorityRecord.from_json, f"no authority {authority_id!r}"
    )


def _put_entry(conn: sqlite3.Connection, entry: RegistrationEntry) -> None:
    doc = entry.to_json()
    selectors = json.dumps(doc["selectors"], separators=(",", ":"))
    key = (doc["spiffe_id"], doc["parent_id"], selectors)
    query = "SELECT id FROM entries WHERE spiffe_id=? AND parent_id=? AND selectors=? AND id!=?"
    other = _scalar(conn, query, *key, entry.id)
    if other is not None:
        raise Conflict(
            f"entry {other} already has this SPIFFE ID, parent ID and selectors ({entry.spiffe_id})"
        )
    row = (entry.id, *key, json.dumps(doc, separators=(",", ":"), sort_keys=True))
    conn.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)", row)


def _get_entry(conn: sqlite3.Connection, entry_id: str) -> RegistrationEntry:
    missing = f"no registration entry {entry_id!r}"
    return _one(
        conn, "SELECT doc FROM entries WHERE id=?", entry_id, RegistrationEntry.from_json, missing
    )


def _put_agent(conn: sqlite3.Connection, r: AgentRecord) -> None:
    row = (str(r.spiffe_id), _micros(r.not_after), _doc(r))
    conn.execute("INSERT OR REPLACE INTO agents VALUES (?, ?, ?)", row)


def _get_agent(conn: sqlite3.Connection, spiffe_id: SpiffeId) -> AgentRecord:
    query = "SELECT doc FROM agents WHERE spiffe_id=?"
    return _one(
        conn, query, str(spiffe_id), AgentRecord.from_json, f"no attested agent {spiffe_id}"
    )


def _issued_row(r: IssuedSerial) -> tuple[Any, ...]:
    agent = None if r.agent_id is None else str(r.agent_id)
    return (_serial(r.serial), str(r.spiffe_id), agent, r.issuer_id, _micros(r.not_after), _doc(r))


# -- opening and checking the file --


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    """Open and check the file; InvalidConfig when it cannot be used as our store."""
    try:
        _prepare_file(path, create)
    except OSError as exc:
        raise InvalidConfig(f"cannot use the store {path}: {exc.strerror or exc}") from exc
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    except sqlite3.Error as exc:
        raise InvalidConfig(f"cannot open the store {path}: {exc}") from exc
    try:
        _initialise(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        name = getattr(exc, "sqlite_errorname", "")
        if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            raise InvalidConfig(f"the store {path} is corrupt: {exc}") from exc
        raise StoreError(f"cannot open the store {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare_file(path: Path, create: bool) -> None:
    """Create an empty 0600 file if asked; refuse what is not an SQLite file."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        if not create:
            raise InvalidConfig(f"no store at {path}: run `s2s-ca init` first") from None
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        return
    if not stat.S_ISREG(info.st_mode):
        raise InvalidConfig(f"the store {path} is not a regular file")
    if info.st_mode & 0o077:
        _log.warning("store.permissions_tightened", extra={"path": str(path)})
        os.chmod(path, 0o600)
    if info.st_size == 0:
        return
    with path.open("rb") as f:
        if f.read(len(_HEADER)) != _HEADER:
            raise InvalidConfig(f"{path} is not an s2s store (not an SQLite database)")


def _initialise(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("PRAGMA busy_timeout = 10000")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        _log.warning("store.no_wal", extra={"path": str(path), "journal_mode": mode})
    conn.execute("PRAGMA synchronous = FULL")  # a returned write survives power loss
    conn.execute("BEGIN IMMEDIATE")  # two processes creating one store: one creates, one checks
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if not tables and app_id == 0:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (1, ?, ?)", (_APP, SCHEMA_VERSION))
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
        else:
            _check_schema(conn, path, tables, app_id)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    problems = conn.execute("PRAGMA quick_check(1)").fetchall()
    if problems != [("ok",)]:
        raise InvalidConfig(f"the store {path} is corrupt: {problems[0][0]}")


def _check_schema(conn: sqlite3.Connection, path: Path, tables: set[str], app_id: int) -> None:
    foreign = InvalidConfig(f"{path} is the database of another application, not an s2s store")
    if app_id != APPLICATION_ID or "schema_version" not in tables:
        raise foreign
    row = conn.execute("SELECT app, version FROM schema_version WHERE id = 1").fetchone()
    if row is None or row[0] != _APP or not isinstance(row[1], int):
        raise foreign
    if row[1] > SCHEMA_VERSION:
        raise InvalidConfig(
            f"the store {path} has schema version {row[1]}, newer than this s2s understands "
            f"({SCHEMA_VERSION}): run a newer s2s"
        )
    if row[1] < SCHEMA_VERSION:  # future migrations run here, inside this transaction
        raise InvalidConfig(f"the store {path} has schema version {row[1]}, which has no upgrade")


if TYPE_CHECKING:
    from s2s.store.base import Store

    def _conforms(store: SqliteStore) -> Store:  # mypy proves SqliteStore implements Store
        return store
