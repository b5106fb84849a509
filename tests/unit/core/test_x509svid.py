"""The X509-SVID profile: templates make what X509-SVID.md section 4 asks; checks reject the rest.

Bad certificates are built here directly with cryptography's builder, so each rule is exercised on
its own with everything else valid.
"""

from __future__ import annotations

import datetime as dt
import os
import timeit
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from s2s.core.errors import InvalidRequest, InvalidSvid
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509svid import (
    MAX_CHAIN_LENGTH,
    X509Svid,
    check_ca_certificate,
    check_x509_svid,
    spiffe_id_of,
)
from s2s.core.x509templates import (
    DEFAULT_BACKDATE,
    check_public_key,
    intermediate_template,
    leaf_template,
    root_template,
    serial_from_entropy,
    sign_certificate,
)

TD = TrustDomain.parse("example.org")
OTHER_TD = TrustDomain.parse("other.org")
NOW = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
WORKLOAD = TD.child("ns", "shop", "sa", "billing")
P256 = ec.generate_private_key(ec.SECP256R1())


def _serial() -> int:
    return serial_from_entropy(os.urandom(16))


@dataclass
class Pki:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey
    inter: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: P256)

    def leaf(self, spiffe_id: SpiffeId = WORKLOAD, **kw: object) -> x509.Certificate:
        builder = leaf_template(
            spiffe_id=spiffe_id,
            public_key=self.leaf_key.public_key(),
            issuer=self.inter,
            now=NOW,
            ttl=dt.timedelta(minutes=5),
            serial=_serial(),
            **kw,  # type: ignore[arg-type]
        )
        return sign_certificate(builder, self.inter_key)


def make_pki(td: TrustDomain = TD, now: dt.datetime = NOW) -> Pki:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = sign_certificate(
        root_template(
            trust_domain=td,
            public_key=root_key.public_key(),
            now=now,
            ttl=dt.timedelta(days=365),
            serial=_serial(),
        ),
        root_key,
    )
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = sign_certificate(
        intermediate_template(
            trust_domain=td,
            public_key=inter_key.public_key(),
            issuer=root,
            now=now,
            ttl=dt.timedelta(days=1),
            serial=_serial(),
        ),
        root_key,
    )
    return Pki(root_key, root, inter_key, inter)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


# --- hand-built certificates for rule tests -------------------------------------------------

SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "s2s")])


def ku(**bits: bool) -> x509.KeyUsage:
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ]
    return x509.KeyUsage(**{n: bits.get(n, False) for n in names})


def san(*uris: str, dns: tuple[str, ...] = ()) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    return x509.SubjectAlternativeName(names)


LEAF_EXTS: dict[type[x509.ExtensionType], tuple[x509.ExtensionType, bool]] = {
    x509.BasicConstraints: (x509.BasicConstraints(ca=False, path_length=None), True),
    x509.KeyUsage: (ku(digital_signature=True), True),
    x509.ExtendedKeyUsage: (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        False,
    ),
    x509.SubjectAlternativeName: (san(str(WORKLOAD)), False),
}
CA_EXTS: dict[type[x509.ExtensionType], tuple[x509.ExtensionType, bool]] = {
    x509.BasicConstraints: (x509.BasicConstraints(ca=True, path_length=0), True),
    x509.KeyUsage: (ku(key_cert_sign=True, crl_sign=True), True),
    x509.SubjectAlternativeName: (san(str(TD.id())), False),
}


def build(
    pki: Pki,
    base: dict[type[x509.ExtensionType], tuple[x509.ExtensionType, bool]],
    *,
    subject: x509.Name = SUBJECT,
    drop: tuple[type[x509.ExtensionType], ...] = (),
    **overrides: tuple[x509.ExtensionType, bool],
) -> x509.Certificate:
    """A certificate issued by pki.inter with ``base`` extensions, some replaced or dropped."""
    exts = dict(base)
    for value, critical in overrides.values():
        exts[type(value)] = (value, critical)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(pki.inter.subject)
        .public_key(P256.public_key())
        .serial_number(_serial())
        .not_valid_before(NOW - dt.timedelta(minutes=1))
        .not_valid_after(NOW + dt.timedelta(minutes=5))
    )
    for kind, (value, critical) in exts.items():
        if kind not in drop:
            builder = builder.add_extension(value, critical=critical)
    return builder.sign(pki.inter_key, hashes.SHA256())


