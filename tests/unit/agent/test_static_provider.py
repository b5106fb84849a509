"""The in-memory identity provider: matching, change notification, the JWT-SVID cache."""

from __future__ import annotations

import asyncio

import pytest

from s2s.agent.static_provider import StaticIdentityProvider
from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidToken, Unavailable
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId
from s2s.testing import TestAuthority

WEB = SpiffeId.parse("spiffe://example.org/web")


def sel(*texts: str) -> frozenset[Selector]:
    return frozenset(Selector.parse(t) for t in texts)


def test_svids_for_matches_subsets_in_order(authority: TestAuthority) -> None:
    p = StaticIdentityProvider()
    a, b = authority.issue_x509_svid(WEB), authority.issue_x509_svid("spiffe://example.org/b")
    p.put("a", ["unix:uid:1"], a)
    p.put("b", ["unix:uid:1", "unix:gid:2"], b)
    assert p.svids_for(sel("unix:uid:1", "unix:gid:2", "unix:path:/x")) == (a, b)
    assert p.svids_for(sel("unix:uid:1")) == (a,)
    assert p.svids_for(sel("unix:gid:2")) == ()
    assert p.svids_for(frozenset()) == ()


async def test_wait_for_update_wakes_on_every_change(authority: TestAuthority) -> None:
    p = StaticIdentityProvider()
    start = p.version
    waiter = asyncio.create_task(p.wait_for_update(start))
    await asyncio.sleep(0)
    assert not waiter.done()
    p.set_crls([b"x"])
    assert await asyncio.wait_for(waiter, 5) == start + 1
    assert await p.wait_for_update(start) == start + 1  # already newer: no wait
    p.put("a", ["unix:uid:1"], authority.issue_x509_svid(WEB))
    p.remove("a")
    p.set_bundles(BundleSet.of(authority.bundle()))
    assert p.version == start + 4


async def test_jwt_cache_until_half_life(authority: TestAuthority, fake_clock: FakeClock) -> None:
    minted: list[str] = []

    def signer(sid: SpiffeId, aud: tuple[str, ...]) -> str:
        minted.append(authority.issue_jwt_svid(sid, aud))
        return minted[-1]

    p = StaticIdentityProvider(jwt_signer=signer, clock=fake_clock)
    first = await p.fetch_jwt_svid(WEB, ("a", "b"))
    assert await p.fetch_jwt_svid(WEB, ("b", "a")) == first  # same audience set
    assert await p.fetch_jwt_svid(WEB, ("a",)) != first
    fake_clock.advance(seconds=149)  # default TTL 5 min: half-life at 150 s
    assert await p.fetch_jwt_svid(WEB, ("a", "b")) == first
    fake_clock.advance(seconds=2)
    assert await p.fetch_jwt_svid(WEB, ("a", "b")) != first
    assert len(minted) == 3


async def test_no_signer_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        await StaticIdentityProvider().fetch_jwt_svid(WEB, ("a",))


def test_validate_jwt_and_twins(authority: TestAuthority, fake_clock: FakeClock) -> None:
    p = StaticIdentityProvider(bundles=BundleSet.of(authority.bundle()), clock=fake_clock)
    token = authority.issue_jwt_svid(WEB, "orders")
    sid, claims = p.validate_jwt(token, "orders")
    assert sid == WEB
    assert claims["aud"] == "orders"
    for bad, audience, reason in (
        (token, "billing", "aud"),
        (TestAuthority("example.org").issue_jwt_svid(WEB, "orders"), "orders", "kid"),
        (authority.issue_jwt_svid(WEB, "orders", alg="none"), "orders", "alg"),
    ):
        with pytest.raises(InvalidToken) as err:
            p.validate_jwt(bad, audience)
        assert err.value.reason == reason
