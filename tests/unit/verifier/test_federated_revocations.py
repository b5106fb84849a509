"""Revocation data never crosses trust domains: with both bundles held (federation), a serial
record or a CRL of one trust domain's issuer does not revoke the other's certificate that happens
to carry the same serial, not even a CRL that copies the other issuer's name; each still revokes
its own (the accepting/rejecting twins)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from s2s.core.bundle import BundleSet
from s2s.core.revocation import RevocationRecord, RevocationSet, StaticRevocations, issuer_key_id
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any
from s2s.verifier.peer import PeerRejected, verify_chain
from s2s.verifier.source import CrlRevocations
from s2s.verifier.workload_client import X509Update
from s2s.verifier.x509context import X509Context

A = TestAuthority("example.org")
B = TestAuthority("other.org")
BOTH = BundleSet.of(A.bundle(), B.bundle())
HOUR = dt.timedelta(hours=1)


def chain(authority: TestAuthority, svid: X509Svid) -> list[bytes]:
    certs = (*svid.cert_chain, authority.root)
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


def accepted(der: list[bytes], revocations: Any) -> bool:
    try:
        now = dt.datetime.now(dt.UTC)
        verify_chain(der, bundles=BOTH, authorize=authorize_any(), revocations=revocations, now=now)
    except PeerRejected as exc:
        if exc.reason != "revoked":
            raise
        return False
    return True


def serial_record(serial: int, issuer: x509.Certificate) -> StaticRevocations:
    now = dt.datetime.now(dt.UTC)
    record = RevocationRecord.for_serial(
        serial, revoked_at=now, expires_at=now + HOUR, issuer=issuer_key_id(issuer)
    )
    return StaticRevocations(RevocationSet.of([record]))


@pytest.mark.parametrize(("ours", "theirs"), [(A, B), (B, A)])
def test_a_serial_record_of_one_trust_domain_never_revokes_the_other(
    ours: TestAuthority, theirs: TestAuthority
) -> None:
    svid = ours.issue_x509_svid(f"spiffe://{ours.trust_domain}/svc")
    der = chain(ours, svid)
    # the other trust domain's issuer names our serial: no effect
    assert accepted(der, serial_record(svid.serial, theirs.intermediate))
    # twin: our own issuer's record revokes it
    assert not accepted(der, serial_record(svid.serial, ours.intermediate))


def crl_der(name: x509.Name, key: Any, serial: int) -> bytes:
    now = dt.datetime.now(dt.UTC)
    revoked = x509.RevokedCertificateBuilder(serial_number=serial, revocation_date=now).build()
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=name, last_update=now, next_update=now + HOUR, revoked_certificates=[revoked]
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def crl_lookup(*crls: bytes) -> CrlRevocations:
    """What a workload of example.org holds: its SVID, both bundles, and the agent's CRLs."""
    own = A.issue_x509_svid("spiffe://example.org/me")
    lookup = CrlRevocations()
    lookup.update(X509Update(X509Context((own,), BOTH), tuple(crls)))
    return lookup


def test_a_crl_of_one_trust_domain_never_revokes_the_other() -> None:
    ours = A.issue_x509_svid("spiffe://example.org/svc")
    theirs = B.issue_x509_svid("spiffe://other.org/api")
    a_int, b_int = A.intermediate, B.intermediate
    # other.org's issuer lists our serial, once under its own name, once under our issuer's
    for name in (b_int.subject, a_int.subject):
        assert accepted(chain(A, ours), crl_lookup(crl_der(name, B.intermediate_key, ours.serial)))
    # ours lists their serial: their certificate is not ours to revoke
    theirs_crl = crl_der(a_int.subject, A.intermediate_key, theirs.serial)
    assert accepted(chain(B, theirs), crl_lookup(theirs_crl))
    # twins: each issuer's CRL revokes its own certificate
    assert not accepted(
        chain(A, ours), crl_lookup(crl_der(a_int.subject, A.intermediate_key, ours.serial))
    )
    assert not accepted(
        chain(B, theirs), crl_lookup(crl_der(b_int.subject, B.intermediate_key, theirs.serial))
    )
