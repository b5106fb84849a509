"""The X509-SVID profile's certificate templates and signing, for a SPIFFE CA.

Templates follow X509-SVID.md section 4 and what SPIRE issues (credtemplate): one URI SAN, critical
basicConstraints and keyUsage, SKI/AKI, a random 128-bit serial, CA subjects made unique by their
serial. The checks a verifier runs live in :mod:`s2s.core.x509svid`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TypeGuard

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from s2s.core.clock import utc
from s2s.core.errors import InvalidRequest
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509ext import CLIENT_AUTH, SAN, SERVER_AUTH, extensions, uri_sans

__all__ = [
    "CA_ORGANIZATION",
    "DEFAULT_BACKDATE",
    "LEAF_ORGANIZATION",
    "SUPPORTED_KEY",
    "check_leaf_serial",
    "check_public_key",
    "intermediate_template",
    "is_ec_public_key",
    "is_rsa_public_key",
    "leaf_template",
    "leaf_validity",
    "root_template",
    "serial_from_entropy",
    "sign_certificate",
]

DEFAULT_BACKDATE = timedelta(seconds=30)
SUPPORTED_KEY = "ECDSA P-256/P-384, RSA 2048-8192 with public exponent 65537"
CA_ORGANIZATION = "SPIFFE"
LEAF_ORGANIZATION = "s2s"
_MAX_RSA_BITS = 8192
# A small exponent (e=3) makes unpadded or badly padded RSA forgeable (Bleichenbacher 2006);
# every mainstream CA and TLS stack uses F4 only.
_RSA_EXPONENT = 65537
_SERIAL_SPACE = 2**128 - 1
_DNS_NAME = re.compile(
    r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)


def serial_from_entropy(entropy: bytes) -> int:
    """Map 16 random bytes to a serial in [1, 2**128 - 1] (RFC 5280 4.1.2.2: positive, short).

    >>> serial_from_entropy(bytes(16))
    1
    """
    if len(entropy) < 16:
        raise InvalidRequest("a serial needs at least 16 bytes of entropy")
    return int.from_bytes(entropy[:16], "big") % _SERIAL_SPACE + 1


def is_ec_public_key(key: object) -> TypeGuard[ec.EllipticCurvePublicKey]:
    """``isinstance(key, EllipticCurvePublicKey)``, remembered per concrete type.

    ``cryptography``'s key classes are registered virtual subclasses of its interfaces, and each
    ABC ``isinstance`` costs about 0.3 us; issuing a leaf asks several times.
    """
    return _is_kind(key, ec.EllipticCurvePublicKey)


def is_rsa_public_key(key: object) -> TypeGuard[rsa.RSAPublicKey]:
    """``isinstance(key, RSAPublicKey)``, remembered per concrete type (see above)."""
    return _is_kind(key, rsa.RSAPublicKey)


def _is_kind(key: object, kind: type) -> bool:
    memo = (type(key), kind)
    known = _KINDS.get(memo)
    if known is None:
        known = _KINDS[memo] = isinstance(key, kind)
    return known


_KINDS: dict[tuple[type, type], bool] = {}


def check_public_key(public_key: object) -> None:
    """Accept ECDSA P-256/P-384 and RSA 2048-8192 bit keys with e=65537; raise InvalidRequest
    for any other."""
    if is_ec_public_key(public_key):
        if isinstance(public_key.curve, ec.SECP256R1 | ec.SECP384R1):
            return
        raise InvalidRequest(f"unsupported key: EC {public_key.curve.name}; use {SUPPORTED_KEY}")
    if is_rsa_public_key(public_key):
        if not 2048 <= public_key.key_size <= _MAX_RSA_BITS:
            raise InvalidRequest(f"unsupported key: RSA-{public_key.key_size}; use {SUPPORTED_KEY}")
        exponent = public_key.public_numbers().e
        if exponent != _RSA_EXPONENT:
            raise InvalidRequest(
                f"unsupported key: RSA public exponent {exponent}; use {SUPPORTED_KEY}"
            )
        return
    raise InvalidRequest(f"unsupported key: {type(public_key).__name__}; use {SUPPORTED_KEY}")


def sign_certificate(
    builder: x509.CertificateBuilder, issuer_key: CertificateIssuerPrivateKeyTypes
) -> x509.Certificate:
    """Sign ``builder`` with ``issuer_key``, picking the hash from the key (SHA-384 for P-384)."""
    public = issuer_key.public_key()
    check_public_key(public)
    algorithm: hashes.SHA256 | hashes.SHA384 = hashes.SHA256()
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size == 384:
        algorithm = hashes.SHA384()
    return builder.sign(issuer_key, algorithm)


def root_template(
    *,
    trust_domain: TrustDomain,
    public_key: CertificateIssuerPublicKeyTypes,
    now: datetime,
    ttl: timedelta,
    serial: int,
) -> x509.CertificateBuilder:
    """A self-signed root CA for ``trust_domain`` (URI SAN ``spiffe://<td>``, unique subject)."""
    check_public_key(public_key)
    validity = _validity(now, ttl, DEFAULT_BACKDATE, None)
    subject = _ca_subject(serial)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = _base(subject, subject, public_key, serial, validity)
    builder = _ca_extensions(builder, trust_domain, path_length=None)
    return builder.add_extension(ski, critical=False).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
    )


