"""The SVID cache's bookkeeping, driven by a fake clock: what it serves, what it re-issues, what it
batches. (Talking to a real CA is covered in tests/integration/agent.)"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.agent.ca_client import CaClient, RetryDelays, sleep_backoff
from s2s.agent.ca_wire import X509Result
from s2s.agent.cache import SvidCache
from s2s.agent.cache_state import CachedSvid
from s2s.agent.issuance import new_key
from s2s.core.clock import FakeClock
from s2s.core.errors import NotFound
from s2s.core.registration import RegistrationEntry
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId
from s2s.testing import TestAuthority

AGENT = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/a")
UID = frozenset({Selector.parse("unix:uid:1000")})


def entry(entry_id: str, path: str, *, uid: int = 1000, **kw: Any) -> RegistrationEntry:
    return RegistrationEntry(
        id=entry_id,
        spiffe_id=SpiffeId.parse(f"spiffe://example.org{path}"),
        parent_id=AGENT,
        selectors=frozenset({Selector.parse(f"unix:uid:{uid}")}),
        **kw,
    )


@pytest.fixture
def cache(authority: TestAuthority, fake_clock: FakeClock) -> SvidCache:
    client = CaClient(
        urls=("https://ca.invalid",), trust_domain=authority.trust_domain, clock=fake_clock
    )  # fmt: skip  (never called by these tests)
    return SvidCache(client=client, bundle=authority.bundle(), clock=fake_clock, rand=lambda: 0.5)


def issue(
    cache: SvidCache, authority: TestAuthority, ttl: timedelta = timedelta(minutes=5)
) -> None:
    """Store an SVID for every item that is due, as if the CA had answered the batch."""
    due = cache._due(cache._clock.now())
    keys: list[ec.EllipticCurvePrivateKey] = [new_key() for _ in due]
    results = [
        X509Result(i.entry.id, authority.issue_x509_svid(i.entry.spiffe_id, key=k, ttl=ttl), None)
        for i, k in zip(due, keys, strict=True)
    ]
    cache._store_results(due, keys, results)


def test_new_entries_are_due_and_served_once_issued(
    cache: SvidCache, authority: TestAuthority
) -> None:
    cache.apply_entries([entry("b", "/billing")], revision=1)
    assert cache.svids_for(UID) == ()
    assert not cache.health()[0]
    version = cache.version
    issue(cache, authority)
    assert cache.version > version
    served = cache.svids_for(UID)
    assert [str(s.spiffe_id) for s in served] == ["spiffe://example.org/billing"]
    assert served[0].private_key is not None
    assert cache.health() == (True, "")
    # Twin: other selectors get nothing.
    assert cache.svids_for(frozenset({Selector.parse("unix:uid:1001")})) == ()


def test_an_expired_svid_is_never_served(
    cache: SvidCache, authority: TestAuthority, fake_clock: FakeClock
) -> None:
    cache.apply_entries([entry("b", "/billing")], revision=1)
    issue(cache, authority, ttl=timedelta(minutes=1))
    assert cache.svids_for(UID)
    fake_clock.advance(seconds=61)
    assert cache.svids_for(UID) == ()
    ok, why = cache.health()
    assert not ok
    assert "no valid SVID" in why


def test_renewal_is_due_at_half_life_counted_from_receipt(
    cache: SvidCache, authority: TestAuthority, fake_clock: FakeClock
) -> None:
    cache.apply_entries([entry("b", "/billing")], revision=1)
    issue(cache, authority, ttl=timedelta(seconds=60))  # notBefore backdated 30 s by the CA
    renew_at = cache.state.items[0].renew_at
    assert renew_at is not None
    # Half of the 60 s received (jitter 0 with rand 0.5), not half of the 90 s certificate.
    assert renew_at - fake_clock.now() == timedelta(seconds=30)
    assert cache._due(fake_clock.now() + timedelta(seconds=29)) == []
    assert len(cache._due(fake_clock.now() + timedelta(seconds=30))) == 1


def test_hint_and_selector_changes_keep_the_svid_other_changes_reissue(
    cache: SvidCache, authority: TestAuthority
) -> None:
    original = entry("b", "/billing")
    cache.apply_entries([original], revision=1)
    issue(cache, authority)
    held = cache.state.items[0].svid
    assert held is not None
    relabelled = dataclasses.replace(original, hint="primary", revision=2)
    cache.apply_entries([relabelled], revision=2)
    kept = cache.state.items[0].svid
    assert kept is not None
    assert (kept.serial, kept.hint) == (held.serial, "primary")
    moved = dataclasses.replace(relabelled, selectors=frozenset({Selector.parse("unix:uid:7")}))
    cache.apply_entries([moved], revision=3)
    assert cache.svids_for(UID) == ()
    assert cache.svids_for(frozenset({Selector.parse("unix:uid:7")}))[0].serial == held.serial
    renamed = dataclasses.replace(moved, spiffe_id=SpiffeId.parse("spiffe://example.org/v2"))
    cache.apply_entries([renamed], revision=4)
    assert cache.state.items[0].svid is None  # the old SVID names the old ID: dropped at once
    assert len(cache._due(cache._clock.now())) == 1


def test_deleted_entries_leave_and_order_is_oldest_first(
    cache: SvidCache, authority: TestAuthority, fake_clock: FakeClock
) -> None:
    older = entry("z", "/older", created_at=fake_clock.now() - timedelta(days=1))
    newer = entry("a", "/newer", created_at=fake_clock.now())
    cache.apply_entries([newer, older], revision=1)
    issue(cache, authority)
    assert [str(s.spiffe_id.path) for s in cache.svids_for(UID)] == ["/older", "/newer"]
    version = cache.version
    cache.apply_entries([newer], revision=2)
    assert cache.version > version
    assert [str(s.spiffe_id.path) for s in cache.svids_for(UID)] == ["/newer"]
    # The same answer again (long-poll timeout) changes nothing.
    version = cache.version
    cache.apply_entries([newer], revision=2)
    assert cache.version == version


def test_renewals_due_within_a_second_share_a_batch(
    cache: SvidCache, authority: TestAuthority, fake_clock: FakeClock
) -> None:
    cache.apply_entries([entry(x, f"/{x}") for x in "abc"], revision=1)
    issue(cache, authority)
    now = fake_clock.now()
    items = cache.state.items
    when = [now + timedelta(seconds=s) for s in (10, 10.5, 20)]
    state = dataclasses.replace(
        cache.state,
        items=tuple(dataclasses.replace(i, renew_at=w) for i, w in zip(items, when, strict=True)),
    )
    cache._replace(state)
    assert cache._due(now + timedelta(seconds=9.9)) == []
    due = cache._due(now + timedelta(seconds=10))
    assert [i.entry.id for i in due] == ["a", "b"]


def test_a_refused_item_is_retried_later_without_blocking_the_others(
    cache: SvidCache, authority: TestAuthority, fake_clock: FakeClock
) -> None:
    cache.apply_entries([entry("a", "/a"), entry("b", "/b")], revision=1)
    due: list[CachedSvid] = cache._due(fake_clock.now())
    keys = [new_key(), new_key()]
    results = [
        X509Result("a", authority.issue_x509_svid("spiffe://example.org/a", key=keys[0]), None),
        X509Result("b", None, NotFound("no entry b")),
    ]
    cache._store_results(due, keys, results)
    assert [s.spiffe_id.path for s in cache.svids_for(UID)] == ["/a"]
    assert cache._due(fake_clock.now()) == []  # b waits for its retry time
    fake_clock.advance(seconds=6)
    assert [i.entry.id for i in cache._due(fake_clock.now())] == ["b"]


def test_an_svid_for_another_key_or_id_is_refused(
    cache: SvidCache, authority: TestAuthority
) -> None:
    cache.apply_entries([entry("a", "/a")], revision=1)
    due = cache._due(cache._clock.now())
    wrong_key = authority.issue_x509_svid("spiffe://example.org/a", key=new_key())
    cache._store_results(due, [new_key()], [X509Result("a", wrong_key, None)])
    assert cache.state.items[0].svid is None
    key = new_key()
    wrong_id = authority.issue_x509_svid("spiffe://example.org/not-a", key=key)
    cache._store_results(due, [key], [X509Result("a", wrong_id, None)])
    assert cache.state.items[0].svid is None


async def test_a_grown_backoff_never_outlasts_the_svids_being_renewed() -> None:
    """After a long CA outage the retry delay has grown to its 30 s cap; with 20 s SVIDs that
    would let them expire before the next try (found by the soak). The wait is cut to a quarter
    of the remaining lifetime."""
    delays = RetryDelays(rand=lambda: 0.999)
    for _ in range(20):
        delays.next_delay()  # the outage: the delay is at its cap now
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sleep_backoff(delays, remaining=1.0)
    # A quarter of 1 s, not ~30 s: the bound sits between the two, far from either, so a loaded
    # machine stalling the loop after the 0.25 s sleep does not fail it.
    assert loop.time() - started < 10.0
    assert delays.next_delay() > 20  # twin: unbounded, the policy's own delay
