"""What the issued-serial index costs etcd: the input of the fleet-size model in docs/scaling.md.

``python -m bench.etcd_capacity [--runs 3] [--records 4000] [--writers 8]``. A 3-member etcd
cluster on loopback (plain HTTP, each member with its own data dir and its own fsyncs on the same
disk). Every certificate the CA signs is one record in the issued-serial index; on etcd that is
one key on an expiry-bucket lease, written in a transaction that refuses a known serial. For
batches of 1, 10 and 100 records (the agent's single and batch renewals) and ``--writers``
concurrent writers it measures:

* records written per second through ``EtcdStore.add_issued``, beside a **baseline** in the same
  run: the same number of keys with values of the same size written by plain ``txn`` puts in
  the same batches and concurrency (no compare, no lease, no record encoding);
* the cluster's CPU per record (the three etcd processes, from /proc/PID/stat);
* etcd's database bytes in use per live record (``etcd_mvcc_db_total_size_in_use_in_bytes``
  before and after, on the leader).

Medians of ``--runs`` runs. Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bench.fleet_system import cpu_seconds
from s2s.core.spiffe_id import SpiffeId
from s2s.etcd.values import put_op
from s2s.store.etcd import EtcdStore
from s2s.store.etcd_keys import doc
from s2s.store.records import IssuedKind, IssuedSerial
from s2s.testing_etcd import EtcdCluster

_TD = "fleet.example"


def _db_in_use(member_endpoint: str) -> int:
    url = f"http://{member_endpoint}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("etcd_mvcc_db_total_size_in_use_in_bytes "):
                return int(float(line.split()[1]))
    raise RuntimeError("etcd did not report etcd_mvcc_db_total_size_in_use_in_bytes")


def _records(count: int, now: dt.datetime) -> list[IssuedSerial]:
    workload = SpiffeId.parse(f"spiffe://{_TD}/ns/shop/sa/billing")
    agent = SpiffeId.parse(f"spiffe://{_TD}/spire/agent/join_token/0123456789abcdef")
    return [
        IssuedSerial(
            serial=int.from_bytes(secrets.token_bytes(19), "big") | 1,
            kind=IssuedKind.X509_SVID,
            spiffe_id=workload,
            issuer_id=secrets.token_hex(8),
            issued_at=now,
            not_after=now + dt.timedelta(minutes=5),
            agent_id=agent,
        )
        for _ in range(count)
    ]


async def _drive(
    batches: Sequence[Sequence[IssuedSerial]],
    writers: int,
    write: Callable[[Sequence[IssuedSerial]], Awaitable[object]],
) -> float:
    queue = list(batches)

    async def writer() -> None:
        while queue:
            await write(queue.pop())

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return time.perf_counter() - start


async def _one_run(
    cluster: EtcdCluster, records: int, batch: int, writers: int
) -> dict[str, float]:
    pids = [m._process.pid for m in cluster.members if m._process is not None]
    store = await EtcdStore.open(cluster.endpoints, trust_domain=_TD, timeout=60)
    try:
        now = dt.datetime.now(dt.UTC)
        ours = _records(records, now)
        plain = _records(records, now)
        value_size = len(doc(plain[0]))

        async def raw(chunk: Sequence[IssuedSerial]) -> None:
            ops = [
                put_op(store.key("bench-raw", f"{r.serial:040x}"), b"x" * value_size) for r in chunk
            ]
            await store.c.txn([], ops)

        def chunks(rs: list[IssuedSerial]) -> list[list[IssuedSerial]]:
            return [rs[i : i + batch] for i in range(0, len(rs), batch)]

        cpu0 = sum(cpu_seconds(p) for p in pids)
        raw_wall = await _drive(chunks(plain), writers, raw)
        cpu1 = sum(cpu_seconds(p) for p in pids)
        used0 = max(_db_in_use(m.endpoint) for m in cluster.members)
        ours_wall = await _drive(chunks(ours), writers, store.add_issued)
        cpu2 = sum(cpu_seconds(p) for p in pids)
        used1 = max(_db_in_use(m.endpoint) for m in cluster.members)
        for r in (ours[0], ours[-1]):
            if await store.get_issued(r.serial) != r:
                raise RuntimeError(f"serial {r.serial:x} was not written as sent")
    finally:
        await store.close()
    return {
        "ours_per_s": records / ours_wall,
        "raw_per_s": records / raw_wall,
        "ours_cpu_ms": (cpu2 - cpu1) / records * 1e3,
        "raw_cpu_ms": (cpu1 - cpu0) / records * 1e3,
        "bytes_per_record": (used1 - used0) / records,
        "value_bytes": float(value_size),
    }


def measure(
    cluster: EtcdCluster, records: int, writers: int, runs: int, batches: Sequence[int]
) -> dict[int, dict[str, float]]:
    """Medians of ``runs`` runs per batch size (one event loop: grpc's stays with it)."""

    async def all_batches() -> dict[int, dict[str, float]]:
        out = {}
        for batch in batches:
            done = [await _one_run(cluster, records, batch, writers) for _ in range(runs)]
            out[batch] = {k: statistics.median(r[k] for r in done) for k in done[0]}
        return out

    return asyncio.run(all_batches())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--writers", type=int, default=8)
    args = parser.parse_args(argv)

    print(
        f"issued-serial index on a 3-member etcd, {args.records:,} records per run,"
        f" {args.writers} writers, medians of {args.runs}"
    )
    print(
        "batch | records/s (ours) | raw txn puts/s | ratio | etcd CPU ms/record (ours, raw)"
        " | DB bytes/record (value bytes)"
    )
    with tempfile.TemporaryDirectory() as tmp, EtcdCluster(Path(tmp)) as cluster:
        table = measure(cluster, args.records, args.writers, args.runs, (1, 10, 100))
        for batch, med in table.items():
            print(
                f"{batch:>5} | {med['ours_per_s']:>16,.0f} | {med['raw_per_s']:>14,.0f}"
                f" | {med['ours_per_s'] / med['raw_per_s']:5.2f}"
                f" | {med['ours_cpu_ms']:.3f}, {med['raw_cpu_ms']:.3f}"
                f" | {med['bytes_per_record']:,.0f} ({med['value_bytes']:.0f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
