"""``bench.issued_index`` in a tiny form on a real etcd: both paths revoke every certificate of
the ID (the bench checks the count itself) and every figure is there."""

from __future__ import annotations

from bench.issued_index import table


def test_issued_index_figures_from_a_real_etcd() -> None:
    rows = table([40, 120], samples=1, cpu=None)
    assert [int(r["size"]) for r in rows] == [40, 120]
    for row in rows:
        for path in ("id", "whole", "range"):
            assert row[f"{path}_cpu"] >= 0
            assert row[f"{path}_wall"] > 0
