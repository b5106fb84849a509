"""The etcd store's ``prune`` against the number of live issued certificates.

``python -m bench.prune [--sizes 1000,10000,100000] [--samples 3] [--cpu 1]`` (or
``python -m bench prune`` for 1k/10k). One etcd member on loopback; the issued-serial index is
filled in ``add_issued`` batches with N certificates, none expired (the common case: the
housekeeping replica prunes every minute and almost nothing is due). Then ``prune(now)`` runs
``--samples`` times, two ways in the same run:

* **leases**: today's store, which leaves issued serials and single-use marks to their leases
  (after its first prune, which checks once that every such record has a lease);
* **whole scan**: a store that also reads every ``issued/`` and ``used/`` record (keys and values)
  at every prune and deletes the expired ones, as ``prune`` did before.

Figures are medians of the process's CPU time (``time.process_time``: the event loop and gRPC's
threads) and wall time per prune. This process is pinned to ``--cpu`` (etcd is started before and
is not). The first prune of a leases store handle (its one keys-only check for records without
a lease) is printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

from bench._harness import Figure, pinned
from bench.issued_index import TD, _fill
from s2s.core.clock import FakeClock
from s2s.store.etcd import EtcdStore
from s2s.store.records import IssuedSerial, PruneResult, UsedMark
from s2s.testing_etcd import EtcdServer


class _WholeScanStore(EtcdStore):
    """``prune`` as it was: every issued serial and used mark read (values) at every run."""

    _leased_checked = True  # no keys-only check: the full reads below find everything

    async def prune(self, now: dt.datetime) -> PruneResult:
        result = await super().prune(now)
        issued = await self._expired("issued", IssuedSerial.from_json, now)
        groups = [(kv, self._keys.issued_index_keys(r)) for r, kv in issued]
        used = await self._expired("used", UsedMark.from_json, now)
        return dataclasses.replace(
            result,
            issued=await self._delete_unchanged(groups, None),
            used_marks=await self._delete_unchanged([(kv, []) for _, kv in used], None),
        )


async def _prune(store: EtcdStore, now: dt.datetime) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = await store.prune(now)
    took = (time.process_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3
    if result != PruneResult():
        raise AssertionError(f"prune removed {result}: nothing had expired")
    return took


async def _measure(endpoint: str, sizes: list[int], samples: int) -> list[dict[str, float]]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = FakeClock(now)
    store = await EtcdStore.open(endpoint, trust_domain=TD, timeout=60, clock=clock)
    rows = []
    try:
        filled = 0
        for size in sizes:
            await _fill(store, filled, size, "int-1", now)
            filled = size
            fresh = await EtcdStore.open(endpoint, trust_domain=TD, timeout=60, clock=clock)
            whole = await _WholeScanStore.open(endpoint, trust_domain=TD, timeout=60, clock=clock)
            try:
                row = {"size": float(size)}
                row["first_cpu"], row["first_wall"] = await _prune(fresh, now)
                got: dict[str, list[float]] = {}
                for _ in range(samples):
                    for label, s in (("leases", fresh), ("whole", whole)):
                        cpu, wall = await _prune(s, now)
                        got.setdefault(f"{label}_cpu", []).append(cpu)
                        got.setdefault(f"{label}_wall", []).append(wall)
            finally:
                await whole.close()
                await fresh.close()
            row |= {k: statistics.median(v) for k, v in got.items()}
            rows.append(row)
            print(
                f"{size:>7,} live certificates: prune with leases {row['leases_cpu']:8.1f} ms CPU"
                f" {row['leases_wall']:8.1f} ms wall | whole scan {row['whole_cpu']:8.1f} ms CPU"
                f" {row['whole_wall']:8.1f} ms wall | first prune of a handle"
                f" {row['first_cpu']:8.1f} ms CPU {row['first_wall']:8.1f} ms wall",
                flush=True,
            )
    finally:
        await store.close()
    return rows


def table(sizes: list[int], samples: int, cpu: int | None) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp, EtcdServer(Path(tmp) / "etcd") as etcd, pinned(cpu):
        return asyncio.run(_measure(etcd.endpoint, sizes, samples))


def run(quick: bool) -> list[Figure]:
    sizes = [1000, 10_000] if quick else [1000, 10_000, 100_000]
    return [
        Figure(
            f"etcd prune, {int(row['size']):,} live certs (ms CPU)",
            row["leases_cpu"],
            "ms",
            "every issued/used record read (the old prune)",
            row["whole_cpu"],
            higher_is_better=False,
        )
        for row in table(sizes, samples=3, cpu=1)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--samples", type=int, default=3, help="prunes per size and path")
    parser.add_argument("--cpu", type=int, default=1, help="pin this process to this CPU")
    args = parser.parse_args()
    table([int(s) for s in args.sizes.split(",")], args.samples, args.cpu)


if __name__ == "__main__":
    main()
