"""The revocation set derived in O(change) equals the set rebuilt from its records, after any
sequence of adds, replacements, removals, prunes and derivations from older sets; older sets
never change under their readers."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from s2s.core.revocation import RevocationKind, RevocationRecord, RevocationSet

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ISSUERS = ("", "a" * 64, "b" * 64)
IDS = tuple(f"spiffe://example.org/w{i}" for i in range(4))
JTIS = ("j1", "j2", "j3")
SERIALS = (1, 2, 0xABC, (1 << 159) + 7)


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


seconds = st.integers(min_value=0, max_value=60)
records = st.one_of(
    st.builds(
        lambda s, i, r, e, why: RevocationRecord.for_serial(
            s, revoked_at=at(r), expires_at=at(e), issuer=i, reason=why
        ),
        st.sampled_from(SERIALS), st.sampled_from(ISSUERS), seconds, seconds,
        st.sampled_from(("", "lost")),
    ),
    st.builds(
        lambda j, r, e: RevocationRecord.for_jti(j, revoked_at=at(r), expires_at=at(e)),
        st.sampled_from(JTIS), seconds, seconds,
    ),
    st.builds(
        lambda sid, r, e: RevocationRecord.for_spiffe_id(sid, revoked_at=at(r), expires_at=at(e)),
        st.sampled_from(IDS), seconds, seconds,
    ),
)  # fmt: skip
ops = st.one_of(
    st.tuples(st.just("add"), st.lists(records, max_size=4)),
    st.tuples(st.just("put"), st.lists(records, max_size=3), st.lists(records, max_size=2)),
    st.tuples(st.just("drop"), st.lists(records, max_size=3)),
    st.tuples(st.just("prune"), seconds),
    st.tuples(st.just("branch"), st.integers(min_value=0, max_value=50)),
)


def lookups(s: RevocationSet) -> tuple[Any, ...]:
    """Every answer the set gives for the universe of test keys."""
    return (
        len(s),
        s.version,
        s.has_serials(),
        s.records(),
        tuple(s.is_serial_revoked(n, i) for n in SERIALS for i in ISSUERS if i),
        tuple(s.is_serial_revoked_by_any_issuer(n) for n in SERIALS),
        tuple(s.is_jti_revoked(j) for j in JTIS),
        tuple(s.revoked_at(sid) for sid in IDS),
        tuple(s.is_spiffe_id_revoked(sid, at(t)) for sid in IDS for t in (0, 30, 59)),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(records, max_size=6), st.lists(ops, max_size=25))
def test_a_derived_set_equals_the_rebuilt_one(start: list[RevocationRecord], steps: Any) -> None:
    current = RevocationSet.of(start, version=1)
    model = {r.key: r for r in current.records()}
    history: list[tuple[RevocationSet, dict[Any, RevocationRecord], tuple[Any, ...]]] = []
    for n, step in enumerate(steps, start=2):
        history.append((current, dict(model), lookups(current)))
        if step[0] == "add":
            current = current.with_records(step[1], version=n)
            for r in step[1]:
                known = model.get(r.key)
                model[r.key] = r if known is None else known.merged(r)
        elif step[0] == "put":
            current = current.with_changes(step[1], [r.key for r in step[2]], version=n)
            for r in step[2]:
                model.pop(r.key, None)
            model.update({r.key: r for r in step[1]})
        elif step[0] == "drop":
            current = current.without([r.key for r in step[1]], version=n)
            for r in step[1]:
                model.pop(r.key, None)
        elif step[0] == "prune":
            current = current.pruned(at(step[1]))
            model = {k: r for k, r in model.items() if r.expires_at > at(step[1])}
        else:  # derive from an older set: its line has moved on
            current, model, _ = history[step[1] % len(history)]
            model = dict(model)
        rebuilt = RevocationSet.of(model.values(), version=current.version)
        assert current == rebuilt
        assert lookups(current) == lookups(rebuilt)
    for old, old_model, seen in history:  # the older sets answer as they did
        assert lookups(old) == seen
        assert {r.key: r for r in old.records()} == old_model


def test_many_changes_compact_and_stay_equal() -> None:
    """Past the garbage limit a derivation rebuilds; the results stay equal to a rebuild."""
    s = RevocationSet.EMPTY
    for i in range(1, 3000):
        rec = RevocationRecord.for_serial(i, revoked_at=T0, expires_at=at(i % 50 + 1))
        s = s.with_records([rec], version=i).pruned(at(i % 50))
    expected = RevocationSet.of(s.records(), version=s.version)
    assert s == expected
    assert len(s) == len(expected)
    assert not s.is_serial_revoked_by_any_issuer(1)


def test_a_key_is_looked_up_by_its_kind_value_and_issuer() -> None:
    rec = RevocationRecord.for_jti("j", revoked_at=T0, expires_at=at(5))
    s = RevocationSet.of([rec])
    assert s.get((RevocationKind.JTI, "j", "")) == rec
    assert s.get((RevocationKind.JTI, "k", "")) is None
    assert s.without([rec.key]).get(rec.key) is None
    assert s.get(rec.key) == rec
    assert s.record_keys() == [rec.key]
    assert s.without([rec.key]).record_keys() == []


def _derive_at_once(
    base: RevocationSet, barrier: threading.Barrier, out: dict[str, RevocationSet], jti: str
) -> None:
    barrier.wait()
    rec = RevocationRecord.for_jti(jti, revoked_at=T0, expires_at=at(9))
    out[jti] = base.with_records([rec], version=base.version + 1)


def test_two_threads_deriving_from_one_set_both_get_their_own_set() -> None:
    """One of them writes the shared histories, the other builds afresh; neither sees the
    other's record and the set they came from is unchanged."""
    names = ("base", "left", "right")
    for _ in range(200):
        base = RevocationSet.of([RevocationRecord.for_jti("base", revoked_at=T0, expires_at=at(9))])
        barrier = threading.Barrier(2)
        out: dict[str, RevocationSet] = {}
        threads = [
            threading.Thread(target=_derive_at_once, args=(base, barrier, out, j))
            for j in ("left", "right")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [out["left"].is_jti_revoked(j) for j in names] == [True, True, False]
        assert [out["right"].is_jti_revoked(j) for j in names] == [True, False, True]
        assert [base.is_jti_revoked(j) for j in names] == [True, False, False]
        assert len(base) == 1
