"""JwtValidator's result cache: hits, what drops it (a new bundle or revocation set, exp), its
bound, and that a revocation is never missed under concurrency."""

from __future__ import annotations

import datetime as dt
import threading
import time

from jwt_support import (
    AUD,
    WORKLOAD,
    Harness,
    revocation_record,
)
from prometheus_client import CollectorRegistry

from s2s.core.bundle import Bundle, BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidToken
from s2s.core.revocation import RevocationKind, RevocationSet
from s2s.testing import TestAuthority
from s2s.verifier.jwt import (
    JwtMetrics,
    JwtValidator,
)

# --- the cache ----------------------------------------------------------------------------------


def test_repeated_token_is_a_cache_hit(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD)
    first = h.validator.validate(token)
    assert (h.validator.cache_hits, h.validator.cache_misses) == (0, 1)
    assert h.validator.validate(token) is first
    assert (h.validator.cache_hits, h.validator.cache_misses) == (1, 1)


def test_rejections_are_not_cached(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, "wrong")
    h.reject(token, "aud")
    h.reject(token, "aud")
    assert h.validator.cache_len() == 0


def test_cache_is_dropped_when_the_revocation_set_changes(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, jti="j")
    h.validator.validate(token)
    h.validator.validate(token)
    h.revocations = RevocationSet.of([revocation_record(h, RevocationKind.JTI, "j")], version=1)
    h.reject(token, "revoked")
    h.revocations = RevocationSet.of([], version=2)
    assert h.validator.validate(token)
    assert h.validator.cache_hits == 1


def test_cache_is_dropped_when_the_bundle_changes(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD)
    h.validator.validate(token)
    # The trust domain rotated its JWT key away: the cached success must not survive.
    h.bundles = h.bundles.with_bundle(Bundle(h.ca.trust_domain, x509_authorities=(h.ca.root,)))
    h.reject(token, "kid")
    h.bundles = h.bundles.without(h.ca.trust_domain)
    h.reject(token, "untrusted")


def test_cache_entry_is_dropped_at_exp(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, ttl=dt.timedelta(seconds=60))
    h.validator.validate(token)
    h.clock.advance(seconds=59)
    h.validator.validate(token)
    assert h.validator.cache_hits == 1
    h.clock.advance(seconds=1)  # at exp: no hit; the leeway still accepts it on a fresh check
    h.validator.validate(token)
    assert (h.validator.cache_hits, h.validator.cache_misses) == (1, 2)
    h.clock.advance(seconds=31)
    h.reject(token, "exp")


def test_concurrent_validations_never_accept_after_seeing_a_revocation(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, jti="hot")
    revoked = RevocationSet.of([revocation_record(h, RevocationKind.JTI, "hot")], version=1)
    h.validator.validate(token)
    started = threading.Barrier(5)
    outcomes: list[list[str]] = [[] for _ in range(4)]

    def worker(out: list[str]) -> None:
        started.wait()
        deadline = time.monotonic() + 10
        while out.count("revoked") < 200 and time.monotonic() < deadline:
            try:
                h.validator.validate(token)
                out.append("ok")
            except InvalidToken as exc:  # any other exception fails the thread, and the test
                out.append(exc.reason)

    threads = [threading.Thread(target=worker, args=(o,)) for o in outcomes]
    for t in threads:
        t.start()
    started.wait()
    while sum(len(o) for o in outcomes) < 2000:
        time.sleep(0.0005)
    h.revocations = revoked
    for t in threads:
        t.join()
    for out in outcomes:
        assert set(out) <= {"ok", "revoked"}
        assert "revoked" in out
        first = out.index("revoked")
        assert "ok" not in out[first:], "a cached success came back after the revocation"
    h.reject(token, "revoked")


def test_cache_is_bounded_lru(fake_clock: FakeClock, authority: TestAuthority) -> None:
    validator = JwtValidator(
        BundleSet.of(authority.bundle()), AUD, clock=fake_clock, cache_size=2,
        metrics=JwtMetrics(CollectorRegistry()),
    )  # fmt: skip
    a, b, c = (authority.issue_jwt_svid(f"{WORKLOAD}/{n}", AUD) for n in "abc")
    validator.validate(a)
    validator.validate(b)
    validator.validate(a)  # a is now the most recently used
    validator.validate(c)  # evicts b
    assert validator.cache_len() == 2
    validator.validate(a)
    assert validator.cache_hits == 2
    validator.validate(b)
    assert validator.cache_misses == 4


def test_cache_can_be_disabled(fake_clock: FakeClock, authority: TestAuthority) -> None:
    validator = JwtValidator(
        BundleSet.of(authority.bundle()), AUD, clock=fake_clock, cache_size=0,
        metrics=JwtMetrics(CollectorRegistry()),
    )  # fmt: skip
    token = authority.issue_jwt_svid(WORKLOAD, AUD)
    validator.validate(token)
    validator.validate(token)
    assert (validator.cache_hits, validator.cache_len()) == (0, 0)
