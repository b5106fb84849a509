"""Following revocation records change by change, instead of re-listing them all.

A store that implements :class:`RevocationChangeFeed` lets the CA's revocation snapshot apply each
change in O(change): :meth:`RevocationChangeFeed.follow_revocations` yields
:class:`RevocationChanges`, a full listing first (or whenever the store can no longer say what
changed since the revision the follower holds), then the records written (``put``: the stored
record as it is now) and the records gone (``removed``: by (kind, value), the store's key),
revision by revision. Records pruned for expiry are removals like any other.

* etcd: the watch on the ``revoked/`` prefix carries the changed keys, including the records
  that etcd drops with their lease; a start revision that etcd has compacted away gets a full
  listing (the watch re-lists). The revision is etcd's.
* SQLite: every revocation write, and every record ``prune`` removes, also records
  ``(topic revision, kind, value)`` in ``revocation_changes``, in the same transaction; the log
  keeps the last :data:`LOG_LENGTH` revisions. The changes since R are read from the log when it
  holds a row for every revision in (R, current], and a full listing answers otherwise (R too
  old, or a build that does not keep the log wrote to the file). The revision is the topic's.

A store also names itself with :meth:`RevocationChangeFeed.store_epoch`: a random id fixed when
the store was created (or first opened by a build that knows epochs). Revisions of two stores
may coincide; their epochs do not, so a subscriber can tell a delta against another store's
revision from one against its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.store.base import Store
from s2s.store.codec import decode_doc
from s2s.store.records import Topic

__all__ = [
    "LOG_LENGTH",
    "RevocationChangeFeed",
    "RevocationChanges",
    "StoreKey",
    "follow_revocations_by_listing",
    "log_revocation_changes",
    "read_revocation_changes",
]

LOG_LENGTH: Final = 10_000

StoreKey = tuple[RevocationKind, str]  # (kind, value): a store holds one record per key


@dataclass(frozen=True, slots=True)
class RevocationChanges:
    """What the revocation records are at ``revision``: either every record (``full``) or the
    records written (``put``) and the keys removed (``removed``) since the previous update."""

    revision: int
    full: tuple[RevocationRecord, ...] | None = None
    put: tuple[RevocationRecord, ...] = ()
    removed: tuple[StoreKey, ...] = ()


@runtime_checkable
class RevocationChangeFeed(Protocol):
    """A store that can say which revocation records changed since a revision."""

    def follow_revocations(
        self, *, since: int | None = None, poll: float = 30.0
    ) -> AsyncGenerator[RevocationChanges, None]:
        """A full listing (or, with ``since``, the changes after that revision when the store
        can still say, a full listing otherwise), then the changes as they are committed,
        forever (until the store closes). ``poll`` bounds one wait for a change."""
        ...

    async def store_epoch(self) -> str:
        """The store's epoch: a random id, the same for every handle on one store, never the
        same for two stores."""
        ...


async def follow_revocations_by_listing(
    store: Store, *, since: int | None = None, poll: float = 30.0
) -> AsyncGenerator[RevocationChanges, None]:
    """A revocation feed for a store without one: a full listing whenever the revision moves."""
    seen = -1 if since is None else since
    while True:
        revision = await store.revision(Topic.REVOCATIONS)  # read first: no missed change
        if revision != seen:
            yield RevocationChanges(revision, full=await store.list_revocations())
            seen = revision
        await store.wait_for_change(Topic.REVOCATIONS, seen, poll)


# -- SQLite: the change log, run on the store's worker thread inside its transactions --


def _topic_revision(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT revision FROM topics WHERE topic='revocations'").fetchone()
    return 0 if row is None else int(row[0])


def log_revocation_changes(conn: sqlite3.Connection, keys: Iterable[tuple[str, str]]) -> None:
    """Record that the records of ``keys`` ((kind, value) as stored) changed at the revocations
    topic's current (just bumped) revision, and forget revisions older than the log's length."""
    current = _topic_revision(conn)
    conn.executemany(
        "INSERT OR IGNORE INTO revocation_changes VALUES (?, ?, ?)",
        ((current, kind, value) for kind, value in keys),
    )
    conn.execute("DELETE FROM revocation_changes WHERE revision <= ?", (current - LOG_LENGTH,))


def read_revocation_changes(conn: sqlite3.Connection, since: int) -> RevocationChanges | None:
    """The changes in (``since``, current] from the log, or None when the log cannot tell."""
    current = _topic_revision(conn)
    if current < since:
        return None  # the caller's revision is from another store
    if current == since:
        return RevocationChanges(current)
    covered = conn.execute(
        "SELECT COUNT(DISTINCT revision) FROM revocation_changes "
        "WHERE revision > ? AND revision <= ?",
        (since, current),
    ).fetchone()[0]
    if covered != current - since:
        return None
    keys = conn.execute(
        "SELECT DISTINCT kind, value FROM revocation_changes WHERE revision > ? AND revision <= ?",
        (since, current),
    ).fetchall()
    put: list[RevocationRecord] = []
    removed: list[StoreKey] = []
    for kind, value in keys:
        row = conn.execute(
            "SELECT doc FROM revocations WHERE kind=? AND value=?", (kind, value)
        ).fetchone()
        if row is None:
            removed.append((RevocationKind(kind), str(value)))
        else:
            put.append(decode_doc(row[0], RevocationRecord.from_json))
    return RevocationChanges(current, put=tuple(put), removed=tuple(removed))
