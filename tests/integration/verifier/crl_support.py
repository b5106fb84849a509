"""CRLs for verifier tests: signed by a TestAuthority's intermediate (or any key), with chosen
thisUpdate / nextUpdate, and one without nextUpdate (cryptography's builder cannot omit it, so
that one is assembled from DER by hand)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.testing import TestAuthority


def make_crl(
    ca: TestAuthority,
    *serials: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    key: Any = None,
    der: bool = True,
    issuer: x509.Certificate | None = None,
    number: int | None = None,
) -> bytes:
    """A CRL of ``ca``'s intermediate (or of ``issuer``, signed with ``key``) revoking
    ``serials`` (DER, or PEM with ``der=False``). Like the CA's, it names its issuer's key in an
    authority key identifier; ``number`` adds a cRLNumber."""
    cert = issuer or ca.intermediate
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .build()
        )
    signed = builder.sign(key or ca.intermediate_key, hashes.SHA256())
    enc = serialization.Encoding.DER if der else serialization.Encoding.PEM
    return signed.public_bytes(enc)


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at ``at``."""
    tag, first = data[at], data[at + 1]
    if first < 0x80:
        return tag, at + 2, at + 2 + first
    n = first & 0x7F
    length = int.from_bytes(data[at + 2 : at + 2 + n], "big")
    return tag, at + 2 + n, at + 2 + n + length


def _der(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + value


def crl_without_next_update(ca: TestAuthority, *serials: int, now: dt.datetime) -> bytes:
    """A DER CRL of ``ca``'s intermediate, validly signed, whose TBSCertList has no nextUpdate."""
    crl = x509.load_der_x509_crl(make_crl(ca, *serials, this_update=now, next_update=now))
    tbs = crl.tbs_certlist_bytes
    _, pos, end = _tlv(tbs, 0)
    elements = []
    while pos < end:  # version, signature, issuer, thisUpdate, nextUpdate, revoked, extensions
        _, _, stop = _tlv(tbs, pos)
        elements.append(tbs[pos:stop])
        pos = stop
    assert elements[4][0] in (0x17, 0x18), "the fifth element is nextUpdate (a Time)"
    new_tbs = _der(0x30, b"".join(elements[:4] + elements[5:]))
    key = ca.intermediate_key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = elements[1]  # the outer signatureAlgorithm equals the TBS one
    return _der(0x30, new_tbs + algorithm + _der(0x03, b"\x00" + signature))
