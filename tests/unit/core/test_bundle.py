"""SPIFFE bundle encode/decode, exports and BundleSet."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import spiffe
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s.core.bundle import MAX_BUNDLE_BYTES, Bundle, BundleSet, JwtAuthority
from s2s.core.errors import InvalidBundle
from s2s.core.spiffe_id import TrustDomain
from s2s.core.x509templates import root_template, serial_from_entropy, sign_certificate
from s2s.testing import TestAuthority

TD = TrustDomain.parse("example.org")
OTHER_TD = TrustDomain.parse("other.org")
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def make_root(key: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
    """A root CA for ``TD`` from the production template (P-256, P-384, RSA keys)."""
    template = root_template(
        trust_domain=TD,
        public_key=key.public_key(),
        now=NOW,
        ttl=dt.timedelta(days=1),
        serial=serial_from_entropy(os.urandom(16)),
    )
    return sign_certificate(template, key)


def make_ed25519_root(key: ed25519.Ed25519PrivateKey) -> x509.Certificate:
    """A foreign trust domain's Ed25519 root (s2s does not issue these, but may federate)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed25519 root")])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, None)
    )


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p256b": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "p521": ec.generate_private_key(ec.SECP521R1()),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa1024": rsa.generate_private_key(public_exponent=65537, key_size=1024),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "k1": ec.generate_private_key(ec.SECP256K1()),
    }


@pytest.fixture(scope="module")
def roots(keys: dict[str, Any]) -> dict[str, x509.Certificate]:
    made = {name: make_root(keys[name]) for name in ("p256", "p384", "rsa")}
    return {**made, "ed25519": make_ed25519_root(keys["ed25519"])}


@pytest.fixture(scope="module")
def full_bundle(keys: dict[str, Any], roots: dict[str, x509.Certificate]) -> Bundle:
    jwts = tuple(
        JwtAuthority(f"kid-{name}", keys[name].public_key())
        for name in ("p256", "p384", "p521", "rsa")
    )
    return Bundle(TD, tuple(roots.values()), jwts, sequence=7, refresh_hint=300)


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode()


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def doc_of(bundle: Bundle) -> dict[str, Any]:
    return json.loads(bundle.encode())  # type: ignore[no-any-return]


def decode_doc(doc: Any) -> Bundle:
    return Bundle.decode(TD, json.dumps(doc).encode())


# --- round trips --------------------------------------------------------------------------------


def test_round_trip_keeps_every_field(full_bundle: Bundle) -> None:
    again = Bundle.decode(TD, full_bundle.encode())
    assert again == full_bundle
    assert hash(again) == hash(full_bundle)
    assert again.x509_authorities == full_bundle.x509_authorities
    assert [a.kid for a in again.jwt_authorities] == ["kid-p256", "kid-p384", "kid-p521", "kid-rsa"]
    assert again.sequence == 7
    assert again.refresh_hint == 300
    assert Bundle.decode(TD, full_bundle.encode().decode()) == full_bundle  # text input


def test_encoding_follows_the_spec_shape(full_bundle: Bundle, roots: dict[str, Any]) -> None:
    doc = doc_of(full_bundle)
    assert set(doc) == {"keys", "spiffe_sequence", "spiffe_refresh_hint"}
    x509_keys = [k for k in doc["keys"] if k["use"] == "x509-svid"]
    jwt_keys = [k for k in doc["keys"] if k["use"] == "jwt-svid"]
    assert len(x509_keys) == 4
    assert len(jwt_keys) == 4
    for entry, cert in zip(x509_keys, roots.values(), strict=True):
        assert "kid" not in entry
        assert entry["x5c"] == [b64(der(cert))]
    assert all(k["kid"].startswith("kid-") and "x5c" not in k for k in jwt_keys)
    ec_entry = next(k for k in jwt_keys if k["kid"] == "kid-p521")
    assert ec_entry["crv"] == "P-521"
    assert len(base64.urlsafe_b64decode(ec_entry["x"] + "==")) == 66  # fixed-size coordinates


