"""FederatedBundles on a real SQLite store with a fake clock: put/get/list/delete, our own trust
domain refused, content changes bump the topic (a same-content refresh does not), replicas share
one document, a corrupt document is an Unavailable error."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest
from ca_helpers import TD

from s2s.ca.audit import AUDIT_LOGGER, AuditLog
from s2s.ca.federated_bundles import (
    BUNDLES_STATE,
    FederatedBundleRecord,
    FederatedBundles,
)
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidRequest, NotFound, Unavailable
from s2s.core.spiffe_id import TrustDomain
from s2s.store.records import Topic
from s2s.store.sqlite import SqliteStore
from s2s.testing import TestAuthority

OTHER = TrustDomain.parse("other.test")
THIRD = TrustDomain.parse("third.test")


def _fb(store: SqliteStore, clock: FakeClock) -> FederatedBundles:
    return FederatedBundles(store=store, clock=clock, trust_domain=TD)


async def test_put_get_list_delete(store: SqliteStore, clock: FakeClock) -> None:
    fb = _fb(store, clock)
    other, third = TestAuthority(OTHER).bundle(), TestAuthority(THIRD).bundle()
    assert await fb.list() == ()
    assert await fb.get(OTHER) is None
    record = await fb.put(other, source="manual")
    assert record == FederatedBundleRecord(other, "manual", clock.now(), None)
    await fb.put(third, source="endpoint", refreshed=True)
    assert [r.trust_domain for r in await fb.list()] == [OTHER, THIRD]
    assert (await fb.bundle_set()).get(OTHER) == other
    only = await fb.bundle_set([THIRD, TrustDomain.parse("absent.test")])
    assert only.trust_domains() == frozenset({THIRD})
    # a second replica (another object on the same store) sees the same records
    again = await _fb(store, clock).get(THIRD)
    assert again is not None
    assert again.refreshed_at == clock.now()
    assert again.bundle == third
    await fb.delete(OTHER)
    assert await fb.get(OTHER) is None
    with pytest.raises(NotFound):
        await fb.delete(OTHER)


async def test_own_trust_domain_and_bad_source_refused(
    store: SqliteStore, clock: FakeClock
) -> None:
    fb = _fb(store, clock)
    with pytest.raises(InvalidRequest, match="own trust domain"):
        await fb.put(TestAuthority(TD).bundle(), source="manual")
    with pytest.raises(InvalidRequest, match="source"):
        await fb.put(TestAuthority(OTHER).bundle(), source="guess")
    assert await fb.list() == ()


async def test_only_content_changes_bump_the_topic(store: SqliteStore, clock: FakeClock) -> None:
    fb = _fb(store, clock)
    authority = TestAuthority(OTHER)
    first = authority.bundle()
    rev0 = await fb.revision()
    await fb.put(first, source="endpoint", refreshed=True)
    rev1 = await fb.revision()
    assert rev1 > rev0
    created = clock.now()
    clock.advance(seconds=60)
    record = await fb.put(first, source="endpoint", refreshed=True)  # same content
    assert await fb.revision() == rev1
    assert record.updated_at == created
    assert record.refreshed_at == clock.now()
    rotated = dataclasses.replace(first, sequence=2)
    waiter = asyncio.create_task(fb.wait_for_change(rev1, timeout=10))
    record = await fb.put(rotated, source="endpoint", refreshed=True)
    assert await asyncio.wait_for(waiter, 10) > rev1
    assert record.updated_at == clock.now()
    rev2 = await fb.revision()
    await fb.delete(OTHER)
    assert await fb.revision() > rev2
    assert await store.revision(Topic.ENTRIES) == 0  # twin: other topics untouched


async def test_bundle_set_at_an_unchanged_revision_reads_no_document(
    store: SqliteStore, clock: FakeClock
) -> None:
    fb = _fb(store, clock)
    await fb.put(TestAuthority(OTHER).bundle(), source="manual")
    rev = await fb.revision()
    first = await fb.bundle_set(revision=rev)
    reads: list[str] = []
    real_get_state = store.get_state

    async def counting(key: str) -> str | None:
        reads.append(key)
        return await real_get_state(key)

    store.get_state = counting  # type: ignore[method-assign]
    assert await fb.bundle_set(revision=rev) == first
    assert reads == []
    third = TestAuthority(THIRD).bundle()
    await fb.put(third, source="manual")  # twin: a change bumps the revision: read again
    reads.clear()
    assert (await fb.bundle_set(revision=await fb.revision())).get(THIRD) == third
    assert reads == [BUNDLES_STATE]


async def test_corrupt_document_is_unavailable(store: SqliteStore, clock: FakeClock) -> None:
    await store.cas_state(BUNDLES_STATE, None, '{"bundles": [{"trust_domain": 1}]}')
    with pytest.raises(Unavailable, match="unreadable"):
        await _fb(store, clock).list()


async def test_record_json_round_trip(clock: FakeClock) -> None:
    record = FederatedBundleRecord(
        TestAuthority(OTHER).bundle(), "endpoint", clock.now(), clock.now() + dt.timedelta(1)
    )
    assert FederatedBundleRecord.from_json(record.to_json()) == record
    with pytest.raises(InvalidRequest):
        FederatedBundleRecord.from_json({**record.to_json(), "bundle": "{"})


async def test_changes_are_audit_lines(
    store: SqliteStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    fb = FederatedBundles(store=store, clock=clock, trust_domain=TD, audit=AuditLog())
    bundle = TestAuthority(OTHER).bundle()
    with caplog.at_level("INFO", logger=AUDIT_LOGGER):
        await fb.put(bundle, source="manual")
        await fb.put(bundle, source="manual")  # same content: no line
        await fb.put(dataclasses.replace(bundle, sequence=5), source="endpoint", refreshed=True)
        await fb.delete(OTHER)
    lines = [
        (r.action, r.target, r.actor, r.bundle_sequence)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == AUDIT_LOGGER
    ]
    assert lines == [
        ("federated_bundle.set", "other.test", "admin", 1),
        ("federated_bundle.set", "other.test", "federation", 5),
        ("federated_bundle.delete", "other.test", "admin", 5),
    ]
