"""LeafLayout: a leaf filled into a template's DER is byte for byte the TBSCertificate the builder
makes for the same inputs, passes the X509-SVID profile, verifies under its issuer, and every
per-leaf input the builder refuses is refused here too."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from s2s.core.errors import InvalidRequest
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509leaf import LeafLayout, der_length, der_time
from s2s.core.x509svid import check_x509_svid
from s2s.core.x509templates import (
    intermediate_template,
    leaf_template,
    root_template,
    sign_certificate,
)

TD = TrustDomain("example.org")
NOW = dt.datetime(2030, 6, 1, 12, 0, 0, 500_000, tzinfo=dt.UTC)
KEYS: dict[str, Any] = {}


def _key(kind: str) -> Any:
    if kind not in KEYS:
        KEYS[kind] = {
            "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
            "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
            "rsa2048": lambda: rsa.generate_private_key(65537, 2048),
            "rsa3072": lambda: rsa.generate_private_key(65537, 3072),
            "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
            "rsa1024": lambda: rsa.generate_private_key(65537, 1024),
        }[kind]()
    return KEYS[kind]


def _issuer(kind: str, *, td: TrustDomain = TD, start: dt.datetime = NOW, days: int = 30) -> Any:
    root_key, key = _key("p256"), _key(kind)
    root = sign_certificate(
        root_template(
            trust_domain=td,
            public_key=root_key.public_key(),
            now=start,
            ttl=dt.timedelta(days=days * 2),
            serial=7,
        ),
        root_key,
    )
    cert = sign_certificate(
        intermediate_template(
            trust_domain=td,
            public_key=key.public_key(),
            issuer=root,
            now=start,
            ttl=dt.timedelta(days=days),
            serial=8,
        ),
        root_key,
    )
    return cert, key


def _both(
    issuer: tuple[x509.Certificate, Any],
    subject_key: Any,
    *,
    spiffe_id: str = "spiffe://example.org/billing",
    dns_names: tuple[str, ...] = (),
    serial: int = 0x1234,
    now: dt.datetime = NOW,
    ttl: dt.timedelta = dt.timedelta(minutes=5),
    backdate: dt.timedelta = dt.timedelta(seconds=30),
) -> tuple[x509.Certificate, x509.Certificate]:
    cert, key = issuer
    sid = SpiffeId.parse(spiffe_id)
    layout = LeafLayout.for_template(
        spiffe_id=sid,
        dns_names=dns_names,
        rsa_key=isinstance(subject_key.public_key(), rsa.RSAPublicKey),
        issuer=cert,
        issuer_key=key,
        chain=(cert,),
        now=now,
    )
    ours = layout.issue(
        subject_key.public_key(),
        issuer_key=key,
        serial=serial,
        now=now,
        ttl=ttl,
        backdate=backdate,
    )
    builder = leaf_template(
        spiffe_id=sid,
        public_key=subject_key.public_key(),
        issuer=cert,
        now=now,
        ttl=ttl,
        serial=serial,
        dns_names=dns_names,
        backdate=backdate,
    )
    return ours, sign_certificate(builder, key)


@pytest.mark.parametrize("issuer_kind", ["p256", "p384", "rsa2048"])
@pytest.mark.parametrize("subject_kind", ["p256", "p384", "rsa2048", "rsa3072"])
def test_the_leaf_is_the_builders_leaf_byte_for_byte(issuer_kind: str, subject_kind: str) -> None:
    issuer = _issuer(issuer_kind)
    ours, theirs = _both(issuer, _key(subject_kind))
    assert ours.tbs_certificate_bytes == theirs.tbs_certificate_bytes
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    ours.verify_directly_issued_by(issuer[0])
    assert check_x509_svid((ours, issuer[0])) == SpiffeId.parse("spiffe://example.org/billing")


@pytest.mark.parametrize(
    "serial", [1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 2**64, 2**127, 2**127 + 1, 2**128 - 1]
)
def test_serials_of_every_length(serial: int) -> None:
    ours, theirs = _both(_issuer("p256"), _key("p256"), serial=serial)
    assert ours.tbs_certificate_bytes == theirs.tbs_certificate_bytes
    assert ours.serial_number == serial


@pytest.mark.parametrize(
    ("spiffe_id", "dns_names"),
    [
        ("spiffe://example.org/a", ()),
        ("spiffe://example.org/ns/shop/sa/" + "x" * 200, ()),
        ("spiffe://example.org/web", ("web.example.org",)),
        ("spiffe://example.org/web", ("web.example.org", "*.web.example.org", "localhost")),
        ("spiffe://example.org/web", ("a" * 63 + "." + "b" * 10,)),  # CN over 64: left out
        ("spiffe://example.org/web", tuple(f"h{i}.example.org" for i in range(40))),  # long SAN
    ],
)
def test_names_and_sans(spiffe_id: str, dns_names: tuple[str, ...]) -> None:
    ours, theirs = _both(_issuer("p256"), _key("p256"), spiffe_id=spiffe_id, dns_names=dns_names)
    assert ours.tbs_certificate_bytes == theirs.tbs_certificate_bytes


@pytest.mark.parametrize(
    ("now", "ttl", "backdate"),
    [
        (NOW, dt.timedelta(minutes=5), dt.timedelta(seconds=30)),
        (NOW, dt.timedelta(seconds=1), dt.timedelta(0)),
        (NOW, dt.timedelta(days=365), dt.timedelta(seconds=30)),  # capped at the issuer
        (NOW - dt.timedelta(seconds=10), dt.timedelta(minutes=5), dt.timedelta(minutes=1)),
    ],
)
def test_validity_as_the_builder_sets_it(
    now: dt.datetime, ttl: dt.timedelta, backdate: dt.timedelta
) -> None:
    ours, theirs = _both(_issuer("p256"), _key("p256"), now=now, ttl=ttl, backdate=backdate)
    assert ours.tbs_certificate_bytes == theirs.tbs_certificate_bytes


def test_utctime_until_2049_and_generalized_time_from_2050() -> None:
    start = dt.datetime(2049, 12, 31, 23, 50, tzinfo=dt.UTC)
    issuer = _issuer("p256", start=start - dt.timedelta(days=1), days=60)
    ours, theirs = _both(issuer, _key("p256"), now=start, ttl=dt.timedelta(hours=1))
    assert ours.tbs_certificate_bytes == theirs.tbs_certificate_bytes
    assert ours.not_valid_after_utc.year == 2050
    assert der_time(dt.datetime(2049, 1, 2, 3, 4, 5))[:1] == b"\x17"
    assert der_time(dt.datetime(2050, 1, 2, 3, 4, 5))[:1] == b"\x18"
    assert [der_length(n) for n in (0, 127, 128, 255, 256, 65535, 65536)] == [
        b"\x00", b"\x7f", b"\x81\x80", b"\x81\xff", b"\x82\x01\x00", b"\x82\xff\xff",
        b"\x83\x01\x00\x00",
    ]  # fmt: skip


def _layout(kind: str = "p256", **kwargs: Any) -> tuple[LeafLayout, Any]:
    cert, key = kwargs.pop("issuer", None) or _issuer("p256")
    args: dict[str, Any] = {
        "spiffe_id": SpiffeId.parse("spiffe://example.org/billing"),
        "dns_names": (),
        "rsa_key": kind.startswith("rsa"),
        "issuer": cert,
        "issuer_key": key,
        "chain": (cert,),
        "now": NOW,
        **kwargs,
    }
    return LeafLayout.for_template(**args), key


def _issue(layout: LeafLayout, key: Any, subject: Any, **kwargs: Any) -> x509.Certificate:
    args: dict[str, Any] = {
        "issuer_key": key,
        "serial": 5,
        "now": NOW,
        "ttl": dt.timedelta(minutes=5),
        "backdate": dt.timedelta(seconds=30),
        **kwargs,
    }
    return layout.issue(subject, **args)


def test_one_layout_issues_many_leaves_each_its_own_key_and_serial() -> None:
    layout, key = _layout()
    subjects = [ec.generate_private_key(ec.SECP256R1()) for _ in range(5)]
    leaves = [_issue(layout, key, s.public_key(), serial=i + 1) for i, s in enumerate(subjects)]
    assert [c.serial_number for c in leaves] == [1, 2, 3, 4, 5]
    for leaf, subject in zip(leaves, subjects, strict=True):
        assert leaf.public_key() == subject.public_key()
        ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(subject.public_key())
        leaf.verify_directly_issued_by(layout.issuer)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"serial": 0}, "serial"),
        ({"serial": 2**128}, "serial"),
        ({"serial": -1}, "serial"),
        ({"ttl": dt.timedelta(0)}, "lifetime"),
        ({"ttl": dt.timedelta(seconds=-5)}, "lifetime"),
        ({"now": NOW + dt.timedelta(days=31)}, "expired"),
    ],
)
def test_per_leaf_inputs_the_builder_refuses_are_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    layout, key = _layout()
    with pytest.raises(InvalidRequest, match=message):
        _issue(layout, key, _key("p256").public_key(), **kwargs)


@pytest.mark.parametrize("kind", ["p521", "rsa1024"])
def test_unsupported_subject_keys_are_refused(kind: str) -> None:
    layout, key = _layout("rsa2048" if kind.startswith("rsa") else "p256")
    with pytest.raises(InvalidRequest, match="unsupported key"):
        _issue(layout, key, _key(kind).public_key())


def test_a_key_of_the_other_kind_is_refused() -> None:
    ec_layout, key = _layout("p256")
    with pytest.raises(InvalidRequest, match="key kind"):
        _issue(ec_layout, key, _key("rsa2048").public_key())
    rsa_layout, key = _layout("rsa2048")
    with pytest.raises(InvalidRequest, match="key kind"):
        _issue(rsa_layout, key, _key("p256").public_key())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spiffe_id": SpiffeId.parse("spiffe://example.org")}, "needs a path"),
        ({"dns_names": ("bad name",)}, "invalid DNS name"),
        ({"dns_names": ("-x.example.org",)}, "invalid DNS name"),
        ({"spiffe_id": SpiffeId.parse("spiffe://other.org/x")}, "cannot issue"),
    ],
)
def test_templates_the_builder_refuses_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        _layout(**kwargs)
