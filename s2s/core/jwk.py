"""JWK <-> public key (RFC 7517, RFC 7518 section 6) for the SPIFFE bundle format.

Encodes EC (P-256/P-384/P-521), RSA and OKP (Ed25519/Ed448) public keys as JWK parameters and
decodes them back, raising :class:`InvalidBundle` for malformed input; private key members are the
caller's to refuse. Used by :mod:`s2s.core.bundle`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from s2s.core.b64 import b64url_decode, b64url_encode
from s2s.core.errors import InvalidBundle

__all__ = [
    "KNOWN_KTY",
    "MIN_RSA_BITS",
    "b64std",
    "check_jwt_key",
    "public_jwk",
    "public_key_from_jwk",
    "short_error",
    "spki_der",
    "unb64std",
]

KNOWN_KTY = frozenset({"EC", "RSA", "OKP"})  # the kty values public_key_from_jwk decodes
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_CURVE_NAMES = {type(curve): name for name, curve in _CURVES.items()}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
MIN_RSA_BITS = 2048


def spki_der(key: PublicKeyTypes) -> bytes:
    """The SubjectPublicKeyInfo DER of ``key`` (how keys are compared)."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_jwt_key(key: PublicKeyTypes, where: str) -> None:
    """Refuse RSA keys under MIN_RSA_BITS and EC curves with no JWK name (InvalidBundle)."""
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise InvalidBundle(f"{where}: RSA keys must have at least {MIN_RSA_BITS} bits")
    if isinstance(key, ec.EllipticCurvePublicKey) and type(key.curve) not in _CURVE_NAMES:
        raise InvalidBundle(f"{where}: EC keys must use P-256, P-384 or P-521")


def _unb64url(text: object, where: str) -> bytes:
    if not isinstance(text, str) or not text or _B64URL.fullmatch(text) is None:
        raise InvalidBundle(f"{where} must be non-empty unpadded base64url")
    try:
        return b64url_decode(text)
    except ValueError:
        raise InvalidBundle(f"{where} is not valid base64url") from None


def b64std(data: bytes) -> str:
    """Standard padded base64 (the ``x5c`` form)."""
    return base64.b64encode(data).decode("ascii")


def unb64std(text: str) -> bytes:
    """Decode standard padded base64; ValueError (binascii.Error) when malformed."""
    # RFC 7517 4.7: x5c values are standard (not URL-safe) base64 with padding.
    return base64.b64decode(text, validate=True)


def _uint(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(length, "big"))


def public_jwk(key: PublicKeyTypes) -> dict[str, Any]:
    """The public JWK parameters (kty and key material) of ``key``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        name = _CURVE_NAMES.get(type(key.curve))
        if name is None:
            raise InvalidBundle(f"the curve {key.curve.name} has no JWK name")
        size = (key.curve.key_size + 7) // 8
        nums = key.public_numbers()
        return {"kty": "EC", "crv": name, "x": _uint(nums.x, size), "y": _uint(nums.y, size)}
    if isinstance(key, rsa.RSAPublicKey):
        rsa_nums = key.public_numbers()
        return {"kty": "RSA", "n": _uint(rsa_nums.n), "e": _uint(rsa_nums.e)}
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        crv = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": crv, "x": b64url_encode(raw)}
    raise InvalidBundle(f"a {type(key).__name__} cannot be written as a JWK")


def public_key_from_jwk(entry: Mapping[str, Any], where: str) -> PublicKeyTypes:
    """The public key described by a JWK's ``kty`` parameters; InvalidBundle if malformed."""
    kty = entry.get("kty")
    try:
        if kty == "EC":
            crv = entry.get("crv")
            curve = _CURVES.get(crv) if isinstance(crv, str) else None
            if curve is None:
                raise InvalidBundle(f"{where}: 'crv' must be P-256, P-384 or P-521")
            size = (curve.key_size + 7) // 8
            x, y = _unb64url(entry.get("x"), f"{where}.x"), _unb64url(entry.get("y"), f"{where}.y")
            if len(x) != size or len(y) != size:
                raise InvalidBundle(f"{where}: EC coordinates must be {size} bytes")
            nums = ec.EllipticCurvePublicNumbers(_int(x), _int(y), curve)
            return nums.public_key()
        if kty == "RSA":
            n, e = _unb64url(entry.get("n"), f"{where}.n"), _unb64url(entry.get("e"), f"{where}.e")
            return rsa.RSAPublicNumbers(_int(e), _int(n)).public_key()
        return _okp_key(entry, where)
    except ValueError as exc:
        if isinstance(exc, InvalidBundle):
            raise
        raise InvalidBundle(f"{where}: not a valid {kty} public key: {short_error(exc)}") from None


def _okp_key(entry: Mapping[str, Any], where: str) -> PublicKeyTypes:
    raw = _unb64url(entry.get("x"), f"{where}.x")
    crv = entry.get("crv")
    if crv == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    if crv == "Ed448":
        return ed448.Ed448PublicKey.from_public_bytes(raw)
    raise InvalidBundle(f"{where}: 'crv' must be Ed25519 or Ed448 for kty OKP")


def _int(data: bytes) -> int:
    return int.from_bytes(data, "big")


def short_error(exc: BaseException) -> str:
    """An exception's text cut to 200 characters, for error messages about peer input."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