def test_no_refresh_hint_is_omitted_and_decoded_as_none() -> None:
    bundle = Bundle(TD, sequence=1)
    assert "spiffe_refresh_hint" not in doc_of(bundle)
    assert Bundle.decode(TD, bundle.encode()).refresh_hint is None
    assert Bundle.decode(TD, b'{"keys": []}') == Bundle(TD)


def test_equality_is_by_value_not_key_identity(keys: dict[str, Any]) -> None:
    pub = keys["p256"].public_key()
    spki = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    reloaded = serialization.load_der_public_key(spki)
    assert JwtAuthority("a", pub) == JwtAuthority("a", reloaded)
    assert hash(JwtAuthority("a", pub)) == hash(JwtAuthority("a", reloaded))
    assert JwtAuthority("a", pub) != JwtAuthority("b", pub)
    assert JwtAuthority("a", pub) != JwtAuthority("a", keys["p256b"].public_key())
    assert Bundle(TD, sequence=1) != Bundle(TD, sequence=2)
    assert Bundle(TD) != Bundle(OTHER_TD)


def test_jwt_authority_lookup(full_bundle: Bundle, keys: dict[str, Any]) -> None:
    found = full_bundle.jwt_authority("kid-rsa")
    assert found is not None
    assert found == JwtAuthority("kid-rsa", keys["rsa"].public_key())
    assert full_bundle.jwt_authority("nope") is None
    assert full_bundle.jwt_authority("") is None


def test_bundle_is_immutable(full_bundle: Bundle) -> None:
    with pytest.raises(AttributeError):
        full_bundle.sequence = 9  # type: ignore[misc]


def test_test_authority_bundle_round_trips_and_verifies_its_jwt_svids() -> None:
    ca = TestAuthority("example.org", now=NOW)
    bundle = Bundle.decode(TD, ca.bundle().encode())
    assert bundle == ca.bundle()
    assert bundle.x509_authorities == (ca.root,)
    token = ca.issue_jwt_svid("spiffe://example.org/web", "aud", now=NOW)
    kid = jwt.get_unverified_header(token)["kid"]
    authority = bundle.jwt_authority(kid)
    assert authority is not None
    assert isinstance(authority.public_key, ec.EllipticCurvePublicKey)
    claims = jwt.decode(
        token,
        authority.public_key,
        algorithms=["ES256"],
        audience="aud",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["sub"] == "spiffe://example.org/web"
    # the twin: another authority's bundle has no key for this token
    other = Bundle.decode(TD, TestAuthority("example.org", now=NOW).bundle().encode())
    assert other.jwt_authority(kid) is None
    assert other != bundle


# --- interoperability with py-spiffe ------------------------------------------------------------


def test_py_spiffe_parses_our_jwt_jwks(full_bundle: Bundle, keys: dict[str, Any]) -> None:
    parsed = spiffe.JwtBundle.parse(spiffe.TrustDomain("example.org"), full_bundle.jwt_jwks())
    assert set(parsed.jwt_authorities) == {"kid-p256", "kid-p384", "kid-p521", "kid-rsa"}
    for kid, authority in parsed.jwt_authorities.items():
        ours = full_bundle.jwt_authority(kid)
        assert ours is not None
        assert JwtAuthority(kid, authority) == ours
    # and the whole SPIFFE bundle too (PyJWKSet ignores our x509-svid entries' extra members)
    assert json.loads(full_bundle.jwt_jwks()) == {
        "keys": [a.to_jwk() for a in full_bundle.jwt_authorities]
    }


def test_py_spiffe_parses_our_x509_der_and_pem(full_bundle: Bundle) -> None:
    td = spiffe.TrustDomain("example.org")
    from_der = spiffe.X509Bundle.parse_raw(td, full_bundle.x509_der())
    from_pem = spiffe.X509Bundle.parse(td, full_bundle.x509_pem())
    assert from_der.x509_authorities == set(full_bundle.x509_authorities)
    assert from_pem.x509_authorities == set(full_bundle.x509_authorities)


def test_we_read_what_py_spiffe_saves(full_bundle: Bundle, tmp_path: Any) -> None:
    td = spiffe.TrustDomain("example.org")
    theirs = spiffe.X509Bundle(td, set(full_bundle.x509_authorities))
    theirs.save(str(tmp_path / "b.der"), serialization.Encoding.DER)
    theirs.save(str(tmp_path / "b.pem"), serialization.Encoding.PEM)
    from_der = Bundle.from_x509_der(TD, (tmp_path / "b.der").read_bytes())
    from_pem = Bundle.from_x509_pem(TD, (tmp_path / "b.pem").read_bytes())
    assert set(from_der.x509_authorities) == set(full_bundle.x509_authorities)
    assert set(from_pem.x509_authorities) == set(full_bundle.x509_authorities)


# --- DER / PEM exports --------------------------------------------------------------------------


def test_der_and_pem_round_trip(full_bundle: Bundle) -> None:
    from_der = Bundle.from_x509_der(TD, full_bundle.x509_der())
    from_pem = Bundle.from_x509_pem(TD, full_bundle.x509_pem())
    assert from_der.x509_authorities == full_bundle.x509_authorities
    assert from_pem.x509_authorities == full_bundle.x509_authorities
    assert Bundle.from_x509_der(TD, b"") == Bundle(TD)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:-1],  # truncated
        lambda d: d + b"\x00",  # trailing junk
        lambda d: d + b"\x30",  # a lone tag
        lambda d: b"\x31" + d[1:],  # not a SEQUENCE
        lambda d: b"\x30\x80" + d[2:],  # indefinite length (BER, not DER)
        lambda d: b"\x30\x85\xff\xff\xff\xff\xff",  # absurd length
        lambda d: b"\x30\x03abc",  # a SEQUENCE that is not a certificate
    ],
)
def test_bad_der_is_rejected(full_bundle: Bundle, mutate: Callable[[bytes], bytes]) -> None:
    with pytest.raises(InvalidBundle):
        Bundle.from_x509_der(TD, mutate(full_bundle.x509_der()))


