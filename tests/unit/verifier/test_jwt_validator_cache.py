"""JwtValidator's result cache: hits, what drops it (a new bundle or revocation set, exp), its
bound, and that a revocation is never missed under concurrency."""

from __future__ import annotations

import datetime as dt
import sys
import threading
import time

import pytest
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
from s2s.verifier.revocation_choice import no_revocation_check

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
        BundleSet.of(authority.bundle()), AUD, revocations=no_revocation_check(),
        clock=fake_clock, cache_size=2,
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
        BundleSet.of(authority.bundle()), AUD, revocations=no_revocation_check(),
        clock=fake_clock, cache_size=0,
        metrics=JwtMetrics(CollectorRegistry()),
    )  # fmt: skip
    token = authority.issue_jwt_svid(WORKLOAD, AUD)
    validator.validate(token)
    validator.validate(token)
    assert (validator.cache_hits, validator.cache_len()) == (0, 0)


# --- keys and interleaved snapshots -------------------------------------------------------------


def test_a_dropped_key_never_validates_when_snapshots_interleave(h: Harness) -> None:
    """Two threads hold two bundle snapshots: ``new`` (the JWT key dropped) and ``old`` (with it).

    Driven by hand in the order that broke the key cache: the ``new`` thread sets up the cache for
    its snapshot and is paused before it looks up the token's key; the ``old`` thread then
    validates (legitimately, its snapshot has the key) and caches that key; the ``new`` thread
    resumes. It must look the key up in *its* snapshot, where the key is gone."""
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, jti="t")
    old = h.bundles
    new = old.with_bundle(Bundle(h.ca.trust_domain, x509_authorities=(h.ca.root,)))
    other = h.other.issue_jwt_svid("spiffe://other.org/w", AUD)
    now = h.clock.now().timestamp()
    revocations = h.revocations

    h.bundles = new
    h.validator.validate(other)  # the ``new`` thread's cache set-up for its snapshot
    h.bundles = old
    assert h.validator.validate(token).spiffe_id.trust_domain == h.ca.trust_domain  # ``old``
    # The ``new`` thread resumes where it paused, with the snapshot it read before.
    with pytest.raises(InvalidToken) as info:
        h.validator._validate_uncached(token, now, new, revocations)
    assert info.value.reason == "kid"
    h.bundles = new
    h.reject(token, "kid")  # and through the front door


def test_interleaved_snapshots_with_threads_never_accept_a_dropped_key(h: Harness) -> None:
    """The same, with real threads: validations against ``old`` (key present) and ``new`` (key
    dropped) run at once; every ``new`` validation of the token is refused."""
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, jti="t2")
    old = h.bundles
    new = old.with_bundle(Bundle(h.ca.trust_domain, x509_authorities=(h.ca.root,)))
    others = [h.other.issue_jwt_svid(f"spiffe://other.org/w{n}", AUD) for n in range(50)]
    revocations = h.revocations
    start = threading.Barrier(4)
    wrong: list[str] = []  # outcomes that contradict the snapshot they were validated against

    def run(snapshot: BundleSet, expect_ok: bool) -> None:
        start.wait()
        for n in range(300):
            now = h.clock.now().timestamp()
            h.validator._validate_miss(others[n % len(others)], now, snapshot, revocations)
            try:
                h.validator._validate_miss(token, now, snapshot, revocations)
                outcome = "ok"
            except InvalidToken as exc:
                outcome = exc.reason
            if outcome != ("ok" if expect_ok else "kid"):
                wrong.append(outcome)

    threads = [
        threading.Thread(target=run, args=(snap, snap is old)) for snap in (old, new, old, new)
    ]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not wrong
