"""The test authority mints real credentials; each bad option breaks exactly the rule it names."""

from __future__ import annotations

import datetime as dt

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from s2s.core.bundle import Bundle
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidSvid
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509svid import X509Svid, check_ca_certificate, check_x509_svid
from s2s.testing import TestAuthority

WORKLOAD = "spiffe://example.org/ns/shop/sa/billing"


def verify(svid: X509Svid, root: x509.Certificate, at: dt.datetime) -> None:
    """RFC 5280 path validation with cryptography's verifier (client profile)."""
    verifier = PolicyBuilder().store(Store([root])).time(at).build_client_verifier()
    verifier.verify(svid.leaf, list(svid.cert_chain[1:]))


def test_hierarchy_is_a_real_spiffe_ca(authority: TestAuthority) -> None:
    assert authority.trust_domain == TrustDomain.parse("example.org")
    authority.root.verify_directly_issued_by(authority.root)
    authority.intermediate.verify_directly_issued_by(authority.root)
    check_ca_certificate(authority.root)
    check_ca_certificate(authority.intermediate)
    assert TestAuthority(TrustDomain.parse("other.org")).trust_domain.name == "other.org"


def test_issues_a_valid_svid(authority: TestAuthority, fake_clock: FakeClock) -> None:
    svid = authority.issue_x509_svid(WORKLOAD, dns_names=["billing.local"], hint="main")
    assert svid.spiffe_id == SpiffeId.parse(WORKLOAD)
    assert svid.cert_chain == (svid.leaf, authority.intermediate)
    assert svid.hint == "main"
    assert check_x509_svid(svid.cert_chain) == svid.spiffe_id
    verify(svid, authority.root, fake_clock.now())
    assert svid.private_key is not None
    assert svid.private_key.public_key() == svid.leaf.public_key()
    sans = svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["billing.local"]
    assert svid.not_before == fake_clock.now() - dt.timedelta(seconds=30)
    assert svid.not_after == fake_clock.now() + dt.timedelta(minutes=5)
    assert len(authority.issue_x509_svid(WORKLOAD, include_intermediate=False).cert_chain) == 1


def test_issue_follows_the_clock(authority: TestAuthority, fake_clock: FakeClock) -> None:
    first = authority.issue_x509_svid(WORKLOAD)
    fake_clock.advance(seconds=600)
    second = authority.issue_x509_svid(WORKLOAD)
    assert second.not_after - first.not_after == dt.timedelta(seconds=600)
    assert first.serial != second.serial
    verify(second, authority.root, fake_clock.now())
    with pytest.raises(VerificationError):
        verify(first, authority.root, fake_clock.now())  # the first one expired meanwhile


@pytest.mark.parametrize(
    ("option", "rule"),
    [
        ("two_uri_sans", "uri-san"),
        ("no_uri_san", "uri-san"),
        ("ca_leaf", "leaf-basic-constraints"),
        ("missing_key_usage", "leaf-key-usage"),
        ("cert_sign_usage", "leaf-key-usage"),
    ],
)
@pytest.mark.parametrize("dns_names", [(), ("svc.local",)])
def test_bad_profile_options_break_one_rule(
    authority: TestAuthority, option: str, rule: str, dns_names: tuple[str, ...]
) -> None:
    svid = authority.issue_x509_svid(WORKLOAD, dns_names=dns_names, **{option: True})  # type: ignore[arg-type]
    with pytest.raises(InvalidSvid) as info:
        check_x509_svid(svid.cert_chain)
    assert info.value.rule == rule
    # Still properly signed by the intermediate: only the profile is wrong.
    svid.leaf.verify_directly_issued_by(authority.intermediate)
    exts = {e.oid: e.value for e in svid.leaf.extensions}
    sans = exts.get(x509.SubjectAlternativeName.oid)
    if option == "no_uri_san" and not dns_names:
        assert sans is None
    else:
        assert isinstance(sans, x509.SubjectAlternativeName)
        assert sans.get_values_for_type(x509.DNSName) == list(dns_names)


def test_expired_and_not_yet_valid(authority: TestAuthority, fake_clock: FakeClock) -> None:
    now = fake_clock.now()
    good = authority.issue_x509_svid(WORKLOAD)
    verify(good, authority.root, now)
    expired = authority.issue_x509_svid(WORKLOAD, expired=True)
    assert expired.not_after < now
    early = authority.issue_x509_svid(WORKLOAD, not_yet_valid=True)
    assert early.not_before > now
    for svid in (expired, early):
        assert check_x509_svid(svid.cert_chain) == svid.spiffe_id  # the profile is fine
        with pytest.raises(VerificationError):
            verify(svid, authority.root, now)


