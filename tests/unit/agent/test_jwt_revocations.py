"""ValidateJWTSVID in the agent's cache consults the agent's revocations: a token revoked by jti or
by SPIFFE ID (issued before the record) is refused with reason ``revoked``; a feed that cannot say
what is revoked (never synced, stale) refuses every token with ``revocations-stale``. The real
feed against a real CA is exercised in tests/integration/agent/test_jwt_revocation.py."""

from __future__ import annotations

from datetime import timedelta

import pytest

from s2s.agent.ca_client import CaClient
from s2s.agent.cache import SvidCache
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidToken
from s2s.core.jwtsvid import AGENT_CLAIM
from s2s.core.revocation import RevocationLookup, RevocationRecord, RevocationSet, StaticRevocations
from s2s.testing import TestAuthority
from s2s.verifier.feeds_ca import CaRevocationFeed, RevocationPage

API = "spiffe://example.org/api"
BILLING = "spiffe://example.org/billing"
HOUR = timedelta(hours=1)


def make_cache(
    authority: TestAuthority, clock: FakeClock, revocations: RevocationLookup | None
) -> SvidCache:
    client = CaClient(
        urls=("https://ca.invalid",), trust_domain=authority.trust_domain, clock=clock
    )  # never called: validation needs no CA
    return SvidCache(client=client, bundle=authority.bundle(), clock=clock, revocations=revocations)


def jti_record(jti: str, clock: FakeClock) -> RevocationRecord:
    now = clock.now()
    return RevocationRecord.for_jti(jti, revoked_at=now, expires_at=now + HOUR)


def reason_of(cache: SvidCache, token: str, audience: str = "a") -> str:
    with pytest.raises(InvalidToken) as err:
        cache.validate_jwt(token, audience)
    return err.value.reason


def test_a_token_revoked_by_jti_is_refused_and_others_still_validate(
    authority: TestAuthority, fake_clock: FakeClock
) -> None:
    revocations = StaticRevocations()
    cache = make_cache(authority, fake_clock, revocations)
    old = authority.issue_jwt_svid(API, "a", jti="old")
    other = authority.issue_jwt_svid(API, "a", jti="other")
    assert str(cache.validate_jwt(old, "a")[0]) == API  # cached by the validator now
    revocations.replace(RevocationSet.of([jti_record("old", fake_clock)], version=1))
    assert reason_of(cache, old) == "revoked"  # the cached acceptance is not reused
    assert str(cache.validate_jwt(other, "a")[0]) == API
    # Twin: the same revoked token is refused for every audience it names.
    both = authority.issue_jwt_svid(API, ["a", "b"], jti="old")
    assert reason_of(cache, both, "b") == "revoked"


def test_a_spiffe_id_revocation_covers_tokens_issued_before_it_only(
    authority: TestAuthority, fake_clock: FakeClock
) -> None:
    revocations = StaticRevocations()
    cache = make_cache(authority, fake_clock, revocations)
    before = authority.issue_jwt_svid(API, "a", jti="1")
    unrelated = authority.issue_jwt_svid(BILLING, "a", jti="2")
    fake_clock.advance(timedelta(seconds=5))
    now = fake_clock.now()
    record = RevocationRecord.for_spiffe_id(API, revoked_at=now, expires_at=now + HOUR)
    revocations.replace(RevocationSet.of([record], version=1))
    fake_clock.advance(timedelta(seconds=5))
    after = authority.issue_jwt_svid(API, "a", jti="3")
    assert reason_of(cache, before) == "revoked"
    assert str(cache.validate_jwt(after, "a")[0]) == API
    assert str(cache.validate_jwt(unrelated, "a")[0]) == BILLING


class SilentCa:
    """A CA that is never asked: the feed below is never run, so it never syncs."""

    async def fetch_revocations(self, *, since: int, wait: float) -> RevocationPage:
        raise AssertionError("not called")


def test_a_feed_that_cannot_say_what_is_revoked_refuses_every_token(
    authority: TestAuthority, fake_clock: FakeClock
) -> None:
    feed = CaRevocationFeed(SilentCa(), clock=fake_clock)
    cache = make_cache(authority, fake_clock, feed)
    token = authority.issue_jwt_svid(API, "a", jti="1")
    assert reason_of(cache, token) == "revocations-stale"
    # Twin: without a feed (tests, tools) the same token validates; a bad one still fails first.
    assert str(make_cache(authority, fake_clock, None).validate_jwt(token, "a")[0]) == API
    assert reason_of(cache, token, "other") == "revocations-stale"  # fail closed before aud


def test_a_revoked_agent_revokes_the_tokens_minted_for_it_only(
    authority: TestAuthority, fake_clock: FakeClock
) -> None:
    agent, other = "spiffe://example.org/s2s/agent/a", "spiffe://example.org/s2s/agent/b"
    revocations = StaticRevocations()
    cache = make_cache(authority, fake_clock, revocations)
    mine = authority.issue_jwt_svid(API, "a", jti="1", extra_claims={AGENT_CLAIM: agent})
    theirs = authority.issue_jwt_svid(API, "a", jti="2", extra_claims={AGENT_CLAIM: other})
    fake_clock.advance(seconds=2)
    now = fake_clock.now()
    record = RevocationRecord.for_spiffe_id(agent, revoked_at=now, expires_at=now + HOUR)
    revocations.replace(RevocationSet.of([record], version=1))
    assert reason_of(cache, mine) == "revoked"
    assert str(cache.validate_jwt(theirs, "a")[0]) == API
    assert reason_of(cache, authority.issue_jwt_svid(API, "a", extra_claims={AGENT_CLAIM: 7})) == (
        "malformed"
    )
