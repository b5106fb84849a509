"""FederationRefresher on a real SQLite store with a fake clock, its endpoint a closed loopback
port: a failure is recorded with a backoff due time and not retried before it; when the store
cannot record the status, the refresher still waits (it does not fetch again at once); a changed
relationship is due at once; the loop's wait follows the due times."""

from __future__ import annotations

import datetime as dt
import socket

import pytest
from ca_helpers import TD

from s2s.ca.federated_bundles import FederatedBundles
from s2s.ca.federation import FederationRelationships
from s2s.ca.federation_fetch import BundleFetcher
from s2s.ca.federation_refresher import FederationRefresher
from s2s.core.clock import FakeClock
from s2s.core.errors import Unavailable
from s2s.core.federation import (
    EndpointProfile,
    FederationRelationship,
    RefreshPolicy,
    RefreshStatus,
)
from s2s.core.spiffe_id import TrustDomain
from s2s.store.sqlite import SqliteStore
from s2s.testing import TestAuthority

B = TrustDomain.parse("b.test")
POLICY = RefreshPolicy(minimum=dt.timedelta(seconds=30), maximum=dt.timedelta(minutes=10))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StatusLost(FederationRelationships):
    """The store refuses the status write (as during an outage)."""

    async def record_status(
        self, relationship: FederationRelationship, status: RefreshStatus
    ) -> None:
        raise Unavailable("the store is down")


def refresher(
    store: SqliteStore, clock: FakeClock, rels_cls: type = FederationRelationships
) -> FederationRefresher:
    bundles = FederatedBundles(store=store, clock=clock, trust_domain=TD)
    rels = rels_cls(store=store, clock=clock, trust_domain=TD, bundles=bundles)
    return FederationRefresher(
        relationships=rels, bundles=bundles, fetcher=BundleFetcher(clock=clock, timeout=2.0),
        own_bundle=lambda: TestAuthority(TD).bundle(), clock=clock, policy=POLICY,
        rand=lambda: 0.0,
    )  # fmt: skip


def attempts(r: FederationRefresher) -> float:
    return r.refreshes.labels(str(B), "unavailable")._value.get()


async def test_failure_backs_off_and_a_change_is_due_at_once(
    store: SqliteStore, clock: FakeClock
) -> None:
    r = refresher(store, clock)
    url = f"https://127.0.0.1:{closed_port()}/"
    await r.relationships.create(B, url=url, profile=EndpointProfile.HTTPS_WEB)
    assert await r.next_wait() == pytest.approx(0.05)  # new: due now
    assert await r.refresh_due() == 1
    status = (await r.relationships.get(B)).status
    assert status.failures == 1
    assert status.next_refresh_at == clock.now() + dt.timedelta(seconds=30)
    assert await r.refresh_due() == 0  # not due: nothing fetched
    assert attempts(r) == 1
    assert await r.next_wait() == pytest.approx(5.0)  # capped sleep, due in 30 s
    clock.advance(dt.timedelta(seconds=30))
    assert await r.refresh_due() == 1
    assert (await r.relationships.get(B)).status.next_refresh_at == clock.now() + dt.timedelta(
        seconds=60
    )  # backoff doubles
    await r.relationships.update(B, url=f"https://127.0.0.1:{closed_port()}/x")
    assert await r.refresh_due() == 1  # changed: due at once
    assert attempts(r) == 3


async def test_lost_status_does_not_make_it_fetch_again_at_once(
    store: SqliteStore, clock: FakeClock
) -> None:
    r = refresher(store, clock, StatusLost)
    url = f"https://127.0.0.1:{closed_port()}/"
    await r.relationships.create(B, url=url, profile=EndpointProfile.HTTPS_WEB)
    assert await r.refresh_due() == 1
    assert (await r.relationships.get(B)).status.failures == 0  # the store kept nothing
    for _ in range(3):
        await r.refresh_due()
    assert attempts(r) == 1
    assert await r.next_wait() == pytest.approx(5.0)
    clock.advance(dt.timedelta(seconds=31))
    assert await r.refresh_due() == 1
    assert attempts(r) == 2
