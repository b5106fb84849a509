"""One holder at a time, elected through an etcd lease (for work a cluster does once).

The holder's name sits in one key attached to a lease of ``ttl`` seconds. A candidate that finds
the key absent grants a lease and creates the key in one transaction (``version == 0``), so two
candidates never both win. The holder renews the lease every ``ttl / 3`` s. It counts itself the
holder only until a local deadline: the monotonic time it *sent* the last successful grant or
renewal plus ``ttl``, which is never later than the moment etcd drops the lease. A holder cut off
from etcd therefore stops before anyone else can win; when the holder dies, etcd drops the key at
most ``ttl`` after its last renewal and a candidate polling every ``poll`` seconds takes over.
:meth:`EtcdElection.resign` (on a clean stop) revokes the lease, so the handover is immediate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from s2s.core.errors import InvalidConfig, StoreError
from s2s.etcd.client import EtcdClient, LeaseNotFound
from s2s.etcd.values import get_op, put_op, version_is
from s2s.log import F
from s2s.store.base import Store
from s2s.store.etcd import EtcdStore

__all__ = ["MIN_TTL", "EtcdElection", "etcd_election"]

log = logging.getLogger(__name__)

MIN_TTL: Final = 2  # seconds; etcd itself rounds shorter leases up


class EtcdElection:
    """Campaigns for ``key`` under the name ``holder``; :meth:`holds` says if this one won."""

    def __init__(
        self,
        client: EtcdClient,
        key: bytes,
        *,
        holder: str,
        ttl: int,
        poll: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < MIN_TTL:
            raise InvalidConfig(f"an election lease needs at least {MIN_TTL} s, got {ttl}")
        self._client = client
        self._key = key
        self._holder = holder
        self.ttl = ttl
        self._poll = poll if poll is not None else min(1.0, ttl / 4)
        self._monotonic = monotonic
        self._lease: int | None = None
        self._deadline = 0.0
        self.leader: str | None = None  # the holder last seen in etcd (this one, another, none)

    def holds(self) -> bool:
        """True while this candidate holds the lease (and its local deadline has not passed)."""
        return self._lease is not None and self._monotonic() < self._deadline

    async def run(self, on_change: Callable[[bool, str | None], None]) -> None:
        """Campaign and renew forever; ``on_change(holds, leader)`` after each change of either."""
        seen: tuple[bool, str | None] = (False, None)
        while True:
            try:
                if self._lease is None:
                    await self._campaign()
                else:
                    await self._renew()
            except LeaseNotFound:
                self._lease = None  # expired while we could not renew it: campaign again
            except (StoreError, TimeoutError) as exc:
                log.warning("store.election.unavailable", extra={F.ERROR: str(exc) or "timeout"})
                if not self.holds():
                    self.leader = None  # unknown until etcd answers again
            now = (self.holds(), self.leader)
            if now != seen:
                seen = now
                on_change(*now)
            await asyncio.sleep(self.ttl / 3 if self._lease is not None else self._poll)

    async def _campaign(self) -> None:
        current = await self._client.get(self._key)
        if current is not None:
            self.leader = current.value.decode(errors="replace")
            return
        sent = self._monotonic()
        lease = await self._client.grant_lease(self.ttl)
        result = await self._client.txn(
            [version_is(self._key, 0)],
            [put_op(self._key, self._holder.encode(), lease=lease)],
            [get_op(self._key)],
        )
        if result.succeeded:
            self._lease, self._deadline, self.leader = lease, sent + self.ttl, self._holder
            return
        with contextlib.suppress(StoreError):
            await self._client.revoke_lease(lease)
        won = result.ranged(0)
        self.leader = None if won is None else won.value.decode(errors="replace")

    async def _renew(self) -> None:
        assert self._lease is not None
        sent = self._monotonic()
        # Never wait past the deadline: a renewal that answers later proves nothing about now.
        async with asyncio.timeout(max(0.05, self._deadline - sent) if self.holds() else None):
            left = await self._client.renew_lease(self._lease)
        self._deadline = sent + min(left, self.ttl)
        self.leader = self._holder

    async def resign(self) -> None:
        """Give the lease up (its key goes with it), so another candidate may win at once."""
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(StoreError):
                await self._client.revoke_lease(lease)


def etcd_election(store: Store, name: str, *, holder: str, ttl: int) -> EtcdElection | None:
    """The election ``name`` among the replicas sharing ``store``; None when the store is not
    etcd (one process owns an embedded store, so it always holds)."""
    if not isinstance(store, EtcdStore):
        return None
    return EtcdElection(store.c, store.key("elections", name), holder=holder, ttl=ttl)
