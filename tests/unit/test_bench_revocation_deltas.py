"""The revocation deltas benchmark, run small: both loops complete on a real SQLite store, the
CA follows the store's change feed (the bench asserts one listing), and the delta answer stays
a few hundred bytes while the whole set grows with the records."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.revocation import _deltas_at


def test_deltas_at_runs_small_and_reports_every_path(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    first = asyncio.run(_deltas_at(200, 3, path, 0))
    again = asyncio.run(_deltas_at(200, 3, path, 1))  # the store kept for the next run
    for out in (first, again):
        for key in ("set_new", "ca_new", "ca_old", "ca_list", "ca_read", "sub_new", "sub_old"):
            assert out[f"{key}_p50"] >= 0
        assert out["bytes_delta"] < 400
        assert out["bytes_full"] > 200 * 100  # every record is in the whole answer
