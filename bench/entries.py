"""Entry changes on the CA: the cost of one change, and what an affected agent is sent.

``python -m bench.entries [--runs 3] [--sizes 1000,10000,100000]`` (or ``python -m bench entries``
for the quick 1k/10k pair). For each registry size a SQLite store is filled directly (one
transaction) and a :class:`RegistryCache` snapshot is built from it; then one entry is updated in
the store (its write is not counted) and the CA brings its snapshot up to date:

* **before** (the old path, still how a store without an entry feed is followed): list every
  entry from the store and rebuild the snapshot (``_Entries.of``);
* **after**: read what changed since the snapshot's revision from the store's change log
  (``read_entry_changes``) and apply it (``RegistryCache.apply_changes``).

Both run on the same connection in the same process (no worker-thread hop), CPU time
(``time.thread_time``). Two fleets: ``fleet`` has 10 entries per agent (agents grow with the
registry), ``skewed`` has 100 agents (entries per agent grow with it). The long-poll answer size
is the JSON an affected agent is sent: today's full answer (every entry of that agent) against a
delta answer (the changed entry only).

``--etcd`` measures the same change on a real etcd (one member on loopback): the full listing it
replaces, and the process CPU and wall time from just before the write until the watch event is
applied to the snapshot (the write's own client cost included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench._harness import Figure
from s2s.ca.registry_cache import RegistryCache, _Entries
from s2s.core.registration import RegistrationEntry
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.etcd.values import put_op
from s2s.store.codec import decode_doc
from s2s.store.entry_changes import EntryChanges, log_entry_change, read_entry_changes
from s2s.store.etcd import EtcdStore
from s2s.store.etcd_keys import doc
from s2s.store.sqlite import SqliteStore
from s2s.store.sqlite_rows import write_entry
from s2s.testing_etcd import EtcdServer

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _entry(n: int, agents: int) -> RegistrationEntry:
    return RegistrationEntry(
        id=f"e{n:07d}",
        spiffe_id=SpiffeId.parse(f"spiffe://example.org/w/{n}"),
        parent_id=SpiffeId.parse(f"spiffe://example.org/agent/{n % agents}"),
        selectors=parse_selectors([f"unix:uid:{n}", "k8s:ns:prod"]),
        revision=1,
        created_at=T0,
    )


def _fill(path: Path, size: int, agents: int) -> sqlite3.Connection:
    async def create() -> None:
        await (await SqliteStore.open(path)).close()

    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    for n in range(size):
        write_entry(conn, _entry(n, agents))
    conn.execute("UPDATE topics SET revision = revision + 1 WHERE topic = 'entries'")
    conn.execute("COMMIT")
    return conn


def _update(conn: sqlite3.Connection, current: RegistrationEntry, k: int) -> RegistrationEntry:
    """One committed entry change, as the store's update_entry makes it (not timed)."""
    stored = dataclasses.replace(current, hint=f"change {k}", revision=current.revision + 1)
    conn.execute("BEGIN")
    write_entry(conn, stored)
    conn.execute("UPDATE topics SET revision = revision + 1 WHERE topic = 'entries'")
    log_entry_change(conn, stored.id)
    conn.execute("COMMIT")
    return stored