def test_foreign_issuer_and_wrong_trust_domain(authority: TestAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    impostor = TestAuthority("example.org")
    forged = authority.issue_x509_svid(WORKLOAD, issuer=impostor)
    assert forged.cert_chain[1] == impostor.intermediate
    forged.leaf.verify_directly_issued_by(impostor.intermediate)
    verify(forged, impostor.root, now)
    with pytest.raises(VerificationError):
        verify(forged, authority.root, now)
    other = TestAuthority("other.org")
    theirs = other.issue_x509_svid("spiffe://other.org/billing")
    assert check_x509_svid(theirs.cert_chain).trust_domain.name == "other.org"
    with pytest.raises(VerificationError):
        verify(theirs, authority.root, now)
    # A leaf claiming example.org under other.org's CA breaks the CA's SPIFFE ID rule too.
    crossed = authority.issue_x509_svid(WORKLOAD, issuer=other)
    with pytest.raises(InvalidSvid) as info:
        check_x509_svid(crossed.cert_chain)
    assert info.value.rule == "ca-spiffe-id"


def test_new_intermediate(authority: TestAuthority, fake_clock: FakeClock) -> None:
    cert, key = authority.new_intermediate()
    assert cert.subject != authority.intermediate.subject
    svid = authority.issue_x509_svid(WORKLOAD, intermediate=(cert, key))
    assert svid.cert_chain[1] == cert
    verify(svid, authority.root, fake_clock.now())
    mixed = X509Svid(svid.spiffe_id, (svid.leaf, authority.intermediate))
    with pytest.raises(InvalidSvid):
        check_x509_svid(mixed.cert_chain)


def test_caller_key_is_used(authority: TestAuthority) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    svid = authority.issue_x509_svid(WORKLOAD, key=key)
    assert svid.leaf.public_key() == key.public_key()
    assert serialization.load_der_private_key(svid.key_pkcs8_der(), None).public_key() == (
        key.public_key()
    )


def test_bundle(authority: TestAuthority) -> None:
    bundle = authority.bundle()
    assert isinstance(bundle, Bundle)
    assert bundle.trust_domain == authority.trust_domain
    assert bundle.x509_authorities == (authority.root,)
    assert bundle.sequence == 1
    jwt_authority = bundle.jwt_authority(authority.jwt_kid)
    assert jwt_authority is not None
    assert jwt_authority.public_key == authority.jwt_key.public_key()
    assert Bundle.decode(authority.trust_domain, bundle.encode()) == bundle
    assert x509.load_pem_x509_certificates(authority.bundle_pem()) == [authority.root]
    assert TestAuthority().bundle() != bundle


def decode(authority: TestAuthority, token: str, audience: str = "billing") -> dict[str, object]:
    key = authority.jwt_key.public_key()
    claims: dict[str, object] = jwt.decode(token, key, algorithms=["ES256"], audience=audience)
    return claims


def test_jwt_svid(authority: TestAuthority, fake_clock: FakeClock) -> None:
    token = authority.issue_jwt_svid(WORKLOAD, "billing", jti="j-1")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": authority.jwt_kid, "typ": "JWT"}
    claims = decode(authority, token)
    now = int(fake_clock.now().timestamp())
    assert claims == {"sub": WORKLOAD, "aud": "billing", "iat": now, "exp": now + 300, "jti": "j-1"}
    many = authority.issue_jwt_svid(WORKLOAD, ["billing", "audit"])
    assert decode(authority, many, "audit")["aud"] == ["billing", "audit"]


def test_jwt_svid_rejecting_twins(authority: TestAuthority) -> None:
    with pytest.raises(jwt.InvalidSignatureError):
        decode(authority, TestAuthority().issue_jwt_svid(WORKLOAD, "billing"))
    with pytest.raises(jwt.InvalidAudienceError):
        decode(authority, authority.issue_jwt_svid(WORKLOAD, "other"))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with pytest.raises(jwt.ExpiredSignatureError):
        decode(authority, authority.issue_jwt_svid(WORKLOAD, "billing", now=past))
    with pytest.raises(jwt.MissingRequiredClaimError):
        jwt.decode(
            authority.issue_jwt_svid(WORKLOAD, "billing", drop_claims=["exp"]),
            authority.jwt_key.public_key(),
            algorithms=["ES256"],
            audience="billing",
            options={"require": ["exp"]},
        )


def test_jwt_svid_header_options(authority: TestAuthority) -> None:
    bare = authority.issue_jwt_svid(WORKLOAD, "a", extra_headers={"typ": None, "kid": None})
    assert jwt.get_unverified_header(bare) == {"alg": "ES256"}
    odd = authority.issue_jwt_svid(WORKLOAD, "a", extra_headers={"typ": "at+jwt"}, kid="k2")
    assert jwt.get_unverified_header(odd) == {"alg": "ES256", "kid": "k2", "typ": "at+jwt"}
    unsigned = authority.issue_jwt_svid(WORKLOAD, "a", alg="none")
    assert jwt.get_unverified_header(unsigned)["alg"] == "none"
    assert unsigned.endswith(".")
    hs = authority.issue_jwt_svid(WORKLOAD, "a", alg="HS256", key=b"k" * 32)
    assert jwt.get_unverified_header(hs)["alg"] == "HS256"
    extra = authority.issue_jwt_svid(WORKLOAD, "a", extra_claims={"sub": "spiffe://x/y", "n": 1})
    assert jwt.decode(extra, options={"verify_signature": False})["sub"] == "spiffe://x/y"
