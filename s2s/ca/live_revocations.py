"""The CA's own :class:`RevocationLookup`: the store's revocation set as one snapshot, swapped
whole, which the registry and the issuer consult on every call; and the ``/v1/revocations`` feed
encoding of a snapshot."""

from __future__ import annotations

import asyncio
import json

from s2s.core.revocation import RevocationSet
from s2s.store.base import Store
from s2s.store.records import Topic

__all__ = ["LiveRevocations", "encode_feed"]


def encode_feed(snapshot: RevocationSet) -> bytes:
    """The feed body ``{"revision": N, "records": [...]}`` of ``snapshot`` (compact JSON)."""
    records = [r.to_json() for r in snapshot.records()]
    body = json.dumps({"revision": snapshot.version, "records": records}, separators=(",", ":"))
    return body.encode()


class LiveRevocations:
    """The store's revocation set as an immutable snapshot (a :class:`RevocationLookup`).

    ``current()`` never does I/O; :meth:`refresh` re-reads the store when the revocations topic
    moved (the snapshot's ``version`` is that revision) and swaps the snapshot whole.
    """

    def __init__(self, *, store: Store) -> None:
        self._store = store
        self._current = RevocationSet.EMPTY
        self._loaded = False
        self._lock = asyncio.Lock()
        self._encoded: tuple[RevocationSet, bytes] | None = None

    def current(self) -> RevocationSet:
        return self._current

    async def refresh(self) -> RevocationSet:
        """Re-read the store if its revocations revision differs from the snapshot's."""
        async with self._lock:
            revision = await self._store.revision(Topic.REVOCATIONS)  # first: no missed change
            if self._loaded and revision == self._current.version:
                return self._current
            records = await self._store.list_revocations()
            self._current = RevocationSet.of(records, version=revision)
            self._loaded = True
            return self._current

    def feed_json(self, snapshot: RevocationSet | None = None) -> bytes:
        """The feed body ``{"revision": N, "records": [...]}`` of ``snapshot`` (default: the
        current one), encoded once per snapshot: every long-poller of a revision gets the same
        bytes."""
        current = self._current if snapshot is None else snapshot
        cached = self._encoded
        if cached is None or cached[0] is not current:
            cached = self._encoded = (current, encode_feed(current))
        return cached[1]

    async def wait(self, after: int, timeout: float) -> RevocationSet:
        """Long-poll: once the revision differs from ``after`` (or at ``timeout``), refresh."""
        if self._loaded and self._current.version != after:
            return self._current
        await self._store.wait_for_change(Topic.REVOCATIONS, after, timeout)
        return await self.refresh()
