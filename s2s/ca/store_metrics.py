"""The CA's store, measured: every call timed and every backend failure counted.

:class:`MeteredStore` wraps any :class:`Store` (SQLite or etcd) and passes each call through,
observing ``s2s_ca_store_operation_seconds{backend,operation}`` and counting
``s2s_ca_store_errors_total{backend,operation,code}`` when the backend failed (``Unavailable``,
``StoreError`` or an unexpected exception). ``NotFound``, ``Conflict`` and bad-value errors are
answers the caller expects (a lost compare-and-swap, a missing record), not store trouble, so they
are timed but not counted. ``wait_for_change`` waits on purpose and is not timed.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncGenerator, Awaitable, Mapping, Sequence
from typing import TypeVar

from s2s.ca.metrics import CaMetrics
from s2s.core.errors import S2SError, Unavailable
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.core.spiffe_id import SpiffeId
from s2s.store.base import Store
from s2s.store.entry_changes import EntryChangeFeed, EntryChanges, follow_by_listing
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
from s2s.store.revocation_changes import (
    RevocationChangeFeed,
    RevocationChanges,
    follow_revocations_by_listing,
)

__all__ = ["MeteredStore"]

_T = TypeVar("_T")


class MeteredStore:
    """A :class:`Store` that times and counts the calls it passes to ``inner``."""

    def __init__(self, inner: Store, metrics: CaMetrics, *, backend: str) -> None:
        self._inner = inner
        self._metrics = metrics
        self._backend = backend

    async def _run(self, operation: str, call: Awaitable[_T], *, timed: bool = True) -> _T:
        start = time.perf_counter()
        try:
            result = await call
        except Unavailable as exc:
            self._count(operation, exc.code)
            raise
        except S2SError:
            raise
        except Exception:
            self._count(operation, "internal")
            raise
        finally:
            if timed:
                elapsed = time.perf_counter() - start
                self._metrics.store_latency.labels(self._backend, operation).observe(elapsed)
        return result

    def _count(self, operation: str, code: str) -> None:
        self._metrics.store_errors.labels(self._backend, operation, code).inc()

    async def close(self) -> None:
        await self._inner.close()

    async def get_setting(self, key: str) -> str | None:
        return await self._run("get_setting", self._inner.get_setting(key))

    async def set_setting(self, key: str, value: str, *, only_if_absent: bool = False) -> None:
        call = self._inner.set_setting(key, value, only_if_absent=only_if_absent)
        await self._run("set_setting", call)

    async def list_settings(self) -> Mapping[str, str]:
        return await self._run("list_settings", self._inner.list_settings())

    async def get_state(self, key: str) -> str | None:
        return await self._run("get_state", self._inner.get_state(key))

    async def cas_state(
        self, key: str, expected: str | None, new: str | None, *, topic: Topic | None = None
    ) -> None:
        await self._run("cas_state", self._inner.cas_state(key, expected, new, topic=topic))

    async def create_authority(self, record: AuthorityRecord) -> None:
        await self._run("create_authority", self._inner.create_authority(record))

    async def get_authority(self, authority_id: str) -> AuthorityRecord:
        return await self._run("get_authority", self._inner.get_authority(authority_id))

    async def list_authorities(
        self, *, kind: AuthorityKind | None = None, owner: str | None = None
    ) -> tuple[AuthorityRecord, ...]:
        call = self._inner.list_authorities(kind=kind, owner=owner)
        return await self._run("list_authorities", call)

    async def cas_authority_state(
        self, authority_id: str, expected: AuthorityState, new: AuthorityState
    ) -> AuthorityRecord:
        call = self._inner.cas_authority_state(authority_id, expected, new)
        return await self._run("cas_authority_state", call)

    async def delete_authority(self, authority_id: str) -> None:
        await self._run("delete_authority", self._inner.delete_authority(authority_id))

    async def create_entry(self, entry: RegistrationEntry) -> RegistrationEntry:
        return await self._run("create_entry", self._inner.create_entry(entry))

    async def update_entry(
        self, entry: RegistrationEntry, *, expected_revision: int
    ) -> RegistrationEntry:
        call = self._inner.update_entry(entry, expected_revision=expected_revision)
        return await self._run("update_entry", call)

    async def delete_entry(
        self, entry_id: str, *, expected_revision: int | None = None
    ) -> RegistrationEntry:
        call = self._inner.delete_entry(entry_id, expected_revision=expected_revision)
        return await self._run("delete_entry", call)

    async def get_entry(self, entry_id: str) -> RegistrationEntry:
        return await self._run("get_entry", self._inner.get_entry(entry_id))

    async def list_entries(
        self, *, parent_id: SpiffeId | None = None, spiffe_id: SpiffeId | None = None
    ) -> tuple[RegistrationEntry, ...]:
        call = self._inner.list_entries(parent_id=parent_id, spiffe_id=spiffe_id)
        return await self._run("list_entries", call)

    async def create_agent(self, record: AgentRecord) -> AgentRecord:
        return await self._run("create_agent", self._inner.create_agent(record))

    async def get_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        return await self._run("get_agent", self._inner.get_agent(spiffe_id))

    async def list_agents(self) -> tuple[AgentRecord, ...]:
        return await self._run("list_agents", self._inner.list_agents())

    async def update_agent(self, record: AgentRecord, *, expected_revision: int) -> AgentRecord:
        call = self._inner.update_agent(record, expected_revision=expected_revision)
        return await self._run("update_agent", call)

    async def delete_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        return await self._run("delete_agent", self._inner.delete_agent(spiffe_id))

    async def create_join_token(self, record: JoinTokenRecord) -> None:
        await self._run("create_join_token", self._inner.create_join_token(record))

    async def consume_join_token(
        self, token_hash: bytes, *, now: dt.datetime, key_hash: bytes
    ) -> JoinTokenRecord:
        call = self._inner.consume_join_token(token_hash, now=now, key_hash=key_hash)
        return await self._run("consume_join_token", call)

    async def claim_once(self, mark: UsedMark) -> None:
        await self._run("claim_once", self._inner.claim_once(mark))

    async def add_revocation(self, record: RevocationRecord) -> bool:
        return await self._run("add_revocation", self._inner.add_revocation(record))

    async def get_revocation(self, kind: RevocationKind, value: str) -> RevocationRecord:
        return await self._run("get_revocation", self._inner.get_revocation(kind, value))

    async def list_revocations(self) -> tuple[RevocationRecord, ...]:
        return await self._run("list_revocations", self._inner.list_revocations())

    async def add_issued(self, records: Sequence[IssuedSerial]) -> None:
        await self._run("add_issued", self._inner.add_issued(records))

    async def get_issued(self, serial: int) -> IssuedSerial:
        return await self._run("get_issued", self._inner.get_issued(serial))

    async def list_issued(
        self,
        *,
        spiffe_id: SpiffeId | None = None,
        agent_id: SpiffeId | None = None,
        issuer_id: str | None = None,
    ) -> tuple[IssuedSerial, ...]:
        call = self._inner.list_issued(spiffe_id=spiffe_id, agent_id=agent_id, issuer_id=issuer_id)
        return await self._run("list_issued", call)

    async def prune(self, now: dt.datetime) -> PruneResult:
        return await self._run("prune", self._inner.prune(now))

    async def revision(self, topic: Topic) -> int:
        return await self._run("revision", self._inner.revision(topic))

    async def wait_for_change(self, topic: Topic, after: int, timeout: float) -> int:
        call = self._inner.wait_for_change(topic, after, timeout)
        return await self._run("wait_for_change", call, timed=False)

    def follow_entries(
        self, *, since: int | None = None, poll: float = 30.0
    ) -> AsyncGenerator[EntryChanges, None]:
        """The inner store's entry feed (not timed: it waits), or full listings without one."""
        inner = self._inner
        if isinstance(inner, EntryChangeFeed):
            return inner.follow_entries(since=since, poll=poll)
        return follow_by_listing(self, poll=poll)

    def follow_revocations(
        self, *, since: int | None = None, poll: float = 30.0
    ) -> AsyncGenerator[RevocationChanges, None]:
        """The inner store's revocation feed (not timed: it waits), or full listings."""
        inner = self._inner
        if isinstance(inner, RevocationChangeFeed):
            return inner.follow_revocations(since=since, poll=poll)
        return follow_revocations_by_listing(self, since=since, poll=poll)

    async def store_epoch(self) -> str:
        """The inner store's epoch ("" for a store that has none)."""
        inner = self._inner
        if isinstance(inner, RevocationChangeFeed):
            return await self._run("store_epoch", inner.store_epoch())
        return ""
