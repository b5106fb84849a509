"""The etcd store's ``prune`` leaves issued serials and used marks to their leases.

etcd drops those records about ``lease_grace`` after they expire; reading them all at every
prune cost O(live certificates). These tests check the leases (TTL ends within the grace after
the expiry), that prune reads none of them after a handle's first run, and that a record written
without a lease (lease id 0) is still removed once expired, or put on a lease while live.
A real etcd (one per module); each test has its own trust domain prefix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from contract import AGENT_A, sid

from s2s.core.clock import FakeClock
from s2s.core.errors import Conflict
from s2s.core.spiffe_id import TrustDomain
from s2s.etcd.client import EtcdClient
from s2s.store.etcd_keys import EtcdKeys, doc
from s2s.store.records import IssuedKind, IssuedSerial, PruneResult, UsedMark
from s2s.testing_etcd import EtcdServer, OpenEtcd, etcd_store_opener

pytest_plugins = ("etcd_fixtures",)

GRACE = dt.timedelta(hours=1)


@pytest.fixture
def keys(trust_domain: str) -> EtcdKeys:
    return EtcdKeys.under(TrustDomain(trust_domain))


@pytest.fixture
async def open_etcd(etcd_server: EtcdServer, trust_domain: str) -> AsyncIterator[OpenEtcd]:
    endpoint = etcd_server.endpoint
    async with etcd_store_opener(endpoint, trust_domain=trust_domain, lease_grace=GRACE) as opener:
        yield opener


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _issued(serial: int, not_after: dt.datetime) -> IssuedSerial:
    return IssuedSerial(
        serial=serial,
        kind=IssuedKind.X509_SVID,
        spiffe_id=sid(f"/w{serial}"),
        issuer_id="int-1",
        issued_at=not_after - dt.timedelta(minutes=5),
        not_after=not_after,
        agent_id=AGENT_A,
    )


async def _assert_lease_ends_within_grace(raw: EtcdClient, key: bytes, expiry: float) -> int:
    kv = await raw.get(key)
    assert kv is not None, key
    assert kv.lease != 0, f"{key!r} has no lease"
    ends = _now().timestamp() + await raw.lease_ttl(kv.lease)
    # the lease ends ``grace`` after the end of the record's expiry bucket (1 minute), give or
    # take the seconds this test takes
    assert expiry + GRACE.total_seconds() - 5 <= ends <= expiry + GRACE.total_seconds() + 65
    return kv.lease


async def test_prune_leaves_expired_serials_and_marks_to_their_leases(
    open_etcd: OpenEtcd, raw: EtcdClient, keys: EtcdKeys
) -> None:
    store = await open_etcd()
    soon = _now() + dt.timedelta(minutes=2)
    record = _issued(7, soon)
    await store.add_issued([record])
    await store.claim_once(UsedMark("assertion/a", soon))

    assert await store.prune(soon + dt.timedelta(seconds=1)) == PruneResult()

    # still there (etcd removes them when the lease ends), each on a lease ending about GRACE
    # after expiry; the keys by ID share the record's lease
    lease = await _assert_lease_ends_within_grace(raw, keys.issued(7), soon.timestamp())
    for k in keys.issued_index_keys(record):
        assert await _assert_lease_ends_within_grace(raw, k, soon.timestamp()) == lease
    await _assert_lease_ends_within_grace(raw, keys.key("used", "assertion/a"), soon.timestamp())
    with pytest.raises(Conflict):
        await store.claim_once(UsedMark("assertion/a", soon))


async def test_records_without_a_lease_are_removed_or_leased_by_the_first_prune(
    open_etcd: OpenEtcd, raw: EtcdClient, keys: EtcdKeys
) -> None:
    """What a hand-made (or foreign) write could leave: records on no lease. The first prune
    of a handle deletes the expired ones (with their keys by ID) and puts the live ones on a
    lease; later prunes of that handle read none of them."""
    now = _now()
    gone, live = (
        _issued(1, now - dt.timedelta(minutes=1)),
        _issued(2, now + dt.timedelta(minutes=2)),
    )
    for r in (gone, live):
        await raw.put(keys.issued(r.serial), doc(r))
        for k in keys.issued_index_keys(r):
            await raw.put(k, b"")
    mark_gone, mark_live = UsedMark("m/gone", now), UsedMark("m/live", live.not_after)
    for m in (mark_gone, mark_live):
        await raw.put(keys.key("used", m.key), doc(m))
    store = await open_etcd()

    assert await store.prune(now) == PruneResult(issued=1, used_marks=1)

    for k in (keys.issued(1), *keys.issued_index_keys(gone), keys.key("used", "m/gone")):
        assert await raw.get(k) is None, k
    expiry = live.not_after.timestamp()
    lease = await _assert_lease_ends_within_grace(raw, keys.issued(2), expiry)
    for k in keys.issued_index_keys(live):
        assert await _assert_lease_ends_within_grace(raw, k, expiry) == lease
    await _assert_lease_ends_within_grace(raw, keys.key("used", "m/live"), expiry)
    assert [r.serial for r in await store.list_issued(spiffe_id=live.spiffe_id)] == [2]

    # checked once per handle: a later bare record is left by this handle, found by a new one
    late = _issued(3, now - dt.timedelta(minutes=1))
    await raw.put(keys.issued(3), doc(late))
    assert await store.prune(now) == PruneResult()
    assert await raw.get(keys.issued(3)) is not None
    assert await (await open_etcd()).prune(now) == PruneResult(issued=1)
    assert await raw.get(keys.issued(3)) is None


async def test_a_bare_record_rewritten_meanwhile_is_left_as_written(
    open_etcd: OpenEtcd, raw: EtcdClient, keys: EtcdKeys
) -> None:
    """The re-lease compares the record's revision: a record written again since the listing
    (by a store, on a lease) is not overwritten by the stale value."""
    now = _now()
    store = await open_etcd()
    bare = UsedMark("m/x", now + dt.timedelta(minutes=2))
    await raw.put(keys.key("used", "m/x"), doc(bare))
    kvs = await store._unleased("used", UsedMark.from_json)
    assert [kv.key for _, kv in kvs] == [keys.key("used", "m/x")]
    newer = UsedMark("m/x", now + dt.timedelta(minutes=30))
    lease = await raw.grant_lease(600)
    await raw.put(keys.key("used", "m/x"), doc(newer), lease=lease)
    ((record, kv),) = kvs
    await store._lease_again(record.expires_at, kv, [])
    kept = await raw.get(keys.key("used", "m/x"))
    assert kept is not None
    assert (kept.value, kept.lease) == (doc(newer), lease)


async def test_an_expired_mark_still_held_by_its_lease_frees_its_key(
    open_etcd: OpenEtcd, raw: EtcdClient, keys: EtcdKeys
) -> None:
    """A key is held until the mark's expiry, not until its lease ends: the expired mark is
    taken over (one winner among concurrent claims); a live one still refuses."""
    start = _now()
    clock = FakeClock(start)
    store, other = await open_etcd(clock=clock), await open_etcd(clock=clock)
    first = UsedMark("assertion/j", clock.now() + dt.timedelta(minutes=2))
    await store.claim_once(first)
    with pytest.raises(Conflict):
        await store.claim_once(first)
    clock.advance(seconds=119)
    with pytest.raises(Conflict):  # one second before its expiry
        await other.claim_once(UsedMark("assertion/j", clock.now() + dt.timedelta(minutes=5)))

    clock.set(first.expires_at)  # expired; etcd keeps it until its lease ends
    assert await raw.get(keys.key("used", "assertion/j")) is not None
    second = UsedMark("assertion/j", clock.now() + dt.timedelta(minutes=5))
    results = await asyncio.gather(
        *(h.claim_once(second) for h in (store, other, store, other)), return_exceptions=True
    )
    assert results.count(None) == 1, results
    assert all(isinstance(r, Conflict) for r in results if r is not None)
    kv = await raw.get(keys.key("used", "assertion/j"))
    assert kv is not None
    assert kv.value == doc(second)
    ahead = (clock.now() - start).total_seconds()  # the store's clock runs ahead of etcd's
    expiry = second.expires_at.timestamp() - ahead
    await _assert_lease_ends_within_grace(raw, keys.key("used", "assertion/j"), expiry)


async def test_keys_only_listing_keeps_lease_ids_and_drops_values(raw: EtcdClient) -> None:
    prefix = f"/test/{uuid.uuid4().hex}/".encode()
    lease = await raw.grant_lease(600)
    await raw.put(prefix + b"a", b"value a", lease=lease)
    await raw.put(prefix + b"b", b"value b")
    kvs, _ = await raw.get_prefix(prefix, keys_only=True)
    assert [(kv.key, kv.value, kv.lease) for kv in kvs] == [
        (prefix + b"a", b"", lease),
        (prefix + b"b", b"", 0),
    ]
    full, _ = await raw.get_prefix(prefix)
    assert [kv.value for kv in full] == [b"value a", b"value b"]
