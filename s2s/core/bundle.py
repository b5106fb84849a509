"""SPIFFE trust bundles: one trust domain's X.509 and JWT authorities.

The JSON form is the SPIFFE bundle format (SPIFFE_Trust_Domain_and_Bundle.md section 4): a JWK Set
whose ``keys`` carry ``use`` ``x509-svid`` (a root certificate in ``x5c``) or ``jwt-svid`` (a JWT
signing key with a ``kid``), plus ``spiffe_sequence`` and ``spiffe_refresh_hint``. Bundles of
different trust domains are never merged (SPIFFE_Federation.md 4.2): :class:`BundleSet` keys them by
trust domain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from s2s.core.errors import InvalidBundle
from s2s.core.jwk import (
    KNOWN_KTY,
    b64std,
    check_jwt_key,
    public_jwk,
    public_key_from_jwk,
    short_error,
    spki_der,
    unb64std,
)
from s2s.core.spiffe_id import TrustDomain

__all__ = [
    "MAX_BUNDLE_BYTES",
    "USE_JWT_SVID",
    "USE_X509_SVID",
    "Bundle",
    "BundleSet",
    "JwtAuthority",
]

MAX_BUNDLE_BYTES = 1 << 20  # 1 MiB: thousands of roots; anything larger is an attack or a mistake
MAX_SEQUENCE = (1 << 64) - 1  # spec: use at least 64-bit counters
_JWT_KTY = frozenset({"EC", "RSA"})  # JWT-SVID algorithms are RS*/PS*/ES* only
USE_X509_SVID = "x509-svid"
USE_JWT_SVID = "jwt-svid"


@dataclass(frozen=True, slots=True)
class JwtAuthority:
    """A JWT-SVID signing key of a trust domain, looked up by ``kid``.

    Equality and hashing use the key's SubjectPublicKeyInfo DER, not object identity.
    ``not_after`` is informational and is not part of the JSON bundle format.
    """

    kid: str
    public_key: PublicKeyTypes = field(compare=False)
    not_after: datetime | None = None
    _spki: bytes = field(init=False, repr=False, default=b"")

    def __post_init__(self) -> None:
        if not isinstance(self.kid, str) or not self.kid:
            raise InvalidBundle("a JWT authority needs a non-empty kid")
        if not isinstance(self.public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise InvalidBundle(f"JWT authority {self.kid!r}: the key must be an EC or RSA key")
        check_jwt_key(self.public_key, f"JWT authority {self.kid!r}")
        if self.not_after is not None and self.not_after.utcoffset() is None:
            raise InvalidBundle("not_after must be an aware datetime")
        object.__setattr__(self, "_spki", spki_der(self.public_key))

    def to_jwk(self) -> dict[str, Any]:
        """The ``jwt-svid`` JWK of this authority."""
        return {"use": USE_JWT_SVID, "kid": self.kid, **public_jwk(self.public_key)}


@dataclass(frozen=True, slots=True)
class Bundle:
    """The trust bundle of one trust domain (immutable, hashable, compared by value).

    >>> td = TrustDomain.parse("example.org")
    >>> b = Bundle.decode(td, b'{"keys": [], "spiffe_sequence": 3}')
    >>> b.sequence, b.x509_authorities, Bundle.decode(td, b.encode()) == b
    (3, (), True)
    """

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: tuple[JwtAuthority, ...] = ()
    sequence: int = 0
    refresh_hint: int | None = None  # seconds
    _by_kid: Mapping[str, JwtAuthority] = field(
        init=False, repr=False, compare=False, default_factory=lambda: MappingProxyType({})
    )

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise InvalidBundle("trust_domain must be a TrustDomain")
        roots = tuple(self.x509_authorities)
        if not all(isinstance(c, x509.Certificate) for c in roots):
            raise InvalidBundle("x509_authorities must be certificates")
        jwts = tuple(self.jwt_authorities)
        if not all(isinstance(a, JwtAuthority) for a in jwts):
            raise InvalidBundle("jwt_authorities must be JwtAuthority values")
        by_kid: dict[str, JwtAuthority] = {}
        for authority in jwts:
            if authority.kid in by_kid:
                raise InvalidBundle(f"two JWT authorities share the kid {authority.kid!r}")
            by_kid[authority.kid] = authority
        _check_counter("sequence", self.sequence, MAX_SEQUENCE)
        if self.refresh_hint is not None:
            _check_counter("refresh_hint", self.refresh_hint, MAX_SEQUENCE)
        object.__setattr__(self, "x509_authorities", _dedupe(roots))
        object.__setattr__(self, "jwt_authorities", jwts)
        object.__setattr__(self, "_by_kid", MappingProxyType(by_kid))

    def jwt_authority(self, kid: str) -> JwtAuthority | None:
        """The JWT authority with this ``kid``, or None."""
        return self._by_kid.get(kid)

    def encode(self) -> bytes:
        """The SPIFFE bundle JSON of this bundle."""
        keys = [_x509_jwk(cert) for cert in self.x509_authorities]
        keys += [a.to_jwk() for a in self.jwt_authorities]
        doc: dict[str, Any] = {"keys": keys, "spiffe_sequence": self.sequence}
        if self.refresh_hint is not None:
            doc["spiffe_refresh_hint"] = self.refresh_hint
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    def jwt_jwks(self) -> bytes:
        """A JWKS with only the ``jwt-svid`` keys (the Workload API's JWT bundle form)."""
        keys = [a.to_jwk() for a in self.jwt_authorities]
        return json.dumps({"keys": keys}, separators=(",", ":"), sort_keys=True).encode()

    def x509_der(self) -> bytes:
        """The X.509 authorities as concatenated DER (the Workload API's bundle form)."""
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.x509_authorities)

    def x509_pem(self) -> bytes:
        """The X.509 authorities as concatenated PEM."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.x509_authorities)

    @classmethod
    def decode(cls, trust_domain: TrustDomain, data: bytes | str) -> Bundle:
        """Parse SPIFFE bundle JSON; raises :class:`InvalidBundle` saying what is wrong."""
        doc = _load_json(data)
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise InvalidBundle("the bundle needs a 'keys' array (it may be empty)")
        roots: list[x509.Certificate] = []
        jwts: list[JwtAuthority] = []
        for index, entry in enumerate(keys):
            _decode_key(index, entry, roots, jwts)
        sequence = _counter(doc, "spiffe_sequence", default=0)
        hint = _counter(doc, "spiffe_refresh_hint", default=None)
        return cls(trust_domain, tuple(roots), tuple(jwts), sequence, hint)

    @classmethod
    def from_x509_pem(cls, trust_domain: TrustDomain, pem: bytes) -> Bundle:
        """A bundle of the certificates in ``pem`` (at least one)."""
        _check_raw(pem, "PEM")
        if b"PRIVATE KEY-----" in pem:
            raise InvalidBundle("the PEM holds a private key; a bundle holds certificates only")
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except ValueError as exc:
            raise InvalidBundle(f"not a PEM certificate bundle: {exc}") from exc
        return cls(trust_domain, tuple(certs))

    @classmethod
    def from_x509_der(cls, trust_domain: TrustDomain, der: bytes) -> Bundle:
        """A bundle of the concatenated DER certificates in ``der`` (empty means no roots)."""
        _check_raw(der, "DER")
        certs = []
        for index, chunk in enumerate(_split_der(der)):
            try:
                certs.append(x509.load_der_x509_certificate(chunk))
            except ValueError as exc:
                raise InvalidBundle(f"certificate {index} is not valid DER: {exc}") from exc
        return cls(trust_domain, tuple(certs))


@dataclass(frozen=True, slots=True)
class BundleSet:
    """Bundles keyed by trust domain; never merged into one pool."""

    bundles: Mapping[TrustDomain, Bundle] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        copy = dict(self.bundles)
        for td, bundle in copy.items():
            if not isinstance(bundle, Bundle) or bundle.trust_domain != td:
                raise InvalidBundle(f"the bundle stored under {td} is not that trust domain's")
        object.__setattr__(self, "bundles", MappingProxyType(copy))

    @classmethod
    def of(cls, *bundles: Bundle) -> BundleSet:
        """A set of these bundles; two bundles of one trust domain are an error."""
        mapping: dict[TrustDomain, Bundle] = {}
        for bundle in bundles:
            if bundle.trust_domain in mapping:
                raise InvalidBundle(f"two bundles for trust domain {bundle.trust_domain}")
            mapping[bundle.trust_domain] = bundle
        return cls(mapping)

    def get(self, trust_domain: TrustDomain) -> Bundle | None:
        """The bundle of ``trust_domain``, or None (that trust domain is not trusted)."""
        return self.bundles.get(trust_domain)

    def with_bundle(self, bundle: Bundle) -> BundleSet:
        """A copy with ``bundle`` added or replacing its trust domain's bundle."""
        return BundleSet({**self.bundles, bundle.trust_domain: bundle})

    def without(self, trust_domain: TrustDomain) -> BundleSet:
        """A copy without that trust domain's bundle."""
        return BundleSet({td: b for td, b in self.bundles.items() if td != trust_domain})

    def trust_domains(self) -> frozenset[TrustDomain]:
        """The trust domains that have a bundle here."""
        return frozenset(self.bundles)

    def __iter__(self) -> Iterator[Bundle]:
        return iter(self.bundles.values())

    def __len__(self) -> int:
        return len(self.bundles)

    def __hash__(self) -> int:
        return hash(frozenset(self.bundles.items()))


