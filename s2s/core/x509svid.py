"""The X509-SVID profile: the value object and the checks a verifier runs.

:func:`check_x509_svid` enforces X509-SVID.md sections 4-5 on a presented chain; it does not verify
signatures or build a path to a bundle (the verifier does that with the bundle of the leaf's trust
domain). The templates a CA signs with live in :mod:`s2s.core.x509templates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from s2s.core.errors import InvalidRequest, InvalidSpiffeId, InvalidSvid
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509ext import (
    AKI,
    BC,
    CLIENT_AUTH,
    EKU,
    KU,
    SAN,
    SERVER_AUTH,
    SKI,
    Extensions,
    ext_value,
    extensions,
    uri_sans,
)

__all__ = [
    "MAX_CHAIN_LENGTH",
    "X509Svid",
    "check_ca_certificate",
    "check_x509_svid",
    "spiffe_id_of",
]

MAX_CHAIN_LENGTH = 8  # leaf + intermediates (+ root); bounds the work a peer can make us do


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID in the certificate's single URI SAN; InvalidSvid(rule="uri-san") otherwise."""
    return _leaf_id(extensions(cert))


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
    exts = extensions(leaf)
    spiffe_id = _leaf_id(exts)
    if spiffe_id.is_root():
        raise InvalidSvid(f"the leaf SPIFFE ID {spiffe_id} has no path", rule="leaf-path")
    _check_san_criticality(leaf, exts[SAN])
    _check_leaf_usage(exts)
    previous, previous_exts = leaf, exts
    for ca in chain[1:]:
        ca_exts = extensions(ca)
        _check_issued_by(previous, previous_exts, ca, ca_exts)
        _check_ca(ca, ca_exts, spiffe_id.trust_domain)
        previous, previous_exts = ca, ca_exts
    return spiffe_id


def check_ca_certificate(cert: x509.Certificate) -> None:
    """Check that ``cert`` may sign SVIDs: cA=true, critical keyCertSign, a path-less SPIFFE ID."""
    _check_ca(cert, extensions(cert), None)


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


def _leaf_id(exts: Extensions) -> SpiffeId:
    uris = uri_sans(exts.get(SAN))
    if len(uris) != 1:
        raise InvalidSvid(
            f"an X509-SVID must have exactly one URI SAN, found {len(uris)}", rule="uri-san"
        )
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise InvalidSvid(f"the URI SAN is not a SPIFFE ID: {exc}", rule="uri-san") from exc


def _check_issued_by(
    cert: x509.Certificate, exts: Extensions, issuer: x509.Certificate, issuer_exts: Extensions
) -> None:
    """Cheap chain-order check: key identifiers when both are present (parsed), else names."""
    aki, ski = exts.get(AKI), issuer_exts.get(SKI)
    key_id = None if aki is None else ext_value(aki, x509.AuthorityKeyIdentifier).key_identifier
    if key_id is not None and ski is not None:
        linked = key_id == ext_value(ski, x509.SubjectKeyIdentifier).digest
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


def _check_leaf_usage(exts: Extensions) -> None:
    bc = exts.get(BC)
    if bc is None or not bc.critical or ext_value(bc, x509.BasicConstraints).ca:
        raise InvalidSvid(
            "a leaf SVID needs a critical basicConstraints with cA=false",
            rule="leaf-basic-constraints",
        )
    ku_ext = exts.get(KU)
    ku = None if ku_ext is None or not ku_ext.critical else ext_value(ku_ext, x509.KeyUsage)
    if ku is None or not ku.digital_signature or ku.key_cert_sign or ku.crl_sign:
        raise InvalidSvid(
            "a leaf SVID needs a critical keyUsage with digitalSignature and without "
            "keyCertSign or cRLSign",
            rule="leaf-key-usage",
        )
    eku = exts.get(EKU)
    if eku is not None:
        usages = ext_value(eku, x509.ExtendedKeyUsage)
        if SERVER_AUTH not in usages or CLIENT_AUTH not in usages:
            raise InvalidSvid(
                "a leaf SVID's extendedKeyUsage must include serverAuth and clientAuth",
                rule="leaf-eku",
            )


def _check_ca(cert: x509.Certificate, exts: Extensions, td: TrustDomain | None) -> None:
    who = f"CA certificate {cert.serial_number:x}"
    bc = exts.get(BC)
    if bc is None or not bc.critical or not ext_value(bc, x509.BasicConstraints).ca:
        raise InvalidSvid(
            f"{who} needs a critical basicConstraints with cA=true", rule="ca-basic-constraints"
        )
    ku = exts.get(KU)
    if ku is None or not ku.critical or not ext_value(ku, x509.KeyUsage).key_cert_sign:
        raise InvalidSvid(f"{who} needs a critical keyUsage with keyCertSign", rule="ca-key-usage")
    for uri in uri_sans(exts.get(SAN)):
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
