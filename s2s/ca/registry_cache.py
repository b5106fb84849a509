"""In-memory snapshots of agents and entries, so agent calls make no store round trip.

Every agent call is authorized against its agent record and most look an entry up; through the
store that is one worker-thread hop each. :class:`RegistryCache` keeps both collections in
memory. Agents are an immutable snapshot swapped whole when the store's revision moves. Entries
follow the store change by change (both backends offer an entry feed,
:mod:`s2s.store.entry_changes`): each change is applied in O(change), rebuilding only the
tuples of the parents it touches, with a full listing only at start and when the store cannot
say what changed (etcd compaction, a gap in SQLite's change log). :meth:`follow` runs it, in the
app's TaskGroup. Changes made through this process's :class:`Registry` are applied to the
snapshot at once (write-through), so an eviction or a ban here takes effect on the next call;
changes made by another replica arrive when the store reports them (SQLite: its poll interval,
about a second; etcd: its watch). A miss is read through from the store. Until the first load
completes, or if :meth:`follow` is not running, every read goes to the store, exactly as
without a cache.

The cache also remembers the last :data:`CHANGE_LOG_LENGTH` entry changes with the parents they
touched, so an agent's long-poll can be answered with what changed for it since the revision it
holds (:meth:`RegistryCache.entry_delta`).

Consistency: an agents listing is installed only if no write-through happened while it was read
(a generation counter); otherwise it is read again, so a listing taken before an in-process ban
can never resurrect the unbanned record. An entry written through is served by id at once;
agents' listings read the store until the store's change for it arrives (``_entries_dirty``),
so the revision an agent is given is never older than its entries.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from s2s.aio import wait_event
from s2s.core.registration import RegistrationEntry
from s2s.core.spiffe_id import SpiffeId
from s2s.store.base import Store
from s2s.store.entry_changes import EntryChangeFeed, EntryChanges
from s2s.store.records import AgentRecord, Topic

__all__ = ["CHANGE_LOG_LENGTH", "EntryDelta", "EntrySnapshot", "RegistryCache"]


@dataclass(frozen=True, slots=True)
class EntrySnapshot:
    """Entries as of a store revision (the agent long-polls for a revision above it)."""

    entries: tuple[RegistrationEntry, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class EntryDelta:
    """What changed for one parent since a revision: its entries created or updated, and the
    ids of those deleted or moved to another parent, as of ``revision``."""

    changed: tuple[RegistrationEntry, ...]
    removed: tuple[str, ...]
    revision: int


# How many entry changes the cache remembers for long-polls that ask only for what changed.
CHANGE_LOG_LENGTH = 10_000


class _Entries:
    """The entries snapshot: by id, per parent as tuples in the store's order (by id), and how
    many entries name each SPIFFE ID (so "is there an entry for this ID" reads no listing).

    Only this cache changes it, on the event loop, in O(change): an entry's change replaces the
    entry in ``by_id`` and rebuilds only its parents' tuples. Readers get the tuples and entries,
    which never change, so what they were given stays as it was.
    """

    __slots__ = ("by_id", "by_parent", "per_spiffe_id", "revision")

    def __init__(
        self,
        by_id: dict[str, RegistrationEntry],
        by_parent: dict[SpiffeId, tuple[RegistrationEntry, ...]],
        revision: int,
    ) -> None:
        self.by_id = by_id
        self.by_parent = by_parent
        self.revision = revision
        self.per_spiffe_id = collections.Counter(e.spiffe_id for e in by_id.values())

    @classmethod
    def of(cls, entries: Iterable[RegistrationEntry], revision: int) -> _Entries:
        ordered = sorted(entries, key=lambda e: e.id)  # the store's order
        by_parent: dict[SpiffeId, list[RegistrationEntry]] = {}
        for entry in ordered:
            by_parent.setdefault(entry.parent_id, []).append(entry)
        return cls(
            {e.id: e for e in ordered}, {p: tuple(es) for p, es in by_parent.items()}, revision
        )

    def put(self, entry: RegistrationEntry) -> None:
        old = self.by_id.get(entry.id)
        self.by_id[entry.id] = entry
        if old is None or old.spiffe_id != entry.spiffe_id:
            self.per_spiffe_id[entry.spiffe_id] += 1
            if old is not None:
                self._uncount(old)
        if old is not None and old.parent_id != entry.parent_id:
            self._drop_from_parent(old)
        siblings = self.by_parent.get(entry.parent_id, ())
        at = bisect.bisect_left(siblings, entry.id, key=_entry_id)
        same = at < len(siblings) and siblings[at].id == entry.id
        self.by_parent[entry.parent_id] = (*siblings[:at], entry, *siblings[at + same :])

    def remove(self, entry_id: str) -> None:
        old = self.by_id.pop(entry_id, None)
        if old is not None:
            self._uncount(old)
            self._drop_from_parent(old)

    def _uncount(self, old: RegistrationEntry) -> None:
        left = self.per_spiffe_id[old.spiffe_id] - 1
        if left > 0:
            self.per_spiffe_id[old.spiffe_id] = left
        else:
            del self.per_spiffe_id[old.spiffe_id]

    def _drop_from_parent(self, old: RegistrationEntry) -> None:
        siblings = self.by_parent.get(old.parent_id, ())
        at = bisect.bisect_left(siblings, old.id, key=_entry_id)
        if at == len(siblings) or siblings[at].id != old.id:
            return
        kept = siblings[:at] + siblings[at + 1 :]
        if kept:
            self.by_parent[old.parent_id] = kept
        else:
            del self.by_parent[old.parent_id]


def _entry_id(entry: RegistrationEntry) -> str:
    return entry.id


class RegistryCache:
    """Agents and entries in memory, following the store. Used by :class:`Registry` only."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._agents: Mapping[SpiffeId, AgentRecord] | None = None
        self._entries: _Entries | None = None
        self._generation = {Topic.AGENTS: 0, Topic.ENTRIES: 0}
        self._entries_moved = asyncio.Event()
        # A write-through changed the entries but the store's new revision is not known yet:
        # listings for agents go to the store until the next listing is installed, so that the
        # revision an agent is given is never older than the content it is given.
        self._entries_dirty = False
        # Ids written through, not yet seen in the store's feed, with the parents they had
        # before (so the change, when it arrives, is logged for the parent they left).
        self._pending: dict[str, set[SpiffeId]] = {}
        # The entry changes applied since revision ``_log_floor``, oldest first: (revision, id,
        # every parent it had or has), for answering "what changed since R" per agent.
        self._log: collections.deque[tuple[int, str, frozenset[SpiffeId]]] = collections.deque()
        self._log_floor = 0

    @property
    def loaded(self) -> bool:
        """True once both snapshots were loaded by :meth:`follow`."""
        return self._agents is not None and self._entries is not None

    async def follow(self, *, timeout: float = 30.0) -> None:
        """Load both snapshots, then reload each whenever its store revision moves. Runs until
        cancelled; a store error propagates (the app's TaskGroup stops the CA with a log line)."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._follow(Topic.AGENTS, timeout))
                group.create_task(self._follow_entries(timeout))
        finally:
            self._agents = None  # not following any more: read the store again
            self._entries = None

    async def _follow(self, topic: Topic, timeout: float) -> None:
        seen = -1
        while True:
            generation = self._generation[topic]
            revision = await self._store.revision(topic)
            if revision != seen:
                if topic is Topic.AGENTS:
                    agents = await self._store.list_agents()
                    if self._generation[topic] != generation:
                        continue  # a write-through raced this listing: read again
                    self._agents = MappingProxyType({a.spiffe_id: a for a in agents})
                else:
                    entries = await self._store.list_entries()
                    if self._generation[topic] != generation:
                        continue
                    self._install_entries(_Entries.of(entries, revision))
                seen = revision
            await self._store.wait_for_change(topic, seen, timeout)

    async def _follow_entries(self, timeout: float) -> None:
        store = self._store
        if not isinstance(store, EntryChangeFeed):
            await self._follow(Topic.ENTRIES, timeout)  # a store without a feed: full reloads
            return
        changes = store.follow_entries(poll=timeout)
        async with contextlib.aclosing(changes):
            async for change in changes:
                self.apply_changes(change)

    def apply_changes(self, change: EntryChanges) -> None:
        """Bring the entries snapshot to ``change.revision``: a full listing replaces it, a
        batch of changes is applied entry by entry (O(change), whatever the registry's size)."""
        if change.full is not None:
            # The listing was read after every write-through already committed, or is followed
            # by a batch carrying those writes: either way the store's view wins.
            self._pending.clear()
            self._install_entries(_Entries.of(change.full, change.revision))
            return
        entries = self._entries
        if entries is None:
            return  # a feed starts with a full listing; nothing to apply changes to yet
        log = self._log
        for entry_id in change.deleted:
            parents = self._parents_before(entries, entry_id)
            entries.remove(entry_id)
            log.append((change.revision, entry_id, frozenset(parents)))
        for entry in change.changed:
            parents = self._parents_before(entries, entry.id)
            entries.put(entry)
            log.append((change.revision, entry.id, frozenset({*parents, entry.parent_id})))
        while len(log) > CHANGE_LOG_LENGTH:
            self._log_floor = log.popleft()[0]  # later revisions are all still held
        # Content and revision agree again once no write-through is waiting for its change.
        self._entries_dirty = bool(self._pending)
        if change.revision != entries.revision:
            entries.revision = change.revision
            event, self._entries_moved = self._entries_moved, asyncio.Event()
            event.set()

    def _parents_before(self, entries: _Entries, entry_id: str) -> set[SpiffeId]:
        parents = self._pending.pop(entry_id, set())
        old = entries.by_id.get(entry_id)
        if old is not None:
            parents.add(old.parent_id)
        return parents

    def _install_entries(self, entries: _Entries) -> None:
        self._log.clear()  # a new listing: what changed before it is not known any more
        self._log_floor = entries.revision
        moved = self._entries is None or entries.revision != self._entries.revision
        self._entries = entries
        self._entries_dirty = False
        if moved:
            event, self._entries_moved = self._entries_moved, asyncio.Event()
            event.set()

    # -- agents --------------------------------------------------------------------------------

    async def get_agent(self, spiffe_id: SpiffeId, *, fresh: bool = False) -> AgentRecord:
        """The agent's record (:class:`NotFound` if unknown); ``fresh`` reads the store."""
        agents = self._agents
        if not fresh and agents is not None:
            found = agents.get(spiffe_id)
            if found is not None:
                return found
        generation = self._generation[Topic.AGENTS]
        record = await self._store.get_agent(spiffe_id)  # NotFound propagates
        if self._generation[Topic.AGENTS] == generation:
            self._put_agent(record, bump=False)  # read-through, unless a write raced it
        return record

    def agent_written(self, record: AgentRecord) -> None:
        """Write-through after this process stored ``record``."""
        self._put_agent(record, bump=True)

    def agent_deleted(self, spiffe_id: SpiffeId) -> None:
        """Write-through after this process deleted the agent."""
        self._generation[Topic.AGENTS] += 1
        agents = self._agents
        if agents is not None and spiffe_id in agents:
            self._agents = MappingProxyType({k: v for k, v in agents.items() if k != spiffe_id})

    def _put_agent(self, record: AgentRecord, *, bump: bool) -> None:
        if bump:
            self._generation[Topic.AGENTS] += 1
        agents = self._agents
        if agents is not None:
            current = agents.get(record.spiffe_id)
            if current is not None and current.revision > record.revision:
                return  # never replace a newer record with an older one
            self._agents = MappingProxyType({**agents, record.spiffe_id: record})

    # -- entries -------------------------------------------------------------------------------

    async def get_entry(self, entry_id: str) -> RegistrationEntry:
        """One entry (:class:`NotFound` if unknown), from the snapshot or the store."""
        entries = self._entries
        if entries is not None:
            found = entries.by_id.get(entry_id)
            if found is not None:
                return found
        return await self._store.get_entry(entry_id)

    def entry_count(self) -> int | None:
        """How many entries the snapshot holds; None without a snapshot."""
        entries = self._entries
        return None if entries is None else len(entries.by_id)

    async def has_entry_for(self, spiffe_id: SpiffeId) -> bool:
        """Whether an entry names ``spiffe_id``: O(1) from the snapshot when it has one; a miss
        (or no snapshot) asks the store, so an entry another replica just created is found."""
        entries = self._entries
        if entries is not None and spiffe_id in entries.per_spiffe_id:
            return True
        return bool(await self._store.list_entries(spiffe_id=spiffe_id))

    async def entries_for_parent(
        self, parent_id: SpiffeId, *, exact_revision: bool = True
    ) -> EntrySnapshot:
        """Entries whose parent is ``parent_id`` with the revision they are current for.

        Right after an in-process write the snapshot's content is current but its revision is
        not yet known: with ``exact_revision`` the store is read until the follower catches up.
        """
        entries = self._entries
        if entries is not None and not (exact_revision and self._entries_dirty):
            return EntrySnapshot(entries.by_parent.get(parent_id, ()), entries.revision)
        revision = await self._store.revision(Topic.ENTRIES)  # read first: no missed change
        return EntrySnapshot(await self._store.list_entries(parent_id=parent_id), revision)

    def entry_delta(self, parent_id: SpiffeId, since: int, revision: int) -> EntryDelta | None:
        """What changed for ``parent_id`` after ``since`` up to ``revision``, the snapshot's
        current revision; None when the cache cannot say (``since`` older than the changes it
        remembers, from another store, the snapshot moved past ``revision``, or a write-through
        not yet confirmed): then the caller sends the full list. O(changes since ``since``)."""
        entries = self._entries
        if (
            entries is None
            or self._entries_dirty
            or entries.revision != revision
            or not self._log_floor <= since <= revision
        ):
            return None
        ids: dict[str, None] = {}
        for at, entry_id, parents in reversed(self._log):
            if at <= since:
                break
            if parent_id in parents:
                ids[entry_id] = None
        changed: list[RegistrationEntry] = []
        removed: list[str] = []
        for entry_id in sorted(ids):
            entry = entries.by_id.get(entry_id)
            if entry is not None and entry.parent_id == parent_id:
                changed.append(entry)
            else:
                removed.append(entry_id)
        return EntryDelta(tuple(changed), tuple(removed), revision)

    async def wait_for_entries(self, after: int, timeout: float) -> int:
        """Wait until the entries revision exceeds ``after`` (or ``timeout`` seconds pass)."""
        if self._entries is None:
            return await self._store.wait_for_change(Topic.ENTRIES, after, timeout)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            event = self._entries_moved
            entries = self._entries
            if entries is None:  # following stopped meanwhile
                remaining = max(0.0, deadline - time.monotonic())
                return await self._store.wait_for_change(Topic.ENTRIES, after, remaining)
            remaining = deadline - time.monotonic()
            if entries.revision > after or remaining <= 0:
                return entries.revision
            await wait_event(event, remaining)

    def entry_written(self, entry: RegistrationEntry) -> None:
        """Write-through after this process created or updated ``entry``."""
        self._replace_entry(entry.id, entry)

    def entry_deleted(self, entry_id: str) -> None:
        """Write-through after this process deleted the entry."""
        self._replace_entry(entry_id, None)

    def _replace_entry(self, entry_id: str, entry: RegistrationEntry | None) -> None:
        self._generation[Topic.ENTRIES] += 1
        entries = self._entries
        if entries is None:
            return
        current = entries.by_id.get(entry_id)
        if entry is None:
            if current is None:
                return  # the store's feed was first
            entries.remove(entry_id)
        else:
            if current is not None and current.revision >= entry.revision:
                return  # never replace a newer entry with an older one (or the feed was first)
            entries.put(entry)
        parents = self._pending.setdefault(entry_id, set())
        if current is not None:
            parents.add(current.parent_id)
        # Same revision: the store's new revision arrives with the change (and wakes long-polls
        # then); meanwhile lookups by id use the new content and listings for agents read the
        # store (``_entries_dirty``).
        self._entries_dirty = True
