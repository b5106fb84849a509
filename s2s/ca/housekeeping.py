"""Housekeeping: the CA's work that a cluster does once, done by one replica at a time.

With several replicas on one etcd store, pruning expired records (join tokens, revocations, the
issued-serial index, expired authorities) needs one replica, not all of them racing over the
same keys. The replicas elect a holder through an etcd lease (``s2s.store.etcd_election``): the
holder runs the jobs every ``interval``; when it dies, another takes over once the lease has run
out (``lease_ttl`` seconds, plus one poll); a holder that loses etcd stops at its lease deadline.
On the embedded store one process owns the data, so it always holds (:class:`SoleReplica`).

Each replica's own work stays on every replica: its intermediate and JWT key rotation, its CRLs
(each replica signs and serves them for every issuer, numbers advanced by compare-and-swap) and
its in-memory views of the store.

``s2s_ca_housekeeping_leader`` is 1 on the replica that holds the lease; the ``ca.housekeeping.*``
log lines name the holder each time it changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from s2s.ca.loops import every, retrying
from s2s.core.errors import InvalidConfig
from s2s.log import F

__all__ = [
    "DEFAULT_LEASE_TTL",
    "Housekeeping",
    "HousekeepingSettings",
    "Leadership",
    "SoleReplica",
]

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL: Final = 10  # seconds: how long a dead holder can leave the jobs undone


@dataclass(frozen=True, slots=True)
class HousekeepingSettings:
    """``[housekeeping]`` of the CA's config file: ``lease`` (the election's lease TTL) and
    ``interval`` (how often the holder runs the jobs), both in seconds."""

    lease_ttl: int = DEFAULT_LEASE_TTL
    interval: float = 60.0

    def __post_init__(self) -> None:
        if not 2 <= self.lease_ttl <= 3600:
            raise InvalidConfig(
                f"housekeeping.lease must be from 2 s to 1 h, got {self.lease_ttl} s"
            )
        if not 0 < self.interval <= 86400:
            raise InvalidConfig(
                f"housekeeping.interval must be above 0 and at most 1 day, got {self.interval} s"
            )


class Leadership(Protocol):
    """Who may run the once-per-cluster jobs (``EtcdElection`` has this shape)."""

    def holds(self) -> bool: ...

    async def run(self, on_change: Callable[[bool, str | None], None]) -> None: ...

    async def resign(self) -> None: ...


class SoleReplica:
    """The only process on an embedded store: it always holds."""

    def __init__(self, name: str) -> None:
        self.leader = name

    def holds(self) -> bool:
        return True

    async def run(self, on_change: Callable[[bool, str | None], None]) -> None:
        on_change(True, self.leader)
        await asyncio.Event().wait()  # nothing to renew; runs until cancelled

    async def resign(self) -> None:
        return None


class Housekeeping:
    """Runs ``jobs`` (name -> step) every ``interval`` while ``leadership`` holds."""

    def __init__(
        self,
        *,
        leadership: Leadership,
        replica: str,
        jobs: Mapping[str, Callable[[], Awaitable[None]]],
        interval: float,
        registry: CollectorRegistry,
    ) -> None:
        self._leadership = leadership
        self._replica = replica
        self._jobs = dict(jobs)
        self._interval = interval
        self._leader_gauge = Gauge(
            "s2s_ca_housekeeping_leader",
            "1 while this replica holds the housekeeping lease (runs the once-per-cluster jobs)",
            registry=registry,
        )
        self._runs = Counter(
            "s2s_ca_housekeeping_runs",
            "Housekeeping jobs this replica ran, by job",
            ["job"],
            registry=registry,
        )
        for name in self._jobs:
            self._runs.labels(name)

    def loops(self) -> dict[str, Awaitable[None]]:
        """The election and the jobs, for the CA's TaskGroup."""
        return {
            "housekeeping_lease": self.follow_lease(),
            "housekeeping": every(self._interval, self.run_once),
        }

    async def follow_lease(self) -> None:
        """Campaign for (and renew) the lease forever, following the holder in gauge and log."""
        await self._leadership.run(self._changed)

    def holds(self) -> bool:
        return self._leadership.holds()

    async def run_once(self) -> None:
        """Each job once, if this replica holds the lease (checked again before every job)."""
        for name, job in self._jobs.items():
            if not self._leadership.holds():
                self._leader_gauge.set(0)
                return
            await retrying(name, job)
            self._runs.labels(name).inc()

    async def resign(self) -> None:
        """On a clean stop: hand the lease over at once rather than at its expiry."""
        await self._leadership.resign()
        self._leader_gauge.set(0)

    def _changed(self, holds: bool, leader: str | None) -> None:
        self._leader_gauge.set(1 if holds else 0)
        extra = {F.REPLICA: self._replica, F.LEADER: leader or ""}
        if holds:
            log.info("ca.housekeeping.elected", extra=extra)
        else:
            log.info("ca.housekeeping.follower", extra=extra)
