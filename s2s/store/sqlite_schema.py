"""Opening the SQLite store's file: permissions, pragmas, and creating or checking the schema.

:func:`connect` refuses, with :class:`InvalidConfig`, a path that is not a regular file, a file that
is not SQLite or is corrupt, the database of another application, or a schema newer than this
build; a new file is created with mode 0600 and a looser mode is tightened. Used by
:mod:`s2s.store.sqlite`.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import stat
from pathlib import Path

from s2s.core.errors import InvalidConfig, StoreError

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "connect"]

# The store's events keep the logger name they had before this module was split out.
_log = logging.getLogger(__name__)

APPLICATION_ID = 0x73327301  # PRAGMA application_id: "s2s" + 1, marks the file as ours
SCHEMA_VERSION = 1
_APP = "s2s-ca-store"
_HEADER = b"SQLite format 3\x00"

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

# Tables added since schema version 1, created when missing in a store of any version: a build
# without them never reads them, so they need no version step.
_ADDED = """
CREATE TABLE IF NOT EXISTS used_marks (key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS used_marks_by_expiry ON used_marks (expires_at);
CREATE TABLE IF NOT EXISTS entry_changes (revision INTEGER NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY (revision, id));
CREATE TABLE IF NOT EXISTS revocation_changes (revision INTEGER NOT NULL, kind TEXT NOT NULL,
    value TEXT NOT NULL, PRIMARY KEY (revision, kind, value));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS join_tokens_used (id TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE, expires_at INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS join_tokens_used_by_expiry ON join_tokens_used (expires_at);
"""


def connect(path: Path, create: bool) -> sqlite3.Connection:
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
        for statement in _ADDED.split(";"):
            if statement.strip():
                conn.execute(statement)
        # The store's epoch: fixed once, so two stores are told apart even at equal revisions.
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (secrets.token_hex(16),))
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