@pytest.mark.parametrize(
    "pem",
    [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
)
def test_bad_pem_is_rejected(pem: bytes) -> None:
    with pytest.raises(InvalidBundle):
        Bundle.from_x509_pem(TD, pem)


def test_pem_with_a_private_key_is_rejected(roots: dict[str, Any], keys: dict[str, Any]) -> None:
    cert_pem = roots["p256"].public_bytes(serialization.Encoding.PEM)
    assert Bundle.from_x509_pem(TD, cert_pem).x509_authorities == (roots["p256"],)
    key_pem = keys["p256"].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(InvalidBundle, match="private key"):
        Bundle.from_x509_pem(TD, key_pem + cert_pem)


def test_oversize_der_and_pem_are_rejected() -> None:
    with pytest.raises(InvalidBundle, match="larger"):
        Bundle.from_x509_der(TD, b"\x30" * (MAX_BUNDLE_BYTES + 1))
    with pytest.raises(InvalidBundle, match="larger"):
        Bundle.from_x509_pem(TD, b"-" * (MAX_BUNDLE_BYTES + 1))


# --- decode: accepted and ignored elements ------------------------------------------------------


def test_empty_keys_is_a_valid_bundle_with_no_authorities() -> None:
    bundle = Bundle.decode(TD, b'{"keys": [], "spiffe_sequence": 2}')
    assert bundle.x509_authorities == ()
    assert bundle.jwt_authorities == ()


def test_unknown_use_or_kty_elements_are_ignored(full_bundle: Bundle) -> None:
    doc = doc_of(full_bundle)
    kept = list(doc["keys"])
    doc["keys"] += [
        {**kept[0], "use": "wit-svid"},
        {**kept[0], "use": "X509-SVID"},  # use is case-sensitive
        {k: v for k, v in kept[0].items() if k != "use"},
        {**kept[-1], "kty": "oct", "k": "c2VjcmV0"},
        {k: v for k, v in kept[-1].items() if k != "kty"},
        {"kty": "OKP", "crv": "Ed25519", "x": "AA", "use": "jwt-svid", "kid": "ed"},
    ]
    doc["unknown_top_level"] = {"anything": [1, 2]}
    assert decode_doc(doc) == full_bundle


def test_only_the_first_x5c_certificate_is_the_authority(roots: dict[str, Any]) -> None:
    doc = doc_of(Bundle(TD, (roots["p256"],)))
    doc["keys"][0]["x5c"].append(b64(der(roots["rsa"])))
    assert decode_doc(doc).x509_authorities == (roots["p256"],)


def test_x509_key_with_a_kid_is_still_accepted(roots: dict[str, Any]) -> None:
    doc = doc_of(Bundle(TD, (roots["p384"],)))
    doc["keys"][0]["kid"] = "some-kid"
    assert decode_doc(doc).x509_authorities == (roots["p384"],)


# --- decode: rejections -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[]",
        b'"keys"',
        b"null",
        b"{}",
        b'{"keys": {}}',
        b'{"keys": null}',
        b'{"keys": [1]}',
        b'{"keys": [[]]}',
        b'{"keys": [], "spiffe_sequence": -1}',
        b'{"keys": [], "spiffe_sequence": 1.5}',
        b'{"keys": [], "spiffe_sequence": "1"}',
        b'{"keys": [], "spiffe_sequence": true}',
        b'{"keys": [], "spiffe_sequence": 18446744073709551616}',
        b'{"keys": [], "spiffe_refresh_hint": -5}',
        b'{"keys": [], "spiffe_refresh_hint": null}',
        b'{"keys": [], "spiffe_sequence": NaN}',
        b'{"keys": [], "spiffe_refresh_hint": Infinity}',
        b'{"keys": [], "keys": []}',
        b'{"keys": [{"use": "jwt-svid", "use": "x509-svid"}]}',
        b'\xff\xfe{"keys": []}',
        b'{"keys": [], "x": "\xc3\x28"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"keys": [], "spiffe_sequence": ' + b"9" * 5000 + b"}",
    ],
)
def test_malformed_documents_are_rejected(data: bytes) -> None:
    with pytest.raises(InvalidBundle):
        Bundle.decode(TD, data)