def intermediate_template(
    *,
    trust_domain: TrustDomain,
    public_key: CertificateIssuerPublicKeyTypes,
    issuer: x509.Certificate,
    now: datetime,
    ttl: timedelta,
    serial: int,
    path_length: int | None = 0,
) -> x509.CertificateBuilder:
    """An intermediate CA signed by ``issuer``; it never outlives its issuer."""
    check_public_key(public_key)
    validity = _validity(now, ttl, DEFAULT_BACKDATE, issuer)
    builder = _base(_ca_subject(serial), issuer.subject, public_key, serial, validity)
    builder = _ca_extensions(builder, trust_domain, path_length=path_length)
    return _key_ids(builder, public_key, issuer)


def leaf_template(
    *,
    spiffe_id: SpiffeId,
    public_key: CertificateIssuerPublicKeyTypes,
    issuer: x509.Certificate,
    now: datetime,
    ttl: timedelta,
    serial: int,
    dns_names: Sequence[str] = (),
    backdate: timedelta = DEFAULT_BACKDATE,
) -> x509.CertificateBuilder:
    """A leaf X509-SVID for ``spiffe_id`` (X509-SVID.md 3.1, 4.1, 4.3, 4.4).

    NotBefore is ``now - backdate`` but never before the issuer's NotBefore; NotAfter is
    ``now + ttl`` capped at the issuer's NotAfter. The first DNS name also becomes the CN.
    """
    if spiffe_id.is_root():
        raise InvalidRequest(f"a leaf SVID needs a path: {spiffe_id}")
    check_public_key(public_key)
    _check_issuer_trust_domain(issuer, spiffe_id.trust_domain)
    if isinstance(dns_names, str):
        raise InvalidRequest("dns_names must be a sequence of names, not one string")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    for dns in dns_names:
        if not isinstance(dns, str) or _DNS_NAME.fullmatch(dns) is None or len(dns) > 253:
            raise InvalidRequest(f"invalid DNS name: {dns!r}")
        names.append(x509.DNSName(dns))
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, LEAF_ORGANIZATION)]
    if dns_names and len(dns_names[0]) <= 64:  # X.520 ub-common-name
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0]))
    validity = _validity(now, ttl, backdate, issuer)
    builder = _base(x509.Name(attributes), issuer.subject, public_key, serial, validity)
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=is_rsa), critical=True)
        .add_extension(x509.ExtendedKeyUsage([SERVER_AUTH, CLIENT_AUTH]), critical=False)
        # RFC 5280 4.2.1.6: non-critical because the subject is not empty.
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
    )
    return _key_ids(builder, public_key, issuer)


def leaf_validity(
    now: datetime, ttl: timedelta, backdate: timedelta, issuer: x509.Certificate
) -> tuple[datetime, datetime]:
    """(NotBefore, NotAfter) of a leaf as :func:`leaf_template` sets them: ``now - backdate``
    but not before the issuer, ``now + ttl`` capped at the issuer, whole seconds;
    :class:`InvalidRequest` for a non-positive ``ttl`` or an expired issuer."""
    return _validity(now, ttl, backdate, issuer)


def check_leaf_serial(serial: int) -> None:
    """:class:`InvalidRequest` unless ``serial`` is in [1, 2**128 - 1] (RFC 5280 4.1.2.2)."""
    if not 1 <= serial <= _SERIAL_SPACE:
        raise InvalidRequest("the serial must be in [1, 2**128 - 1]")


# --- helpers -------------------------------------------------------------------------------


def _validity(
    now: datetime, ttl: timedelta, backdate: timedelta, issuer: x509.Certificate | None
) -> tuple[datetime, datetime]:
    if ttl <= timedelta(0):
        raise InvalidRequest(f"the lifetime must be positive, got {ttl}")
    now = utc(now).replace(microsecond=0)  # X.509 times have whole seconds
    not_before, not_after = now - max(backdate, timedelta(0)), now + ttl
    if issuer is not None:
        not_before = max(not_before, issuer.not_valid_before_utc)
        not_after = min(not_after, issuer.not_valid_after_utc)
    if not_after <= now:
        raise InvalidRequest(f"the issuer expired at {not_after.isoformat()}; rotate it first")
    return not_before, not_after


def _base(
    subject: x509.Name,
    issuer_name: x509.Name,
    public_key: CertificateIssuerPublicKeyTypes,
    serial: int,
    validity: tuple[datetime, datetime],
) -> x509.CertificateBuilder:
    check_leaf_serial(serial)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
    )


def _ca_subject(serial: int) -> x509.Name:
    # SPIRE (spire#4585): the serial in the subject keeps CA subjects unique across rotations.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_ORGANIZATION),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial)),
        ]
    )


def _ca_extensions(
    builder: x509.CertificateBuilder, td: TrustDomain, *, path_length: int | None
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        )
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(td.id()))]),
            critical=False,
        )
    )


def _key_ids(
    builder: x509.CertificateBuilder,
    public_key: CertificateIssuerPublicKeyTypes,
    issuer: x509.Certificate,
) -> x509.CertificateBuilder:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
    ).add_extension(aki, critical=False)


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _check_issuer_trust_domain(issuer: x509.Certificate, td: TrustDomain) -> None:
    for uri in uri_sans(extensions(issuer).get(SAN)):
        if uri.startswith("spiffe://") and uri != str(td.id()):
            raise InvalidRequest(f"issuer {uri} cannot issue SVIDs in trust domain {td}")
