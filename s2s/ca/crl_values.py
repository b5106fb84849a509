"""CRL values without I/O: key identifiers, revoked entries, building one issuer's RFC 5280 v2 CRL,
the set of current CRLs and its ``/v1/crl`` encodings. :class:`~s2s.ca.crl.CrlPublisher` keeps
them current."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from s2s.ca.keys import SigningKey
from s2s.core.errors import InvalidRequest, NotFound
from s2s.core.revocation import RevocationRecord
from s2s.store.records import AuthorityKind

__all__ = [
    "CRL_FORMATS",
    "CrlSet",
    "IssuerCrl",
    "build_crl",
    "key_id_of",
    "parse_key_id",
    "render_crls",
    "revoked_entry",
]

_REASONS: Final = {
    r.value.lower(): r
    for r in x509.ReasonFlags
    if r not in (x509.ReasonFlags.unspecified, x509.ReasonFlags.remove_from_crl)
}


def key_id_of(cert: x509.Certificate) -> bytes:
    """The CA's key identifier: its SKI, or the RFC 5280 method-1 hash of its key."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def parse_key_id(text: str) -> bytes:
    """A key id from hex (any case, ``:`` separators allowed, as ``openssl`` prints it).

    >>> parse_key_id("AB:cd").hex()
    'abcd'
    """
    cleaned = text.strip().replace(":", "").lower()
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        raw = b""
    if not 1 <= len(raw) <= 64:
        raise InvalidRequest(f"issuer {text[:80]!r} is not a key identifier in hex")
    return raw


def revoked_entry(record: RevocationRecord) -> x509.RevokedCertificate:
    """The CRL entry for a serial record (with a reasonCode if the reason names one)."""
    builder = x509.RevokedCertificateBuilder(
        serial_number=int(record.value, 16), revocation_date=record.revoked_at
    )
    reason = _REASONS.get(record.reason.strip().replace("-", "").replace("_", "").lower())
    if reason is not None:
        builder = builder.add_extension(x509.CRLReason(reason), critical=False)
    return builder.build()


def build_crl(
    *,
    issuer: x509.Certificate,
    issuer_key: SigningKey,
    entries: Sequence[x509.RevokedCertificate],
    number: int,
    this_update: datetime,
    next_update: datetime,
) -> x509.CertificateRevocationList:
    """Build and sign a v2 CRL (pure; entries prebuilt and passed whole)."""
    extensions = [
        x509.Extension(
            x509.AuthorityKeyIdentifier.oid,
            False,
            x509.AuthorityKeyIdentifier(key_id_of(issuer), None, None),
        ),
        x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
    ]
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.subject,
        last_update=this_update,
        next_update=next_update,
        extensions=extensions,
        revoked_certificates=list(entries),
    )
    public = issuer_key.public_key()
    algorithm: hashes.SHA256 | hashes.SHA384 = hashes.SHA256()
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size == 384:
        algorithm = hashes.SHA384()
    return builder.sign(issuer_key, algorithm)


@dataclass(frozen=True, slots=True)
class IssuerCrl:
    """The current CRL of one issuing CA."""

    authority_id: str
    kind: AuthorityKind
    key_id: bytes
    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    der: bytes

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    def pem(self) -> bytes:
        return x509.load_der_x509_crl(self.der).public_bytes(Encoding.PEM)

    def to_json(self) -> dict[str, Any]:
        """Metadata only (the DER is served separately)."""
        return {
            "authority_id": self.authority_id,
            "kind": str(self.kind),
            "key_id": self.key_id_hex,
            "number": self.number,
            "this_update": self.this_update.isoformat(),
            "next_update": self.next_update.isoformat(),
            "entries": self.entries,
        }


@dataclass(frozen=True, slots=True)
class CrlSet:
    """Every issuer's CRL, built from one revocation snapshot (swapped whole)."""

    crls: tuple[IssuerCrl, ...] = ()
    revocations_version: int = -1
    issuers: frozenset[str] = frozenset()

    def by_key_id(self, key_id: bytes) -> IssuerCrl | None:
        return next((c for c in self.crls if c.key_id == key_id), None)

    def pem(self) -> bytes:
        return b"".join(c.pem() for c in self.crls)

    def ders(self) -> tuple[bytes, ...]:
        return tuple(c.der for c in self.crls)

    def next_update(self) -> datetime | None:
        return min((c.next_update for c in self.crls), default=None)


CRL_FORMATS: Final = ("pem", "der", "json")


def render_crls(crls: CrlSet, *, fmt: str | None, issuer: str | None) -> tuple[bytes, str]:
    """(body, media type) for ``/v1/crl``: all CRLs as PEM (default) or JSON (metadata + base64
    DER), or one issuer's (``issuer`` = key id hex) as DER (its default) or PEM.

    :class:`InvalidRequest` for an unknown format or DER without an issuer; :class:`NotFound`
    for an issuer that has no CRL."""
    if fmt is not None and fmt not in CRL_FORMATS:
        raise InvalidRequest(f"format must be one of {', '.join(CRL_FORMATS)}")
    if issuer is not None:
        crl = crls.by_key_id(parse_key_id(issuer))
        if crl is None:
            raise NotFound(f"no CRL for issuer key id {issuer[:80]}; list them with ?format=json")
        selected: tuple[IssuerCrl, ...] = (crl,)
        fmt = fmt or "der"
    else:
        selected, fmt = crls.crls, fmt or "pem"
    if fmt == "der":
        if len(selected) != 1:
            raise InvalidRequest("DER holds one CRL: name it with issuer=<key id hex>")
        return selected[0].der, "application/pkix-crl"
    if fmt == "pem":
        return b"".join(c.pem() for c in selected), "application/x-pem-file"
    doc = [{**c.to_json(), "der": base64.b64encode(c.der).decode("ascii")} for c in selected]
    return json.dumps({"crls": doc}, separators=(",", ":")).encode(), "application/json"
