"""verify_chain on DER chains (no sockets): each rule with an accepting twin."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from s2s.core.bundle import Bundle, BundleSet
from s2s.core.revocation import RevocationRecord, RevocationSet, StaticRevocations
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any, authorize_id
from s2s.verifier.peer import PeerRejected, verify_chain

PEER = "spiffe://example.org/peer"


def der_chain(svid: X509Svid, root: object) -> list[bytes]:
    return [c.public_bytes(Encoding.DER) for c in (*svid.cert_chain, root)]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def ca() -> TestAuthority:
    return TestAuthority("example.org")


def reason(chain: list[bytes], bundles: BundleSet, **kw: object) -> str:
    kw.setdefault("authorize", authorize_any())
    kw.setdefault("now", dt.datetime.now(dt.UTC))
    with pytest.raises(PeerRejected) as info:
        verify_chain(chain, bundles=bundles, **kw)  # type: ignore[arg-type]
    return info.value.reason


def test_good_chain_and_its_twins(ca: TestAuthority) -> None:
    svid = ca.issue_x509_svid(PEER)
    chain = der_chain(svid, ca.root)
    own = BundleSet.of(ca.bundle())
    now = dt.datetime.now(dt.UTC)
    assert str(verify_chain(chain, bundles=own, authorize=authorize_any(), now=now)) == PEER
    assert reason(chain, BundleSet.of(TestAuthority("example.org").bundle())) == "untrusted-root"
    assert reason(chain, BundleSet.of(TestAuthority("other.org").bundle())) == "no-bundle"
    assert reason(chain, own, now=now + dt.timedelta(minutes=6)) == "expired"
    assert reason(chain, own, now=now - dt.timedelta(minutes=5)) == "not-yet-valid"
    assert reason(chain, own, authorize=authorize_id("spiffe://example.org/x")) == "unauthorized"


def test_root_of_another_trust_domain_is_foreign(ca: TestAuthority) -> None:
    other = TestAuthority("other.org")
    svid = other.issue_x509_svid("spiffe://other.org/peer", issuer=ca)
    both = BundleSet.of(ca.bundle(), other.bundle())
    assert reason(der_chain(svid, ca.root), both) == "foreign-root"
    # Twin: the same ID issued by its own authority verifies with the same bundle set.
    good = other.issue_x509_svid("spiffe://other.org/peer")
    chain = der_chain(good, other.root)
    assert verify_chain(chain, bundles=both, authorize=authorize_any(), now=dt.datetime.now(dt.UTC))


def test_revocation_by_serial_and_by_spiffe_id(ca: TestAuthority) -> None:
    svid = ca.issue_x509_svid(PEER)
    chain, own = der_chain(svid, ca.root), BundleSet.of(ca.bundle())
    now = dt.datetime.now(dt.UTC)
    later = now + dt.timedelta(hours=1)
    for record in (
        RevocationRecord.for_serial(svid.serial, revoked_at=now, expires_at=later),
        RevocationRecord.for_serial(
            ca.intermediate.serial_number, revoked_at=now, expires_at=later
        ),
        RevocationRecord.for_serial(ca.root.serial_number, revoked_at=now, expires_at=later),
        RevocationRecord.for_spiffe_id(
            PEER, revoked_at=now + dt.timedelta(seconds=5), expires_at=later
        ),
    ):
        revs = StaticRevocations(RevocationSet.of([record]))
        assert reason(chain, own, revocations=revs) == "revoked"
    # Twins: unrelated serial; SPIFFE ID revoked before this SVID was issued.
    for record in (
        RevocationRecord.for_serial(12345, revoked_at=now, expires_at=later),
        RevocationRecord.for_spiffe_id(
            PEER, revoked_at=now - dt.timedelta(hours=1), expires_at=later
        ),
    ):
        revs = StaticRevocations(RevocationSet.of([record]))
        assert verify_chain(
            chain, bundles=own, authorize=authorize_any(), revocations=revs, now=now
        )


def test_trust_anchor_as_leaf_and_garbage_are_rejected(ca: TestAuthority) -> None:
    own = BundleSet.of(ca.bundle())
    assert reason([ca.root.public_bytes(Encoding.DER)], own) == "svid-leaf-path"
    assert reason([b"\x30\x03garbage", b"x"], own) == "svid-malformed"


def test_profile_errors_are_reported_after_the_root_check(ca: TestAuthority) -> None:
    own = BundleSet.of(ca.bundle())
    bad = ca.issue_x509_svid(PEER, cert_sign_usage=True)
    assert reason(der_chain(bad, ca.root), own) == "svid-leaf-key-usage"
    foreign = BundleSet.of(TestAuthority("example.org").bundle())
    assert reason(der_chain(bad, ca.root), foreign) == "untrusted-root"


def test_bundle_with_two_roots_accepts_both(ca: TestAuthority) -> None:
    new = TestAuthority("example.org")
    both = BundleSet.of(Bundle(trust_domain=ca.trust_domain, x509_authorities=(ca.root, new.root)))
    now = dt.datetime.now(dt.UTC)
    for authority in (ca, new):
        chain = der_chain(authority.issue_x509_svid(PEER), authority.root)
        assert verify_chain(chain, bundles=both, authorize=authorize_any(), now=now)
