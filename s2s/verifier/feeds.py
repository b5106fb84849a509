"""Revocation feeds: a task that follows a source of revocations and swaps the verifier's set.

A feed is a :class:`~s2s.core.revocation.RevocationLookup`: :meth:`RevocationFeed.current` returns
the newest immutable :class:`RevocationSet` (one reference read, no lock). It also knows how old
that knowledge is: ``last_update`` is the instant at which the set was last *confirmed* complete
(a snapshot or a long-poll answer, or an etcd read proving no change was missed), and
:meth:`RevocationFeed.age` the seconds since. Past ``max_staleness`` the feed fails closed:
``current()`` raises :class:`RevocationsStale` (an :class:`Unavailable`), and the verifier's peer
check and :class:`~s2s.verifier.jwt.JwtValidator` reject with reason ``revocations-stale``. Before
the first snapshot ``current()`` raises too: a verifier that has never heard from its feed cannot
know what is revoked.

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

__all__ = ["DEFAULT_MAX_STALENESS", "FeedMetrics", "RevocationFeed", "RevocationsStale"]

log = logging.getLogger(__name__)

DEFAULT_MAX_STALENESS = 30.0  # seconds; the CA answers a long-poll every <= 60 s, etcd probes 1/s
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

    # -- the lookup ---------------------------------------------------------------------------

    def current(self) -> RevocationSet:
        """The newest set; :class:`RevocationsStale` if it is older than ``max_staleness``."""
        last = self.last_update
        if last is None:
            raise RevocationsStale(f"the {self.name} has not synced yet", age=None)
        age = (self._clock.now() - last).total_seconds()
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
        if self._said_stale and not self.is_stale():
            self._said_stale = False
            log.warning("revocations.feed_fresh", extra={"feed": self.name})
        self.last_error = None
        if not self.synced.is_set():
            self.synced.set()

    def _failed(self, error: str) -> None:
        if error != self.last_error:
            log.warning("revocations.feed_error", extra={"feed": self.name, "error": error})
        self.last_error = error


class FeedMetrics:
    """Prometheus view of feeds, read at scrape time: ``s2s_verifier_revocations_age_seconds``
    (-1 before the first sync), ``s2s_verifier_revocation_records``,
    ``s2s_verifier_revocations_stale`` (1 while failing closed) and
    ``s2s_verifier_revocation_sets_total`` (sets swapped in), each labelled ``feed``. Pass
    ``registry=`` for an isolated registry (tests, several verifiers in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = REGISTRY if registry is None else registry
        self.registry = reg
        label = ["feed"]
        self.age = Gauge(
            "s2s_verifier_revocations_age_seconds",
            "Seconds since the revocation feed was last confirmed current (-1: never)",
            label, registry=reg,
        )  # fmt: skip
        self.records = Gauge(
            "s2s_verifier_revocation_records", "Records in the feed's current set", label,
            registry=reg,
        )  # fmt: skip
        self.stale = Gauge(
            "s2s_verifier_revocations_stale", "1 while the feed fails closed (too old)", label,
            registry=reg,
        )  # fmt: skip
        self.sets = Counter(
            "s2s_verifier_revocation_sets", "Revocation sets swapped in", label, registry=reg
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
        sets = self.sets.labels(name)
        feed.subscribe(lambda _new: sets.inc())
