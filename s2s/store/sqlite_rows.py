"""Rows <-> records for the SQLite store: records are kept as their JSON ``doc`` beside the
columns used for keys, filters and expiry (times as integer microseconds since the epoch, serials
as fixed-width hex). These run on the store's worker thread inside its transactions; a stored
document that no longer parses raises :class:`StoreError`. Used by :mod:`s2s.store.sqlite`.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Sequence
from typing import Any, TypeVar

from s2s.core.errors import Conflict, NotFound
from s2s.core.registration import RegistrationEntry
from s2s.core.spiffe_id import SpiffeId
from s2s.store.codec import FromJson, decode_doc, encode_doc
from s2s.store.record_json import check_aware
from s2s.store.records import AgentRecord, AuthorityRecord, IssuedSerial

__all__ = [
    "issued_row",
    "micros",
    "read_agent",
    "read_authority",
    "read_docs",
    "read_entry",
    "read_one",
    "scalar",
    "serial_key",
    "where_clause",
    "write_agent",
    "write_authority",
    "write_entry",
]

_T = TypeVar("_T")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def scalar(conn: sqlite3.Connection, query: str, *args: Any) -> Any:
    row = conn.execute(query, args).fetchone()
    return None if row is None else row[0]


def read_docs(
    conn: sqlite3.Connection, query: str, args: Sequence[Any], parse: FromJson[_T]
) -> tuple[_T, ...]:
    return tuple(decode_doc(row[0], parse) for row in conn.execute(query, tuple(args)))


def where_clause(**filters: object) -> tuple[str, list[str]]:
    """A WHERE clause over fixed column names (the keyword names) for the non-None filters."""
    pairs = [(name, str(value)) for name, value in filters.items() if value is not None]
    if not pairs:
        return "", []
    return "WHERE " + " AND ".join(f"{name}=?" for name, _ in pairs), [v for _, v in pairs]


def micros(value: dt.datetime) -> int:
    check_aware("time", value)
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def serial_key(serial: int) -> str:
    return f"{serial:040x}"  # fixed width: text order is numeric order


def write_authority(conn: sqlite3.Connection, r: AuthorityRecord) -> None:
    row = (r.id, r.kind.value, r.owner, micros(r.not_before), micros(r.not_after), encode_doc(r))
    conn.execute("INSERT OR REPLACE INTO authorities VALUES (?, ?, ?, ?, ?, ?)", row)


def read_one(
    conn: sqlite3.Connection, query: str, key: Any, parse: FromJson[_T], missing: str
) -> _T:
    found = scalar(conn, query, *(key if isinstance(key, tuple) else (key,)))
    if found is None:
        raise NotFound(missing)
    return decode_doc(found, parse)


def read_authority(conn: sqlite3.Connection, authority_id: str) -> AuthorityRecord:
    query = "SELECT doc FROM authorities WHERE id=?"
    return read_one(
        conn, query, authority_id, AuthorityRecord.from_json, f"no authority {authority_id!r}"
    )


def write_entry(conn: sqlite3.Connection, entry: RegistrationEntry) -> None:
    doc = entry.to_json()
    selectors = json.dumps(doc["selectors"], separators=(",", ":"))
    key = (doc["spiffe_id"], doc["parent_id"], selectors)
    query = "SELECT id FROM entries WHERE spiffe_id=? AND parent_id=? AND selectors=? AND id!=?"
    other = scalar(conn, query, *key, entry.id)
    if other is not None:
        raise Conflict(
            f"entry {other} already has this SPIFFE ID, parent ID and selectors ({entry.spiffe_id})"
        )
    row = (entry.id, *key, json.dumps(doc, separators=(",", ":"), sort_keys=True))
    conn.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)", row)


def read_entry(conn: sqlite3.Connection, entry_id: str) -> RegistrationEntry:
    missing = f"no registration entry {entry_id!r}"
    return read_one(
        conn, "SELECT doc FROM entries WHERE id=?", entry_id, RegistrationEntry.from_json, missing
    )


def write_agent(conn: sqlite3.Connection, r: AgentRecord) -> None:
    row = (str(r.spiffe_id), micros(r.not_after), encode_doc(r))
    conn.execute("INSERT OR REPLACE INTO agents VALUES (?, ?, ?)", row)


def read_agent(conn: sqlite3.Connection, spiffe_id: SpiffeId) -> AgentRecord:
    query = "SELECT doc FROM agents WHERE spiffe_id=?"
    return read_one(
        conn, query, str(spiffe_id), AgentRecord.from_json, f"no attested agent {spiffe_id}"
    )


def issued_row(r: IssuedSerial) -> tuple[Any, ...]:
    agent = None if r.agent_id is None else str(r.agent_id)
    return (
        serial_key(r.serial),
        str(r.spiffe_id),
        agent,
        r.issuer_id,
        micros(r.not_after),
        encode_doc(r),
    )
