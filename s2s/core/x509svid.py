"""The X509-SVID profile: certificate templates for a SPIFFE CA, and the checks a verifier runs.

Templates follow X509-SVID.md section 4 and what SPIRE issues (credtemplate): one URI SAN, critical
basicConstraints and keyUsage, SKI/AKI, a random 128-bit serial, CA subjects made unique by their
serial. :func:`check_x509_svid` enforces sections 4-5 on a presented chain; it does not verify
signatures or build a path to a bundle (the verifier does that with the bundle of the leaf's trust
domain).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from s2s.core.clock import utc
from s2s.core.errors import InvalidRequest, InvalidSpiffeId, InvalidSvid
from s2s.core.spiffe_id import SpiffeId, TrustDomain

__all__ = [
    "CA_ORGANIZATION",
    "DEFAULT_BACKDATE",
    "LEAF_ORGANIZATION",
    "MAX_CHAIN_LENGTH",
    "SUPPORTED_KEY",
    "X509Svid",
    "check_ca_certificate",
    "check_public_key",
    "check_x509_svid",
    "intermediate_template",
    "leaf_template",
    "root_template",
    "serial_from_entropy",
    "sign_certificate",
    "spiffe_id_of",
]

DEFAULT_BACKDATE = timedelta(seconds=30)
SUPPORTED_KEY = "ECDSA P-256/P-384, RSA 2048-8192"
CA_ORGANIZATION = "SPIFFE"
LEAF_ORGANIZATION = "s2s"
MAX_CHAIN_LENGTH = 8  # leaf + intermediates (+ root); bounds the work a peer can make us do
_MAX_RSA_BITS = 8192
_SERIAL_SPACE = 2**128 - 1
_DNS_NAME = re.compile(
    r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)

_SAN = ExtensionOID.SUBJECT_ALTERNATIVE_NAME
_BC = ExtensionOID.BASIC_CONSTRAINTS
_KU = ExtensionOID.KEY_USAGE
_EKU = ExtensionOID.EXTENDED_KEY_USAGE
_AKI = ExtensionOID.AUTHORITY_KEY_IDENTIFIER
_SKI = ExtensionOID.SUBJECT_KEY_IDENTIFIER
_SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
_CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH


def serial_from_entropy(entropy: bytes) -> int:
    """Map 16 random bytes to a serial in [1, 2**128 - 1] (RFC 5280 4.1.2.2: positive, short).

    >>> serial_from_entropy(bytes(16))
    1
    """
    if len(entropy) < 16:
        raise InvalidRequest("a serial needs at least 16 bytes of entropy")
    return int.from_bytes(entropy[:16], "big") % _SERIAL_SPACE + 1


def check_public_key(public_key: object) -> None:
    """Accept ECDSA P-256/P-384 and RSA 2048-8192 bit keys; raise InvalidRequest for any other."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if isinstance(public_key.curve, ec.SECP256R1 | ec.SECP384R1):
            return
        raise InvalidRequest(f"unsupported key: EC {public_key.curve.name}; use {SUPPORTED_KEY}")
    if isinstance(public_key, rsa.RSAPublicKey):
        if 2048 <= public_key.key_size <= _MAX_RSA_BITS:
            return
        raise InvalidRequest(f"unsupported key: RSA-{public_key.key_size}; use {SUPPORTED_KEY}")
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
        .add_extension(x509.ExtendedKeyUsage([_SERVER_AUTH, _CLIENT_AUTH]), critical=False)
        # RFC 5280 4.2.1.6: non-critical because the subject is not empty.
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
    )
    return _key_ids(builder, public_key, issuer)


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID in the certificate's single URI SAN; InvalidSvid(rule="uri-san") otherwise."""
    return _leaf_id(_extensions(cert))


