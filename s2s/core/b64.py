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

__all__ = ["b64url_decode", "b64url_encode"]

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """URL-safe base64 of ``data`` with the ``=`` padding stripped."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly.

    Raises ValueError on padding, characters outside the URL-safe alphabet, or an impossible length
    (the standard decoder would skip stray characters silently).

    >>> b64url_decode("AA==")
    Traceback (most recent call last):
    ...
    ValueError: not unpadded base64url
    """
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:  # pragma: no cover - the checks above rule it out
        raise ValueError("not unpadded base64url") from exc
