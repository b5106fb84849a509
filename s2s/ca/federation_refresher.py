"""The federation refresher: fetches each relationship's bundle when it is due, checks it and
stores it through :class:`~s2s.ca.federated_bundles.FederatedBundles`.

Due means at the bundle's refresh hint, within the configured bounds, jittered; after a failure,
capped exponential backoff up to that interval (``RefreshPolicy``). A failure keeps the last good
bundle; the relationship's status says when the last success was and what went wrong, and the
metrics say how old each bundle is. The due times live in the store, so several replicas share
one schedule (a replica that sees a relationship already refreshed waits for the next due time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import datetime
from typing import Final

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from s2s.aio import wait_event
from s2s.ca.federated_bundles import SOURCE_ENDPOINT, FederatedBundleRecord, FederatedBundles
from s2s.ca.federation import FederationRelationships
from s2s.ca.federation_fetch import BundleFetcher
from s2s.core.bundle import Bundle, BundleSet
from s2s.core.clock import Clock, utc
from s2s.core.errors import S2SError, Unavailable
from s2s.core.federation import (
    EndpointProfile,
    FederationRelationship,
    RefreshPolicy,
    validate_fetched_bundle,
)
from s2s.core.spiffe_id import TrustDomain
from s2s.log import F

__all__ = ["FederationRefresher"]

log = logging.getLogger(__name__)

_LONGEST_SLEEP: Final = 5.0  # new relationships and other replicas' changes are seen this soon


class FederationRefresher:
    """Refresh federated bundles from their endpoints (``run``), or one at once (``refresh``)."""

    def __init__(
        self,
        *,
        relationships: FederationRelationships,
        bundles: FederatedBundles,
        fetcher: BundleFetcher,
        own_bundle: Callable[[], Bundle],
        clock: Clock,
        policy: RefreshPolicy,
        registry: CollectorRegistry | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.relationships = relationships
        self.bundles = bundles
        self._fetcher = fetcher
        self._own_bundle = own_bundle
        self.clock = clock
        self.policy = policy
        self._rand = rand
        self._locks: dict[TrustDomain, asyncio.Lock] = {}
        self._known: dict[TrustDomain, tuple[datetime | None, int]] = {}  # refreshed, failures
        # Our own due times (keyed by the relationship's updated_at): a status the store could
        # not record must not make the loop fetch again at once.
        self._not_before: dict[TrustDomain, tuple[datetime, datetime]] = {}
        self._wake = asyncio.Event()
        relationships.subscribe(self._wake.set)
        self.refreshes = Counter(
            "s2s_ca_federation_refreshes",
            "Fetches of federated bundles from bundle endpoints, by trust domain and result "
            "(ok, or the error code)",
            ["trust_domain", "result"],
            registry=registry,
        )
        if registry is not None:
            registry.register(_AgeCollector(self))

    # -- one refresh -----------------------------------------------------------------------------

    async def refresh(self, trust_domain: TrustDomain) -> FederatedBundleRecord:
        """Fetch, check and store ``trust_domain``'s bundle now; the error says why not (the
        last good bundle stays)."""
        lock = self._locks.setdefault(trust_domain, asyncio.Lock())
        async with lock:
            relationship = await self.relationships.get(trust_domain)
            return await self._refresh(relationship)

    async def _refresh(self, relationship: FederationRelationship) -> FederatedBundleRecord:
        td = relationship.trust_domain
        held = await self.bundles.get(td)
        try:
            trust = await self._endpoint_trust(relationship)
            body = await self._fetcher.fetch(relationship, trust)
            previous = held.bundle if held is not None and held.source == SOURCE_ENDPOINT else None
            bundle = validate_fetched_bundle(td, body, previous=previous)
            record = await self.bundles.put(bundle, source=SOURCE_ENDPOINT, refreshed=True)
        except S2SError as exc:
            await self._failed(relationship, held, exc)
            raise
        now = utc(self.clock.now())
        wait = self.policy.after_success(bundle.refresh_hint, rand=self._rand())
        self._not_before[td] = (relationship.updated_at, now + wait)
        await self.relationships.record_status(
            relationship, relationship.status.succeeded(now, now + wait)
        )
        self._known[td] = (record.refreshed_at, 0)
        self.refreshes.labels(str(td), "ok").inc()
        log.info(
            "federation.refreshed",
            extra={F.TRUST_DOMAIN: str(td), F.REVISION: bundle.sequence},
        )
        return record

    async def _failed(
        self,
        relationship: FederationRelationship,
        held: FederatedBundleRecord | None,
        exc: S2SError,
    ) -> None:
        td = relationship.trust_domain
        now = utc(self.clock.now())
        status = relationship.status
        hint = None if held is None else held.bundle.refresh_hint
        wait = self.policy.after_failure(status.failures + 1, hint, rand=self._rand())
        new_status = status.failed(now, f"{exc.code}: {exc}", now + wait)
        self._not_before[td] = (relationship.updated_at, now + wait)
        self.refreshes.labels(str(td), exc.code).inc()
        self._known[td] = (_age_origin(held), new_status.failures)
        log.warning(
            "federation.refresh_failed",
            extra={F.TRUST_DOMAIN: str(td), F.ERROR: str(exc), F.REASON: exc.code},
        )
        try:
            await self.relationships.record_status(relationship, new_status)
        except Unavailable as store_error:  # the fetch error is the one to report
            log.warning("federation.status_unsaved", extra={F.ERROR: str(store_error)})

    async def _endpoint_trust(self, relationship: FederationRelationship) -> BundleSet | None:
        """The bundle that authenticates an https_spiffe endpoint: ours when its SVID is of our
        trust domain, else the one held for its trust domain (the last fetched one)."""
        if relationship.profile is not EndpointProfile.HTTPS_SPIFFE:
            return None
        sid = relationship.endpoint_spiffe_id
        assert sid is not None
        own = self._own_bundle()
        if sid.trust_domain == own.trust_domain:
            return BundleSet.of(own)
        held = await self.bundles.get(sid.trust_domain)
        return None if held is None else BundleSet.of(held.bundle)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh every relationship when it is due, forever (errors are recorded, not raised;
        a store outage is retried by the caller's loop)."""
        while True:
            self._wake.clear()
            await self.refresh_due()
            # A local change wakes it at once (wait_event: a cancellation is never swallowed).
            await wait_event(self._wake, await self.next_wait())

    async def refresh_due(self) -> int:
        """Refresh every relationship that is due now; returns how many were tried."""
        now = self.clock.now()
        tried = 0
        for relationship in await self.relationships.list():
            if not self._due(relationship, now):
                continue
            tried += 1
            lock = self._locks.setdefault(relationship.trust_domain, asyncio.Lock())
            if lock.locked():
                continue
            # A failure is recorded in the status, logged and counted by _refresh.
            async with lock:
                with contextlib.suppress(S2SError):
                    await self._refresh(relationship)
        await self._remember_ages()
        return tried

    def _due(self, relationship: FederationRelationship, now: datetime) -> bool:
        due = relationship.status.next_refresh_at
        if due is not None and due > now:
            return False
        changed_at, not_before = self._not_before.get(relationship.trust_domain, (None, now))
        return changed_at != relationship.updated_at or not_before <= now

    async def next_wait(self) -> float:
        """Seconds until the next relationship is due (at most a few seconds)."""
        now = self.clock.now()
        waits = [_LONGEST_SLEEP]
        for relationship in await self.relationships.list():
            due = relationship.status.next_refresh_at or now
            changed_at, not_before = self._not_before.get(relationship.trust_domain, (None, now))
            if changed_at == relationship.updated_at:
                due = max(due, not_before)
            waits.append((due - now).total_seconds())
        return min(max(min(waits), 0.05), _LONGEST_SLEEP)

    async def _remember_ages(self) -> None:
        relationships = {r.trust_domain: r for r in await self.relationships.list()}
        known: dict[TrustDomain, tuple[datetime | None, int]] = {}
        for td, relationship in relationships.items():
            held = await self.bundles.get(td)
            known[td] = (_age_origin(held), relationship.status.failures)
        self._known = known

    def ages(self) -> dict[TrustDomain, tuple[float | None, int]]:
        """Per relationship: seconds since its bundle was last confirmed (None: no bundle yet)
        and the consecutive failures since."""
        now = self.clock.now()
        return {
            td: (None if at is None else max((now - at).total_seconds(), 0.0), failures)
            for td, (at, failures) in self._known.items()
        }


def _age_origin(held: FederatedBundleRecord | None) -> datetime | None:
    if held is None:
        return None
    return held.refreshed_at or held.updated_at


class _AgeCollector(Collector):
    """Bundle age and failures, computed at scrape time (an age grows between refreshes)."""

    def __init__(self, refresher: FederationRefresher) -> None:
        self._refresher = refresher

    def collect(self) -> list[Metric]:
        age = GaugeMetricFamily(
            "s2s_ca_federation_bundle_age_seconds",
            "Seconds since the federated bundle of each relationship was last fetched (or set "
            "by hand); it grows while the endpoint cannot be refreshed",
            labels=["trust_domain"],
        )
        failures = GaugeMetricFamily(
            "s2s_ca_federation_refresh_failures",
            "Consecutive failed refreshes of each relationship's bundle (0 after a success)",
            labels=["trust_domain"],
        )
        for td, (seconds, failed) in sorted(
            self._refresher.ages().items(), key=lambda i: str(i[0])
        ):
            if seconds is not None:
                age.add_metric([str(td)], seconds)
            failures.add_metric([str(td)], failed)
        return [age, failures]
