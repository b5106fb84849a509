"""Strict JWS compact serialization (RFC 7515) and signature verification bound to the key.

A token is split into exactly three parts of unpadded, canonical base64url; its header must be a
JSON object without duplicate names; the algorithm must be one the verifying key is bound to
(:func:`~s2s.core.jwtsvid.algorithms_for_key`, never taken from the token alone), and the
signature is checked with ``cryptography`` directly. :mod:`s2s.verifier.jwt` builds the JWT-SVID
validator on these pieces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from s2s.core.b64 import b64url_decode
from s2s.core.errors import InvalidToken
from s2s.core.jwtsvid import algorithms_for_key

__all__ = [
    "DEFAULT_MAX_TOKEN_BYTES",
    "CompactJws",
    "SignatureCheck",
    "b64decode",
    "check_alg",
    "ecdsa_der",
    "json_object",
    "parse_compact",
    "signature_checks",
    "split_compact",
    "split_parts",
    "verify_checked",
    "verify_signature",
]

DEFAULT_MAX_TOKEN_BYTES = 8 * 1024  # a JWT-SVID is ~300-1000 bytes; anything near this is abuse
# alg -> (family, hash). The key decides which of these it may verify (algorithms_for_key).
_ALGORITHMS: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "ES256": ("ec", hashes.SHA256), "ES384": ("ec", hashes.SHA384), "ES512": ("ec", hashes.SHA512),
    "RS256": ("rs", hashes.SHA256), "RS384": ("rs", hashes.SHA384), "RS512": ("rs", hashes.SHA512),
    "PS256": ("ps", hashes.SHA256), "PS384": ("ps", hashes.SHA384), "PS512": ("ps", hashes.SHA512),
}  # fmt: skip
_ECDSA = {alg: ec.ECDSA(h()) for alg, (family, h) in _ALGORITHMS.items() if family == "ec"}
# RFC 7518 3.5: PSS with MGF1 over the same hash and a salt as long as the hash output.
_RSA_PADDING: dict[str, padding.AsymmetricPadding] = {
    alg: padding.PKCS1v15()
    if family == "rs"
    else padding.PSS(mgf=padding.MGF1(h()), salt_length=h().digest_size)
    for alg, (family, h) in _ALGORITHMS.items()
    if family != "ec"
}
_BAD_SIGNATURE = "the token signature is not valid"
# check(signing_input, signature): returns if the signature holds, else InvalidToken.
SignatureCheck = Callable[[bytes, bytes], None]
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)\.([A-Za-z0-9_-]*)")


@dataclass(frozen=True, slots=True)
class CompactJws:
    """A JWS compact serialization split and decoded, not yet verified."""

    header: Mapping[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes


def parse_compact(token: object, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> CompactJws:
    """Split a JWS compact serialization (RFC 7515 section 7.1) strictly.

    Exactly three parts of unpadded, canonical base64url (RFC 4648 section 5; no padding, no
    whitespace, no non-zero trailing bits); the header a JSON object without duplicate names.
    """
    if not isinstance(token, str):
        raise InvalidToken("the token must be text", reason="malformed")
    if len(token) > max_bytes:
        raise InvalidToken(f"the token is longer than {max_bytes} bytes", reason="too-large")
    head, body, sig = split_compact(token)
    header = json_object(b64decode(head), "header")
    return CompactJws(header, b64decode(body), f"{head}.{body}".encode("ascii"), b64decode(sig))


def verify_signature(
    alg: str,
    public_key: PublicKeyTypes,
    signing_input: bytes,
    signature: bytes,
    *,
    pinned: frozenset[str] | None = None,
) -> None:
    """Verify a JWS signature with ``public_key``; ``alg`` must be one the key is bound to.

    Raises InvalidToken(reason='alg') if the key cannot verify ``alg`` (an EC P-256 key verifies
    ES256 only; RSA keys RS*/PS*, or only ``pinned`` when the key is pinned to some algorithms)
    and InvalidToken(reason='signature') if the signature is bad.
    """
    allowed = algorithms_for_key(public_key)
    if pinned is not None:
        allowed = allowed & pinned
    check_alg(alg, allowed)
    verify_checked(alg, public_key, signing_input, signature)


def check_alg(alg: str, allowed: frozenset[str]) -> None:
    """InvalidToken(reason='alg') unless ``alg`` is in ``allowed`` and one this module verifies."""
    if alg not in allowed or alg not in _ALGORITHMS:
        raise InvalidToken(f"the token algorithm {alg} does not match the key", reason="alg")


def verify_checked(
    alg: str, public_key: PublicKeyTypes, signing_input: bytes, signature: bytes
) -> None:
    """Verify with an algorithm already checked against the key (see :func:`check_alg`)."""
    family, hash_type = _ALGORITHMS[alg]
    try:
        if family == "ec" and _is_ec_key(public_key):
            size = (public_key.curve.key_size + 7) // 8
            if len(signature) != 2 * size:  # RFC 7518 3.4: exactly R || S, each the curve size
                raise InvalidSignature
            public_key.verify(ecdsa_der(signature, size), signing_input, _ECDSA[alg])
        elif family != "ec" and isinstance(public_key, rsa.RSAPublicKey):
            if len(signature) != (public_key.key_size + 7) // 8:  # RFC 8017 8.2.2 step 1
                raise InvalidSignature
            public_key.verify(signature, signing_input, _RSA_PADDING[alg], hash_type())
        else:
            raise InvalidSignature
    except InvalidSignature:
        raise InvalidToken(_BAD_SIGNATURE, reason="signature") from None


def signature_checks(
    public_key: PublicKeyTypes, allowed: frozenset[str]
) -> dict[str, SignatureCheck]:
    """For each algorithm of ``allowed`` this module verifies, the check of a signature by
    ``public_key``: :func:`verify_checked` with what depends on the key alone (the curve size,
    the DER framing, the bound ``verify``) worked out once, for a verifier that keeps a key's
    checks as long as it keeps the key. An algorithm not in the result does not match the key
    (what :func:`check_alg` refuses)."""
    return {alg: _signature_check(alg, public_key) for alg in allowed if alg in _ALGORITHMS}


def _signature_check(alg: str, public_key: PublicKeyTypes) -> SignatureCheck:
    def general(signing_input: bytes, signature: bytes) -> None:
        verify_checked(alg, public_key, signing_input, signature)

    if _ALGORITHMS[alg][0] != "ec" or not _is_ec_key(public_key):
        return general
    size = (public_key.curve.key_size + 7) // 8
    framing = _DER_FRAMING.get(size)
    if framing is None:
        return general
    verify, ecdsa, length = public_key.verify, _ECDSA[alg], 2 * size

    def ec_check(signing_input: bytes, signature: bytes) -> None:
        # The usual signature (the right length, neither R nor S with a leading zero byte) is
        # framed here as ecdsa_der frames it; any other goes through verify_checked.
        if len(signature) != length or not signature[0] or not signature[size]:
            verify_checked(alg, public_key, signing_input, signature)
            return
        head, middle = framing[(signature[0] >> 7) * 2 + (signature[size] >> 7)]
        try:
            verify(head + signature[:size] + middle + signature[size:], signing_input, ecdsa)
        except InvalidSignature:
            raise InvalidToken(_BAD_SIGNATURE, reason="signature") from None

    return ec_check


def _is_ec_key(key: object) -> TypeGuard[ec.EllipticCurvePublicKey]:
    """isinstance(key, EllipticCurvePublicKey), remembered per concrete type: the Rust key
    class is a registered virtual subclass, and the ABC check costs ~0.3 us on every call."""
    kind = type(key)
    if kind in _EC_KEY_TYPES:
        return True
    if isinstance(key, ec.EllipticCurvePublicKey):
        _EC_KEY_TYPES.add(kind)
        return True
    return False


_EC_KEY_TYPES: set[type] = set()


def ecdsa_der(signature: bytes, size: int) -> bytes:
    """The DER ECDSA-Sig-Value (RFC 3279 2.2.3) of a JWS ``R || S`` of ``size`` bytes each.

    Built from the bytes (minimal INTEGERs: leading zeros dropped, a zero byte added before a set
    high bit), which costs less than two ints and ``encode_dss_signature``. When neither R nor S
    starts with a zero byte (255 in 256 signatures) only the sign padding varies, and the framing
    comes from a table; the long-form lengths of P-521 go through ``encode_dss_signature``.

    >>> ecdsa_der(bytes([0, 0x80]) + bytes([0x7F, 1]), 2).hex()
    '30080202008002027f01'
    """
    framing = _DER_FRAMING.get(size)
    first_r, first_s = signature[0], signature[size]
    if framing is not None and first_r and first_s:
        head, middle = framing[(first_r >> 7) * 2 + (first_s >> 7)]
        return head + signature[:size] + middle + signature[size:]
    if size > 60:  # a SEQUENCE of two INTEGERs longer than 127 bytes needs the long form
        r_value = int.from_bytes(signature[:size], "big")
        return encode_dss_signature(r_value, int.from_bytes(signature[size:], "big"))
    r = _der_integer(signature[:size])
    s = _der_integer(signature[size:])
    return b"\x30" + bytes((len(r) + len(s),)) + r + s


def _der_framing(size: int) -> tuple[tuple[bytes, bytes], ...]:
    """(SEQUENCE and first INTEGER header, second INTEGER header) by (R high bit, S high bit)."""
    out = []
    for pad_r in (0, 1):
        for pad_s in (0, 1):
            len_r, len_s = size + pad_r, size + pad_s
            head = bytes((0x30, len_r + len_s + 4, 0x02, len_r)) + b"\x00" * pad_r
            out.append((head, bytes((0x02, len_s)) + b"\x00" * pad_s))
    return tuple(out)


_DER_FRAMING = {size: _der_framing(size) for size in (32, 48)}  # ES256, ES384


def _der_integer(value: bytes) -> bytes:
    if value[0] & 0x80:
        return b"\x02" + bytes((len(value) + 1,)) + b"\x00" + value
    if value[0]:
        return b"\x02" + bytes((len(value),)) + value
    value = value.lstrip(b"\x00") or b"\x00"
    if value[0] & 0x80:
        value = b"\x00" + value
    return b"\x02" + bytes((len(value),)) + value


def split_compact(token: str) -> tuple[str, str, str]:
    """The three base64url parts of a compact JWS; InvalidToken(reason='malformed') otherwise."""
    match = _COMPACT.fullmatch(token)
    if match is None:
        raise InvalidToken(
            "the token is not a compact JWS (three dot-separated base64url parts)",
            reason="malformed",
        )
    head, body, sig = match.groups()
    return head, body, sig


def split_parts(token: str) -> list[str]:
    """The three parts of a compact JWS, the first not empty, their alphabet not yet checked:
    the caller decodes each with :func:`b64decode` (which refuses anything outside it) or looks
    it up among parts that decoded before. Cheaper than :func:`split_compact`'s match when every
    part is decoded anyway."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0]:
        raise InvalidToken(
            "the token is not a compact JWS (three dot-separated base64url parts)",
            reason="malformed",
        )
    return parts


