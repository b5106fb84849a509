"""Unpadded base64url (RFC 4648 section 5, as JOSE uses it: RFC 7515 section 2).

>>> b64url_encode(b"\\xfb\\xff")
'-_8'
>>> b64url_decode("-_8")
b'\\xfb\\xff'
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["b64url_decode", "b64url_encode"]

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}
_FROM_URLSAFE = bytes.maketrans(b"-_+/=", b"+/!!!")
_PAD = (b"", b"", b"==", b"=")  # by length mod 4 (1 is refused by the decoder)


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
    try:
        # "+", "/" and "=" are not base64url: they become "!", which the strict decoder refuses
        # along with anything else outside the alphabet; the only "=" is the padding added here.
        value = binascii.a2b_base64(
            text.encode("ascii").translate(_FROM_URLSAFE) + _PAD[rem], strict_mode=True
        )
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError("not valid base64url") from None
    if canonical and rem and _VALUE[text[-1]] & (0x0F if rem == 2 else 0x03):
        raise ValueError("not canonical base64url")
    return value
