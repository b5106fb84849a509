"""SPIFFE ID revocations against X.509 chains: the backdated, second-cut notBefore.

The CA backdates notBefore by 30 s and X.509 keeps whole seconds, so a verifier that read
"issued before the revocation" from notBefore alone would also refuse the SVID the agent fetches
right after a SPIFFE ID revocation (docs/architecture.md, "Revocation"). A stale feed fails closed.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import Unavailable
from s2s.core.revocation import RevocationRecord, RevocationSet, StaticRevocations
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any
from s2s.verifier.peer import PeerRejected, verify_chain

PEER = "spiffe://example.org/peer"


def chain_of(svid: X509Svid, ca: TestAuthority) -> list[bytes]:
    return [c.public_bytes(Encoding.DER) for c in (*svid.cert_chain, ca.root)]


def id_revoked_at(at: dt.datetime) -> StaticRevocations:
    record = RevocationRecord.for_spiffe_id(
        PEER, revoked_at=at, expires_at=at + dt.timedelta(hours=1)
    )
    return StaticRevocations(RevocationSet.of([record]))


def verify(svid: X509Svid, ca: TestAuthority, revocations: object, now: dt.datetime) -> str:
    return str(
        verify_chain(
            chain_of(svid, ca), bundles=BundleSet.of(ca.bundle()), authorize=authorize_any(),
            revocations=revocations, now=now,  # type: ignore[arg-type]
        )
    )  # fmt: skip


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.999])
def test_svid_issued_just_after_an_id_revocation_is_accepted(fraction: float) -> None:
    revoked_at = dt.datetime(2031, 5, 1, 12, 0, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=fraction)
    ca = TestAuthority("example.org", now=revoked_at - dt.timedelta(days=1))
    fresh = ca.issue_x509_svid(PEER, now=revoked_at + dt.timedelta(milliseconds=1))
    assert verify(fresh, ca, id_revoked_at(revoked_at), revoked_at) == PEER
    # Twins: issued a second or more before the revocation, it is refused.
    for before in (dt.timedelta(seconds=1.5), dt.timedelta(seconds=40), dt.timedelta(minutes=4)):
        old = ca.issue_x509_svid(PEER, now=revoked_at - before)
        with pytest.raises(PeerRejected) as info:
            verify(old, ca, id_revoked_at(revoked_at), revoked_at)
        assert info.value.reason == "revoked"


class StaleFeed:
    def current(self) -> RevocationSet:
        raise Unavailable("the feed was last confirmed 40s ago")


def test_a_lookup_that_cannot_answer_fails_closed(authority: TestAuthority) -> None:
    svid = authority.issue_x509_svid(PEER)
    now = FakeClock().now()
    with pytest.raises(PeerRejected) as info:
        verify(svid, authority, StaleFeed(), now)
    assert info.value.reason == "revocations-stale"
    assert verify(svid, authority, StaticRevocations(), now) == PEER  # twin: a fresh lookup
