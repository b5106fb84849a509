"""ChainCache: chain facts and TLS sessions held per cache (a test or a verifier can own one)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry

from s2s.core.bundle import BundleSet
from s2s.core.errors import InvalidConfig
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import (
    DEFAULT_CHAIN_CACHE,
    ChainCache,
    PeerRejected,
    PeerVerifier,
    verify_chain,
)

PEER = "spiffe://example.org/peer"


def der_chain(svid: X509Svid, root: object) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(Encoding.DER) for c in (*svid.cert_chain, root))  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def ca() -> TestAuthority:
    return TestAuthority("example.org")


def check(chain: tuple[bytes, ...], ca: TestAuthority, cache: ChainCache) -> str:
    bundles = BundleSet.of(ca.bundle())
    now = dt.datetime.now(dt.UTC)
    return str(
        verify_chain(chain, bundles=bundles, authorize=authorize_any(), now=now, cache=cache)
    )


def test_a_cache_of_its_own_is_used_and_the_default_is_not(ca: TestAuthority) -> None:
    chain = der_chain(ca.issue_x509_svid(PEER), ca.root)
    cache = ChainCache()
    before = DEFAULT_CHAIN_CACHE.chains
    assert check(chain, ca, cache) == PEER
    assert cache.chains == 1
    assert cache.facts(chain) is cache.facts(chain)  # derived once
    assert ChainCache().chains == 0
    assert DEFAULT_CHAIN_CACHE.chains == before


def test_the_cache_is_bounded(ca: TestAuthority) -> None:
    cache = ChainCache(limit=2)
    chains = [der_chain(ca.issue_x509_svid(PEER), ca.root) for _ in range(3)]
    for n, chain in enumerate(chains):
        assert check(chain, ca, cache) == PEER
        assert cache.chains == [1, 2, 1][n]  # full: emptied, then the new chain
    for n in range(3):
        cache.remember_session(bytes([n]), chains[n])
    assert cache.sessions == 1
    assert cache.session_chain(bytes([2])) == chains[2]
    assert cache.session_chain(bytes([0])) is None


def test_a_rejected_chain_is_cached_and_rejected_every_time(ca: TestAuthority) -> None:
    cache = ChainCache()
    self_signed = (ca.root.public_bytes(Encoding.DER),)
    for _ in range(2):
        with pytest.raises(PeerRejected) as info:
            check(self_signed, ca, cache)
        assert info.value.reason == "svid-leaf-path"
    assert cache.chains == 1
    cache.clear()
    assert cache.chains == cache.sessions == 0


def test_a_peer_verifier_uses_its_cache(ca: TestAuthority) -> None:
    chain = der_chain(ca.issue_x509_svid(PEER), ca.root)
    mine, theirs = ChainCache(), ChainCache()
    verifier = PeerVerifier(
        lambda: BundleSet.of(ca.bundle()),
        authorize=authorize_any(),
        metrics=PeerMetrics(CollectorRegistry()),
        cache=mine,
    )
    assert str(verifier.verify_chain(chain)) == PEER
    assert (mine.chains, theirs.chains) == (1, 0)
    # Twin: a verifier without one shares the module's default cache.
    shared = PeerVerifier(BundleSet.of, authorize=authorize_any(), metrics=verifier.metrics)
    assert shared.cache is DEFAULT_CHAIN_CACHE


@pytest.mark.parametrize("limit", [0, -1])
def test_a_cache_that_holds_nothing_is_refused(limit: int) -> None:
    with pytest.raises(InvalidConfig, match="at least one chain"):
        ChainCache(limit=limit)
