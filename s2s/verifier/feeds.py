"""Revocation feeds: a task that follows a source of revocations and swaps the verifier's set.

A feed is a :class:`~s2s.core.revocation.RevocationLookup`: :meth:`RevocationFeed.current` returns
the newest immutable :class:`RevocationSet` (one reference read, no lock). It also knows how old
that knowledge is: ``last_update`` is the instant at which the set was last *confirmed* complete
(a snapshot or a long-poll answer, or an etcd read proving no change was missed), and
:meth:`RevocationFeed.age` the seconds since. Before the first snapshot ``current()`` raises
:class:`RevocationsStale` (an :class:`Unavailable`): a verifier that has never heard from its feed
cannot know what is revoked.

The staleness policy: a feed that stops confirming is *lagging* from its first missed update
(``lag_after`` seconds without a confirmation: one long-poll or a few etcd probes); it says so at
once (log ``revocations.feed_lagging``, :meth:`RevocationFeed.status`, the
``s2s_verifier_revocations_lagging`` gauge) while it keeps failing over across CA replicas or etcd
members and keeps answering with its last set. It fails closed (``current()`` raises, the peer
check and :class:`~s2s.verifier.jwt.JwtValidator` reject with reason ``revocations-stale``) only
past ``max_staleness``, by default :data:`DEFAULT_MAX_STALENESS`: the default SVID lifetime cap
plus the skew cushion, after which every credential a missed revocation could cover has expired
anyway. So a CA or etcd outage shorter than an SVID lifetime does not become a fleet outage.
:data:`STRICT_MAX_STALENESS` (or any smaller ``max_staleness``) fails closed sooner, for those who
prefer refusing to the risk of honouring a credential revoked meanwhile. Raise ``max_staleness``
with the CA's lifetime cap.

Concrete feeds: :class:`~s2s.verifier.feeds_etcd.EtcdRevocationFeed` (watches the store's
``revoked/`` prefix in etcd) and :class:`~s2s.verifier.feeds_ca.CaRevocationFeed` (long-polls the
CA's ``/v1/revocations``). Both run as one asyncio task (``start()`` / ``stop()``, or
``async with``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.registry import REGISTRY

from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import InvalidConfig, Unavailable
from s2s.core.revocation import RevocationSet
from s2s.verifier.source_common import cancel_task

__all__ = [
    "DEFAULT_MAX_STALENESS",
    "STRICT_MAX_STALENESS",
    "FeedMetrics",
    "RevocationFeed",
    "RevocationsStale",
]

log = logging.getLogger(__name__)

# Seconds: the default SVID lifetime cap (5 min) plus the 30 s skew cushion (see the module doc).
DEFAULT_MAX_STALENESS = 330.0
STRICT_MAX_STALENESS = 30.0  # fail closed after one missed long-poll or a few etcd probes
RevocationCallback = Callable[[RevocationSet], None]


class RevocationsStale(Unavailable):
    """The revocation feed has not been confirmed current for longer than its limit.

    ``age`` is the seconds since the last confirmation (None: never synced).
    """

    code = "unavailable"

    def __init__(self, message: str, *, age: float | None) -> None:
        super().__init__(message)
        self.age = age


class RevocationFeed:
    """Base of the feeds: the current set, its age, the staleness limit and the task.

    Subclasses implement :meth:`_run` (loop forever; call :meth:`_publish` with each new set and
    :meth:`_confirm` whenever the set is known complete as of an instant).
    """

    name = "revocation feed"

    def __init__(self, *, max_staleness: float = DEFAULT_MAX_STALENESS, clock: Clock | None = None):
        if not max_staleness > 0:
            raise InvalidConfig("max_staleness must be a positive number of seconds")
        self.max_staleness = float(max_staleness)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._set = RevocationSet.EMPTY
        self.last_update: datetime | None = None
        self.last_error: str | None = None
        self.synced = asyncio.Event()
        self.updates = 0  # sets published (a test or benchmark can wait on it)
        self._task: asyncio.Task[None] | None = None
        self._subscribers: list[RevocationCallback] = []
        self._said_stale = False
        self._said_lagging = False

    @property
    def lag_after(self) -> float:
        """Seconds without a confirmation after which the feed has missed an update (lagging);
        subclasses set it from their update interval."""
        return min(self.max_staleness, 10.0)

    # -- the lookup ---------------------------------------------------------------------------

    def current(self) -> RevocationSet:
        """The newest set; :class:`RevocationsStale` if it is older than ``max_staleness``."""
        last = self.last_update
        if last is None:
            raise RevocationsStale(f"the {self.name} has not synced yet", age=None)
        age = (self._clock.now() - last).total_seconds()
        if age > self.lag_after and not self._said_lagging:
            self._lagging(age)
        if age > self.max_staleness:
            if not self._said_stale:  # once per stale spell, not once per handshake
                self._said_stale = True
                log.error(
                    "revocations.feed_stale",
                    extra={"feed": self.name, "age": round(age, 1), "error": self.last_error},
                )
            raise RevocationsStale(
                f"the {self.name} was last confirmed {age:.1f}s ago (limit "
                f"{self.max_staleness:g}s): revocations may have been missed",
                age=age,
            )
        return self._set

    def snapshot(self) -> RevocationSet:
        """The newest set, however old (for diagnostics and the agent; not for verifying)."""
        return self._set

    def age(self) -> float | None:
        """Seconds since the set was last confirmed complete; None before the first sync."""
        last = self.last_update
        return None if last is None else max(0.0, (self._clock.now() - last).total_seconds())

    def is_stale(self) -> bool:
        age = self.age()
        return age is None or age > self.max_staleness

    def is_lagging(self) -> bool:
        """True from the first missed update (and while stale)."""
        age = self.age()
        return age is None or age > self.lag_after

    def status(self) -> str:
        """``unsynced``, ``stale`` (failing closed), ``lagging`` (updates missed, still
        answering) or ``ok``: for health checks."""
        age = self.age()
        if age is None:
            return "unsynced"
        if age > self.max_staleness:
            return "stale"
        return "lagging" if age > self.lag_after else "ok"

    def _lagging(self, age: float) -> None:
        self._said_lagging = True  # once per spell, not once per handshake
        log.warning(
            "revocations.feed_lagging",
            extra={"feed": self.name, "age": round(age, 1), "error": self.last_error,
                   "limit": self.max_staleness},
        )  # fmt: skip

    def subscribe(self, callback: RevocationCallback) -> Callable[[], None]:
        """``callback(new_set)`` after each change, on the feed's loop; returns unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the source in the calling task until cancelled (for a caller's TaskGroup);
        :meth:`start` runs it in a task of its own."""
        try:
            await self._guarded_run()
        finally:
            await self._closed()

    async def start(self, timeout: float = 10.0) -> None:
        """Start the task and wait for the first snapshot (Unavailable if none within timeout)."""
        if self._task is None:
            self._task = asyncio.create_task(self._guarded_run(), name=self.name)
        waiter = asyncio.create_task(self.synced.wait())
        done, _ = await asyncio.wait(
            {waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            if self._task.done():
                self._task.result()  # raises what stopped it
            why = f": {self.last_error}" if self.last_error else ""
            raise Unavailable(f"the {self.name} did not sync within {timeout:g}s{why}")

    async def stop(self) -> None:
        """Cancel the task (idempotent); the last set stays readable (and ages)."""
        task, self._task = self._task, None
        await cancel_task(task)
        await self._closed()

    async def __aenter__(self) -> RevocationFeed:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- for subclasses -----------------------------------------------------------------------

    async def _run(self) -> None:
        raise NotImplementedError

    async def _closed(self) -> None:
        """Release resources after the task stopped (subclasses override)."""

    async def _guarded_run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("revocations.feed_crashed", extra={"feed": self.name})
            raise

    def _now(self) -> datetime:
        return self._clock.now()

    def _publish(self, new: RevocationSet) -> None:
        """Swap in ``new`` (one reference assignment) and tell the subscribers."""
        old, self._set = self._set, new
        self.updates += 1
        if new is old:
            return
        for callback in tuple(self._subscribers):
            try:
                callback(new)
            except Exception:
                log.exception("revocations.subscriber_failed", extra={"feed": self.name})

    def _confirm(self, at: datetime) -> None:
        """The set is complete as of ``at`` (never moves ``last_update`` backwards)."""
        if self.last_update is None or at > self.last_update:
            self.last_update = at
        if (self._said_stale or self._said_lagging) and not self.is_lagging():
            self._said_stale = self._said_lagging = False
            log.warning("revocations.feed_fresh", extra={"feed": self.name})
        self.last_error = None
        if not self.synced.is_set():
            self.synced.set()

    def _failed(self, error: str) -> None:
        if error != self.last_error:
            log.warning("revocations.feed_error", extra={"feed": self.name, "error": error})
        self.last_error = error
        age = self.age()
        if age is not None and age > self.lag_after and not self._said_lagging:
            self._lagging(age)


class FeedMetrics:
    """Prometheus view of feeds, read at scrape time: ``s2s_verifier_revocations_age_seconds``
    (-1 before the first sync), ``s2s_verifier_revocation_records``,
    ``s2s_verifier_revocations_stale`` (1 while failing closed),
    ``s2s_verifier_revocations_lagging`` (1 from the first missed update) and
    ``s2s_verifier_revocation_sets_total`` (sets swapped in), each labelled ``feed``. Pass
    ``registry=`` for an isolated registry (tests, several verifiers in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = REGISTRY if registry is None else registry
        self.registry = reg
        label = ["feed"]
        self.age = Gauge(
            "s2s_verifier_revocations_age_seconds",
            "Seconds since the revocation feed was last confirmed current (-1: never synced); "
            "past its max staleness the feed fails closed",
            label, registry=reg,
        )  # fmt: skip
        self.records = Gauge(
            "s2s_verifier_revocation_records",
            "Revocation records (revoked serials, token IDs, SPIFFE IDs) in the feed's current set",
            label, registry=reg,
        )  # fmt: skip
        self.stale = Gauge(
            "s2s_verifier_revocations_stale",
            "1 while the feed is older than its max staleness and fails closed (peers and "
            "tokens refused)", label,
            registry=reg,
        )  # fmt: skip
        self.lagging = Gauge(
            "s2s_verifier_revocations_lagging",
            "1 from the feed's first missed update (it still answers until stale)", label,
            registry=reg,
        )  # fmt: skip
        self.sets = Counter(
            "s2s_verifier_revocation_sets",
            "Revocation sets swapped in (one per change the feed has seen)",
            label,
            registry=reg,
        )

    def track(self, feed: RevocationFeed, label: str | None = None) -> None:
        """Export ``feed`` under ``label`` (default: its name)."""
        name = label or feed.name

        def age() -> float:
            value = feed.age()
            return -1.0 if value is None else value

        self.age.labels(name).set_function(age)
        self.records.labels(name).set_function(lambda: float(len(feed.snapshot())))
        self.stale.labels(name).set_function(lambda: 1.0 if feed.is_stale() else 0.0)
        self.lagging.labels(name).set_function(lambda: 1.0 if feed.is_lagging() else 0.0)
        sets = self.sets.labels(name)
        feed.subscribe(lambda _new: sets.inc())