def _check_raw(data: object, form: str) -> None:
    if not isinstance(data, bytes):
        raise InvalidBundle(f"{form} input must be bytes")
    if len(data) > MAX_BUNDLE_BYTES:
        raise InvalidBundle(f"the {form} bundle is larger than {MAX_BUNDLE_BYTES} bytes")


def _check_counter(name: str, value: object, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise InvalidBundle(f"{name} must be an integer from 0 to {limit}")


def _counter(doc: Mapping[str, Any], name: str, *, default: int | None) -> Any:
    if name not in doc:
        return default
    value = doc[name]
    try:
        _check_counter(name, value, MAX_SEQUENCE)
    except InvalidBundle:
        raise InvalidBundle(f"'{name}' must be an integer from 0 to {MAX_SEQUENCE}") from None
    return value


def _dedupe(certs: tuple[x509.Certificate, ...]) -> tuple[x509.Certificate, ...]:
    return tuple(dict.fromkeys(certs))


def _x509_jwk(cert: x509.Certificate) -> dict[str, Any]:
    jwk = public_jwk(cert.public_key())
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"use": USE_X509_SVID, **jwk, "x5c": [b64std(der)]}


def _load_json(data: bytes | str) -> dict[str, Any]:
    if isinstance(data, str):
        if len(data) > MAX_BUNDLE_BYTES:
            raise InvalidBundle(f"the bundle is larger than {MAX_BUNDLE_BYTES} bytes")
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, bytes | bytearray):
        raise InvalidBundle("bundle input must be bytes or text")
    if len(data) > MAX_BUNDLE_BYTES:
        raise InvalidBundle(f"the bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        text = bytes(data).decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except InvalidBundle:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidBundle(f"the bundle is not valid JSON: {short_error(exc)}") from None
    if not isinstance(doc, dict):
        raise InvalidBundle("the bundle must be a JSON object")
    return doc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidBundle(f"duplicate JSON key {key[:64]!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> None:
    raise InvalidBundle(f"{name} is not valid JSON")


def _decode_key(
    index: int, entry: object, roots: list[x509.Certificate], jwts: list[JwtAuthority]
) -> None:
    where = f"keys[{index}]"
    if not isinstance(entry, dict):
        raise InvalidBundle(f"{where} must be a JSON object")
    use, kty = entry.get("use"), entry.get("kty")
    # Section 4.2.1/4.2.2: an element with an unknown use or kty is ignored, not fatal.
    if use not in (USE_X509_SVID, USE_JWT_SVID) or not isinstance(kty, str) or kty not in KNOWN_KTY:
        return
    if "d" in entry or "p" in entry:
        raise InvalidBundle(f"{where} contains private key material")
    if use == USE_X509_SVID:
        roots.append(_decode_x509_key(where, entry))
    elif kty in _JWT_KTY:
        jwts.append(_decode_jwt_key(where, entry))


def _decode_x509_key(where: str, entry: Mapping[str, Any]) -> x509.Certificate:
    x5c = entry.get("x5c")
    if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
        raise InvalidBundle(f"{where}: an x509-svid key needs 'x5c' with a base64 certificate")
    # Section 4.2.1: only the first certificate is the authority; the rest are ignored.
    try:
        cert = x509.load_der_x509_certificate(unb64std(x5c[0]))
    except ValueError as exc:
        raise InvalidBundle(
            f"{where}: x5c[0] is not a DER certificate: {short_error(exc)}"
        ) from None
    key = public_key_from_jwk(entry, where)
    # RFC 7517 4.7: the certificate's key must be the JWK's key.
    if spki_der(key) != spki_der(cert.public_key()):
        raise InvalidBundle(f"{where}: the x5c certificate does not match the key parameters")
    return cert


def _decode_jwt_key(where: str, entry: Mapping[str, Any]) -> JwtAuthority:
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidBundle(f"{where}: a jwt-svid key needs a non-empty 'kid'")
    key = public_key_from_jwk(entry, where)
    try:
        return JwtAuthority(kid, key)
    except InvalidBundle as exc:
        raise InvalidBundle(f"{where}: {exc}") from None


def _split_der(data: bytes) -> Iterator[bytes]:
    """Split concatenated DER SEQUENCEs (definite lengths only, as DER requires)."""
    pos = 0
    while pos < len(data):
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise InvalidBundle(f"bytes at offset {pos} are not a DER certificate")
        first = data[pos + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + 2 + n > len(data):
                raise InvalidBundle(f"bad DER length at offset {pos}")
            header, length = 2 + n, int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
        end = pos + header + length
        if end > len(data):
            raise InvalidBundle(f"truncated DER certificate at offset {pos}")
        yield data[pos:end]
        pos = end
