"""Unpadded base64url: one strict decoder for every caller (JWK members, JWS parts, tokens)."""

from __future__ import annotations

import base64
import binascii
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s.core.b64 import b64url_decode, b64url_encode


@pytest.mark.parametrize("size", range(40))
def test_round_trip_matches_the_standard_encoding(size: int) -> None:
    data = os.urandom(size)
    text = b64url_encode(data)
    assert text == base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert b64url_decode(text) == data
    assert b64url_decode(text, canonical=True) == data


@pytest.mark.parametrize(
    "text",
    [
        "AA==",  # padding
        "AA=",
        "A",  # a length no encoding has
        "AAAAA",
        "AA+/",  # the standard alphabet, not the URL-safe one
        "AA AA",
        "AAAA\n",  # a trailing newline ($ in a regex would have let it through)
        "ÄAAA",
        "=AAA",  # padding first, inside, or a whole quantum of it
        "AA=A",
        "AAAA====",
        "AAA/",
        "AAA+",
        "AA\x00A",
        "AA\udc80A",  # a lone surrogate
        "AA.A",
    ],
)
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not valid base64url"):
        b64url_decode(text)
    with pytest.raises(ValueError, match="not valid base64url"):
        b64url_decode(text, canonical=True)


NON_CANONICAL = [("AB", b"\x00"), ("AAB", b"\x00\x00"), ("_x", b"\xff")]


@pytest.mark.parametrize(("text", "value"), NON_CANONICAL)
def test_non_canonical_text_decodes_unless_canonical_is_asked(text: str, value: bytes) -> None:
    # RFC 4648 section 3.5: the unused low bits of the last character should be zero.
    assert b64url_decode(text) == value
    with pytest.raises(ValueError, match="not canonical base64url"):
        b64url_decode(text, canonical=True)


CANONICAL = [("AA", b"\x00"), ("AAA", b"\x00\x00"), ("_w", b"\xff")]


@pytest.mark.parametrize(("text", "value"), CANONICAL)
def test_canonical_text_is_accepted(text: str, value: bytes) -> None:
    assert b64url_decode(text, canonical=True) == value


def _reference(text: str, canonical: bool) -> bytes | None:
    """The decoder by the letter of RFC 4648 section 5: the alphabet matched by a regex, the
    length checked, the trailing bits read from the value of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    if re.fullmatch(r"[A-Za-z0-9_-]*", text) is None or len(text) % 4 == 1:
        return None
    rem = len(text) % 4
    if canonical and rem and alphabet.index(text[-1]) & (0x0F if rem == 2 else 0x03):
        return None
    std = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
    return binascii.a2b_base64(std.encode())


@settings(deadline=None)
@given(
    st.text(alphabet=st.sampled_from("AQgw_-09az+/= .\n\x00Ä"), max_size=12),
    st.booleans(),
)
def test_every_text_gets_the_reference_verdict(text: str, canonical: bool) -> None:
    expected = _reference(text, canonical)
    try:
        got: bytes | None = b64url_decode(text, canonical=canonical)
    except ValueError:
        got = None
    assert got == expected, text
