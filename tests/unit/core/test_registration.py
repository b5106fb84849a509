from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s.core.errors import InvalidRequest
from s2s.core.registration import (
    DEFAULT_SVID_TTL,
    MAX_SELECTORS,
    RegistrationEntry,
    new_entry_id,
)
from s2s.core.selectors import Selector, parse_selectors
from s2s.core.spiffe_id import SpiffeId

AGENT = "spiffe://example.org/s2s/agent/join_token/a1"


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "e1",
        "spiffe_id": "spiffe://example.org/billing",
        "parent_id": AGENT,
        "selectors": ["unix:uid:1001", "unix:gid:50"],
    }
    doc.update(overrides)
    return doc


def test_minimal_json_gets_defaults() -> None:
    e = RegistrationEntry.from_json(_doc())
    assert e.spiffe_id == SpiffeId.parse("spiffe://example.org/billing")
    assert e.parent_id == SpiffeId.parse(AGENT)
    assert e.selectors == parse_selectors(["unix:gid:50", "unix:uid:1001"])
    assert e.x509_svid_ttl == e.jwt_svid_ttl == DEFAULT_SVID_TTL
    assert (e.dns_names, e.hint, e.revision, e.created_at) == ((), "", 0, None)


def test_full_round_trip_through_json_text() -> None:
    created = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    e = RegistrationEntry.from_json(
        _doc(
            x509_svid_ttl=120,
            jwt_svid_ttl=60,
            dns_names=["billing.internal", "*.billing.example.org"],
            hint="external",
            revision=7,
            created_at=created.isoformat(),
        )
    )
    again = RegistrationEntry.from_json(json.loads(json.dumps(e.to_json())))
    assert again == e
    assert again.created_at == created
    assert again.x509_svid_ttl == dt.timedelta(seconds=120)
    assert e.to_json()["selectors"] == ["unix:gid:50", "unix:uid:1001"]


def test_created_at_with_other_offset_is_normalised_to_utc() -> None:
    e = RegistrationEntry.from_json(_doc(created_at="2030-01-01T02:00:00+02:00"))
    assert e.created_at == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert e.created_at is not None
    assert e.created_at.utcoffset() == dt.timedelta(0)


def test_key_is_spiffe_id_parent_and_selectors() -> None:
    a = RegistrationEntry.from_json(_doc())
    b = RegistrationEntry.from_json(_doc(id="other", hint="x"))
    c = RegistrationEntry.from_json(_doc(selectors=["unix:uid:1001"]))
    assert a.key == b.key
    assert a.key != c.key


@pytest.mark.parametrize("first", range(256))
def test_a_new_entry_id_never_starts_like_a_command_line_option(first: int) -> None:
    eid = new_entry_id(bytes([first]) + bytes(range(15)))
    assert eid[0] not in "-_"
    assert len(eid) == 22