def test_oversize_input_is_rejected_before_parsing() -> None:
    padding = " " * MAX_BUNDLE_BYTES
    with pytest.raises(InvalidBundle, match="larger"):
        Bundle.decode(TD, ('{"keys": []}' + padding).encode())
    with pytest.raises(InvalidBundle, match="larger"):
        Bundle.decode(TD, '{"keys": []}' + padding)
    with pytest.raises(InvalidBundle, match="larger"):
        Bundle.decode(TD, '{"keys": [], "x": "' + "\u00e9" * (MAX_BUNDLE_BYTES // 2) + '"}')
    assert Bundle.decode(TD, '{"keys": []}' + " " * (MAX_BUNDLE_BYTES - 20)) == Bundle(TD)


def _x509_entry(roots: dict[str, Any], name: str = "p256") -> dict[str, Any]:
    return doc_of(Bundle(TD, (roots[name],)))["keys"][0]  # type: ignore[no-any-return]


def _jwt_entry(keys: dict[str, Any], name: str = "p256") -> dict[str, Any]:
    return JwtAuthority("kid-1", keys[name].public_key()).to_jwk()


X509_BREAKERS: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
    ("x5c missing", lambda e: e.pop("x5c")),
    ("x5c empty", lambda e: e.update(x5c=[])),
    ("x5c a string", lambda e: e.update(x5c=e["x5c"][0])),
    ("x5c not base64", lambda e: e.update(x5c=["!!not base64!!"])),
    ("x5c base64url", lambda e: e.update(x5c=[e["x5c"][0].replace("+", "-").replace("/", "_")])),
    ("x5c garbage DER", lambda e: e.update(x5c=[b64(b"\x30\x03abc")])),
    ("x5c truncated DER", lambda e: e.update(x5c=[b64(base64.b64decode(e["x5c"][0])[:-3])])),
    ("x5c a number", lambda e: e.update(x5c=[42])),
    ("key params missing", lambda e: [e.pop("x"), e.pop("y")]),
    ("crv wrong", lambda e: e.update(crv="P-384")),
    ("crv a list", lambda e: e.update(crv=["P-256"])),
    ("kty mismatch", lambda e: e.update(kty="RSA", n=e["x"], e="AQAB")),
    ("private key", lambda e: e.update(d=e["x"])),
]


@pytest.mark.parametrize(("label", "breaker"), X509_BREAKERS, ids=[b[0] for b in X509_BREAKERS])
def test_bad_x509_entries_are_rejected(
    roots: dict[str, Any], label: str, breaker: Callable[[dict[str, Any]], object]
) -> None:
    good = _x509_entry(roots)
    assert decode_doc({"keys": [good]}).x509_authorities == (roots["p256"],)
    entry = json.loads(json.dumps(good))
    breaker(entry)
    with pytest.raises(InvalidBundle):
        decode_doc({"keys": [entry]})


def test_x5c_certificate_must_match_the_jwk_key(
    roots: dict[str, Any], keys: dict[str, Any]
) -> None:
    entry = _x509_entry(roots)
    other = JwtAuthority("x", keys["p256b"].public_key()).to_jwk()
    entry.update(x=other["x"], y=other["y"])
    with pytest.raises(InvalidBundle, match="does not match"):
        decode_doc({"keys": [entry]})
    rsa_entry = _x509_entry(roots, "rsa")
    rsa_entry["e"] = "AQAD"
    with pytest.raises(InvalidBundle, match="does not match"):
        decode_doc({"keys": [rsa_entry]})


JWT_BREAKERS: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
    ("no kid", lambda e: e.pop("kid")),
    ("empty kid", lambda e: e.update(kid="")),
    ("numeric kid", lambda e: e.update(kid=5)),
    ("x missing", lambda e: e.pop("x")),
    ("x padded", lambda e: e.update(x=e["x"] + "=")),
    ("x not base64url", lambda e: e.update(x="***")),
    ("x short", lambda e: e.update(x=e["x"][:-4])),
    ("not on curve", lambda e: e.update(y=e["x"])),
    ("crv unknown", lambda e: e.update(crv="P-192")),
    ("crv missing", lambda e: e.pop("crv")),
    ("private key", lambda e: e.update(d=e["x"])),
]


