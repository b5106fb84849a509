"""RevocationSet.changes_since: what turns an older set of one line into a newer one, in
O(changes); None when the newer set was built afresh (a full load, a branch, a rebuild)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from s2s.core.revocation import RevocationRecord, RevocationSet

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def jti(name: str, expires: int = 60, revoked: int = 0) -> RevocationRecord:
    return RevocationRecord.for_jti(
        name,
        revoked_at=T0 + dt.timedelta(seconds=revoked),
        expires_at=T0 + dt.timedelta(seconds=expires),
    )


names = st.sampled_from([f"j{i}" for i in range(8)])
records = st.builds(jti, names, st.integers(1, 60), st.integers(0, 5))
ops = st.one_of(
    st.tuples(st.just("add"), st.lists(records, max_size=3)),
    st.tuples(st.just("put"), st.lists(records, max_size=3)),
    st.tuples(st.just("drop"), st.lists(names, max_size=3)),
    st.tuples(st.just("prune"), st.integers(0, 60)),
)


def apply(s: RevocationSet, op: tuple[object, ...]) -> RevocationSet:
    kind, arg = op
    if kind == "add":
        return s.with_records(arg)  # type: ignore[arg-type]
    if kind == "put":
        return s.with_changes(arg)  # type: ignore[arg-type]
    if kind == "drop":
        return s.without(jti(n).key for n in arg)  # type: ignore[attr-defined]
    return s.pruned(T0 + dt.timedelta(seconds=arg))  # type: ignore[operator]


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=6), st.lists(ops, max_size=12))
def test_the_changes_between_any_two_sets_of_a_line_rebuild_the_newer(
    start: list[RevocationRecord], sequence: list[tuple[object, ...]]
) -> None:
    sets = [RevocationSet.of(start)]
    for op in sequence:
        sets.append(apply(sets[-1], op))
    for i, older in enumerate(sets):
        for newer in sets[i:]:
            changes = newer.changes_since(older)
            assert changes is not None  # one line: no branch, far below the rebuild limit
            put, removed = changes
            assert older.with_changes(put, removed).records() == newer.records()
            assert len(put) + len(removed) <= sum(len(s.records()) for s in (older, newer))
            assert all(older.get(r.key) != r for r in put)  # only what differs
            assert all(older.get(k) is not None for k in removed)


def test_a_set_built_afresh_or_a_newer_base_says_nothing() -> None:
    base = RevocationSet.of([jti("a")])
    derived = base.with_records([jti("b")])
    assert derived.changes_since(base) == ([jti("b")], [])
    assert base.changes_since(derived) is None  # the base is newer: not a delta forward
    assert RevocationSet.of([jti("a"), jti("b")]).changes_since(base) is None  # a full load
    branch = base.with_records([jti("c")])  # derived from an older set: built afresh
    assert branch.changes_since(base) is None
    assert derived.changes_since(derived) == ([], [])


def test_after_the_rebuild_that_drops_superseded_values_it_says_nothing() -> None:
    """Past max(1024, records) superseded values a derivation builds afresh: a consumer then
    takes the new set whole (amortised O(1) per change)."""
    base = RevocationSet.of([jti("a")])
    s = base
    for i in range(1100):
        s = s.with_records([jti("b", expires=60 + i)])  # each replaces b: one superseded value
        if s.changes_since(base) is None:
            break
    else:
        raise AssertionError("no rebuild within 1100 replacements")
    assert 1000 < i < 1100
    assert s.records() == (jti("a"), jti("b", expires=60 + i))
