"""The immutable revocation set, its records and the lookup holder."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s.core.errors import InvalidRequest
from s2s.core.revocation import (
    RevocationKind,
    RevocationLookup,
    RevocationRecord,
    RevocationSet,
    StaticRevocations,
    serial_value,
)
from s2s.core.spiffe_id import SpiffeId

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
SID = SpiffeId.parse("spiffe://example.org/ns/shop/sa/billing")
OTHER = SpiffeId.parse("spiffe://example.org/ns/shop/sa/frontend")
ISSUER_A, ISSUER_B = "a" * 64, "b" * 64


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def serial_rec(serial: int, expires: float = 300, **kw: Any) -> RevocationRecord:
    return RevocationRecord.for_serial(serial, revoked_at=T0, expires_at=at(expires), **kw)


def jti_rec(jti: str, expires: float = 300) -> RevocationRecord:
    return RevocationRecord.for_jti(jti, revoked_at=T0, expires_at=at(expires))


def id_rec(sid: SpiffeId | str, revoked: float = 0, expires: float = 300) -> RevocationRecord:
    return RevocationRecord.for_spiffe_id(sid, revoked_at=at(revoked), expires_at=at(expires))


# --- lookups -----------------------------------------------------------------------------------


def test_serial_lookup() -> None:
    big = (1 << 159) + 12345
    revoked = RevocationSet.of([serial_rec(0xABC), serial_rec(big)])
    assert revoked.is_serial_revoked(0xABC, ISSUER_A)
    assert revoked.is_serial_revoked(big, ISSUER_A)
    assert not revoked.is_serial_revoked(0xABD, ISSUER_A)
    assert not revoked.is_serial_revoked(big + 1, ISSUER_A)
    assert not RevocationSet.EMPTY.is_serial_revoked(0xABC, ISSUER_A)


def test_a_serial_is_revoked_only_under_its_issuer() -> None:
    revoked = RevocationSet.of([serial_rec(0xABC, issuer=ISSUER_A), serial_rec(0xDEF)])
    assert revoked.is_serial_revoked(0xABC, ISSUER_A)
    assert not revoked.is_serial_revoked(0xABC, ISSUER_B)  # same serial, another issuer
    assert revoked.is_serial_revoked(0xDEF, ISSUER_B)  # a record without issuer: any issuer
    assert revoked.is_serial_revoked_by_any_issuer(0xABC)
    assert not revoked.is_serial_revoked_by_any_issuer(0x123)
    both = RevocationSet.of([serial_rec(1, issuer=ISSUER_A), serial_rec(1, issuer=ISSUER_B)])
    assert len(both) == 2  # one record per (serial, issuer)
    rec = serial_rec(1, issuer=ISSUER_A)
    assert RevocationRecord.from_json(rec.to_json()) == rec
    assert "issuer" not in serial_rec(1).to_json()


@pytest.mark.parametrize("issuer", ["A" * 64, "a" * 63, "g" * 64, "ab"])
def test_issuer_must_be_a_sha256_key_id(issuer: str) -> None:
    with pytest.raises(InvalidRequest, match="issuer"):
        serial_rec(1, issuer=issuer)


def test_issuer_is_only_for_serial_records() -> None:
    with pytest.raises(InvalidRequest, match="issuer"):
        RevocationRecord(RevocationKind.JTI, "t", T0, at(1), "", ISSUER_A)


def test_jti_lookup() -> None:
    revoked = RevocationSet.of([jti_rec("token-1")])
    assert revoked.is_jti_revoked("token-1")
    assert not revoked.is_jti_revoked("token-2")
    assert not revoked.is_jti_revoked("TOKEN-1")
    assert not revoked.is_jti_revoked("")


def test_spiffe_id_revokes_only_what_was_issued_before_the_instant() -> None:
    revoked = RevocationSet.of([id_rec(SID, revoked=100)])
    assert revoked.is_spiffe_id_revoked(SID, at(99.999999))
    assert revoked.is_spiffe_id_revoked(str(SID), at(-1000))
    assert not revoked.is_spiffe_id_revoked(SID, at(100))  # at the instant: not revoked
    assert not revoked.is_spiffe_id_revoked(SID, at(101))
    assert not revoked.is_spiffe_id_revoked(OTHER, at(0))
    assert not revoked.is_spiffe_id_revoked("spiffe://example.org/ns/shop/sa/billing/x", at(0))
    assert revoked.revoked_at(SID) == at(100)
    assert revoked.revoked_at(OTHER) is None
    # instants in other time zones compare correctly
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert revoked.is_spiffe_id_revoked(SID, at(99).astimezone(plus2))
    assert not revoked.is_spiffe_id_revoked(SID, at(100).astimezone(plus2))
    with pytest.raises(ValueError, match="aware"):
        revoked.is_spiffe_id_revoked(SID, dt.datetime(2030, 1, 1))


def test_kinds_do_not_cross() -> None:
    revoked = RevocationSet.of(
        [jti_rec("ff"), RevocationRecord.for_jti(str(SID), revoked_at=T0, expires_at=at(1))]
    )
    assert revoked.is_jti_revoked("ff")
    assert not revoked.is_serial_revoked(0xFF, ISSUER_A)
    assert not revoked.is_spiffe_id_revoked(SID, at(-10))


def test_duplicates_merge_like_the_store() -> None:
    first = RevocationRecord.for_spiffe_id(
        SID, revoked_at=at(10), expires_at=at(500), reason="key leaked"
    )
    second = RevocationRecord.for_spiffe_id(SID, revoked_at=at(50), expires_at=at(400))
    revoked = RevocationSet.of([first, second])
    assert len(revoked) == 1
    (merged,) = revoked.records()
    assert merged.revoked_at == at(50)
    assert merged.expires_at == at(500)
    assert merged.reason == "key leaked"
    assert revoked.is_spiffe_id_revoked(SID, at(49))
    with pytest.raises(InvalidRequest):
        first.merged(id_rec(OTHER))


# --- pruning, versions, equality ---------------------------------------------------------------


def test_pruning_drops_expired_records_only() -> None:
    revoked = RevocationSet.of(
        [
            serial_rec(1, expires=10),
            serial_rec(2, expires=20),
            jti_rec("j", expires=10),
            id_rec(SID, expires=30),
        ],
        version=7,
    )
    assert revoked.pruned(at(9)) is revoked
    after = revoked.pruned(at(10))  # expires_at == now: dropped
    assert not after.is_serial_revoked(1, ISSUER_A)
    assert after.is_serial_revoked(2, ISSUER_A)
    assert not after.is_jti_revoked("j")
    assert after.is_spiffe_id_revoked(SID, at(-1))
    assert after.version == 7
    assert len(after) == 2
    assert len(revoked) == 4  # the original is untouched
    assert len(revoked.pruned(at(30))) == 0
    with pytest.raises(InvalidRequest):
        revoked.pruned(dt.datetime(2030, 1, 1))


def test_records_are_sorted_and_sets_compare_by_value() -> None:
    recs = [serial_rec(2), jti_rec("b"), serial_rec(1), id_rec(SID)]
    a = RevocationSet.of(recs, version=3)
    b = RevocationSet.of(reversed(recs), version=3)
    assert a == b
    assert hash(a) == hash(b)
    assert a != RevocationSet.of(recs, version=4)
    assert a != RevocationSet.of(recs[:3], version=3)
    assert [(r.kind, r.value) for r in a.records()] == [
        (RevocationKind.JTI, "b"),
        (RevocationKind.SERIAL, "1"),
        (RevocationKind.SERIAL, "2"),
        (RevocationKind.SPIFFE_ID, str(SID)),
    ]
    assert "records=4" in repr(a)


def test_with_records_returns_a_new_set() -> None:
    base = RevocationSet.of([serial_rec(1)], version=1)
    grown = base.with_records([serial_rec(2)], version=2)
    assert grown.is_serial_revoked(2, ISSUER_A)
    assert not base.is_serial_revoked(2, ISSUER_A)
    assert grown.version == 2
    assert base.with_records([]).version == 1


def test_set_cannot_be_built_or_changed_directly() -> None:
    with pytest.raises(TypeError):
        RevocationSet()
    revoked = RevocationSet.of([serial_rec(1)])
    with pytest.raises(AttributeError):
        revoked.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequest):
        RevocationSet.of([serial_rec(1)], version=-1)
    with pytest.raises(InvalidRequest):
        RevocationSet.of(["ff"])  # type: ignore[list-item]


# --- records: validation and JSON --------------------------------------------------------------


def test_serial_value_form() -> None:
    assert serial_value(1) == "1"
    assert serial_value(0xDEADBEEF) == "deadbeef"
    assert serial_rec(0xDEADBEEF).value == "deadbeef"
    for bad in (0, -1, 1 << 160, True, "ff"):
        with pytest.raises(InvalidRequest):
            serial_value(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("serial", "0xff"),
        ("serial", "FF"),
        ("serial", "00ff"),
        ("serial", "0"),
        ("serial", ""),
        ("serial", "f" * 41),
        ("serial", "ff\n"),
        ("jti", ""),
        ("jti", "x" * 257),
        ("spiffe_id", "spiffe://example.org/a/"),
        ("spiffe_id", "spiffe://example.org/a\n"),
        ("spiffe_id", "SPIFFE://example.org/a"),
        ("spiffe_id", "example.org"),
        ("crl", "ff"),
        ("serial", 255),
    ],
)
def test_bad_record_values_are_rejected(kind: str, value: Any) -> None:
    RevocationRecord(RevocationKind.SERIAL, "ff", T0, T0)  # the good twin
    with pytest.raises(InvalidRequest):
        RevocationRecord(kind, value, T0, T0)  # type: ignore[arg-type]


def test_record_times_must_be_aware_and_are_normalised() -> None:
    with pytest.raises(InvalidRequest):
        RevocationRecord.for_jti("j", revoked_at=dt.datetime(2030, 1, 1), expires_at=T0)
    with pytest.raises(InvalidRequest):
        RevocationRecord.for_jti("j", revoked_at=T0, expires_at="2030-01-01")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        RevocationRecord.for_jti("j", revoked_at=T0, expires_at=T0, reason="x" * 2000)
    plus2 = dt.timezone(dt.timedelta(hours=2))
    rec = RevocationRecord.for_jti("j", revoked_at=T0.astimezone(plus2), expires_at=T0)
    assert rec.revoked_at.tzinfo is dt.UTC
    assert rec == RevocationRecord.for_jti("j", revoked_at=T0, expires_at=T0)


def test_json_round_trip() -> None:
    for rec in (serial_rec(0xABC, reason="compromised"), jti_rec("j-1"), id_rec(SID, 1.5)):
        data = json.loads(json.dumps(rec.to_json()))
        assert RevocationRecord.from_json(data) == rec
    assert serial_rec(0xABC).to_json() == {
        "kind": "serial",
        "value": "abc",
        "revoked_at": "2030-01-01T00:00:00+00:00",
        "expires_at": "2030-01-01T00:05:00+00:00",
        "reason": "",
    }
    with_extra = {**jti_rec("j").to_json(), "future_field": 1}
    assert RevocationRecord.from_json(with_extra) == jti_rec("j")
    no_reason = {k: v for k, v in jti_rec("j").to_json().items() if k != "reason"}
    assert RevocationRecord.from_json(no_reason) == jti_rec("j")


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "nope"},
        {"kind": None},
        {"value": 255},
        {"value": "0xff"},
        {"revoked_at": "yesterday"},
        {"revoked_at": "2030-01-01T00:00:00"},  # no offset
        {"expires_at": 1893456000},
        {"reason": 5},
        {"revoked_at": None},
    ],
)
def test_bad_json_is_rejected(change: dict[str, Any]) -> None:
    good = serial_rec(0xFF).to_json()
    assert RevocationRecord.from_json(good) == serial_rec(0xFF)
    with pytest.raises(InvalidRequest):
        RevocationRecord.from_json({**good, **change})
    with pytest.raises(InvalidRequest):
        RevocationRecord.from_json([good])  # type: ignore[arg-type]
    missing = {k: v for k, v in good.items() if k not in change}
    if set(change) <= {"kind", "value", "revoked_at", "expires_at"}:
        with pytest.raises(InvalidRequest):
            RevocationRecord.from_json(missing)


# --- the lookup holder -------------------------------------------------------------------------


def test_static_revocations_swaps_whole_sets() -> None:
    holder = StaticRevocations()
    lookup: RevocationLookup = holder
    assert lookup.current() is RevocationSet.EMPTY
    first = RevocationSet.of([serial_rec(1)], version=1)
    holder.replace(first)
    snapshot = lookup.current()
    holder.replace(RevocationSet.of([serial_rec(2)], version=2))
    assert snapshot is first  # a reader's snapshot is stable
    assert snapshot.is_serial_revoked(1, ISSUER_A)
    assert lookup.current().is_serial_revoked(2, ISSUER_A)
    assert not lookup.current().is_serial_revoked(1, ISSUER_A)
    with pytest.raises(TypeError):
        holder.replace([serial_rec(3)])  # type: ignore[arg-type]
    assert StaticRevocations(first).current() is first


# --- property: the set agrees with a naive model -----------------------------------------------

_records = st.one_of(
    st.builds(serial_rec, st.integers(1, 50), st.integers(0, 100)),
    st.builds(jti_rec, st.sampled_from(["a", "b", "c"]), st.integers(0, 100)),
    st.builds(id_rec, st.sampled_from([SID, OTHER]), st.integers(-50, 50), st.integers(0, 100)),
)


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(_records, max_size=12),
    now=st.integers(-10, 110),
    probe=st.integers(1, 50),
    issued=st.integers(-60, 60),
)
def test_set_matches_a_naive_model(
    records: list[RevocationRecord], now: int, probe: int, issued: int
) -> None:
    live = [r for r in records if r.expires_at > at(now)]
    pruned = RevocationSet.of(records).pruned(at(now))
    assert pruned.is_serial_revoked(probe, ISSUER_A) == any(
        r.kind is RevocationKind.SERIAL and r.value == format(probe, "x") for r in live
    )
    for jti in ("a", "b", "c"):
        assert pruned.is_jti_revoked(jti) == any(
            r.kind is RevocationKind.JTI and r.value == jti for r in live
        )
    for sid in (SID, OTHER):
        expected = any(
            r.kind is RevocationKind.SPIFFE_ID and r.value == str(sid) and at(issued) < r.revoked_at
            for r in records
        )
        # pruning drops whole merged records, so compare against the unpruned set here
        assert RevocationSet.of(records).is_spiffe_id_revoked(sid, at(issued)) == expected
