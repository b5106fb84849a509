"""Following registration entries change by change, instead of re-listing them all.

A store that implements :class:`EntryChangeFeed` lets the CA's entry snapshot apply each change in
O(change): :meth:`EntryChangeFeed.follow_entries` yields :class:`EntryChanges`, a full listing
first (or whenever the store can no longer say what changed since the revision the follower
holds), then the entries changed and the ids deleted, revision by revision.

* etcd: the watch on the ``entries/`` prefix carries the changed keys; a start revision that etcd
  has compacted away gets a full listing (the watch re-lists).
* SQLite: every entry write also records ``(topic revision, entry id)`` in ``entry_changes``, in
  the same transaction; the log keeps the last :data:`LOG_LENGTH` revisions. A read of the changes
  since R is answered from the log when the log holds a row for every revision in (R, current],
  and with a full listing otherwise (R too old, or a build that does not keep the log wrote to the
  file).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from s2s.core.registration import RegistrationEntry
from s2s.store.base import Store
from s2s.store.codec import decode_doc
from s2s.store.records import Topic

__all__ = [
    "LOG_LENGTH",
    "EntryChangeFeed",
    "EntryChanges",
    "follow_by_listing",
    "log_entry_change",
    "read_entry_changes",
]

LOG_LENGTH: Final = 10_000


@dataclass(frozen=True, slots=True)
class EntryChanges:
    """What the entries are at ``revision``: either every entry (``full``) or the entries created
    or updated (``changed``) and the ids deleted (``deleted``) since the previous update."""

    revision: int
    full: tuple[RegistrationEntry, ...] | None = None
    changed: tuple[RegistrationEntry, ...] = ()
    deleted: tuple[str, ...] = ()


@runtime_checkable
class EntryChangeFeed(Protocol):
    """A store that can say which entries changed since a revision."""

    def follow_entries(
        self, *, since: int | None = None, poll: float = 30.0
    ) -> AsyncGenerator[EntryChanges, None]:
        """A full listing (or, with ``since``, the changes after that revision when the store
        can still say, a full listing otherwise), then the changes as they are committed,
        forever (until the store closes). ``poll`` bounds one wait for a change (a backend that
        polls re-reads then)."""
        ...


async def follow_by_listing(
    store: Store, *, poll: float = 30.0
) -> AsyncGenerator[EntryChanges, None]:
    """An entry feed for a store without one: a full listing whenever the revision moves."""
    seen = -1
    while True:
        revision = await store.revision(Topic.ENTRIES)  # read first: no missed change
        if revision != seen:
            yield EntryChanges(revision, full=await store.list_entries())
            seen = revision
        await store.wait_for_change(Topic.ENTRIES, seen, poll)


# -- SQLite: the change log, run on the store's worker thread inside its transactions --


def log_entry_change(conn: sqlite3.Connection, entry_id: str) -> None:
    """Record that ``entry_id`` changed at the entries topic's current (just bumped) revision,
    and forget revisions older than the log's length."""
    current = conn.execute("SELECT revision FROM topics WHERE topic='entries'").fetchone()[0]
    conn.execute("INSERT OR IGNORE INTO entry_changes VALUES (?, ?)", (current, entry_id))
    conn.execute("DELETE FROM entry_changes WHERE revision <= ?", (current - LOG_LENGTH,))


def read_entry_changes(conn: sqlite3.Connection, since: int) -> EntryChanges | None:
    """The changes in (``since``, current] from the log, or None when the log cannot tell."""
    current = int(conn.execute("SELECT revision FROM topics WHERE topic='entries'").fetchone()[0])
    if current < since:
        return None  # the caller's revision is from another store
    if current == since:
        return EntryChanges(current)
    covered = conn.execute(
        "SELECT COUNT(DISTINCT revision) FROM entry_changes WHERE revision > ? AND revision <= ?",
        (since, current),
    ).fetchone()[0]
    if covered != current - since:
        return None
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT id FROM entry_changes WHERE revision > ? AND revision <= ?",
            (since, current),
        )
    ]
    changed: list[RegistrationEntry] = []
    deleted: list[str] = []
    for entry_id in sorted(ids):
        row = conn.execute("SELECT doc FROM entries WHERE id=?", (entry_id,)).fetchone()
        if row is None:
            deleted.append(entry_id)
        else:
            changed.append(decode_doc(row[0], RegistrationEntry.from_json))
    return EntryChanges(current, changed=tuple(changed), deleted=tuple(deleted))
