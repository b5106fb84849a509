from __future__ import annotations

import pytest

from s2s.core.errors import InvalidSelector
from s2s.core.selectors import (
    SELECTOR_KINDS,
    Selector,
    SelectorKind,
    matches,
    parse_entry_selectors,
    parse_selectors,
    validate_selector,
)


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


# ---- validation against the selectors attestors produce (issue 11, item 13) -----------------

GOOD_SELECTORS = [
    "unix:uid:0",
    "unix:uid:1001",
    "unix:uid:4294967294",
    "unix:gid:50",
    "unix:supplementary_gid:27",
    "unix:user:billing",
    "unix:user:svc.billing-2",
    "unix:user:alice@corp",
    "unix:group:_ssh",
    "unix:supplementary_group:docker",
    "unix:path:/usr/bin/python3.11",
    "unix:path:/opt/app bin/run",
    "unix:path:/usr/bin/app (deleted)",
    "unix:sha256:" + "0a" * 32,
]


@pytest.mark.parametrize("text", GOOD_SELECTORS)
def test_attestor_selectors_are_valid(text: str) -> None:
    assert validate_selector(Selector.parse(text)) == Selector.parse(text)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("unix:uid:abc", "decimal number"),
        ("unix:uid:-5", "decimal number"),
        ("unix:uid:007", "leading zeros"),
        ("unix:uid:1.5", "decimal number"),
        ("unix:uid:4294967295", "4294967294"),
        ("unix:uid:99999999999", "decimal number"),
        ("unix:gid:", "decimal number"),
        ("unix:supplementary_gid:x", "decimal number"),
        ("unix:user:-rf", "account name"),
        ("unix:user:a/b", "account name"),
        ("unix:group:a b", "account name"),
        ("unix:supplementary_group:a:b", "account name"),
        ("unix:path:relative/bin", "absolute"),
        ("unix:path:/usr/bin/../bin/app", "normalized"),
        ("unix:path:/usr//bin/app", "normalized"),
        ("unix:path://usr/bin/app", "normalized"),
        ("unix:path:/usr/bin/", "normalized"),
        ("unix:sha256:xyz", "64 lowercase"),
        ("unix:sha256:" + "0A" * 32, "64 lowercase"),
        ("unix:sha256:" + "0a" * 31, "64 lowercase"),
        ("unix:foo:bar", "unix:uid"),
        ("unix:uid", "unix:uid"),
        ("unix:UID:1", "unix:uid"),
        ("k8s:ns:default", "no attestor produces type 'k8s'"),
        ("systemd:unit:x.service", "known types: unix"),
    ],
)
def test_selectors_no_attestor_produces_are_refused_naming_the_rule(text: str, rule: str) -> None:
    with pytest.raises(InvalidSelector) as caught:
        validate_selector(Selector.parse(text))
    assert rule in str(caught.value)
    assert repr(text) in str(caught.value)  # names the selector it refuses


def test_parse_entry_selectors_validates_each_and_needs_one() -> None:
    assert parse_entry_selectors(["unix:uid:1", "unix:gid:2"]) == {
        Selector("unix", "uid:1"),
        Selector("unix", "gid:2"),
    }
    with pytest.raises(InvalidSelector, match="decimal"):
        parse_entry_selectors(["unix:uid:1", "unix:gid:x"])
    with pytest.raises(InvalidSelector, match="at least one"):
        parse_entry_selectors([])


def test_a_new_attestor_adds_its_kinds_in_one_registry() -> None:
    kinds = {
        **SELECTOR_KINDS,
        "systemd": {"unit": SelectorKind("systemd", "unit", "a unit name", lambda v: "." in v)},
    }
    assert validate_selector(Selector.parse("systemd:unit:a.service"), kinds)
    with pytest.raises(InvalidSelector, match="a unit name"):
        validate_selector(Selector.parse("systemd:unit:nodot"), kinds)