def test_new_entry_id_is_url_safe_and_usable() -> None:
    eid = new_entry_id(bytes(range(16)))
    assert len(eid) == 22
    assert "=" not in eid
    RegistrationEntry.from_json(_doc(id=eid))
    assert new_entry_id(bytes(range(16))) != new_entry_id(bytes(range(1, 17)))
    with pytest.raises(InvalidRequest, match="16 random bytes"):
        new_entry_id(b"short")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_doc(extra=1), "unknown registration entry field"),
        ({k: v for k, v in _doc().items() if k != "selectors"}, "missing: selectors"),
        ({k: v for k, v in _doc().items() if k != "id"}, "missing: id"),
        (_doc(id=""), "entry id"),
        (_doc(id="has space"), "entry id"),
        (_doc(id="x" * 65), "entry id"),
        (_doc(id=5), "id must be a string"),
        (_doc(spiffe_id="spiffe://Example.org/x"), "spiffe_id: invalid SPIFFE ID"),
        (_doc(spiffe_id=None), "spiffe_id: invalid SPIFFE ID"),
        (_doc(parent_id="https://example.org/a"), "parent_id: invalid SPIFFE ID"),
        (_doc(selectors=[]), "selectors must be a non-empty list"),
        (_doc(selectors="unix:uid:1"), "selectors must be a non-empty list"),
        (_doc(selectors=["nocolon"]), "selectors: selector"),
        (_doc(selectors=[f"unix:uid:{i}" for i in range(MAX_SELECTORS + 1)]), "at most"),
        (_doc(x509_svid_ttl=0), "x509_svid_ttl must be a positive"),
        (_doc(x509_svid_ttl=-5), "x509_svid_ttl must be a positive"),
        (_doc(jwt_svid_ttl=True), "jwt_svid_ttl must be a positive"),
        (_doc(jwt_svid_ttl=1.5), "jwt_svid_ttl must be a positive"),
        (_doc(jwt_svid_ttl="300"), "jwt_svid_ttl must be a positive"),
        (_doc(x509_svid_ttl=10**12), "x509_svid_ttl must be a positive"),
        (_doc(dns_names="a.example"), "dns_names must be a list"),
        (_doc(dns_names=["Upper.example"]), "invalid DNS name"),
        (_doc(dns_names=["bad_label.example"]), "invalid DNS name"),
        (_doc(dns_names=["-a.example"]), "invalid DNS name"),
        (_doc(dns_names=["*.com"]), "invalid DNS name"),
        (_doc(dns_names=["a.*.example"]), "invalid DNS name"),
        (_doc(dns_names=["a.example", "a.example"]), "duplicates"),
        (_doc(hint="x" * 257), "hint"),
        (_doc(hint="a\nb"), "control characters"),
        (_doc(revision=-1), "revision must be a non-negative"),
        (_doc(revision="1"), "revision must be an integer"),
        (_doc(created_at="yesterday"), "not an ISO 8601"),
        (_doc(created_at="2030-01-01T00:00:00"), "UTC offset"),
        (_doc(created_at=12345), "created_at must be"),
    ],
)
def test_bad_json_is_refused_with_the_field_named(doc: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        RegistrationEntry.from_json(doc)


@pytest.mark.parametrize("doc", [None, [], "entry", 3])
def test_non_object_is_refused(doc: Any) -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        RegistrationEntry.from_json(doc)


def test_constructor_refuses_bad_values() -> None:
    sid = SpiffeId.parse("spiffe://example.org/x")
    sel = frozenset({Selector.parse("unix:uid:1")})
    with pytest.raises(InvalidRequest, match="SpiffeId"):
        RegistrationEntry(id="e", spiffe_id="spiffe://example.org/x", parent_id=sid, selectors=sel)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="at least one selector"):
        RegistrationEntry(id="e", spiffe_id=sid, parent_id=sid, selectors=frozenset())
    with pytest.raises(InvalidRequest, match="frozenset"):
        RegistrationEntry(id="e", spiffe_id=sid, parent_id=sid, selectors={"unix:uid:1"})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="whole seconds"):
        RegistrationEntry(
            id="e",
            spiffe_id=sid,
            parent_id=sid,
            selectors=sel,
            x509_svid_ttl=dt.timedelta(seconds=1.5),
        )
    with pytest.raises(InvalidRequest, match="aware"):
        RegistrationEntry(
            id="e", spiffe_id=sid, parent_id=sid, selectors=sel, created_at=dt.datetime(2030, 1, 1)
        )
    with pytest.raises(InvalidRequest, match="tuple"):
        RegistrationEntry(id="e", spiffe_id=sid, parent_id=sid, selectors=sel, dns_names=["a"])  # type: ignore[arg-type]


def test_entries_are_immutable() -> None:
    e = RegistrationEntry.from_json(_doc())
    with pytest.raises(AttributeError):
        e.hint = "changed"  # type: ignore[misc]


_segment = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
_ids = st.builds(
    lambda td, segs: SpiffeId.parse(f"spiffe://{td}" + "".join("/" + s for s in segs)),
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
    st.lists(_segment, max_size=4),
)
_selectors = st.frozensets(
    st.builds(
        Selector.parse,
        st.from_regex(r"[a-z][a-z0-9_-]{0,8}:[!-~]([ -~]{0,20}[!-~])?", fullmatch=True),
    ),
    min_size=1,
    max_size=8,
)
_entries = st.builds(
    RegistrationEntry,
    id=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    spiffe_id=_ids,
    parent_id=_ids,
    selectors=_selectors,
    x509_svid_ttl=st.integers(1, 10**6).map(lambda s: dt.timedelta(seconds=s)),
    jwt_svid_ttl=st.integers(1, 10**6).map(lambda s: dt.timedelta(seconds=s)),
    dns_names=st.lists(
        st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
        unique=True,
        max_size=4,
    ).map(tuple),
    hint=st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\x7f"),
        max_size=40,
    ),
    revision=st.integers(0, 2**40),
    created_at=st.none() | st.datetimes(timezones=st.just(dt.UTC)),
)


@settings(deadline=None)
@given(_entries)
def test_any_valid_entry_survives_json_text(e: RegistrationEntry) -> None:
    assert RegistrationEntry.from_json(json.loads(json.dumps(e.to_json()))) == e


def test_federates_with_is_optional_sorted_and_left_out_when_empty() -> None:
    e = RegistrationEntry.from_json(_doc(federates_with=["c.test", "b.test", "b.test"]))
    assert {str(td) for td in e.federates_with} == {"b.test", "c.test"}
    assert e.to_json()["federates_with"] == ["b.test", "c.test"]
    assert RegistrationEntry.from_json(e.to_json()) == e
    plain = RegistrationEntry.from_json(_doc())
    assert plain.federates_with == frozenset()
    assert "federates_with" not in plain.to_json()  # older agents read it unchanged


@pytest.mark.parametrize(
    "value",
    ["b.test", [1], ["Not A Domain"], ["spiffe://b.test/path"], [f"t{i}.test" for i in range(65)]],
)
def test_bad_federates_with_is_refused(value: object) -> None:
    with pytest.raises(InvalidRequest, match="federat"):
        RegistrationEntry.from_json(_doc(federates_with=value))
