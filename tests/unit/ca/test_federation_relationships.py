"""FederationRelationships on a real SQLite store with a fake clock: create (with the bootstrap
bundle stored as a manual federated bundle), list, update, delete; refused: our own trust domain,
a duplicate, a self-serving https_spiffe endpoint without a bundle, a bundle of another trust
domain; a refresh result is not written over a relationship changed meanwhile."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from ca_helpers import TD

from s2s.ca.federated_bundles import SOURCE_MANUAL, FederatedBundles
from s2s.ca.federation import RELATIONSHIPS_STATE, FederationRelationships
from s2s.core.clock import FakeClock
from s2s.core.errors import Conflict, InvalidRequest, NotFound, Unavailable
from s2s.core.federation import EndpointProfile, RefreshStatus
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.store.sqlite import SqliteStore
from s2s.testing import TestAuthority

B = TrustDomain.parse("b.test")
C = TrustDomain.parse("c.test")
B_ENDPOINT = SpiffeId.parse("spiffe://b.test/s2s/bundle-endpoint")
SPIFFE = EndpointProfile.HTTPS_SPIFFE
WEB = EndpointProfile.HTTPS_WEB


def _make(store: SqliteStore, clock: FakeClock) -> tuple[FederationRelationships, FederatedBundles]:
    bundles = FederatedBundles(store=store, clock=clock, trust_domain=TD)
    rels = FederationRelationships(store=store, clock=clock, trust_domain=TD, bundles=bundles)
    return rels, bundles


async def test_create_list_update_delete(store: SqliteStore, clock: FakeClock) -> None:
    rels, bundles = _make(store, clock)
    b_bundle = TestAuthority(B).bundle()
    created = await rels.create(
        B, url="https://b.test:8443/", profile=SPIFFE, endpoint_spiffe_id=B_ENDPOINT,
        bundle=b_bundle,
    )  # fmt: skip
    assert created.self_serving
    assert created.created_at == clock.now()
    held = await bundles.get(B)
    assert held is not None
    assert (held.bundle, held.source) == (b_bundle, SOURCE_MANUAL)
    web = await rels.create(C, url="https://c.test/bundle.json", profile=WEB)
    assert [r.trust_domain for r in await rels.list()] == [B, C]
    assert await rels.get(C) == web

    clock.advance(dt.timedelta(minutes=1))
    moved = await rels.update(B, url="https://b2.test:8443/")
    assert moved.bundle_endpoint_url == "https://b2.test:8443/"
    assert moved.endpoint_spiffe_id == B_ENDPOINT
    assert moved.status.next_refresh_at == clock.now()  # refreshed at once after a change
    to_web = await rels.update(B, profile=WEB)
    assert (to_web.profile, to_web.endpoint_spiffe_id) == (WEB, None)

    deleted = await rels.delete(B)
    assert deleted.trust_domain == B
    assert await rels.find(B) is None
    assert await bundles.get(B) is not None  # the bundle stays until bundle delete
    with pytest.raises(NotFound):
        await rels.delete(B)
    with pytest.raises(NotFound):
        await rels.update(B, url="https://b.test/")


async def test_refused(store: SqliteStore, clock: FakeClock) -> None:
    rels, _ = _make(store, clock)
    with pytest.raises(InvalidRequest, match="own trust domain"):
        await rels.create(TD, url="https://x.test/", profile=WEB)
    with pytest.raises(InvalidRequest, match="--bundle"):
        await rels.create(B, url="https://b.test/", profile=SPIFFE, endpoint_spiffe_id=B_ENDPOINT)
    with pytest.raises(InvalidRequest, match=r"the bundle is for c\.test"):
        await rels.create(
            B, url="https://b.test/", profile=SPIFFE, endpoint_spiffe_id=B_ENDPOINT,
            bundle=TestAuthority(C).bundle(),
        )  # fmt: skip
    with pytest.raises(InvalidRequest, match="https"):
        await rels.create(B, url="http://b.test/", profile=WEB)
    with pytest.raises(InvalidRequest, match="no SPIFFE ID"):
        await rels.create(B, url="https://b.test/", profile=WEB, endpoint_spiffe_id=B_ENDPOINT)
    assert await rels.list() == ()
    await rels.create(B, url="https://b.test/", profile=WEB)
    with pytest.raises(Conflict, match="already exists"):
        await rels.create(B, url="https://b.test/", profile=WEB)


async def test_non_self_serving_needs_no_bundle_of_its_own(
    store: SqliteStore, clock: FakeClock
) -> None:
    rels, _ = _make(store, clock)
    # The endpoint's SVID is of our own trust domain: our bundle authenticates it.
    ours = TD.id("/bundle-server")
    rel = await rels.create(B, url="https://b.test/", profile=SPIFFE, endpoint_spiffe_id=ours)
    assert not rel.self_serving


async def test_status_not_written_over_a_changed_relationship(
    store: SqliteStore, clock: FakeClock
) -> None:
    rels, _ = _make(store, clock)
    old = await rels.create(B, url="https://b.test/", profile=WEB)
    status = RefreshStatus().failed(clock.now(), "down", clock.now())
    await rels.record_status(old, status)
    assert (await rels.get(B)).status == status
    clock.advance(dt.timedelta(seconds=1))
    await rels.update(B, url="https://b2.test/")
    await rels.record_status(old, RefreshStatus().failed(clock.now(), "stale", clock.now()))
    assert (await rels.get(B)).status.last_error == "down"
    await rels.delete(B)
    await rels.record_status(old, status)  # deleted meanwhile: nothing comes back
    assert await rels.find(B) is None


async def test_replicas_share_one_document(store: SqliteStore, clock: FakeClock) -> None:
    first, _ = _make(store, clock)
    second, _ = _make(store, clock)
    await first.create(B, url="https://b.test/", profile=WEB)
    await second.request_refresh(B)
    assert (await first.get(B)).status.next_refresh_at == clock.now()


async def test_corrupt_document_is_unavailable(store: SqliteStore, clock: FakeClock) -> None:
    rels, _ = _make(store, clock)
    await store.cas_state(RELATIONSHIPS_STATE, None, '{"relationships": [{"trust_domain": 1}]}')
    with pytest.raises(Unavailable, match="unreadable"):
        await rels.list()


def test_relationship_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RefreshStatus().failures = 3  # type: ignore[misc]