def check_x509_svid(chain: Sequence[x509.Certificate]) -> SpiffeId:
    """Check a presented chain (leaf first, then its CA certs) against X509-SVID.md sections 4-5.

    Returns the leaf's SPIFFE ID. Raises :class:`InvalidSvid` naming the broken rule. Signatures
    and the path to a trust bundle are the verifier's job, not this function's.
    """
    if not chain:
        raise InvalidSvid("the certificate chain is empty", rule="chain-order")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise InvalidSvid(
            f"the chain has {len(chain)} certificates (at most {MAX_CHAIN_LENGTH})",
            rule="chain-order",
        )
    leaf = chain[0]
    exts = _extensions(leaf)
    spiffe_id = _leaf_id(exts)
    if spiffe_id.is_root():
        raise InvalidSvid(f"the leaf SPIFFE ID {spiffe_id} has no path", rule="leaf-path")
    _check_san_criticality(leaf, exts[_SAN])
    _check_leaf_usage(exts)
    previous, previous_exts = leaf, exts
    for ca in chain[1:]:
        ca_exts = _extensions(ca)
        _check_issued_by(previous, previous_exts, ca, ca_exts)
        _check_ca(ca, ca_exts, spiffe_id.trust_domain)
        previous, previous_exts = ca, ca_exts
    return spiffe_id


def check_ca_certificate(cert: x509.Certificate) -> None:
    """Check that ``cert`` may sign SVIDs: cA=true, critical keyCertSign, a path-less SPIFFE ID."""
    _check_ca(cert, _extensions(cert), None)


@dataclass(frozen=True, slots=True)
class X509Svid:
    """An X509-SVID: the SPIFFE ID, the chain (leaf first, no root) and, when held, the key."""

    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]
    private_key: PrivateKeyTypes | None = field(default=None, repr=False, compare=False)
    hint: str = ""

    def __post_init__(self) -> None:
        if not self.cert_chain:
            raise InvalidSvid(
                "an X509-SVID needs at least its leaf certificate", rule="chain-order"
            )

    @property
    def leaf(self) -> x509.Certificate:
        return self.cert_chain[0]

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    def chain_der(self) -> bytes:
        """Concatenated DER, leaf first (the Workload API ``x509_svid`` field)."""
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.cert_chain)

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.cert_chain)

    def key_pkcs8_der(self) -> bytes:
        """Unencrypted PKCS#8 DER (the Workload API ``x509_svid_key`` field)."""
        return self._key_bytes(serialization.Encoding.DER)

    def key_pem(self) -> bytes:
        return self._key_bytes(serialization.Encoding.PEM)

    def _key_bytes(self, encoding: serialization.Encoding) -> bytes:
        if self.private_key is None:
            raise InvalidRequest(f"the X509-SVID of {self.spiffe_id} holds no private key")
        return self.private_key.private_bytes(
            encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


# --- helpers -------------------------------------------------------------------------------

_Extensions = dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]]
_T = TypeVar("_T", bound=x509.ExtensionType)


def _extensions(cert: x509.Certificate) -> _Extensions:
    try:
        return {ext.oid: ext for ext in cert.extensions}
    except ValueError as exc:  # duplicate or undecodable extension
        raise InvalidSvid(f"certificate has malformed extensions: {exc}", rule="malformed") from exc


def _uris(san: x509.Extension[x509.ExtensionType] | None) -> list[str]:
    if san is None:
        return []
    value = san.value
    assert isinstance(value, x509.SubjectAlternativeName)
    return value.get_values_for_type(x509.UniformResourceIdentifier)


def _leaf_id(exts: _Extensions) -> SpiffeId:
    uris = _uris(exts.get(_SAN))
    if len(uris) != 1:
        raise InvalidSvid(
            f"an X509-SVID must have exactly one URI SAN, found {len(uris)}", rule="uri-san"
        )
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise InvalidSvid(f"the URI SAN is not a SPIFFE ID: {exc}", rule="uri-san") from exc