def b64decode(part: str) -> bytes:
    """Decode one part of a compact JWS: canonical base64url only (RFC 4648 section 3.5, the
    unused low bits of the last character are zero), else InvalidToken(reason='malformed')."""
    try:
        return b64url_decode(part, canonical=True)
    except ValueError as exc:  # "not valid base64url" / "not canonical base64url"
        raise InvalidToken(f"the token is {exc}", reason="malformed") from None


def json_object(raw: bytes, what: str) -> dict[str, Any]:
    """``raw`` as a JSON object (no duplicate names, no NaN/Infinity); ``what`` names it."""
    try:
        text = raw.decode("utf-8")
        # The scanner alone when the object fills the text (what a signer writes); whitespace
        # around it, or an error to report, goes through the whole decoder.
        value, end = _SCAN(text, 0) if text[:1] == "{" else (None, -1)
        if end != len(text):
            value = _DECODER.decode(text)
    except (ValueError, RecursionError, StopIteration):
        raise InvalidToken(f"the token {what} is not JSON", reason="malformed") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"the token {what} is not a JSON object", reason="malformed")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # RFC 7515 4: duplicate names are rejected, never "last wins"
        raise ValueError("duplicate member name")
    return result


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# One decoder for every call (json.loads would build a new one per call when given hooks).
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
# The decoder's C scanner: one value at an index (the stubs do not name it).
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
