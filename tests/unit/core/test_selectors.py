from __future__ import annotations

import pytest

from s2s.core.errors import InvalidSelector
from s2s.core.selectors import Selector, matches, parse_selectors


def test_parse_and_round_trip() -> None:
    s = Selector.parse("unix:uid:1000")
    assert (s.type, s.value) == ("unix", "uid:1000")
    assert str(s) == "unix:uid:1000"
    assert Selector.parse("unix:path:/usr/bin/python3.11").value == "path:/usr/bin/python3.11"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "type:value"),
        ("unix", "type:value"),
        ("unix:", "empty value"),
        (":uid:1", "type"),
        ("Unix:uid:1", "type"),
        ("unix:uid:1 ", "whitespace"),
        ("unix:uid:1\n", "whitespace"),
        ("unix:uid:\x001", "control"),
        ("unix:" + "a" * 2000, "longer than"),
    ],
)
def test_bad_selectors_are_rejected_with_a_reason(text: str, words: str) -> None:
    with pytest.raises(InvalidSelector) as caught:
        Selector.parse(text)
    assert words in str(caught.value)


def test_parse_selectors_requires_one() -> None:
    with pytest.raises(InvalidSelector, match="at least one"):
        parse_selectors([])
    assert parse_selectors(["unix:uid:1", "unix:uid:1"]) == {Selector("unix", "uid:1")}


def test_entry_matches_when_all_its_selectors_are_present() -> None:
    caller = parse_selectors(["unix:uid:1000", "unix:gid:1000", "unix:path:/usr/bin/app"])
    assert matches(parse_selectors(["unix:uid:1000"]), caller)
    assert matches(parse_selectors(["unix:uid:1000", "unix:path:/usr/bin/app"]), caller)
    # twins that reject
    assert not matches(parse_selectors(["unix:uid:1001"]), caller)
    assert not matches(parse_selectors(["unix:uid:1000", "unix:path:/usr/bin/other"]), caller)
    assert not matches(frozenset(), caller)
    assert not matches(parse_selectors(["unix:uid:1000"]), frozenset())
