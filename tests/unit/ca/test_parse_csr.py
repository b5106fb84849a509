"""parse_csr: proof of possession. An ECDSA CSR is verified with the key parsed from it (SHA-256
and SHA-384), any other through cryptography's is_signature_valid; each accepted CSR has twins
that must be refused: a flipped signature bit, a signature by another key, a swapped key."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from s2s.ca.signers import parse_csr
from s2s.core.errors import InvalidRequest
from s2s.core.x509leaf import der_length

DER = serialization.Encoding.DER


def _csr(key: Any, hash_type: hashes.HashAlgorithm | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hash_type or hashes.SHA256()).public_bytes(DER)


def _tlv_end(der: bytes, at: int) -> tuple[int, int]:
    first = der[at + 1]
    if first < 0x80:
        return at + 2, at + 2 + first
    size = first & 0x7F
    return at + 2 + size, at + 2 + size + int.from_bytes(der[at + 2 : at + 2 + size], "big")


def _flip_last_signature_byte(der: bytes) -> bytes:
    return der[:-1] + bytes([der[-1] ^ 0x01])


def _with_signature_of(der: bytes, other: bytes) -> bytes:
    """``der`` with the signatureAlgorithm and signature of ``other`` (same outer framing)."""
    body, _ = _tlv_end(der, 0)
    _, info_end = _tlv_end(der, body)
    other_body, _ = _tlv_end(other, 0)
    _, other_info_end = _tlv_end(other, other_body)
    inner = der[body:info_end] + other[other_info_end:]
    header = b"\x30" + der_length(len(inner))
    return header + inner


KEYS = {
    "p256-sha256": (lambda: ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()),
    "p256-sha384": (lambda: ec.generate_private_key(ec.SECP256R1()), hashes.SHA384()),
    "p384-sha384": (lambda: ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()),
    "p384-sha256": (lambda: ec.generate_private_key(ec.SECP384R1()), hashes.SHA256()),
    "rsa2048-sha256": (lambda: rsa.generate_private_key(65537, 2048), hashes.SHA256()),
}


@pytest.mark.parametrize("kind", list(KEYS))
def test_a_csr_signed_by_its_own_key_is_accepted(kind: str) -> None:
    make, hash_type = KEYS[kind]
    key = make()
    assert parse_csr(_csr(key, hash_type)) == key.public_key()


@pytest.mark.parametrize("kind", list(KEYS))
def test_a_flipped_signature_is_refused(kind: str) -> None:
    make, hash_type = KEYS[kind]
    bad = _flip_last_signature_byte(_csr(make(), hash_type))
    with pytest.raises(InvalidRequest, match="signature"):
        parse_csr(bad)


@pytest.mark.parametrize("kind", list(KEYS))
def test_a_signature_by_another_key_is_refused(kind: str) -> None:
    make, hash_type = KEYS[kind]
    ours, theirs = make(), make()
    # Our CertificationRequestInfo (our key), signed by their key over their own info.
    forged = _with_signature_of(_csr(ours, hash_type), _csr(theirs, hash_type))
    with pytest.raises(InvalidRequest, match="signature"):
        parse_csr(forged)


def test_the_signature_of_a_valid_csr_does_not_carry_to_another_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    good = _csr(key)
    assert parse_csr(good) == key.public_key()
    other_key = ec.generate_private_key(ec.SECP256R1())
    # Their signature over their info, our info: a signature never transfers to another key.
    with pytest.raises(InvalidRequest, match="signature"):
        parse_csr(_with_signature_of(_csr(other_key), good))