@pytest.mark.parametrize(("label", "breaker"), JWT_BREAKERS, ids=[b[0] for b in JWT_BREAKERS])
def test_bad_jwt_entries_are_rejected(
    keys: dict[str, Any], label: str, breaker: Callable[[dict[str, Any]], object]
) -> None:
    good = _jwt_entry(keys)
    assert decode_doc({"keys": [good]}).jwt_authority("kid-1") is not None
    entry = dict(good)
    breaker(entry)
    with pytest.raises(InvalidBundle):
        decode_doc({"keys": [entry]})


def test_weak_or_odd_jwt_keys_are_rejected(keys: dict[str, Any]) -> None:
    nums = keys["rsa1024"].public_key().public_numbers()
    weak = {
        "use": "jwt-svid",
        "kid": "weak",
        "kty": "RSA",
        "n": base64.urlsafe_b64encode(nums.n.to_bytes(128, "big")).decode().rstrip("="),
        "e": "AQAB",
    }
    with pytest.raises(InvalidBundle, match="2048"):
        decode_doc({"keys": [weak]})
    bad_rsa = {**_jwt_entry(keys, "rsa"), "e": "AQ"}  # e = 1
    with pytest.raises(InvalidBundle):
        decode_doc({"keys": [bad_rsa]})
    with pytest.raises(InvalidBundle):
        JwtAuthority("k1", keys["k1"].public_key())  # secp256k1 has no JWT-SVID algorithm
    with pytest.raises(InvalidBundle):
        JwtAuthority("ed", keys["ed25519"].public_key())
    with pytest.raises(InvalidBundle):
        JwtAuthority("", keys["p256"].public_key())


def test_duplicate_kids_are_rejected(keys: dict[str, Any]) -> None:
    a = _jwt_entry(keys, "p256")
    b = {**_jwt_entry(keys, "p384"), "kid": a["kid"]}
    with pytest.raises(InvalidBundle, match="kid"):
        decode_doc({"keys": [a, b]})
    auth = JwtAuthority("same", keys["p256"].public_key())
    with pytest.raises(InvalidBundle):
        Bundle(TD, jwt_authorities=(auth, JwtAuthority("same", keys["p384"].public_key())))


