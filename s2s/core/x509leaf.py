"""Leaf X509-SVIDs from a DER layout made once per template (issuer, SPIFFE ID, DNS names, key).

A CA signs the same leaf again and again with four things changed: the serial, the validity, the
subject public key and its key identifier. ``cryptography``'s builder encodes every name and
extension again for each certificate; here the TBSCertificate that the builder makes for the
template is cut once into fixed byte runs (X.690 DER), and each leaf is those runs with the four
fields encoded in between, signed with the issuer key and loaded back as a certificate.

The layout comes from a certificate that :func:`~s2s.core.x509templates.leaf_template` built and
``cryptography`` encoded, and that certificate passed :func:`~s2s.core.x509svid.check_x509_svid`
with the issuer's chain: the profile (one URI SAN, critical basicConstraints cA=false and keyUsage,
EKU, SAN criticality, the key identifier link to the issuer) is proven once per layout, since the
fields that change do not take part in it. What changes is checked per leaf (key type and size,
serial range, lifetime within the issuer's) and every leaf is parsed back by ``cryptography``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeGuard

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)

from s2s.core.errors import InvalidRequest, InvalidSvid
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import check_x509_svid
from s2s.core.x509templates import (
    check_leaf_serial,
    check_public_key,
    is_rsa_public_key,
    leaf_template,
    leaf_validity,
    sign_certificate,
)

__all__ = ["LeafLayout", "der_length", "der_time"]

_SKI_EXTENSION = bytes.fromhex(
    "0603551d0e04160414"
)  # OID 2.5.29.14, OCTET STRING { OCTET STRING(20)
_SEQUENCE, _INTEGER, _BIT_STRING = 0x30, 0x02, 0x03
_SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def der_length(length: int) -> bytes:
    """X.690 8.1.3: the short form below 128, else the long form.

    >>> der_length(5).hex(), der_length(200).hex(), der_length(300).hex()
    ('05', '81c8', '82012c')
    """
    if length < 0x80:
        return bytes((length,))
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def der_time(value: datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, whole seconds, Z.

    >>> der_time(datetime(2049, 12, 31, 23, 59, 59)).hex()
    '170d3439313233313233353935395a'
    >>> der_time(datetime(2050, 1, 1)).hex()
    '180f32303530303130313030303030305a'
    """
    if 1950 <= value.year < 2050:
        text = f"{value.year % 100:02d}{value.month:02d}{value.day:02d}"
        tag = b"\x17\x0d"
    else:
        text = f"{value.year:04d}{value.month:02d}{value.day:02d}"
        tag = b"\x18\x0f"
    return tag + f"{text}{value.hour:02d}{value.minute:02d}{value.second:02d}Z".encode("ascii")


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + der_length(len(body)) + body


