"""The CA's own :class:`RevocationLookup`: the store's revocation set as one snapshot, swapped
whole, which the registry and the issuer consult on every call; the ``/v1/revocations`` feed
encoding of a snapshot; and a bounded log of the changes between the snapshots, from which a
subscriber at an older revision gets only what changed (a delta) instead of the whole set."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from s2s.core.revocation import RevocationKind, RevocationRecord, RevocationSet
from s2s.store.base import Store
from s2s.store.records import Topic

__all__ = ["DEFAULT_LOG_CHANGES", "LiveRevocations", "encode_delta", "encode_feed"]

DEFAULT_LOG_CHANGES = 20_000  # changed records the delta log keeps (its oldest steps go first)

_Key = tuple[RevocationKind, str, str]


def encode_feed(snapshot: RevocationSet) -> bytes:
    """The feed body ``{"revision": N, "records": [...]}`` of ``snapshot`` (compact JSON)."""
    records = [r.to_json() for r in snapshot.records()]
    body = json.dumps({"revision": snapshot.version, "records": records}, separators=(",", ":"))
    return body.encode()


def encode_delta(
    base: int, revision: int, added: list[RevocationRecord], removed: list[_Key]
) -> bytes:
    """The delta body ``{"delta": true, "base": R, "revision": N, "added": [records],
    "removed": [{"kind", "value", "issuer"?}]}``: the set at ``base`` with ``removed`` dropped
    and ``added`` put in (replacing a record of the same key) is the set at ``revision``."""
    gone = [{"kind": str(k), "value": v, **({"issuer": i} if i else {})} for k, v, i in removed]
    body = {
        "delta": True,
        "base": base,
        "revision": revision,
        "added": [r.to_json() for r in added],
        "removed": gone,
    }
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class _Step:
    """The changes from the snapshot at ``base`` to the one at ``to`` (None: removed)."""

    base: int
    to: int
    base_exact: bool  # the snapshot at ``base`` is the store's state at that revision
    changes: Mapping[_Key, RevocationRecord | None]


class LiveRevocations:
    """The store's revocation set as an immutable snapshot (a :class:`RevocationLookup`).

    ``current()`` never does I/O; :meth:`refresh` re-reads the store when the revocations topic
    moved (the snapshot's ``version`` is that revision), derives the new snapshot from the old one
    by the records that differ (O(changes) for the set; the store read itself is whole) and logs
    those changes, up to ``log_changes`` records, for :meth:`delta_json`.
    """

    def __init__(self, *, store: Store, log_changes: int = DEFAULT_LOG_CHANGES) -> None:
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

    def current(self) -> RevocationSet:
        return self._current

    async def refresh(self) -> RevocationSet:
        """Re-read the store if its revocations revision differs from the snapshot's."""
        async with self._lock:
            revision = await self._store.revision(Topic.REVOCATIONS)  # first: no missed change
            if self._loaded and revision == self._current.version:
                return self._current
            records = await self._store.list_revocations()
            exact = await self._store.revision(Topic.REVOCATIONS) == revision
            if not self._loaded:
                self._current = RevocationSet.of(records, version=revision)
            else:
                self._advance(records, revision)
            self._loaded, self._exact = True, exact
            return self._current

    def _advance(self, records: tuple[RevocationRecord, ...], revision: int) -> None:
        """Derive the snapshot at ``revision`` from the current one by the records that differ,
        and log the step."""
        old = self._current
        changes: dict[_Key, RevocationRecord | None] = {}
        kept = 0
        for record in records:
            known = old.get(record.key)
            if known is None:
                changes[record.key] = record
            else:
                kept += 1
                if known != record:
                    changes[record.key] = record
        if kept < len(old):  # some records are gone: find them
            present = {r.key for r in records}
            changes.update(dict.fromkeys(k for k in old.record_keys() if k not in present))
        self._current = old.with_changes(
            [r for r in changes.values() if r is not None],
            [k for k, r in changes.items() if r is None],
            version=revision,
        )
        self._log.append(_Step(old.version, revision, self._exact, changes))
        self._log_size += len(changes)
        while self._log and self._log_size > self.log_changes:
            self._log_size -= len(self._log.popleft().changes)

    def feed_json(self, snapshot: RevocationSet | None = None) -> bytes:
        """The feed body ``{"revision": N, "records": [...]}`` of ``snapshot`` (default: the
        current one), encoded once per snapshot: every long-poller of a revision gets the same
        bytes."""
        current = self._current if snapshot is None else snapshot
        cached = self._encoded
        if cached is None or cached[0] is not current:
            cached = self._encoded = (current, encode_feed(current))
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
            return encode_delta(since, since, [], []) if self._exact else None
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
        return encode_delta(since, current.version, added, removed)

    async def wait(self, after: int, timeout: float) -> RevocationSet:
        """Long-poll: once the revision differs from ``after`` (or at ``timeout``), refresh."""
        if self._loaded and self._current.version != after:
            return self._current
        await self._store.wait_for_change(Topic.REVOCATIONS, after, timeout)
        return await self.refresh()
