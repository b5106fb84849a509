"""Whether this CA replica can reach its store now, and what it does when it cannot.

A replica serves agents from memory (entries, agents, revocations), following the store. Cut off
from the store (a network partition between it and etcd, a lost quorum), those snapshots stop
moving while other replicas go on changing the store, so the replica must stop acting as if they
were current: it would hand out entries that were deleted meanwhile and issue SVIDs that a
revocation written through another replica should have stopped.

:class:`StoreHealth` probes the store every ``interval`` seconds with one read of the entries
revision (on etcd a linearizable read, which only a quorum answers) and calls the store down when
a probe fails or takes longer than ``timeout`` (5 s, the etcd client's deadline). While it is
down:

* the agent API and the revocations long-poll answer 503 ``store_error`` with ``Retry-After``
  (``http_store_gate.py``), so agents and verifiers move to another replica instead of taking
  stale data as current; the long-polls already held are woken and answered so;
* ``/readyz`` says not ready, naming the store (``/healthz`` stays a liveness check: restarting
  a replica does not bring its store back);
* ``s2s_ca_store_up`` is 0.

The first probe that succeeds again ends it. Detection takes up to ``interval + timeout``; a
connection refused or reset is noticed at the next probe. A slow store (reads under ``timeout``)
is not down: the replica goes on serving, slower.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Final

from prometheus_client import CollectorRegistry, Gauge

from s2s.core.clock import Clock
from s2s.core.errors import StoreError
from s2s.log import F
from s2s.store.base import Store
from s2s.store.records import Topic

__all__ = ["PROBE_INTERVAL", "PROBE_TIMEOUT", "StoreHealth"]

log = logging.getLogger(__name__)

PROBE_INTERVAL: Final = 1.0  # seconds between two probes
# A probe slower than this counts as a failure. It is the etcd client's own default deadline:
# a store that answers slower fails the CA's other calls anyway, and a store that is merely slow
# must not be called down (every replica would then refuse, turning slowness into an outage).
PROBE_TIMEOUT: Final = 5.0


class StoreHealth:
    """The store's reachability as this replica last probed it (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._timeout = timeout
        self._down_since: dt.datetime | None = None
        self._why = ""
        self._went_down = asyncio.Event()
        self._gauge = Gauge(
            "s2s_ca_store_up",
            "1 while this replica's last store probe succeeded, 0 while it cannot reach the store",
            registry=registry,
        )
        self._gauge.set(1)

    @property
    def up(self) -> bool:
        return self._down_since is None

    def problem(self) -> str:
        """Why the store counts as down ('' while it is up)."""
        if self._down_since is None:
            return ""
        seconds = (self._clock.now() - self._down_since).total_seconds()
        return f"this CA replica cannot reach its store (for {seconds:.0f} s: {self._why})"

    def check(self) -> None:
        """Raise :class:`StoreError` (503, retry another replica) while the store is down."""
        if self._down_since is not None:
            raise StoreError(
                f"{self.problem()}; its entries and revocations may be stale, so it does not "
                "serve agents now: retry, or use another CA replica"
            )

    async def went_down(self) -> None:
        """Return once the store is down (at once if it is down now)."""
        while self._down_since is None:
            await self._went_down.wait()

    async def probe(self) -> bool:
        """Read the store once; record and return whether it answered within the timeout."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._store.revision(Topic.ENTRIES)
        except StoreError as exc:
            self._mark_down(str(exc))
        except TimeoutError:
            self._mark_down(f"no answer within {self._timeout:g} s")
        else:
            self._mark_up()
        return self.up

    async def run(self) -> None:
        """Probe every ``interval`` seconds, forever (one of the CA's loops)."""
        while True:
            await self.probe()
            await asyncio.sleep(self._interval)

    def _mark_down(self, why: str) -> None:
        self._why = why
        if self._down_since is not None:
            return
        self._down_since = self._clock.now()
        self._gauge.set(0)
        log.warning("ca.store_down", extra={F.ERROR: why})
        event, self._went_down = self._went_down, asyncio.Event()
        event.set()

    def _mark_up(self) -> None:
        if self._down_since is None:
            return
        seconds = (self._clock.now() - self._down_since).total_seconds()
        self._down_since = None
        self._gauge.set(1)
        log.warning("ca.store_up", extra={F.DURATION_MS: round(seconds * 1000)})
