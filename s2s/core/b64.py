"""Unpadded base64url (RFC 4648 section 5, as JOSE uses it: RFC 7515 section 2).

>>> b64url_encode(b"\\xfb\\xff")
'-_8'
>>> b64url_decode("-_8")
b'\\xfb\\xff'
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["b64url_decode", "b64url_decode_matched", "b64url_encode"]

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PAD = (b"", b"", b"==", b"=")  # by length mod 4


def b64url_encode(data: bytes) -> str:
    """URL-safe base64 of ``data`` with the ``=`` padding stripped."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str, *, canonical: bool = False) -> bytes:
    """Decode unpadded base64url strictly.

    Raises ValueError on padding, characters outside the URL-safe alphabet, or an impossible length
    (the standard decoder would skip stray characters silently). With ``canonical``, also when
    the unused low bits of the last character are not zero (RFC 4648 section 3.5), so that one
    value has exactly one encoding.

    >>> b64url_decode("AA==")
    Traceback (most recent call last):
    ...
    ValueError: not valid base64url
    >>> b64url_decode("AB"), b64url_decode("AA", canonical=True)
    (b'\\x00', b'\\x00')
    >>> b64url_decode("AB", canonical=True)
    Traceback (most recent call last):
    ...
    ValueError: not canonical base64url
    """
    rem = len(text) % 4
    if rem == 1 or _B64URL.fullmatch(text) is None:
        raise ValueError("not valid base64url")
    if canonical and rem and _VALUE[text[-1]] & (0x0F if rem == 2 else 0x03):
        raise ValueError("not canonical base64url")
    try:
        return binascii.a2b_base64(text.encode("ascii").translate(_TO_STANDARD) + b"=" * (-rem % 4))
    except binascii.Error as exc:  # pragma: no cover - the checks above rule it out
        raise ValueError("not valid base64url") from exc


def b64url_decode_matched(text: str, *, canonical: bool = False) -> bytes:
    """:func:`b64url_decode` of ``text`` that the caller has already matched against the
    base64url alphabet (``[A-Za-z0-9_-]*``, as a JWS compact-form split does): the length and,
    with ``canonical``, the unused bits are still checked; the alphabet is not scanned again.

    >>> b64url_decode_matched("-_8", canonical=True)
    b'\\xfb\\xff'
    >>> b64url_decode_matched("-_9", canonical=True)
    Traceback (most recent call last):
    ...
    ValueError: not canonical base64url
    """
    rem = len(text) % 4
    if rem == 1:
        raise ValueError("not valid base64url")
    if canonical and rem and _VALUE[text[-1]] & (0x0F if rem == 2 else 0x03):
        raise ValueError("not canonical base64url")
    return binascii.a2b_base64(text.encode("ascii").translate(_TO_STANDARD) + _PAD[rem])
