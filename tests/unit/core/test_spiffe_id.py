from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s.core.errors import InvalidSpiffeId
from s2s.core.spiffe_id import SpiffeId, TrustDomain

VALID = [
    "spiffe://example.org",
    "spiffe://example.org/ns/shop/sa/billing",
    "spiffe://a/B/c_D-e.f",
    "spiffe://1.2.3.4/x",
    "spiffe://example..org/x",  # SPIFFE-ID 2.1: no DNS label rules
    "spiffe://-x.org./x",
    "spiffe://td/...",  # a segment of three dots is not a relative modifier
    "spiffe://td/.a/a./..b",
    "spiffe://td/" + "a" * 2030,
    "spiffe://" + "t" * 255 + "/p",
]


@pytest.mark.parametrize("text", VALID)
def test_valid_ids_round_trip(text: str) -> None:
    sid = SpiffeId.parse(text)
    assert str(sid) == text
    assert SpiffeId.parse(str(sid)) == sid
    assert hash(SpiffeId.parse(text)) == hash(sid)


# (input, words the message must contain)
INVALID = [
    ("", "empty"),
    ("example.org/path", "spiffe://"),
    ("http://example.org/path", "spiffe://"),
    ("spiffe:/example.org", "spiffe://"),
    ("spiffe:example.org", "spiffe://"),
    ("SPIFFE://example.org/path", "spiffe://example.org/path"),
    ("Spiffe://Example.org/path", "spiffe://example.org/path"),
    ("spiffe://Example.ORG/Path", "spiffe://example.org/Path"),
    ("spiffe://", "trust domain is missing"),
    ("spiffe:///path", "trust domain is missing"),
    ("spiffe://example.org/", "end with '/'"),
    ("spiffe://example.org//a", "empty segments"),
    ("spiffe://example.org/a//b", "empty segments"),
    ("spiffe://example.org/a/./b", "'.' or '..'"),
    ("spiffe://example.org/a/..", "'.' or '..'"),
    ("spiffe://example.org/.", "'.' or '..'"),
    ("spiffe://example.org/a%20b", "percent-encoding"),
    ("spiffe://exa%41mple.org/a", "percent-encoding"),
    ("spiffe://example.org/a?b=c", "query"),
    ("spiffe://example.org?x", "query"),
    ("spiffe://example.org/a#frag", "fragment"),
    ("spiffe://example.org:8080/a", "port"),
    ("spiffe://user@example.org/a", "userinfo"),
    ("spiffe://user:pw@example.org/a", "userinfo"),
    ("spiffe://example.org\n", "lowercase letters"),
    ("spiffe://example.org/path\n", "letters, digits"),
    ("spiffe://example.org/a\n/b", "letters, digits"),
    (" spiffe://example.org/a", "spiffe://"),
    ("spiffe://example.org/a ", "letters, digits"),
    ("spiffe://exam ple.org/a", "lowercase letters"),
    ("spiffe://example.org/a b", "letters, digits"),
    ("spiffe://example.org/caf\u00e9", "letters, digits"),
    ("spiffe://ex\u00e4mple.org/a", "lowercase letters"),
    ("spiffe://[::1]/a", "port"),
    ("spiffe://example.org/a:b", "letters, digits"),
    ("spiffe://example.org/a+b", "letters, digits"),
    ("spiffe://td/" + "a" * 2037, "2048 bytes"),
    ("spiffe://" + "t" * 256 + "/p", "255 bytes"),
]


@pytest.mark.parametrize(("text", "words"), INVALID)
def test_invalid_ids_name_the_rule(text: str, words: str) -> None:
    with pytest.raises(InvalidSpiffeId) as caught:
        SpiffeId.parse(text)
    assert words in str(caught.value)


def test_length_limit_is_inclusive() -> None:
    longest = "spiffe://td/" + "a" * (2048 - len("spiffe://td/"))
    assert len(longest) == 2048
    assert str(SpiffeId.parse(longest)) == longest
    with pytest.raises(InvalidSpiffeId, match="2048 bytes"):
        SpiffeId.parse(longest + "a")


def test_non_text_is_rejected() -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(b"spiffe://example.org/a")  # type: ignore[arg-type]


def test_accessors() -> None:
    sid = SpiffeId.parse("spiffe://example.org/ns/shop/sa/billing")
    td = TrustDomain.parse("example.org")
    assert sid.trust_domain == td
    assert sid.path == "/ns/shop/sa/billing"
    assert sid.segments == ("ns", "shop", "sa", "billing")
    assert sid.is_member_of(td)
    assert not sid.is_member_of(TrustDomain.parse("example.com"))
    assert not sid.is_root()
    assert td.id().is_root()
    assert td.id().segments == ()
    assert str(td.id()) == "spiffe://example.org"
    assert td.child("ns", "shop") == SpiffeId.parse("spiffe://example.org/ns/shop")
    assert td.id("/a/b") == SpiffeId.parse("spiffe://example.org/a/b")


def test_value_objects_are_frozen_and_hashable() -> None:
    sid = SpiffeId.parse("spiffe://example.org/a")
    with pytest.raises(AttributeError):
        sid.path = "/b"  # type: ignore[misc]
    assert {sid, SpiffeId.parse("spiffe://example.org/a")} == {sid}
    assert SpiffeId.parse("spiffe://example.org/A") != sid  # paths are case-sensitive


@pytest.mark.parametrize("bad", ["/a/", "a", "/a//b", "/..", "/a%2F"])
def test_id_validates_its_path(bad: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        TrustDomain.parse("example.org").id(bad)


@pytest.mark.parametrize("segments", [("a", ""), ("..",), ("a/b",), ("a%2F",), ("a b",)])
def test_child_validates_its_segments(segments: tuple[str, ...]) -> None:
    with pytest.raises(InvalidSpiffeId):
        TrustDomain.parse("example.org").child(*segments)


def test_trust_domain_parse() -> None:
    assert TrustDomain.parse("example.org").name == "example.org"
    assert TrustDomain.parse("spiffe://example.org") == TrustDomain.parse("example.org")
    for bad, words in [
        ("", "missing"),
        ("Example.org", "did you mean 'example.org'"),
        ("example.org:443", "port"),
        ("spiffe://example.org/path", "no path"),
        ("example.org/path", "lowercase letters"),
        ("t" * 256, "255 bytes"),
        ("example.org\n", "lowercase letters"),
    ]:
        with pytest.raises(InvalidSpiffeId) as caught:
            TrustDomain.parse(bad)
        assert words in str(caught.value), (bad, str(caught.value))


_td = st.from_regex(r"[a-z0-9._-]{1,40}", fullmatch=True)
_segment = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)


@settings(deadline=None)
@given(_td, st.lists(_segment, max_size=8))
def test_property_parse_of_str_round_trips(td: str, segments: list[str]) -> None:
    sid = TrustDomain.parse(td).child(*segments)
    assert SpiffeId.parse(str(sid)) == sid
    assert sid.segments == tuple(segments)


@settings(deadline=None)
@given(st.text(max_size=300))
def test_property_parser_raises_only_invalid_spiffe_id(text: str) -> None:
    try:
        sid = SpiffeId.parse(text)
    except InvalidSpiffeId:
        return
    assert str(sid) == text


@settings(deadline=None)
@given(st.text(alphabet="spife:/.%?#@-_aZ09\n ", max_size=40))
def test_property_parser_on_near_miss_text(text: str) -> None:
    try:
        sid = SpiffeId.parse("spiffe://" + text)
    except InvalidSpiffeId:
        return
    assert str(sid) == "spiffe://" + text