def _read(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the TLV at ``at``."""
    tag, first = der[at], der[at + 1]
    if first < 0x80:
        return tag, at + 2, at + 2 + first
    size = first & 0x7F
    length = int.from_bytes(der[at + 2 : at + 2 + size], "big")
    return tag, at + 2 + size, at + 2 + size + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(tag, start of the TLV, end of the TLV) of each element between ``start`` and ``end``."""
    out = []
    while start < end:
        tag, _, stop = _read(der, start)
        out.append((tag, start, stop))
        start = stop
    return out


def _integer(value: int) -> bytes:
    return _tlv(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _key_identifier(spki: bytes) -> bytes:
    """RFC 5280 4.2.1.2 (1): SHA-1 of the subjectPublicKey BIT STRING's bits (as ``cryptography``'s
    ``SubjectKeyIdentifier.from_public_key``)."""
    _, outer, _ = _read(spki, 0)
    _, _, algorithm_end = _read(spki, outer)
    tag, bits, end = _read(spki, algorithm_end)
    if tag != _BIT_STRING:  # pragma: no cover - cryptography wrote this SPKI
        raise InvalidRequest("the public key is not a SubjectPublicKeyInfo")
    return hashlib.sha1(spki[bits + 1 : end]).digest()  # noqa: S324 (the RFC 5280 method)


@dataclass(frozen=True, slots=True)
class LeafLayout:
    """The fixed DER of one leaf template; :meth:`issue` fills in one leaf.

    Built by :meth:`for_template` from a certificate that ``cryptography`` encoded and that
    passed the X509-SVID profile check with ``chain`` (the issuer's certificates).
    """

    spiffe_id: SpiffeId
    rsa: bool
    issuer: x509.Certificate
    head: bytes  # version, serial comes next
    signature_algorithm: bytes  # AlgorithmIdentifier, in the TBS and around it
    issuer_name: bytes
    subject: bytes
    extensions_head: bytes  # [3] { SEQUENCE { ... SKI's OCTET STRING header
    extensions_tail: bytes  # ... the AKI } }

    @classmethod
    def for_template(
        cls,
        *,
        spiffe_id: SpiffeId,
        dns_names: Sequence[str],
        rsa_key: bool,
        issuer: x509.Certificate,
        issuer_key: CertificateIssuerPrivateKeyTypes,
        chain: Sequence[x509.Certificate],
        now: datetime,
    ) -> LeafLayout:
        """Make a sample leaf with the builder, check its profile, and cut it into byte runs.

        Raises :class:`InvalidRequest` for what ``leaf_template`` refuses (a root ID, an issuer
        of another trust domain, a bad DNS name) and :class:`InvalidSvid` if the sample breaks
        the profile (our bug).
        """
        builder = leaf_template(
            spiffe_id=spiffe_id,
            public_key=_sample_key(rsa_key),
            issuer=issuer,
            now=max(now, issuer.not_valid_before_utc),
            ttl=timedelta(seconds=1),
            serial=1,
            dns_names=dns_names,
            backdate=timedelta(0),
        )
        sample = sign_certificate(builder, issuer_key)
        if check_x509_svid((sample, *chain)) != spiffe_id:  # pragma: no cover - our bug
            raise InvalidSvid("the leaf template names another SPIFFE ID", rule="uri-san")
        return cls._cut(spiffe_id, rsa_key, issuer, sample)

    @classmethod
    def _cut(
        cls, spiffe_id: SpiffeId, rsa_key: bool, issuer: x509.Certificate, sample: x509.Certificate
    ) -> LeafLayout:
        tbs = sample.tbs_certificate_bytes
        _, body, end = _read(tbs, 0)
        parts = _children(tbs, body, end)
        tags = [tag for tag, _, _ in parts]
        # version [0], serial, signature, issuer, validity, subject, SPKI, extensions [3]
        if tags != [0xA0, _INTEGER, _SEQUENCE, _SEQUENCE, _SEQUENCE, _SEQUENCE, _SEQUENCE, 0xA3]:
            raise InvalidSvid("unexpected TBSCertificate layout", rule="malformed")
        piece = [tbs[start:stop] for _, start, stop in parts]
        extensions = piece[7]
        at = extensions.find(_SKI_EXTENSION)
        if at < 0 or extensions.find(_SKI_EXTENSION, at + 1) >= 0:
            raise InvalidSvid("the leaf template needs one subjectKeyIdentifier", rule="malformed")
        digest_at = at + len(_SKI_EXTENSION)
        return cls(
            spiffe_id=spiffe_id,
            rsa=rsa_key,
            issuer=issuer,
            head=piece[0],
            signature_algorithm=piece[2],
            issuer_name=piece[3],
            subject=piece[5],
            extensions_head=extensions[:digest_at],
            extensions_tail=extensions[digest_at + 20 :],
        )

    def issue(
        self,
        public_key: CertificateIssuerPublicKeyTypes,
        *,
        issuer_key: CertificateIssuerPrivateKeyTypes,
        serial: int,
        now: datetime,
        ttl: timedelta,
        backdate: timedelta,
    ) -> x509.Certificate:
        """Sign one leaf of this template for ``public_key``.

        The same checks as the builder path for what changes per leaf: the key
        (:func:`check_public_key`, of this template's kind), the serial range, a positive
        lifetime inside the issuer's (:class:`InvalidRequest` otherwise).
        """
        check_public_key(public_key)
        if is_rsa_public_key(public_key) != self.rsa:
            raise InvalidRequest("the key does not match the leaf template's key kind")
        check_leaf_serial(serial)
        not_before, not_after = leaf_validity(now, ttl, backdate, self.issuer)
        spki = public_key.public_bytes(*_SPKI)
        tbs = _tlv(
            _SEQUENCE,
            b"".join(
                (
                    self.head,
                    _integer(serial),
                    self.signature_algorithm,
                    self.issuer_name,
                    _tlv(_SEQUENCE, der_time(not_before) + der_time(not_after)),
                    self.subject,
                    spki,
                    self.extensions_head,
                    _key_identifier(spki),
                    self.extensions_tail,
                )
            ),
        )
        signature = _sign(issuer_key, tbs)
        der = _tlv(
            _SEQUENCE,
            tbs + self.signature_algorithm + _tlv(_BIT_STRING, b"\x00" + signature),
        )
        try:
            return x509.load_der_x509_certificate(der)
        except ValueError as exc:  # pragma: no cover - our bug: the layout made bad DER
            raise InvalidSvid(f"the issued leaf does not parse: {exc}", rule="malformed") from exc


def _sample_key(rsa_key: bool) -> CertificateIssuerPublicKeyTypes:
    """A key of the template's kind for the sample leaf (its key fields are replaced per leaf);
    made once per process: an RSA key takes ~100 ms."""
    key = _SAMPLE_KEYS.get(rsa_key)
    if key is None:
        if rsa_key:
            key = rsa.generate_private_key(65537, 2048).public_key()
        else:
            key = ec.generate_private_key(ec.SECP256R1()).public_key()
        _SAMPLE_KEYS[rsa_key] = key
    return key


_SAMPLE_KEYS: dict[bool, CertificateIssuerPublicKeyTypes] = {}


def _sign(key: CertificateIssuerPrivateKeyTypes, data: bytes) -> bytes:
    """The issuer's signature as ``sign_certificate`` makes it (ECDSA with SHA-256, SHA-384 on
    P-384; RSA PKCS#1 v1.5 with SHA-256)."""
    if _is_ec_private_key(key):
        return key.sign(data, _ECDSA_384 if key.curve.key_size == 384 else _ECDSA_256)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    raise InvalidRequest(f"unsupported issuer key: {type(key).__name__}")


def _is_ec_private_key(key: object) -> TypeGuard[ec.EllipticCurvePrivateKey]:
    if type(key) in _EC_PRIVATE:  # the ABC isinstance costs ~0.3 us; the type set far less
        return True
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _EC_PRIVATE.add(type(key))
        return True
    return False


_EC_PRIVATE: set[type] = set()
_ECDSA_256 = ec.ECDSA(hashes.SHA256())
_ECDSA_384 = ec.ECDSA(hashes.SHA384())