def _revision(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT revision FROM topics WHERE topic='entries'").fetchone()[0])


def _full_reload(conn: sqlite3.Connection) -> _Entries:
    """The old follower's work per change: the whole listing, the whole snapshot."""
    conn.execute("BEGIN")
    try:
        revision = _revision(conn)
        rows = conn.execute("SELECT doc FROM entries ORDER BY id").fetchall()
    finally:
        conn.execute("COMMIT")
    return _Entries.of((decode_doc(r[0], RegistrationEntry.from_json) for r in rows), revision)


def _cpu(fn: Callable[[], object], times: int) -> float:
    """Median CPU seconds of ``fn`` over ``times`` calls."""
    samples = []
    for _ in range(times):
        start = time.thread_time()
        fn()
        samples.append(time.thread_time() - start)
    return statistics.median(samples)


def _answer_bytes(entries: tuple[RegistrationEntry, ...], revision: int, *, delta: bool) -> int:
    body: dict[str, object] = {"revision": revision, "entries": [e.to_json() for e in entries]}
    if delta:
        body |= {"delta": True, "removed": []}
    return len(json.dumps(body, separators=(",", ":")).encode())


def measure(size: int, agents: int, changes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        conn = _fill(Path(tmp) / "store.db", size, agents)
        cache = RegistryCache(None)  # type: ignore[arg-type]  # no store: changes applied here
        full = _full_reload(conn)
        cache.apply_changes(EntryChanges(full.revision, full=tuple(full.by_id.values())))
        victim = full.by_id[_entry(size // 2, agents).id]
        before = _cpu(lambda: _full_reload(conn), 3 if size >= 100_000 else 7)

        k = 0

        def incremental() -> None:
            nonlocal k, victim
            k += 1
            victim = _update(conn, victim, k)  # committed first, as by an admin call
            entries = cache._entries
            assert entries is not None
            start = time.thread_time()
            change = read_entry_changes(conn, entries.revision)
            assert change is not None
            assert len(change.changed) == 1
            cache.apply_changes(change)
            samples.append(time.thread_time() - start)

        samples: list[float] = []
        for _ in range(changes):
            incremental()
        after = statistics.median(samples)
        snapshot = cache._entries
        assert snapshot is not None
        mine = snapshot.by_parent[victim.parent_id]
        conn.close()
    return {
        "before_ms": before * 1e3,
        "after_ms": after * 1e3,
        "full_bytes": _answer_bytes(mine, snapshot.revision, delta=False),
        "delta_bytes": _answer_bytes((victim,), snapshot.revision, delta=True),
        "agent_entries": len(mine),
    }


async def _measure_etcd(endpoint: str, size: int, agents: int, changes: int) -> dict[str, float]:
    """The same change on the etcd store: the full listing it replaces against the watch path
    (process CPU from just before the write until the change is applied, the write included)."""
    td = f"b{uuid.uuid4().hex[:10]}.example"
    store = await EtcdStore.open(endpoint, trust_domain=td, timeout=60)
    try:
        client = store.c
        made = [_entry(n, agents) for n in range(size)]
        for at in range(0, size, 100):
            chunk = made[at : at + 100]
            await client.txn([], [put_op(store.key("entries", e.id), doc(e)) for e in chunk])
        runs = []
        for _ in range(3 if size >= 100_000 else 7):
            start = time.process_time()
            _Entries.of(await store.list_entries(), 0)
            runs.append(time.process_time() - start)
        before = statistics.median(runs)
        cache = RegistryCache(store)
        task = asyncio.create_task(cache.follow(timeout=5.0))
        while not cache.loaded:
            await asyncio.sleep(0.01)
        victim = made[size // 2]
        samples, waits = [], []
        for k in range(changes):
            entries = cache._entries
            assert entries is not None
            seen = entries.revision
            start, wall = time.process_time(), time.perf_counter()
            victim = await store.update_entry(
                dataclasses.replace(victim, hint=f"change {k}"), expected_revision=victim.revision
            )
            while entries.revision == seen or entries.by_id[victim.id] != victim:
                await cache.wait_for_entries(seen, 5.0)
            samples.append(time.process_time() - start)
            waits.append(time.perf_counter() - wall)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await store.close()
    return {
        "before_ms": before * 1e3,
        "after_ms": statistics.median(samples) * 1e3,
        "after_wall_ms": statistics.median(waits) * 1e3,
    }


def etcd_table(sizes: list[int], runs: int, changes: int) -> None:
    async def all_sizes(endpoint: str) -> None:  # one event loop: grpc's stays with it
        for size in sizes:
            results = [
                await _measure_etcd(endpoint, size, max(1, size // 10), changes)
                for _ in range(runs)
            ]
            med = {key: statistics.median(r[key] for r in results) for key in results[0]}
            print(
                f"etcd    {size:>7,} entries, 10/agent: change before {med['before_ms']:9.3f} ms"
                f"  after {med['after_ms']:7.3f} ms CPU (write included),"
                f" {med['after_wall_ms']:7.3f} ms write -> applied",
                flush=True,
            )

    with tempfile.TemporaryDirectory() as tmp, EtcdServer(Path(tmp) / "etcd") as etcd:
        asyncio.run(all_sizes(etcd.endpoint))


def table(sizes: list[int], runs: int, changes: int) -> list[tuple[str, int, dict[str, float]]]:
    rows = []
    for fleet, agents_of in (("fleet", lambda n: max(1, n // 10)), ("skewed", lambda n: 100)):
        for size in sizes:
            results = [measure(size, agents_of(size), changes) for _ in range(runs)]
            med = {key: statistics.median(r[key] for r in results) for key in results[0]}
            rows.append((fleet, size, med))
            print(
                f"{fleet:<7} {size:>7,} entries, {med['agent_entries']:>5,.0f}/agent: "
                f"change before {med['before_ms']:9.3f} ms  after {med['after_ms']:7.4f} ms  "
                f"answer full {med['full_bytes']:>9,.0f} B  delta {med['delta_bytes']:>5,.0f} B",
                flush=True,
            )
    return rows


def run(quick: bool) -> list[Figure]:
    sizes = [1000, 10_000] if quick else [1000, 10_000, 100_000]
    rows = table(sizes, runs=1, changes=20)
    figures = []
    for fleet, size, med in rows:
        figures.append(
            Figure(
                f"entry change applied, {fleet} {size:,} (ms CPU)",
                med["after_ms"],
                "ms",
                "full reload (the old path)",
                med["before_ms"],
                higher_is_better=False,
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--changes", type=int, default=50, help="changes timed per run")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--etcd", action="store_true", help="the etcd store instead of SQLite")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.etcd:
        etcd_table(sizes, args.runs, args.changes)
    else:
        table(sizes, args.runs, args.changes)


if __name__ == "__main__":
    main()
