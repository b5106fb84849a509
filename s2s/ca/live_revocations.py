"""The CA's own :class:`RevocationLookup`: the store's revocation set as one snapshot, swapped
whole, which the registry and the issuer consult on every call; the ``/v1/revocations`` feed
encoding of a snapshot; and a bounded log of the changes between the snapshots, from which a
subscriber at an older revision gets only what changed (a delta) instead of the whole set.

The snapshot follows the store's revocation change feed, so one change costs O(change) whatever
the number of records. Every answer names the store's epoch (``"epoch"``, a random id of the
store): revisions of two stores can be equal, epochs cannot, so a subscriber that holds a set of
another epoch knows a delta is not for it and takes the whole set.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

from s2s.core.errors import StoreError
from s2s.core.revocation import RevocationKind, RevocationRecord, RevocationSet
from s2s.log import F
from s2s.store.base import Store
from s2s.store.records import Topic
from s2s.store.revocation_changes import (
    RevocationChangeFeed,
    RevocationChanges,
    follow_revocations_by_listing,
)

__all__ = ["DEFAULT_LOG_CHANGES", "LiveRevocations", "encode_delta", "encode_feed"]

log = logging.getLogger(__name__)

DEFAULT_LOG_CHANGES = 20_000  # changed records the delta log keeps (its oldest steps go first)

_Key = tuple[RevocationKind, str, str]
_SERIAL = RevocationKind.SERIAL


def encode_feed(snapshot: RevocationSet, epoch: str = "") -> bytes:
    """The feed body ``{"revision": N, "records": [...], "epoch"?: E}`` of ``snapshot``
    (compact JSON; no ``epoch`` for a store without one)."""
    records = [r.to_json() for r in snapshot.records()]
    doc: dict[str, object] = {"revision": snapshot.version, "records": records}
    if epoch:
        doc["epoch"] = epoch
    return json.dumps(doc, separators=(",", ":")).encode()


def encode_delta(
    base: int,
    revision: int,
    added: list[RevocationRecord],
    removed: list[_Key],
    epoch: str = "",
) -> bytes:
    """The delta body ``{"delta": true, "base": R, "revision": N, "added": [records],
    "removed": [{"kind", "value", "issuer"?}], "epoch"?: E}``: the set at ``base`` (of the
    store of epoch ``E``) with ``removed`` dropped and ``added`` put in (replacing a record of
    the same key) is the set at ``revision``."""
    gone = [{"kind": str(k), "value": v, **({"issuer": i} if i else {})} for k, v, i in removed]
    body: dict[str, object] = {
        "delta": True,
        "base": base,
        "revision": revision,
        "added": [r.to_json() for r in added],
        "removed": gone,
    }
    if epoch:
        body["epoch"] = epoch
    return json.dumps(body, separators=(",", ":")).encode()


def _differences(
    old: RevocationSet, records: Mapping[_Key, RevocationRecord]
) -> dict[_Key, RevocationRecord | None]:
    """The changes that turn ``old`` into ``records`` (a full listing): O(records)."""
    changes: dict[_Key, RevocationRecord | None] = {
        key: record for key, record in records.items() if old.get(key) != record
    }
    if len(records) - sum(1 for r in changes.values() if r is not None) < len(old):
        changes.update(dict.fromkeys(k for k in old.record_keys() if k not in records))
    return changes


@dataclass(frozen=True, slots=True)
class _Step:
    """The changes from the snapshot at ``base`` to the one at ``to`` (None: removed)."""

    base: int
    to: int
    base_exact: bool  # the snapshot at ``base`` is the store's state at that revision
    changes: Mapping[_Key, RevocationRecord | None]


class LiveRevocations:
    """The store's revocation set as an immutable snapshot (a :class:`RevocationLookup`).

    ``current()`` never does I/O. :meth:`refresh` reads the store's revocations revision and,
    when it moved, takes the changes since the revision it holds from the store's change feed
    (:mod:`s2s.store.revocation_changes`; a full listing only at the start, or when the store can
    no longer say what changed), derives the new snapshot from the old one by the records that
    differ (O(changes)), and logs those changes, up to ``log_changes`` records, for
    :meth:`delta_json`. The snapshot's ``version`` is the topic revision; the feed is pulled
    until it has reached that revision, so a write this process made is in the snapshot that
    :meth:`refresh` returns after it.
    """

    def __init__(
        self,
        *,
        store: Store,
        log_changes: int = DEFAULT_LOG_CHANGES,
        catch_up_timeout: float = 5.0,
        listing_timeout: float = 30.0,
    ) -> None:
        self._store = store
        self._current = RevocationSet.EMPTY
        self._loaded = False
        self._exact = False  # the current snapshot is exactly the store at its revision
        self._lock = asyncio.Lock()
        self._encoded: tuple[RevocationSet, bytes] | None = None
        self._log: deque[_Step] = deque()
        self._log_size = 0
        self.log_changes = log_changes  # tunable: the log bound, in changed records
        self._deltas: tuple[RevocationSet, dict[int, bytes | None]] | None = None
        # The store's change feed, pulled by refresh(); None: open one at the next pull.
        self._follower: AsyncGenerator[RevocationChanges, None] | None = None
        self._relist = False  # the next feed starts with a full listing
        self._applied = -1  # the feed revision the pulled changes reach
        self._topic = -1  # the topic revision of the last refresh that pulled
        self._full: dict[_Key, RevocationRecord] | None = None  # a listing not yet published
        self._pending: dict[_Key, RevocationRecord | None] = {}  # changes not yet published
        self._issuers: dict[str, str] = {}  # serial value -> issuer of its stored record
        self.catch_up_timeout = catch_up_timeout  # a feed this late is replaced by a listing
        self.listing_timeout = listing_timeout  # a listing this late fails the refresh
        self.epoch = ""  # the store's epoch ("" when it has none), put in every answer
        self.full_loads = 0  # full listings taken (the first one included)

    def current(self) -> RevocationSet:
        return self._current

    async def refresh(self) -> RevocationSet:
        """Bring the snapshot to the store's revocations revision, if it differs.

        The common answer, "unchanged", is read outside the lock: every revocations long-poll
        and every issued-serial group write refreshes, and callers taking turns for one store
        round trip each capped a replica at one refresh per round trip (with etcd 100 ms away,
        about 9 a second: renewals queued behind the long-polls until agents gave up). Only a
        moved revision takes the lock to pull the feed."""
        if self._loaded:
            revision = await self._store.revision(Topic.REVOCATIONS)  # read after the call
            current = self._current
            if revision == current.version:
                return current
        async with self._lock:
            revision = await self._store.revision(Topic.REVOCATIONS)  # first: no missed change
            if self._loaded and revision == self._current.version:
                return self._current
            if revision < self._topic:  # the revision went back: another store
                self._relist = True
            if not self._loaded or self._relist:
                self.epoch = await self._store_epoch()
            pulled = False
            while self._relist or self._applied < revision or (not self._loaded and not pulled):
                await self._pull()
                pulled = True
            # What was pulled reaches at least ``revision``; it is exactly the store at
            # ``revision`` when no change was committed meanwhile.
            exact = not pulled or await self._store.revision(Topic.REVOCATIONS) == revision
            self._topic = revision
            self._publish(revision, exact)
            return self._current

    async def _store_epoch(self) -> str:
        store = self._store
        return await store.store_epoch() if isinstance(store, RevocationChangeFeed) else ""

    async def _pull(self) -> None:
        """Take one batch from the store's feed (opening it from the revision held, or with a
        full listing) and apply it to what the next snapshot will be."""
        follower = self._follower
        listing = follower is None and (self._relist or self._applied < 0)
        if follower is None:
            since = None if listing else self._applied
            store = self._store
            if isinstance(store, RevocationChangeFeed):
                follower = store.follow_revocations(since=since, poll=30.0)
            else:
                follower = follow_revocations_by_listing(store, since=since, poll=30.0)
            self._follower, self._relist = follower, False
        try:
            async with asyncio.timeout(self.listing_timeout if listing else self.catch_up_timeout):
                batch = await anext(follower)
        except StopAsyncIteration:
            self._follower = None
            raise StoreError("the store's revocation feed ended (the store was closed)") from None
        except TimeoutError:
            self._follower, self._relist = None, True
            if listing:  # a feed retries an unreachable store forever: the caller must know
                raise StoreError(
                    f"the store's revocations could not be listed in {self.listing_timeout:g}s"
                ) from None
            # The revision moved but the feed says nothing: take a full listing instead.
            log.warning("revocations.feed_late", extra={F.REVISION: self._applied})
            return
        except BaseException:
            self._follower = None  # interrupted mid-batch: reopen from the revision applied
            raise
        self._apply(batch)

    def _apply(self, batch: RevocationChanges) -> None:
        self._applied = batch.revision
        if batch.full is not None:
            self.full_loads += 1
            self._full = {r.key: r for r in batch.full}
            self._pending = {}
            self._issuers = {
                r.value: r.issuer for r in batch.full if r.kind is _SERIAL and r.issuer
            }
            return
        full, pending, issuers = self._full, self._pending, self._issuers
        gone: list[_Key] = []
        for kind, value in batch.removed:
            gone.append((kind, value, issuers.pop(value, "") if kind is _SERIAL else ""))
        put = list(batch.put)
        for record in put:
            if record.kind is _SERIAL:  # a serial's key names its issuer: follow a change
                before = issuers.pop(record.value, "")
                if before != record.issuer:
                    gone.append((_SERIAL, record.value, before))
                if record.issuer:
                    issuers[record.value] = record.issuer
        for key in gone:
            if full is not None:
                full.pop(key, None)
            else:
                pending[key] = None
        for record in put:
            if full is not None:
                full[record.key] = record
            else:
                pending[record.key] = record

    def _publish(self, revision: int, exact: bool) -> None:
        """Swap in the snapshot at ``revision`` (what was pulled) and log the step."""
        old = self._current
        full, self._full = self._full, None
        pending, self._pending = self._pending, {}
        if full is not None and not self._loaded:
            self._current = RevocationSet.of(full.values(), version=revision)
            self._loaded, self._exact = True, exact
            return
        if full is not None:
            changes = _differences(old, full)
        else:
            changes = {k: r for k, r in pending.items() if old.get(k) != r}
        self._current = old.with_changes(
            [r for r in changes.values() if r is not None],
            [k for k, r in changes.items() if r is None],
            version=revision,
        )
        self._log.append(_Step(old.version, revision, self._exact, changes))
        self._log_size += len(changes)
        while self._log and self._log_size > self.log_changes:
            self._log_size -= len(self._log.popleft().changes)
        self._loaded, self._exact = True, exact

    def feed_json(self, snapshot: RevocationSet | None = None) -> bytes:
        """The feed body ``{"revision": N, "records": [...]}`` of ``snapshot`` (default: the
        current one), encoded once per snapshot: every long-poller of a revision gets the same
        bytes."""
        current = self._current if snapshot is None else snapshot
        cached = self._encoded
        if cached is None or cached[0] is not current:
            cached = self._encoded = (current, encode_feed(current, self.epoch))
        return cached[1]

    def delta_json(self, since: int, snapshot: RevocationSet | None = None) -> bytes | None:
        """The delta body from revision ``since`` to ``snapshot`` (default: the current one), or
        None when the log cannot tell (``since`` unknown: before the log, after a restart, from a
        snapshot that was not exactly the store's state; ``snapshot`` no longer current; or the
        delta would be larger than the set). Encoded once per (snapshot, ``since``)."""
        current = self._current
        if snapshot is not None and snapshot is not current:
            return None
        cache = self._deltas
        if cache is None or cache[0] is not current:
            cache = self._deltas = (current, {})
        if since in cache[1]:
            return cache[1][since]
        body = self._compose(current, since)
        if len(cache[1]) < 64:
            cache[1][since] = body
        return body

    def _compose(self, current: RevocationSet, since: int) -> bytes | None:
        if not self._loaded or since < 0:
            return None
        if since == current.version:
            return encode_delta(since, since, [], [], self.epoch) if self._exact else None
        steps = list(self._log)
        start = next((i for i, s in enumerate(steps) if s.base == since and s.base_exact), None)
        if start is None or steps[-1].to != current.version:
            return None
        merged: dict[_Key, RevocationRecord | None] = {}
        for step in steps[start:]:
            merged.update(step.changes)
        if len(merged) > max(len(current), 16):
            return None
        added: list[RevocationRecord] = []
        removed: list[_Key] = []
        for key in merged:
            record = current.get(key)
            if record is None:
                removed.append(key)
            else:
                added.append(record)
        return encode_delta(since, current.version, added, removed, self.epoch)

    async def wait(self, after: int, timeout: float) -> RevocationSet:
        """Long-poll: once the revision differs from ``after`` (or at ``timeout``), refresh."""
        if self._loaded and self._current.version != after:
            return self._current
        await self._store.wait_for_change(Topic.REVOCATIONS, after, timeout)
        return await self.refresh()
