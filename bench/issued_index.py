"""One revocation by SPIFFE ID on etcd against the size of the live fleet.

``python -m bench.issued_index [--sizes 1000,10000,100000] [--samples 5] [--cpu 1]`` (or
``python -m bench issued_index`` for 1k/10k). One etcd member on loopback; the issued-serial
index is filled in ``add_issued`` batches with N unexpired certificates of other IDs (2 per ID,
each obtained by one of 1,000 agents); then the CA's :class:`RevocationService` revokes an ID
holding 10 unexpired certificates, ``--samples`` times (a fresh ID each time), two ways in the
same run:

* **by ID**: today's store, which finds the ID's serials under ``issued-ids/<sha256 of the ID>/``
  and gets those records;
* **whole index**: a store whose ``list_issued`` does what it did before those keys: list every
  ``issued/`` record and filter in Python (a revocation by ID lists twice).

Figures are medians of the process's CPU time (``time.process_time``: the event loop and gRPC's
threads) and wall time per revocation, the CRL rebuild not included. The baseline beside them is
one plain etcd range read of the ID's keys by ID (``EtcdClient.get_prefix``). This process is
pinned to ``--cpu`` (etcd is started before and is not). Last, per size: the time to open the
store after ``meta`` is set back to schema 1, i.e. the upgrade that writes the keys by ID of
every record (a CA replica's first open after moving from schema 1).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from bench._harness import Figure, pinned
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.live_revocations import LiveRevocations
from s2s.ca.registry import Registry
from s2s.ca.revocations import RevocationService
from s2s.core.clock import FakeClock
from s2s.core.revocation import RevocationKind
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.etcd.client import EtcdClient
from s2s.store.etcd import EtcdStore
from s2s.store.etcd_keys import EtcdKeys
from s2s.store.records import AuthorityKind, IssuedKind, IssuedSerial
from s2s.testing_etcd import EtcdServer

TD = TrustDomain("example.org")
PER_TARGET = 10  # unexpired certificates of the revoked ID
_FILL_BATCH = 500
_FILL_CONCURRENCY = 4


class _WholeIndexStore(EtcdStore):
    """``list_issued`` as it was before the keys by ID: every record listed, filtered here."""

    async def list_issued(
        self,
        *,
        spiffe_id: SpiffeId | None = None,
        agent_id: SpiffeId | None = None,
        issuer_id: str | None = None,
    ) -> tuple[IssuedSerial, ...]:
        found = await self._list("issued", IssuedSerial.from_json)
        return tuple(
            r
            for r in found
            if (spiffe_id is None or r.spiffe_id == spiffe_id)
            and (agent_id is None or r.agent_id == agent_id)
            and (issuer_id is None or r.issuer_id == issuer_id)
        )


def _record(spiffe_id: SpiffeId, agent: int, issuer_id: str, now: dt.datetime) -> IssuedSerial:
    return IssuedSerial(
        serial=secrets.randbits(159) | 1 << 158,
        kind=IssuedKind.X509_SVID,
        spiffe_id=spiffe_id,
        issuer_id=issuer_id,
        issued_at=now - dt.timedelta(minutes=1),
        not_after=now + dt.timedelta(hours=2),
        agent_id=SpiffeId.parse(f"spiffe://{TD.name}/s2s/agent/join_token/a{agent}"),
    )


async def _fill(store: EtcdStore, start: int, end: int, issuer_id: str, now: dt.datetime) -> None:
    records = [
        _record(SpiffeId.parse(f"spiffe://{TD.name}/w/{n // 2}"), n % 1000, issuer_id, now)
        for n in range(start, end)
    ]
    batches = [records[i : i + _FILL_BATCH] for i in range(0, len(records), _FILL_BATCH)]
    for i in range(0, len(batches), _FILL_CONCURRENCY):
        await asyncio.gather(*(store.add_issued(b) for b in batches[i : i + _FILL_CONCURRENCY]))


def _service(config: CaConfig, store: EtcdStore, clock: FakeClock) -> RevocationService:
    live = LiveRevocations(store=store)
    registry = Registry(config=config, store=store, clock=clock, revocations=live)
    return RevocationService(config=config, store=store, registry=registry, live=live, clock=clock)


async def _revoke(service: RevocationService, target: SpiffeId) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = await service.revoke_spiffe_id(target)
    took = (time.process_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3
    serials = [r for r in result.records if r.kind is RevocationKind.SERIAL]
    if len(serials) != PER_TARGET:
        raise AssertionError(f"revoked {len(serials)} serials of {target}, not {PER_TARGET}")
    return took


async def _measure(
    endpoint: str, data_dir: Path, sizes: list[int], samples: int
) -> list[dict[str, float]]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = FakeClock(now)
    config = CaConfig(trust_domain=TD, data_dir=data_dir)
    kek = KeyEncryptionKey.create(config.kek_path)
    store = await EtcdStore.open(endpoint, trust_domain=TD, timeout=30, clock=clock)
    whole = await _WholeIndexStore.open(endpoint, trust_domain=TD, timeout=30, clock=clock)
    raw = await EtcdClient.connect(endpoint, timeout=30)
    keys = EtcdKeys.under(TD)
    rows = []
    try:
        await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
        await Authority(config=config, store=store, kek=kek, clock=clock).start()
        issuer_id = next(
            a.id
            for a in await store.list_authorities()
            if a.kind is AuthorityKind.X509_INTERMEDIATE
        )
        by_id, by_scan = _service(config, store, clock), _service(config, whole, clock)
        filled = 0
        for size in sizes:
            await _fill(store, filled, size, issuer_id, now)
            filled = size
            got: dict[str, list[float]] = {}
            for i in range(samples):
                for label, service in (("id", by_id), ("whole", by_scan)):
                    target = SpiffeId.parse(f"spiffe://{TD.name}/target/{size}/{label}/{i}")
                    await store.add_issued(
                        [_record(target, i, issuer_id, now) for _ in range(PER_TARGET)]
                    )
                    cpu, wall = await _revoke(service, target)
                    got.setdefault(f"{label}_cpu", []).append(cpu)
                    got.setdefault(f"{label}_wall", []).append(wall)
                    if label == "id":
                        cpu0, wall0 = time.process_time(), time.perf_counter()
                        kvs, _ = await raw.get_prefix(keys.issued_by_id(target))
                        got.setdefault("range_cpu", []).append((time.process_time() - cpu0) * 1e3)
                        got.setdefault("range_wall", []).append((time.perf_counter() - wall0) * 1e3)
                        assert len(kvs) == PER_TARGET
            row = {"size": float(size), **{k: statistics.median(v) for k, v in got.items()}}
            row["upgrade_cpu"], row["upgrade_wall"] = await _upgrade(raw, endpoint, clock)
            rows.append(row)
            print(
                f"{size:>7,} other certificates: revoke by ID {row['id_cpu']:8.1f} ms CPU"
                f" {row['id_wall']:8.1f} ms wall | whole index {row['whole_cpu']:8.1f} ms CPU"
                f" {row['whole_wall']:8.1f} ms wall | range read of the ID's keys"
                f" {row['range_cpu']:6.2f} ms CPU {row['range_wall']:6.2f} ms wall"
                f" | open with the schema 1 -> 2 upgrade {row['upgrade_cpu']:8.1f} ms CPU"
                f" {row['upgrade_wall']:8.1f} ms wall",
                flush=True,
            )
    finally:
        await raw.close()
        await whole.close()
        await store.close()
    return rows


async def _upgrade(raw: EtcdClient, endpoint: str, clock: FakeClock) -> tuple[float, float]:
    """Open the store after ``meta`` is set back to schema 1: the cost of the upgrade (it puts
    every record's keys by ID again, as a first upgrade would)."""
    meta = json.dumps({"app": "s2s-ca-store", "schema": 1}, sort_keys=True).encode()
    await raw.put(EtcdKeys.under(TD).key("meta"), meta)
    cpu, wall = time.process_time(), time.perf_counter()
    store = await EtcdStore.open(endpoint, trust_domain=TD, timeout=30, clock=clock)
    took = (time.process_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3
    await store.close()
    return took


def table(sizes: list[int], samples: int, cpu: int | None) -> list[dict[str, float]]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        EtcdServer(Path(tmp) / "etcd") as etcd,
        pinned(cpu),
    ):
        return asyncio.run(_measure(etcd.endpoint, Path(tmp), sizes, samples))


def run(quick: bool) -> list[Figure]:
    sizes = [1000, 10_000] if quick else [1000, 10_000, 100_000]
    figures = []
    for row in table(sizes, samples=3 if quick else 5, cpu=1):
        size = int(row["size"])
        figures.append(
            Figure(
                f"revoke by SPIFFE ID, {size:,} live certs (ms CPU)",
                row["id_cpu"],
                "ms",
                "whole-index read (the old path)",
                row["whole_cpu"],
                higher_is_better=False,
            )
        )
        figures.append(
            Figure(
                f"revoke by SPIFFE ID, {size:,} live certs (ms wall)",
                row["id_wall"],
                "ms",
                "one range read of the ID's keys",
                row["range_wall"],
                higher_is_better=False,
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--samples", type=int, default=5, help="revocations per size and path")
    parser.add_argument("--cpu", type=int, default=1, help="pin this process to this CPU")
    args = parser.parse_args()
    table([int(s) for s in args.sizes.split(",")], args.samples, args.cpu)


if __name__ == "__main__":
    main()