def test_constructor_checks_its_fields(roots: dict[str, Any]) -> None:
    with pytest.raises(InvalidBundle):
        Bundle(TD, sequence=-1)
    with pytest.raises(InvalidBundle):
        Bundle(TD, refresh_hint=True)
    with pytest.raises(InvalidBundle):
        Bundle("example.org")  # type: ignore[arg-type]
    with pytest.raises(InvalidBundle):
        Bundle(TD, x509_authorities=(b"not a cert",))  # type: ignore[arg-type]
    # duplicate roots collapse to one
    assert Bundle(TD, (roots["p256"], roots["p256"])).x509_authorities == (roots["p256"],)


# --- BundleSet ----------------------------------------------------------------------------------


def test_bundle_set_is_keyed_by_trust_domain(full_bundle: Bundle) -> None:
    other = Bundle(OTHER_TD, sequence=3)
    bundles = BundleSet.of(full_bundle, other)
    assert bundles.get(TD) is full_bundle
    assert bundles.get(OTHER_TD) is other
    assert bundles.get(TrustDomain.parse("third.org")) is None
    assert len(bundles) == 2
    assert set(bundles) == {full_bundle, other}
    assert bundles.trust_domains() == frozenset({TD, OTHER_TD})
    newer = Bundle(OTHER_TD, sequence=4)
    updated = bundles.with_bundle(newer)
    assert updated.get(OTHER_TD) is newer
    assert bundles.get(OTHER_TD) is other  # the original is unchanged
    assert updated.without(OTHER_TD) == BundleSet.of(full_bundle)
    assert BundleSet.of(full_bundle, other) == BundleSet.of(other, full_bundle)
    assert hash(BundleSet.of(full_bundle, other)) == hash(BundleSet.of(other, full_bundle))
    assert bundles != updated
    assert len(BundleSet()) == 0


def test_bundle_set_rejects_mixups(full_bundle: Bundle) -> None:
    with pytest.raises(InvalidBundle):
        BundleSet.of(full_bundle, Bundle(TD, sequence=99))
    with pytest.raises(InvalidBundle):
        BundleSet({OTHER_TD: full_bundle})
    bundles = BundleSet.of(full_bundle)
    with pytest.raises(TypeError):
        bundles.bundles[OTHER_TD] = full_bundle  # type: ignore[index]


# --- property tests -----------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_key_entry = st.fixed_dictionaries(
    {},
    optional={
        "use": st.sampled_from(["x509-svid", "jwt-svid", "other"]) | _json,
        "kty": st.sampled_from(["EC", "RSA", "OKP", "oct"]) | _json,
        "kid": _json,
        "crv": st.sampled_from(["P-256", "P-384", "P-521", "Ed25519"]) | _json,
        "x": st.binary(max_size=70).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="))
        | _json,
        "y": st.binary(max_size=70).map(lambda b: base64.urlsafe_b64encode(b).decode()) | _json,
        "n": st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).decode()) | _json,
        "e": st.sampled_from(["AQAB", "AQ", "", "AAAA"]) | _json,
        "x5c": st.lists(st.binary(max_size=80).map(b64) | _json, max_size=2) | _json,
    },
)
_bundle_like = st.fixed_dictionaries(
    {},
    optional={
        "keys": st.lists(_key_entry | _json, max_size=4) | _json,
        "spiffe_sequence": _scalars,
        "spiffe_refresh_hint": _scalars,
    },
)


@settings(max_examples=300, deadline=None)
@given(doc=_bundle_like | _json)
def test_decode_only_ever_raises_invalid_bundle(doc: Any) -> None:
    try:
        data = json.dumps(doc).encode()
    except ValueError:
        return
    try:
        bundle = Bundle.decode(TD, data)
    except InvalidBundle:
        return
    assert Bundle.decode(TD, bundle.encode()) == bundle


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_decode_and_der_import_of_random_bytes(data: bytes) -> None:
    for parse in (Bundle.decode, Bundle.from_x509_der, Bundle.from_x509_pem):
        with contextlib.suppress(InvalidBundle):
            parse(TD, data)
