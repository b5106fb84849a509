"""The ``Store`` protocol: everything the CA keeps, behind one async interface.

Two backends implement it and pass the same contract suite (``tests/unit/store/contract.py``):
SQLite (embedded, ``s2s.store.sqlite``) and etcd (clusters). Rules every backend keeps:

* Every write is atomic: on error nothing is half-written and a ``StoreError`` is raised.
* ``get_*`` raise ``NotFound`` for a missing record; lost compare-and-swaps and broken uniqueness
  raise ``Conflict``; bad record values raise ``InvalidRequest`` (from the record constructors).
* Foreign errors (sqlite3, grpc) are translated once, in the backend, into ``s2s.core.errors``.
* Datetimes come back aware UTC and equal to what was stored (microsecond precision).
* Records with an expiry (join tokens, revocations, issued serials, agents and authorities by
  ``not_after``) are removed by ``prune(now)`` once ``expiry <= now``; nothing else removes them,
  except that a backend may leave issued serials and used marks to expire by themselves (etcd
  leases, about ``lease_grace`` later; its ``prune`` counts 0 for them). Readers of those records
  filter by expiry where it matters.
* Each :class:`Topic` has a revision that never decreases, survives a reopen, and grows with every
  committed change to that topic. It may also grow without a visible change (a backend may share a
  counter between topics), so a waiter must re-read after waking. To follow a topic without a gap,
  read ``revision(topic)`` first, then list, then ``wait_for_change(topic, that_revision, ...)``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol

from s2s.aio import wait_event
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.core.spiffe_id import SpiffeId
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
)

__all__ = ["ChangeNotifier", "Store", "wait_for_revision"]


class Store(Protocol):
    """What the CA keeps. All methods are coroutines; the CA is the only user."""

    async def close(self) -> None:
        """Release the backend. Idempotent; the store is unusable afterwards."""
        ...

    # -- trust domain settings (small text values; see records.Setting for well-known keys) --
    async def get_setting(self, key: str) -> str | None: ...
    async def set_setting(self, key: str, value: str, *, only_if_absent: bool = False) -> None:
        """Write a setting; with ``only_if_absent`` an existing key raises ``Conflict``."""
        ...

    async def list_settings(self) -> Mapping[str, str]: ...

    # -- generic compare-and-swap state (e.g. the root rotation state machine, as JSON text) --
    async def get_state(self, key: str) -> str | None: ...
    async def cas_state(
        self, key: str, expected: str | None, new: str | None, *, topic: Topic | None = None
    ) -> None:
        """Set ``key`` to ``new`` if it holds ``expected``, else raise ``Conflict``.

        ``expected=None`` means "must be absent"; ``new=None`` deletes the key. With ``topic``
        a successful swap also bumps that topic (in the same transaction)."""
        ...

    # -- authorities (topic AUTHORITIES) --
    async def create_authority(self, record: AuthorityRecord) -> None:
        """Add an authority; an existing id raises ``Conflict``."""
        ...

    async def get_authority(self, authority_id: str) -> AuthorityRecord: ...
    async def list_authorities(
        self, *, kind: AuthorityKind | None = None, owner: str | None = None
    ) -> tuple[AuthorityRecord, ...]:
        """Authorities, optionally filtered, ordered by (not_before, id)."""
        ...

    async def cas_authority_state(
        self, authority_id: str, expected: AuthorityState, new: AuthorityState
    ) -> AuthorityRecord:
        """Move an authority from ``expected`` to ``new`` or raise ``Conflict``/``NotFound``."""
        ...

    async def delete_authority(self, authority_id: str) -> None: ...

    # -- registration entries (topic ENTRIES) --
    async def create_entry(self, entry: RegistrationEntry) -> RegistrationEntry:
        """Store a new entry with revision 1. ``Conflict`` if its id exists or another entry has
        the same (spiffe_id, parent_id, selectors)."""
        ...

    async def update_entry(
        self, entry: RegistrationEntry, *, expected_revision: int
    ) -> RegistrationEntry:
        """Replace the entry with ``entry.id`` if its revision is ``expected_revision``; the stored
        entry gets ``expected_revision + 1`` and keeps its ``created_at``."""
        ...

    async def delete_entry(
        self, entry_id: str, *, expected_revision: int | None = None
    ) -> RegistrationEntry:
        """Delete and return the entry (``Conflict`` if ``expected_revision`` does not match)."""
        ...

    async def get_entry(self, entry_id: str) -> RegistrationEntry: ...
    async def list_entries(
        self, *, parent_id: SpiffeId | None = None, spiffe_id: SpiffeId | None = None
    ) -> tuple[RegistrationEntry, ...]:
        """Entries ordered by id, optionally only those with this parent and/or SPIFFE ID."""
        ...

    # -- attested agents (topic AGENTS) --
    async def create_agent(self, record: AgentRecord) -> AgentRecord:
        """Store a new agent with revision 1; ``Conflict`` if its SPIFFE ID exists."""
        ...

    async def get_agent(self, spiffe_id: SpiffeId) -> AgentRecord: ...
    async def list_agents(self) -> tuple[AgentRecord, ...]:
        """Agents ordered by SPIFFE ID."""
        ...

    async def update_agent(self, record: AgentRecord, *, expected_revision: int) -> AgentRecord:
        """Replace the agent if its revision is ``expected_revision`` (``created_at`` is kept)."""
        ...

    async def delete_agent(self, spiffe_id: SpiffeId) -> AgentRecord: ...

    # -- single-use join tokens --
    async def create_join_token(self, record: JoinTokenRecord) -> None:
        """Store a token (by hash); ``Conflict`` if the id or hash exists."""
        ...

    async def consume_join_token(
        self, token_hash: bytes, *, now: dt.datetime, key_hash: bytes
    ) -> JoinTokenRecord:
        """Use the token with this hash for the key whose SPKI SHA-256 is ``key_hash`` and return
        the record as it was before. An unused token is marked ``used_by=key_hash``
        (compare-and-swap: of concurrent consumers exactly one sees it unused) and stays until
        its expiry; a used one is returned unchanged, its ``used_by`` naming the key that used
        it (the caller decides). ``NotFound`` if unknown; an expired token (``expires_at <=
        now``) is removed and raises ``NotFound`` saying it expired."""
        ...

    # -- single-use marks (spent client assertions), shared by every replica --
    async def claim_once(self, mark: UsedMark) -> None:
        """Hold ``mark.key`` until ``mark.expires_at`` (``prune`` or, on etcd, its lease removes
        it after). ``Conflict`` if the key is held already: of concurrent claims of one key
        exactly one succeeds."""
        ...

    # -- revocation records (topic REVOCATIONS) --
    async def add_revocation(self, record: RevocationRecord) -> bool:
        """Add a record, idempotently, keyed by (kind, value). If one exists, the stored record
        keeps the later ``revoked_at`` and ``expires_at`` and the first non-empty reason.
        Returns True when anything changed."""
        ...

    async def get_revocation(self, kind: RevocationKind, value: str) -> RevocationRecord: ...
    async def list_revocations(self) -> tuple[RevocationRecord, ...]:
        """All records, ordered by (kind, value)."""
        ...

    # -- index of issued serials --
    async def add_issued(self, records: Sequence[IssuedSerial]) -> None:
        """Record issued certificates in one transaction; a known serial raises ``Conflict``."""
        ...

    async def get_issued(self, serial: int) -> IssuedSerial: ...
    async def list_issued(
        self,
        *,
        spiffe_id: SpiffeId | None = None,
        agent_id: SpiffeId | None = None,
        issuer_id: str | None = None,
    ) -> tuple[IssuedSerial, ...]:
        """Issued serials matching every given filter, ordered by serial."""
        ...

    # -- maintenance and change notification --
    async def prune(self, now: dt.datetime) -> PruneResult:
        """Remove every record whose expiry is ``<= now``; bumps the topics it changed."""
        ...

    async def revision(self, topic: Topic) -> int: ...
    async def wait_for_change(self, topic: Topic, after: int, timeout: float) -> int:
        """Return ``revision(topic)`` as soon as it differs from ``after`` (it grew; or it is lower,
        because the caller's revision came from a store that was since replaced), or when
        ``timeout`` seconds have passed (then it equals ``after``). Never raises on timeout."""
        ...


class ChangeNotifier:
    """In-process wakeups, one event per topic, replaced on every notification.

    Must be used from one event loop. Take ``event(topic)`` *before* reading the revision, so a
    change committed between the read and the wait still wakes the waiter.
    """

    def __init__(self) -> None:
        self._events: dict[Topic, asyncio.Event] = {}

    def event(self, topic: Topic) -> asyncio.Event:
        event = self._events.get(topic)
        if event is None:
            event = self._events[topic] = asyncio.Event()
        return event

    def notify(self, topics: Iterable[Topic]) -> None:
        for topic in topics:
            event = self._events.pop(topic, None)
            if event is not None:
                event.set()


async def wait_for_revision(
    read: Callable[[], Awaitable[int]],
    notifier: ChangeNotifier,
    topic: Topic,
    after: int,
    timeout: float,
    *,
    poll_interval: float | None = None,
) -> int:
    """The body of ``wait_for_change`` for a backend that notifies ``notifier`` on its own writes.

    With ``poll_interval`` the revision is also re-read that often, which catches changes made by
    another process (another handle on the same SQLite file).
    """
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        event = notifier.event(topic)
        current = await read()
        remaining = deadline - time.monotonic()
        if current != after or remaining <= 0:
            return current
        step = remaining if poll_interval is None else min(remaining, poll_interval)
        await wait_event(event, step)
