"""A revocation feed that watches the CA store's ``revoked/`` prefix in etcd.

It builds on :meth:`EtcdClient.follow_prefix`: a snapshot (list, then watch from its revision + 1,
so nothing falls between them), events after it, resumption after the last delivered revision when
etcd restarts or the connection drops, and a fresh snapshot after a compaction. A put is a new or
merged :class:`RevocationRecord`; a delete is a record pruned by the CA or expired with its lease.
Changes go to a record map at once; a publisher task derives the next immutable set from the last
one by the records that changed (O(changes)) and swaps it in; after a snapshot the set is built
whole (above 5,000 records parsing and building run in a thread: a 100,000-record set takes ~80 ms
to build). Every change that arrives meanwhile joins the next set.

A watch says nothing while nothing changes, so freshness is proven separately: every
``probe_interval`` seconds the feed reads ``topics/revocations``, whose ``mod_revision`` moves with
every transaction that changes a revocation. If the feed has applied that revision, the set was
complete at the instant the read started (``last_update``). If the watch lags behind the probes
for ``lag_after`` seconds (a stalled stream), the feed re-lists. While etcd is
unreachable the probes fail, the set ages, and past ``max_staleness`` ``current()`` fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime

from s2s.core.clock import Clock
from s2s.core.errors import InvalidRequest, StoreError
from s2s.core.revocation import RevocationKind, RevocationRecord, RevocationSet
from s2s.core.spiffe_id import TrustDomain
from s2s.etcd.channel import EtcdTls
from s2s.etcd.client import EtcdClient
from s2s.etcd.values import KeyValue, WatchUpdate
from s2s.verifier.feeds import DEFAULT_MAX_STALENESS, RevocationFeed

__all__ = ["EtcdRevocationFeed", "revocation_prefix", "revocations_topic_key"]

log = logging.getLogger(__name__)
_INLINE_LIMIT = 5000  # records; above this, parsing and building run in a thread


def revocation_prefix(trust_domain: TrustDomain) -> bytes:
    """``/s2s/<td>/revoked/`` (docs/internal-contracts.md, etcd key layout)."""
    return f"/s2s/{trust_domain.name}/revoked/".encode()


def revocations_topic_key(trust_domain: TrustDomain) -> bytes:
    """``/s2s/<td>/topics/revocations``: its mod_revision moves with every revocation change."""
    return f"/s2s/{trust_domain.name}/topics/revocations".encode()


class EtcdRevocationFeed(RevocationFeed):
    """Follows the revocations of ``trust_domain`` in etcd (see the module docstring).

    ``client`` is an :class:`EtcdClient` (closed by :meth:`stop` only when the feed opened it,
    as :meth:`connect` does).
    """

    name = "etcd revocation feed"

    def __init__(
        self,
        client: EtcdClient,
        trust_domain: TrustDomain,
        *,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        probe_interval: float = 1.0,
        clock: Clock | None = None,
        owns_client: bool = False,
    ) -> None:
        super().__init__(max_staleness=max_staleness, clock=clock)
        self.client = client
        self.trust_domain = trust_domain
        self.probe_interval = min(probe_interval, max_staleness / 3)
        self._prefix = revocation_prefix(trust_domain)
        self._topic = revocations_topic_key(trust_domain)
        self._owns_client = owns_client
        self._records: dict[bytes, RevocationRecord] = {}
        # changes since the last published set, by record key (None: removed); None: rebuild
        self._changes: dict[tuple[RevocationKind, str, str], RevocationRecord | None] | None = None
        self._applied = 0  # the etcd revision the record map reflects
        self._published = 0  # the etcd revision the current set reflects
        self._dirty = asyncio.Event()
        self._snapshot_mark: tuple[int, datetime] | None = None  # (revision, received at)
        self._pending: list[tuple[int, datetime]] = []  # (probed revision, probe start)
        self._relist = asyncio.Event()
        self.relists = 0  # snapshots taken after the first (compaction, stalled watch)
        self.bad_records = 0

    @property
    def lag_after(self) -> float:
        """Three probes missed (or a watch that far behind them): lagging, and re-list."""
        return min(self.max_staleness, 3 * self.probe_interval + 2.0)

    @classmethod
    async def connect(
        cls,
        endpoints: str | Sequence[str],
        trust_domain: TrustDomain,
        *,
        tls: EtcdTls | None = None,
        timeout: float = 5.0,
        **kwargs: object,
    ) -> EtcdRevocationFeed:
        """A feed with its own client for ``endpoints`` (closed by :meth:`stop`)."""
        client = await EtcdClient.connect(endpoints, tls=tls, timeout=timeout)
        return cls(client, trust_domain, owns_client=True, **kwargs)  # type: ignore[arg-type]

    @property
    def revision(self) -> int:
        """The etcd revision the current set reflects."""
        return self._published

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow(), name="revocations-etcd-watch")
            group.create_task(self._publisher(), name="revocations-etcd-publish")
            group.create_task(self._probe_loop(), name="revocations-etcd-probe")

    async def _closed(self) -> None:
        if self._owns_client:
            await self.client.close()

    # -- the watch ------------------------------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            self._relist.clear()
            inner = asyncio.create_task(self._follow_once(), name="revocations-etcd-follow")
            relist = asyncio.create_task(self._relist.wait())
            try:
                await asyncio.wait({inner, relist}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (inner, relist):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if inner.done() and not inner.cancelled():
                inner.result()  # raises what stopped the watch
                return  # follow_prefix ends only when the client is closed
            log.warning("revocations.etcd_relist", extra={"revision": self._applied})

    async def _follow_once(self) -> None:
        updates = self.client.follow_prefix(self._prefix)
        async with contextlib.aclosing(updates):
            async for update in updates:
                if update.snapshot is not None:
                    await self._take_snapshot(update)
                changes = self._changes
                for event in update.events:
                    if event.deleted:
                        gone = self._records.pop(event.kv.key, None)
                        if gone is not None and changes is not None:
                            changes[gone.key] = None
                    elif (record := self._parse(event.kv)) is not None:
                        self._records[event.kv.key] = record
                        if changes is not None:
                            changes[record.key] = record
                self._applied = max(self._applied, update.revision)
                self._dirty.set()

    async def _take_snapshot(self, update: WatchUpdate) -> None:
        received = self._now()  # the snapshot is etcd's state as of (about) now
        if self.synced.is_set():
            self.relists += 1
        assert update.snapshot is not None
        kvs = update.snapshot
        if len(kvs) > _INLINE_LIMIT:  # ~7 µs a record: parse big lists off the loop
            parsed = await asyncio.to_thread(lambda: [(kv.key, self._parse(kv)) for kv in kvs])
        else:
            parsed = [(kv.key, self._parse(kv)) for kv in kvs]
        self._records = {key: record for key, record in parsed if record is not None}
        self._changes = None  # the next set is built whole
        self._snapshot_mark = (update.revision, received)

    def _parse(self, kv: KeyValue) -> RevocationRecord | None:
        try:
            return RevocationRecord.from_json(json.loads(kv.value))
        except (ValueError, InvalidRequest) as exc:
            # A record we cannot read must not stop the feed; count it and say so loudly.
            self.bad_records += 1
            log.error(
                "revocations.etcd_bad_record",
                extra={"key": kv.key.decode(errors="replace")[:200], "error": str(exc)[:200]},
            )
            return None

    async def _publisher(self) -> None:
        """Build and swap in a set whenever records changed. A big set is built in a thread
        (~0.8 µs a record), and every change that arrives meanwhile joins the next build."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            revision, changes = self._applied, self._changes
            self._changes = {}
            if changes is not None:  # events since the last set: derived in O(changes)
                new = self.snapshot().with_changes(
                    [r for r in changes.values() if r is not None],
                    [k for k, r in changes.items() if r is None],
                    version=revision,
                )
            elif len(records := list(self._records.values())) > _INLINE_LIMIT:
                new = await asyncio.to_thread(RevocationSet.of, records, version=revision)
            else:
                new = RevocationSet.of(records, version=revision)
            self._published = revision
            self._publish(new)
            mark = self._snapshot_mark
            if mark is not None and revision >= mark[0]:
                self._snapshot_mark = None
                self._confirm(mark[1])
            self._settle()

    # -- freshness ------------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            started = self._now()
            try:
                kv = await self.client.get(self._topic)
            except StoreError as exc:
                self._failed(str(exc))
            else:
                self._pending.append((0 if kv is None else kv.mod_revision, started))
                self._settle()
                self._check_lag()
            await asyncio.sleep(self.probe_interval)

    def _settle(self) -> None:
        """Confirm every probe whose revision the set has reached."""
        if not self.synced.is_set():
            return  # the first confirmation comes with the first snapshot
        reached = [at for revision, at in self._pending if revision <= self._published]
        if reached:
            self._pending = [(r, at) for r, at in self._pending if r > self._published]
            self._confirm(max(reached))

    def _check_lag(self) -> None:
        if not self._pending:
            return
        lag = (self._now() - self._pending[0][1]).total_seconds()
        if lag > self.lag_after and not self._relist.is_set():
            self._failed(f"the etcd watch is {lag:.1f}s behind revision {self._pending[0][0]}")
            self._pending.clear()
            self._relist.set()