def reject(chain: list[x509.Certificate], rule: str) -> InvalidSvid:
    with pytest.raises(InvalidSvid) as info:
        check_x509_svid(chain)
    assert info.value.rule == rule, str(info.value)
    return info.value


# --- serials and keys -------------------------------------------------------------------------


def test_serial_from_entropy_is_positive_and_128_bit() -> None:
    assert serial_from_entropy(bytes(16)) == 1
    assert serial_from_entropy(b"\xff" * 15 + b"\xfe") == 2**128 - 1
    assert serial_from_entropy(b"\xff" * 16) == 1  # wraps, never 0
    serials = {serial_from_entropy(os.urandom(16)) for _ in range(100)}
    assert len(serials) == 100
    assert all(1 <= s < 2**128 for s in serials)


def test_serial_from_entropy_rejects_short_entropy() -> None:
    with pytest.raises(InvalidRequest, match="16 bytes"):
        serial_from_entropy(os.urandom(15))


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(65537, 2048),
    ],
    ids=["p256", "p384", "rsa2048"],
)
def test_check_public_key_accepts_supported(key: ec.EllipticCurvePrivateKey) -> None:
    check_public_key(key.public_key())


@pytest.mark.parametrize(
    ("key", "named"),
    [
        (ec.generate_private_key(ec.SECP521R1()), "secp521r1"),
        (ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
        (rsa.generate_private_key(65537, 1024), "RSA-1024"),
        (rsa.generate_private_key(3, 2048), "exponent 3"),
        (ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
    ],
)
def test_check_public_key_rejects_and_names_the_key(
    key: ec.EllipticCurvePrivateKey, named: str
) -> None:
    with pytest.raises(InvalidRequest, match=named):
        check_public_key(key.public_key())


def test_check_public_key_rejects_non_keys() -> None:
    with pytest.raises(InvalidRequest, match="str"):
        check_public_key("not a key")


@pytest.mark.parametrize(
    ("curve", "hash_name"), [(ec.SECP256R1(), "sha256"), (ec.SECP384R1(), "sha384")]
)
def test_sign_certificate_picks_the_hash_from_the_key(
    curve: ec.EllipticCurve, hash_name: str
) -> None:
    key = ec.generate_private_key(curve)
    root = sign_certificate(
        root_template(
            trust_domain=TD,
            public_key=key.public_key(),
            now=NOW,
            ttl=dt.timedelta(days=1),
            serial=_serial(),
        ),
        key,
    )
    assert root.signature_hash_algorithm is not None
    assert root.signature_hash_algorithm.name == hash_name
    root.verify_directly_issued_by(root)


def test_sign_certificate_rejects_unsupported_issuer_key() -> None:
    key = ec.generate_private_key(ec.SECP521R1())
    builder = root_template(
        trust_domain=TD,
        public_key=P256.public_key(),
        now=NOW,
        ttl=dt.timedelta(days=1),
        serial=_serial(),
    )
    with pytest.raises(InvalidRequest, match="secp521r1"):
        sign_certificate(builder, key)


# --- templates --------------------------------------------------------------------------------


def ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def test_root_template_follows_the_ca_profile(pki: Pki) -> None:
    root = pki.root
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)
    bc = ext(root, x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=True, path_length=None)
    usage = ext(root, x509.KeyUsage)
    assert usage.critical
    assert usage.value == ku(key_cert_sign=True, crl_sign=True)
    sans = ext(root, x509.SubjectAlternativeName)
    assert not sans.critical
    assert sans.value == san("spiffe://example.org")
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "SPIFFE"
    assert root.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == str(
        root.serial_number
    )
    assert root.not_valid_before_utc == NOW - DEFAULT_BACKDATE
    assert root.not_valid_after_utc == NOW + dt.timedelta(days=365)
    ski = ext(root, x509.SubjectKeyIdentifier).value
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    aki = ext(root, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == ski.digest
    check_ca_certificate(root)


def test_ca_subjects_are_unique(pki: Pki) -> None:
    other = make_pki()
    assert len({pki.root.subject, pki.inter.subject, other.root.subject, other.inter.subject}) == 4


def test_intermediate_template_is_issued_by_the_root_and_capped(pki: Pki) -> None:
    inter = pki.inter
    inter.verify_directly_issued_by(pki.root)
    assert inter.issuer == pki.root.subject
    assert ext(inter, x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=0)
    assert ext(inter, x509.KeyUsage).critical
    aki = ext(inter, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == ext(pki.root, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]
    check_ca_certificate(inter)
    long = intermediate_template(
        trust_domain=TD,
        public_key=P256.public_key(),
        issuer=pki.root,
        now=NOW,
        ttl=dt.timedelta(days=9999),
        serial=_serial(),
    )
    capped = sign_certificate(long, pki.root_key)
    assert capped.not_valid_after_utc == pki.root.not_valid_after_utc


def test_leaf_template_follows_the_leaf_profile(pki: Pki) -> None:
    leaf = pki.leaf(dns_names=["billing.shop.svc", "billing"])
    leaf.verify_directly_issued_by(pki.inter)
    assert spiffe_id_of(leaf) == WORKLOAD
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=False, path_length=None)
    usage = ext(leaf, x509.KeyUsage)
    assert usage.critical
    assert usage.value == ku(digital_signature=True)
    eku = ext(leaf, x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    sans = ext(leaf, x509.SubjectAlternativeName)
    assert not sans.critical
    assert sans.value == san(str(WORKLOAD), dns=("billing.shop.svc", "billing"))
    assert leaf.subject.rfc4514_string() == "CN=billing.shop.svc,O=s2s"
    assert leaf.not_valid_before_utc == NOW - DEFAULT_BACKDATE
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(minutes=5)
    assert leaf.signature_hash_algorithm is not None
    assert leaf.signature_hash_algorithm.name == "sha256"
    assert check_x509_svid([leaf, pki.inter]) == WORKLOAD
    assert check_x509_svid([leaf, pki.inter, pki.root]) == WORKLOAD
    assert check_x509_svid([leaf]) == WORKLOAD


def test_leaf_with_rsa_key_gets_key_encipherment(pki: Pki) -> None:
    key = rsa.generate_private_key(65537, 2048)
    builder = leaf_template(
        spiffe_id=WORKLOAD,
        public_key=key.public_key(),
        issuer=pki.inter,
        now=NOW,
        ttl=dt.timedelta(minutes=5),
        serial=_serial(),
    )
    leaf = sign_certificate(builder, pki.inter_key)
    assert ext(leaf, x509.KeyUsage).value == ku(digital_signature=True, key_encipherment=True)
    check_x509_svid([leaf, pki.inter])


def test_leaf_never_starts_before_or_outlives_its_issuer() -> None:
    fresh = make_pki(now=NOW)  # the intermediate starts at NOW - 30 s
    later = NOW + dt.timedelta(seconds=10)
    builder = leaf_template(
        spiffe_id=WORKLOAD,
        public_key=P256.public_key(),
        issuer=fresh.inter,
        now=later,
        ttl=dt.timedelta(days=3),
        serial=_serial(),
        backdate=dt.timedelta(minutes=5),
    )
    leaf = sign_certificate(builder, fresh.inter_key)
    assert leaf.not_valid_before_utc == fresh.inter.not_valid_before_utc
    assert leaf.not_valid_after_utc == fresh.inter.not_valid_after_utc


def test_leaf_times_are_whole_seconds_and_aware(pki: Pki) -> None:
    builder = leaf_template(
        spiffe_id=WORKLOAD,
        public_key=P256.public_key(),
        issuer=pki.inter,
        now=NOW.replace(microsecond=999_999),
        ttl=dt.timedelta(minutes=5),
        serial=_serial(),
    )
    leaf = sign_certificate(builder, pki.inter_key)
    assert leaf.not_valid_before_utc == NOW - DEFAULT_BACKDATE


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spiffe_id": TD.id()}, "needs a path"),
        ({"spiffe_id": OTHER_TD.child("w")}, "trust domain other.org"),
        ({"ttl": dt.timedelta(0)}, "positive"),
        ({"now": NOW + dt.timedelta(days=2)}, "expired"),
        ({"serial": 0}, "serial"),
        ({"serial": 2**128}, "serial"),
        ({"dns_names": ["bad name"]}, "DNS name"),
        ({"dns_names": "a.example"}, "sequence"),
        ({"dns_names": ["spiffe://x"]}, "DNS name"),
        ({"dns_names": ["ünicode.example"]}, "DNS name"),
        ({"public_key": rsa.generate_private_key(65537, 1024).public_key()}, "RSA-1024"),
    ],
)
def test_leaf_template_rejects_bad_requests(
    pki: Pki, kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {
        "spiffe_id": WORKLOAD,
        "public_key": P256.public_key(),
        "issuer": pki.inter,
        "now": NOW,
        "ttl": dt.timedelta(minutes=5),
        "serial": _serial(),
    }
    args.update(kwargs)
    with pytest.raises(InvalidRequest, match=match):
        leaf_template(**args)  # type: ignore[arg-type]


def test_cryptography_verifier_accepts_the_chain(pki: Pki) -> None:
    """cryptography's RFC 5280 verifier proves SAN criticality and the extension profile right."""
    leaf = pki.leaf()
    verifier = PolicyBuilder().store(Store([pki.root])).time(NOW).build_client_verifier()
    verified = verifier.verify(leaf, [pki.inter])
    assert x509.UniformResourceIdentifier(str(WORKLOAD)) in verified.subjects  # type: ignore[operator]
    foreign = make_pki()
    other = PolicyBuilder().store(Store([foreign.root])).time(NOW).build_client_verifier()
    with pytest.raises(VerificationError):
        other.verify(leaf, [pki.inter])
    late = PolicyBuilder().store(Store([pki.root])).time(NOW + dt.timedelta(minutes=6))
    with pytest.raises(VerificationError):
        late.build_client_verifier().verify(leaf, [pki.inter])


# --- check_x509_svid: each rule on its own -----------------------------------------------------


def test_hand_built_baseline_is_accepted(pki: Pki) -> None:
    """The builder used by the rule tests makes valid SVIDs when nothing is overridden."""
    assert check_x509_svid([build(pki, LEAF_EXTS), pki.inter]) == WORKLOAD


def test_uri_san_rule(pki: Pki) -> None:
    reject([build(pki, LEAF_EXTS, drop=(x509.SubjectAlternativeName,))], "uri-san")
    reject([build(pki, LEAF_EXTS, s=(san(dns=("a.example",)), False))], "uri-san")
    two = san(str(WORKLOAD), str(TD.child("other")))
    assert "found 2" in str(reject([build(pki, LEAF_EXTS, s=(two, False))], "uri-san"))
    reject([build(pki, LEAF_EXTS, s=(san("https://example.org/w"), False))], "uri-san")
    reject([build(pki, LEAF_EXTS, s=(san("spiffe://Example.org/w"), False))], "uri-san")
    with pytest.raises(InvalidSvid, match="exactly one"):
        spiffe_id_of(build(pki, LEAF_EXTS, s=(two, False)))
    # Extra DNS SANs next to the one URI SAN are fine (X509-SVID.md 2).
    dns = san(str(WORKLOAD), dns=("a.example",))
    assert check_x509_svid([build(pki, LEAF_EXTS, s=(dns, False))]) == WORKLOAD


def test_leaf_path_rule(pki: Pki) -> None:
    reject([build(pki, LEAF_EXTS, s=(san("spiffe://example.org"), False))], "leaf-path")


def test_san_criticality_rule(pki: Pki) -> None:
    empty = x509.Name([])
    critical_san = (san(str(WORKLOAD)), True)
    assert check_x509_svid([build(pki, LEAF_EXTS, subject=empty, s=critical_san)]) == WORKLOAD
    reject([build(pki, LEAF_EXTS, s=critical_san)], "san-criticality")
    reject([build(pki, LEAF_EXTS, subject=empty)], "san-criticality")


def test_leaf_basic_constraints_rule(pki: Pki) -> None:
    rule = "leaf-basic-constraints"
    reject([build(pki, LEAF_EXTS, drop=(x509.BasicConstraints,))], rule)
    reject(
        [build(pki, LEAF_EXTS, b=(x509.BasicConstraints(ca=False, path_length=None), False))], rule
    )
    reject(
        [build(pki, LEAF_EXTS, b=(x509.BasicConstraints(ca=True, path_length=None), True))], rule
    )


def test_leaf_key_usage_rule(pki: Pki) -> None:
    rule = "leaf-key-usage"
    reject([build(pki, LEAF_EXTS, drop=(x509.KeyUsage,))], rule)
    reject([build(pki, LEAF_EXTS, k=(ku(digital_signature=True), False))], rule)
    reject([build(pki, LEAF_EXTS, k=(ku(key_encipherment=True), True))], rule)
    reject([build(pki, LEAF_EXTS, k=(ku(digital_signature=True, key_cert_sign=True), True))], rule)
    reject([build(pki, LEAF_EXTS, k=(ku(digital_signature=True, crl_sign=True), True))], rule)
    allowed = ku(digital_signature=True, key_encipherment=True, key_agreement=True)
    assert check_x509_svid([build(pki, LEAF_EXTS, k=(allowed, True))]) == WORKLOAD


def test_leaf_eku_rule(pki: Pki) -> None:
    server_only = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    client_only = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    reject([build(pki, LEAF_EXTS, e=(server_only, False))], "leaf-eku")
    reject([build(pki, LEAF_EXTS, e=(client_only, True))], "leaf-eku")
    # EKU is a SHOULD: absent is fine, and it MAY be critical (X509-SVID.md 4.4).
    assert check_x509_svid([build(pki, LEAF_EXTS, drop=(x509.ExtendedKeyUsage,))]) == WORKLOAD
    both = LEAF_EXTS[x509.ExtendedKeyUsage][0]
    assert check_x509_svid([build(pki, LEAF_EXTS, e=(both, True))]) == WORKLOAD


def ca_chain(pki: Pki, **overrides: object) -> list[x509.Certificate]:
    """A leaf issued by pki.inter, followed by a hand-built stand-in for pki.inter."""
    ca = build(pki, CA_EXTS, subject=pki.inter.subject, **overrides)  # type: ignore[arg-type]
    leaf = build(pki, LEAF_EXTS, drop=(x509.AuthorityKeyIdentifier,))
    return [leaf, ca]


def test_ca_basic_constraints_rule(pki: Pki) -> None:
    rule = "ca-basic-constraints"
    assert check_x509_svid(ca_chain(pki)) == WORKLOAD
    reject(ca_chain(pki, drop=(x509.BasicConstraints,)), rule)
    reject(ca_chain(pki, b=(x509.BasicConstraints(ca=False, path_length=None), True)), rule)
    reject(ca_chain(pki, b=(x509.BasicConstraints(ca=True, path_length=None), False)), rule)
    with pytest.raises(InvalidSvid, match="cA=true"):
        check_ca_certificate(pki.leaf())


def test_ca_key_usage_rule(pki: Pki) -> None:
    rule = "ca-key-usage"
    reject(ca_chain(pki, drop=(x509.KeyUsage,)), rule)
    reject(ca_chain(pki, k=(ku(key_cert_sign=True), False)), rule)
    reject(ca_chain(pki, k=(ku(crl_sign=True, digital_signature=True), True)), rule)
    assert check_x509_svid(ca_chain(pki, k=(ku(key_cert_sign=True), True))) == WORKLOAD


def test_ca_spiffe_id_rule(pki: Pki) -> None:
    rule = "ca-spiffe-id"
    reject(ca_chain(pki, s=(san("spiffe://example.org/ca"), False)), rule)
    reject(ca_chain(pki, s=(san("spiffe://other.org"), False)), rule)
    reject(ca_chain(pki, s=(san("spiffe://Example.org"), False)), rule)
    with pytest.raises(InvalidSvid) as info:
        check_ca_certificate(build(pki, CA_EXTS, s=(san("spiffe://example.org/ca"), False)))
    assert info.value.rule == rule
    # A CA without a SPIFFE ID (e.g. an upstream authority), or with other URIs, is fine.
    assert check_x509_svid(ca_chain(pki, drop=(x509.SubjectAlternativeName,))) == WORKLOAD
    assert check_x509_svid(ca_chain(pki, s=(san("https://ca.example"), False))) == WORKLOAD


def test_chain_order_rule(pki: Pki) -> None:
    leaf = pki.leaf()
    reject([], "chain-order")
    reject([leaf, pki.root], "chain-order")  # AKI/SKI mismatch
    reject([leaf, pki.inter, make_pki().root], "chain-order")
    reject([pki.inter, leaf], "leaf-path")  # a CA in the leaf slot: its ID has no path
    reject([leaf] + [pki.inter] * MAX_CHAIN_LENGTH, "chain-order")
    # Without key identifiers the names decide.
    bare_leaf = build(pki, LEAF_EXTS)
    assert check_x509_svid(ca_chain(pki)) == WORKLOAD
    stranger = build(
        pki, CA_EXTS, subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")])
    )
    reject([bare_leaf, stranger], "chain-order")


def test_check_is_cheap(pki: Pki) -> None:
    """The check runs on every peer verification; keep it far below a signature verification."""
    chain = [pki.leaf(), pki.inter]
    per_call = min(timeit.repeat(lambda: check_x509_svid(chain), number=200, repeat=3)) / 200
    assert per_call < 500e-6


# --- the value object ------------------------------------------------------------------------


def test_x509svid_encodings_round_trip(pki: Pki) -> None:
    leaf = pki.leaf()
    svid = X509Svid(WORKLOAD, (leaf, pki.inter), P256, hint="internal")
    assert svid.leaf == leaf
    assert svid.serial == leaf.serial_number
    assert svid.not_before == leaf.not_valid_before_utc
    assert svid.not_before.tzinfo is not None
    assert svid.not_after == NOW + dt.timedelta(minutes=5)
    der = svid.chain_der()
    first = leaf.public_bytes(serialization.Encoding.DER)
    assert der.startswith(first)
    assert x509.load_der_x509_certificate(der[len(first) :]) == pki.inter
    assert x509.load_pem_x509_certificates(svid.chain_pem()) == [leaf, pki.inter]
    key = serialization.load_der_private_key(svid.key_pkcs8_der(), None)
    assert key.public_key() == P256.public_key()
    assert svid.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE" not in repr(svid)
    assert "private_key" not in repr(svid)


def test_x509svid_without_key_or_chain(pki: Pki) -> None:
    svid = X509Svid(WORKLOAD, (pki.leaf(),))
    with pytest.raises(InvalidRequest, match="no private key"):
        svid.key_pkcs8_der()
    with pytest.raises(InvalidRequest):
        svid.key_pem()
    with pytest.raises(InvalidSvid):
        X509Svid(WORKLOAD, ())


def test_extension_oids_are_what_openssl_expects(pki: Pki) -> None:
    oids = [e.oid for e in pki.leaf().extensions]
    assert ExtensionOID.SUBJECT_KEY_IDENTIFIER in oids
    assert ExtensionOID.AUTHORITY_KEY_IDENTIFIER in oids
    assert len(oids) == len(set(oids)) == 6
