"""The issued-serial index written as a group commit: concurrent issuances share one store write
and one re-read of the revocations; each caller still returns only after its own records are in
the store, and a failure reaches exactly the callers whose write failed."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any

from ca_helpers import Ca, make_csr

from s2s.ca.issuance import CsrRequest
from s2s.ca.issued_index import MAX_GROUP, IssuedIndex
from s2s.ca.live_revocations import LiveRevocations
from s2s.core.errors import Conflict, StoreError
from s2s.core.revocation import RevocationRecord, StaticRevocations
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.store.records import IssuedKind, IssuedSerial
from s2s.store.sqlite import SqliteStore

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
BILLING = SpiffeId.parse("spiffe://example.org/billing")


def record(serial: int) -> IssuedSerial:
    return IssuedSerial(
        serial=serial,
        kind=IssuedKind.X509_SVID,
        spiffe_id=BILLING,
        issuer_id="issuer",
        issued_at=T0,
        not_after=T0 + dt.timedelta(hours=1),
    )


class CountingStore:
    """The real store; counts ``add_issued`` calls, can fail the next one, and can run a hook
    just before it writes."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner
        self.calls: list[int] = []  # records per call
        self.fail_next: Exception | None = None
        self.before_write: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def add_issued(self, records: Sequence[IssuedSerial]) -> None:
        self.calls.append(len(records))
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            await hook()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        await self._inner.add_issued(records)


async def indexed(store: SqliteStore, serial: int) -> bool:
    return any(r.serial == serial for r in await store.list_issued())


async def test_concurrent_callers_share_one_write(store: SqliteStore) -> None:
    counting = CountingStore(store)
    index = IssuedIndex(counting, StaticRevocations())
    await asyncio.gather(*(index.add([record(100 + i), record(200 + i)]) for i in range(20)))
    assert counting.calls == [40]  # one transaction for all twenty callers
    assert index.writes == 1
    for i in range(20):
        assert await indexed(store, 100 + i)
        assert await indexed(store, 200 + i)


async def test_a_lone_caller_is_written_at_once_and_alone(store: SqliteStore) -> None:
    counting = CountingStore(store)
    index = IssuedIndex(counting, StaticRevocations())
    await index.add([record(1)])
    await index.add([record(2)])
    assert counting.calls == [1, 1]  # twin: callers one after the other are not held back
    assert await indexed(store, 1)
    assert await indexed(store, 2)


async def test_a_group_is_capped(store: SqliteStore) -> None:
    counting = CountingStore(store)
    index = IssuedIndex(counting, StaticRevocations())
    half = MAX_GROUP // 2 + 1
    await asyncio.gather(*(index.add([record(k * 10_000 + i) for i in range(half)])
                           for k in range(1, 4)))  # fmt: skip
    assert counting.calls == [half, half, half]  # two halves would pass the cap: one per write


async def test_a_collision_fails_only_its_own_caller(store: SqliteStore) -> None:
    await store.add_issued([record(7)])
    counting = CountingStore(store)
    index = IssuedIndex(counting, StaticRevocations())
    results = await asyncio.gather(
        index.add([record(7)]), index.add([record(8)]), index.add([record(9)]),
        return_exceptions=True,
    )  # fmt: skip
    assert isinstance(results[0], Conflict)
    assert not isinstance(results[1], BaseException)
    assert not isinstance(results[2], BaseException)
    assert await indexed(store, 8)
    assert await indexed(store, 9)
    assert counting.calls[0] == 3  # tried together first, then caller by caller


async def test_a_failed_write_fails_every_caller_of_it_and_the_next_write_works(
    store: SqliteStore,
) -> None:
    counting = CountingStore(store)
    index = IssuedIndex(counting, StaticRevocations())
    counting.fail_next = StoreError("etcd is gone")
    results = await asyncio.gather(*(index.add([record(50 + i)]) for i in range(5)),
                                   return_exceptions=True)  # fmt: skip
    assert all(isinstance(r, StoreError) for r in results)
    assert not any([await indexed(store, 50 + i) for i in range(5)])
    await index.add([record(60)])  # twin: the next caller is written
    assert await indexed(store, 60)


async def test_revocations_are_read_after_the_write(store: SqliteStore) -> None:
    live = LiveRevocations(store=store)
    await live.refresh()
    index = IssuedIndex(CountingStore(store), live)
    counting = index._store
    assert isinstance(counting, CountingStore)

    async def revoke_meanwhile() -> None:
        revoked = RevocationRecord.for_spiffe_id(
            BILLING, revoked_at=T0, expires_at=T0 + dt.timedelta(days=3650)
        )
        await store.add_revocation(revoked)

    counting.before_write = revoke_meanwhile
    current = await index.add([record(1)])
    assert current.is_spiffe_id_revoked(BILLING, T0 - dt.timedelta(seconds=1))
    other = SpiffeId.parse("spiffe://example.org/api")
    assert not current.is_spiffe_id_revoked(other, T0 - dt.timedelta(seconds=1))  # twin


async def test_without_records_nothing_is_written_or_read(store: SqliteStore) -> None:
    counting = CountingStore(store)
    index = IssuedIndex(counting, StaticRevocations())
    await index.add([])
    assert counting.calls == []


async def test_a_cancelled_caller_leaves_the_others_written(store: SqliteStore) -> None:
    index = IssuedIndex(CountingStore(store), StaticRevocations())
    tasks = [asyncio.create_task(index.add([record(70 + i)])) for i in range(3)]
    await asyncio.sleep(0)  # all three queued behind one write
    tasks[0].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert not isinstance(results[1], BaseException)
    assert not isinstance(results[2], BaseException)
    assert await indexed(store, 71)
    assert await indexed(store, 72)


async def test_concurrent_batches_through_the_issuer_are_all_indexed(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    agent = (await ca.attestor.attest_join_token(token.token, make_csr())).agent
    entry = await ca.registry.create_entry(
        spiffe_id=BILLING, parent_id=agent.spiffe_id, selectors=parse_selectors(["unix:uid:1"])
    )
    batches = await asyncio.gather(
        *(ca.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, make_csr())]) for _ in range(12))
    )
    serials = {r.svid.serial for (r,) in batches if r.svid is not None}
    assert len(serials) == 12
    in_store = {r.serial for r in await ca.store.list_issued(spiffe_id=BILLING)}
    assert serials <= in_store


async def test_a_batch_whose_every_item_is_refused_returns_the_refusals(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    agent = (await ca.attestor.attest_join_token(token.token, make_csr())).agent
    requests = [CsrRequest("no-such-entry", make_csr()) for _ in range(2)]
    results = await ca.issuer.sign_x509_svids(agent, requests)
    assert all(r.svid is None and r.error is not None for r in results)
