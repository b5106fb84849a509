"""The issued-serial index written for many concurrent issuances at once (group commit).

Every X.509 serial the CA issues goes into the store's index before its certificate leaves the
CA, and the revocations are re-read after that write (see :mod:`s2s.ca.issuance` for why the
order matters). Done per request, each renewal pays one store transaction (on SQLite a commit
with an fsync, on etcd a Raft round) and one revision read. :class:`IssuedIndex` collects the
records of every issuance that arrives while a write is in flight and writes them together in
the next transaction, then re-reads the revocations once for all of them: under load the store
work per renewal shrinks with the number of renewals in flight, and a lone renewal is written at
once, as before.

What each caller gets is unchanged: its call returns only after its records are in the store and
the revocations were read after that write; when the write fails, every caller of that write
sees the failure (nothing unindexed leaves the CA). A :class:`Conflict` (a serial already in the
index) is retried caller by caller, so only the caller whose serial collided sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from s2s.core.errors import Conflict, Unavailable
from s2s.core.revocation import RevocationLookup, RevocationSet
from s2s.store.records import IssuedSerial

__all__ = ["MAX_GROUP", "IssuedIndex", "IssuedIndexStore"]

MAX_GROUP: Final = 1024  # records per write; the stores split larger writes themselves


class IssuedIndexStore(Protocol):
    """The part of the store the index writes to."""

    async def add_issued(self, records: Sequence[IssuedSerial]) -> None: ...


@runtime_checkable
class _Refreshable(Protocol):
    """A revocation lookup that can re-read the store (the CA's ``LiveRevocations``)."""

    async def refresh(self) -> RevocationSet: ...


@dataclass(slots=True)
class _Pending:
    records: Sequence[IssuedSerial]
    done: asyncio.Future[RevocationSet] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class IssuedIndex:
    """Indexes issued serials, grouping the writes of concurrent callers; use from one loop."""

    def __init__(self, store: IssuedIndexStore, revocations: RevocationLookup) -> None:
        self._store = store
        self._revocations = revocations
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0  # store writes made (tests and benchmarks read it)

    async def add(self, records: Sequence[IssuedSerial]) -> RevocationSet:
        """Write ``records`` to the index, then re-read the revocations; returns the set read
        after the write. Raises what the store raised for the write that held them. Without
        records nothing is written or read: the revocations as held."""
        if not records:
            return self._revocations.current()
        pending = _Pending(records)
        self._queue.append(pending)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        # The write goes on for the others if this caller is cancelled; its records may then
        # be indexed without a certificate leaving the CA, which the index allows.
        return await asyncio.shield(pending.done)

    async def _drain(self) -> None:
        """Write what is queued, group after group, until the queue is empty."""
        group: list[_Pending] = []
        try:
            while self._queue:
                group, size = [], 0
                while self._queue and (
                    not group or size + len(self._queue[0].records) <= MAX_GROUP
                ):
                    pending = self._queue.pop(0)
                    group.append(pending)
                    size += len(pending.records)
                await self._write(group)
        except BaseException:  # cancelled (the CA stops): nobody may wait for ever
            left, self._queue = group + self._queue, []
            _fail(left, Unavailable("the CA stopped before the issued serials were indexed"))
            raise

    async def _write(self, group: list[_Pending]) -> None:
        try:
            await self._store.add_issued([r for p in group for r in p.records])
            self.writes += 1
        except Conflict as exc:
            if len(group) == 1:
                _fail(group, exc)
                return
            for pending in group:  # only the caller whose serial collided fails
                await self._write([pending])
            return
        except Exception as exc:
            _fail(group, exc)
            return
        try:
            current = await self._reread()
        except Exception as exc:
            _fail(group, exc)
            return
        for pending in group:
            if not pending.done.done():
                pending.done.set_result(current)

    async def _reread(self) -> RevocationSet:
        if isinstance(self._revocations, _Refreshable):
            return await self._revocations.refresh()
        return self._revocations.current()


def _fail(group: list[_Pending], exc: Exception) -> None:
    for pending in group:
        if not pending.done.done():
            pending.done.set_exception(exc)
            pending.done.exception()  # retrieved: a cancelled caller leaves no warning behind
