"""Leases for the etcd store's expiring records, shared per expiry bucket.

Join tokens, revocations and issued serials ride on a lease that ends about ``grace`` after the
record expires, so etcd drops them even when no CA runs ``prune``. One lease serves every record
whose expiry falls in one ``bucket`` of instants: a burst of writes grants one lease, not one each.
Used by :mod:`s2s.store.etcd`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Callable, Coroutine
from typing import Any

from s2s.core.clock import Clock

__all__ = ["DEFAULT_LEASE_GRACE", "MAX_LEASE_TTL", "LeaseBuckets"]

MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL
# How long an expired record stays before its lease ends (the CA's ``etcd_lease_grace``).
DEFAULT_LEASE_GRACE = dt.timedelta(minutes=5)


class LeaseBuckets:
    """Grants (through ``grant(ttl) -> lease id``) and caches one lease per expiry bucket."""

    def __init__(
        self,
        grant: Callable[[int], Coroutine[Any, Any, int]],
        *,
        clock: Clock,
        grace: dt.timedelta,
        bucket: dt.timedelta,
    ) -> None:
        self._grant = grant
        self._clock = clock
        self._grace = grace.total_seconds()
        self._bucket = max(1, math.ceil(bucket.total_seconds()))
        self._leases: dict[int, asyncio.Future[int]] = {}  # bucket end (epoch s) -> lease id

    async def lease_for(self, expires_at: dt.datetime) -> int:
        """A lease that outlives ``expires_at`` by about ``grace``, shared per bucket.

        The lease ends ``grace`` after the end of the bucket holding ``expires_at``, never before
        ``expires_at + grace``, whatever the grace and bucket sizes (a grace shorter than the
        bucket only shortens the time the record stays past its expiry).

        Concurrent callers for one bucket share one grant (a future), so a burst makes one lease."""
        bucket_end = math.ceil(expires_at.timestamp() / self._bucket) * self._bucket
        grant = self._leases.get(bucket_end)
        if grant is None or (grant.done() and (grant.cancelled() or grant.exception())):
            now = self._clock.now().timestamp()
            ttl = min(MAX_LEASE_TTL, max(1, math.ceil(bucket_end - now + self._grace)))
            grant = self._leases[bucket_end] = asyncio.ensure_future(self._grant(ttl))
            for end in [e for e in self._leases if e + self._grace < now]:
                del self._leases[end]
        return await asyncio.shield(grant)

    def forget(self) -> None:
        """Drop every cached lease (one expired under us): the next writes grant fresh ones."""
        self._leases.clear()