def _check_issued_by(
    cert: x509.Certificate, exts: _Extensions, issuer: x509.Certificate, issuer_exts: _Extensions
) -> None:
    """Cheap chain-order check: key identifiers when both are present (parsed), else names."""
    aki, ski = exts.get(_AKI), issuer_exts.get(_SKI)
    key_id = None if aki is None else _value(aki, x509.AuthorityKeyIdentifier).key_identifier
    if key_id is not None and ski is not None:
        linked = key_id == _value(ski, x509.SubjectKeyIdentifier).digest
    else:
        linked = cert.issuer == issuer.subject
    if not linked:
        raise InvalidSvid(
            f"certificate {cert.serial_number:x} was not issued by the next one in the chain "
            "(order the chain leaf first, then its issuers)",
            rule="chain-order",
        )


def _check_san_criticality(cert: x509.Certificate, san: x509.Extension[x509.ExtensionType]) -> None:
    empty_subject = len(cert.subject) == 0
    if san.critical != empty_subject:
        want = "critical" if empty_subject else "non-critical"
        why = "empty" if empty_subject else "not empty"
        raise InvalidSvid(
            f"the SAN extension must be {want} when the subject is {why} (RFC 5280 4.2.1.6)",
            rule="san-criticality",
        )


def _check_leaf_usage(exts: _Extensions) -> None:
    bc = exts.get(_BC)
    if bc is None or not bc.critical or _value(bc, x509.BasicConstraints).ca:
        raise InvalidSvid(
            "a leaf SVID needs a critical basicConstraints with cA=false",
            rule="leaf-basic-constraints",
        )
    ku_ext = exts.get(_KU)
    ku = None if ku_ext is None or not ku_ext.critical else _value(ku_ext, x509.KeyUsage)
    if ku is None or not ku.digital_signature or ku.key_cert_sign or ku.crl_sign:
        raise InvalidSvid(
            "a leaf SVID needs a critical keyUsage with digitalSignature and without "
            "keyCertSign or cRLSign",
            rule="leaf-key-usage",
        )
    eku = exts.get(_EKU)
    if eku is not None:
        usages = _value(eku, x509.ExtendedKeyUsage)
        if _SERVER_AUTH not in usages or _CLIENT_AUTH not in usages:
            raise InvalidSvid(
                "a leaf SVID's extendedKeyUsage must include serverAuth and clientAuth",
                rule="leaf-eku",
            )


def _check_ca(cert: x509.Certificate, exts: _Extensions, td: TrustDomain | None) -> None:
    who = f"CA certificate {cert.serial_number:x}"
    bc = exts.get(_BC)
    if bc is None or not bc.critical or not _value(bc, x509.BasicConstraints).ca:
        raise InvalidSvid(
            f"{who} needs a critical basicConstraints with cA=true", rule="ca-basic-constraints"
        )
    ku = exts.get(_KU)
    if ku is None or not ku.critical or not _value(ku, x509.KeyUsage).key_cert_sign:
        raise InvalidSvid(f"{who} needs a critical keyUsage with keyCertSign", rule="ca-key-usage")
    for uri in _uris(exts.get(_SAN)):
        if uri[:7].lower() != "spiffe:":
            continue  # X509-SVID.md 3.2 constrains only the CA's SPIFFE ID
        try:
            ca_id = SpiffeId.parse(uri)
        except InvalidSpiffeId as exc:
            raise InvalidSvid(
                f"{who} has an invalid SPIFFE ID: {exc}", rule="ca-spiffe-id"
            ) from exc
        if not ca_id.is_root():
            raise InvalidSvid(f"{who} has a SPIFFE ID with a path: {ca_id}", rule="ca-spiffe-id")
        if td is not None and ca_id.trust_domain != td:
            raise InvalidSvid(
                f"{who} belongs to trust domain {ca_id.trust_domain}, the leaf to {td}",
                rule="ca-spiffe-id",
            )


def _value(ext: x509.Extension[x509.ExtensionType], kind: type[_T]) -> _T:
    value = ext.value
    assert isinstance(value, kind)
    return value


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
    if not 1 <= serial <= _SERIAL_SPACE:
        raise InvalidRequest("the serial must be in [1, 2**128 - 1]")
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
    for uri in _uris(_extensions(issuer).get(_SAN)):
        if uri.startswith("spiffe://") and uri != str(td.id()):
            raise InvalidRequest(f"issuer {uri} cannot issue SVIDs in trust domain {td}")
