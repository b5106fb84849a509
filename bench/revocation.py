"""Revocation: propagation from the revoke call's return to rejection, and verifier memory.

* **propagation** (ms, p50 and p99 over 200 revocations, 1 and 10 verifiers), two paths side by
  side, both through a real CA process (``s2s-ca serve``) revoked by serial on its admin socket
  (what ``s2s-ca revoke --serial`` sends). *etcd*: the CA on a real etcd (``--store etcd://``),
  verifiers running :class:`EtcdRevocationFeed`. *CA long-poll*: the CA on its embedded SQLite
  store, verifiers running :class:`CaRevocationFeed` over mTLS. The verifiers (1 or 10 feeds, each
  with its own connection) run in a separate process and time-stamp the instant each new set is
  swapped in (from then on ``current()`` rejects the serial) with the system-wide monotonic clock.
  Figures from the revoke call's return (negative when the set arrived before the call returned:
  the CA rebuilds its CRLs before answering) and from its start. Baseline: a raw etcd put to the
  watch event in that same verifier process, measured in the same run (same two reference points).
* **propagation at scale** (ms): an etcd put of one more record to the new set in one verifier
  while 100,000 serials are already revoked (the set is rebuilt in a thread), beside the raw watch.
* **memory** (MiB) a verifier holds for 100,000 revoked serials (the :class:`RevocationSet`, and
  the etcd feed's state: its record map plus the set), measured with ``tracemalloc``. Baseline: the
  same serials as ints in a plain Python ``set``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bench._harness import Figure, percentiles
from bench.agent import CA_CLI, _stop, _wait_for_line
from s2s.ca.client import AdminClient
from s2s.ca.live_revocations import LiveRevocations, encode_delta
from s2s.core.bundle import Bundle, BundleSet
from s2s.core.revocation import RevocationRecord, RevocationSet
from s2s.core.spiffe_id import TrustDomain
from s2s.core.x509svid import X509Svid, spiffe_id_of
from s2s.etcd.client import EtcdClient
from s2s.etcd.values import put_op
from s2s.store.codec import encode_doc
from s2s.store.etcd import EtcdStore
from s2s.store.records import Topic
from s2s.store.sqlite import SqliteStore
from s2s.store.sqlite_rows import micros
from s2s.store.sqlite_worker import Tx
from s2s.testing_etcd import EtcdServer
from s2s.verifier.feeds import RevocationFeed
from s2s.verifier.feeds_ca import CaRevocationFeed, parse_revocation_page
from s2s.verifier.feeds_etcd import EtcdRevocationFeed
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.x509context import X509Context

TD = "example.org"
HOUR = timedelta(hours=1)
Revoke = Callable[[int], Awaitable[None]]


# -- the verifier process ---------------------------------------------------------------------


def _verifier_main(spec: dict[str, Any], out: Any, watch: Any, stop: Any) -> None:
    asyncio.run(_verifiers(spec, out, watch, stop))


async def _verifiers(spec: dict[str, Any], out: Any, watch: Any, stop: Any) -> None:
    """Run ``spec["n"]`` feeds; report (kind, feed index, serial, monotonic) when a serial the
    parent armed (``watch`` queue) is revoked in a feed's new set. O(armed) per new set, so the
    measurement costs nothing with a big set."""
    feeds = [await _open_feed(spec) for _ in range(spec["n"])]
    armed: dict[int, set[int]] = {}  # serial -> feeds that reported it

    def watcher(index: int) -> Callable[[RevocationSet], None]:
        def changed(new: RevocationSet) -> None:
            at = time.monotonic()
            for serial, reported in list(armed.items()):
                if index not in reported and new.is_serial_revoked_by_any_issuer(serial):
                    out.put(("feed", index, serial, at))
                    reported.add(index)
                    if len(reported) == len(feeds):
                        del armed[serial]

        return changed

    async def arm() -> None:
        while True:
            serial = await asyncio.to_thread(watch.get)
            armed[serial] = set()
            out.put(("armed", 0, serial, 0.0))

    for i, feed in enumerate(feeds):
        await feed.start(timeout=30)
        feed.subscribe(watcher(i))
    arming = asyncio.create_task(arm())
    raw = await _raw_watch(spec, out) if spec["kind"] == "etcd" else None
    out.put(("ready", 0, 0, 0.0))
    while not stop.is_set():
        await asyncio.sleep(0.05)
    if raw is not None:
        raw.cancel()
    arming.cancel()
    for feed in feeds:
        await feed.stop()
    os._exit(0)  # the arming thread is blocked in watch.get()


async def _open_feed(spec: dict[str, Any]) -> RevocationFeed:
    td = TrustDomain(spec["td"])
    if spec["kind"] == "etcd":
        return await EtcdRevocationFeed.connect(spec["endpoint"], td)

    chain = tuple(x509.load_pem_x509_certificates(spec["chain"]))
    key = load_pem_private_key(spec["key"], None)
    svid = X509Svid(spiffe_id_of(chain[0]), chain, key)
    bundles = BundleSet.of(Bundle.from_x509_pem(td, spec["bundle"]))
    source = StaticX509Source(X509Context((svid,), bundles))
    return CaRevocationFeed.over_https(spec["url"], source, wait=30.0)


async def _raw_watch(spec: dict[str, Any], out: Any) -> asyncio.Task[None]:

    client = await EtcdClient.connect(spec["endpoint"])
    updates = client.follow_prefix(spec["raw_prefix"].encode())
    await anext(updates)  # the snapshot: watching from here on

    async def run() -> None:
        async for update in updates:
            at = time.monotonic()
            for event in update.events:
                out.put(("raw", 0, int(event.kv.value), at))

    return asyncio.create_task(run())


# -- driving it -------------------------------------------------------------------------------


class _Verifiers:
    def __init__(self, spec: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.watch = ctx.Queue()
        self.stop = ctx.Event()
        self.process = ctx.Process(
            target=_verifier_main, args=(spec, self.out, self.watch, self.stop)
        )
        self.n = spec["n"]

    def __enter__(self) -> _Verifiers:
        self.process.start()
        kind = self.out.get(timeout=60)[0]
        if kind != "ready":
            raise RuntimeError(f"the verifier process sent {kind} before ready")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.process.join(20)
        if self.process.is_alive():
            self.process.kill()

    async def arm(self, serial: int) -> None:
        """Have the verifiers watch for ``serial`` (returns once they do)."""
        self.watch.put(serial)
        await self.arrivals("armed", serial, 1)

    async def arrivals(self, kind: str, serial: int, count: int) -> list[float]:
        """The monotonic times of ``count`` reports of ``serial``."""
        found: list[float] = []
        deadline = time.monotonic() + 30
        while len(found) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{serial:x}: {len(found)}/{count} arrivals within 30 s")
            item = await asyncio.to_thread(self.out.get, True, left)
            if item[0] == kind and item[2] == serial:
                found.append(item[3])
        return found


Samples = tuple[list[float], list[float]]  # ms from the call's return, ms from its start


async def _propagation(verifiers: _Verifiers, revoke: Revoke, serials: list[int]) -> Samples:
    from_return: list[float] = []
    from_start: list[float] = []
    for serial in serials:
        await verifiers.arm(serial)
        started = time.monotonic()
        await revoke(serial)
        returned = time.monotonic()
        for at in await verifiers.arrivals("feed", serial, verifiers.n):
            from_return.append((at - returned) * 1000)
            from_start.append((at - started) * 1000)
    return from_return, from_start


async def _raw_baseline(verifiers: _Verifiers, endpoint: str, prefix: str, n: int) -> Samples:

    client = await EtcdClient.connect(endpoint)
    samples: Samples = ([], [])
    try:
        for i in range(1, n + 1):
            started = time.monotonic()
            await client.put(f"{prefix}{i}".encode(), str(i).encode())
            returned = time.monotonic()
            (at,) = await verifiers.arrivals("raw", i, 1)
            samples[0].append((at - returned) * 1000)
            samples[1].append((at - started) * 1000)
    finally:
        await client.close()
    return samples


def _start_ca(tmp: Path, store: str | None) -> tuple[subprocess.Popen[bytes], int, AdminClient]:
    """``s2s-ca init`` + ``serve`` as a process (on etcd with ``store``); its admin client."""
    data_dir = tmp / ("ca-etcd" if store else "ca")
    extra = ["--store", store] if store else []
    subprocess.run([*CA_CLI, "--data-dir", str(data_dir), "init", "--trust-domain", TD, *extra],
                   check=True, capture_output=True)  # fmt: skip
    log = tmp / f"{data_dir.name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CA_CLI, "--data-dir", str(data_dir), "serve", "--listen", "127.0.0.1:0", *extra],
            stdout=out, stderr=out,
        )  # fmt: skip
    line = _wait_for_line(log, process, '"ca.started"')
    port = int(json.loads(line)["address"].rsplit(":", 1)[1])
    return process, port, AdminClient(data_dir / "admin.sock")


async def _path(
    tmp: Path, etcd: EtcdServer | None, counts: tuple[int, ...], n: int
) -> dict[str, Samples]:
    """Revoke through a CA process's admin API (what ``s2s-ca revoke --serial`` sends) while
    1 or 10 verifiers follow etcd (``etcd`` given: the CA's store) or long-poll the CA."""
    process, port, admin = _start_ca(tmp, f"{etcd.url}/{TD}" if etcd else None)
    results: dict[str, Samples] = {}
    try:
        me = admin.post("/v1/x509/mint", {"spiffe_id": f"spiffe://{TD}/verifier"})
        minted = [
            int(admin.post("/v1/x509/mint", {"spiffe_id": f"spiffe://{TD}/w{i}"})["serial"], 16)
            for i in range(n * len(counts))
        ]

        async def revoke(serial: int) -> None:
            await asyncio.to_thread(admin.post, "/v1/revocations", {"serial": f"{serial:x}"})

        for index, count in enumerate(counts):
            spec: dict[str, Any] = {"n": count, "td": TD}
            if etcd is not None:
                raw_prefix = f"/bench-raw/{uuid.uuid4().hex}/"
                spec |= {"kind": "etcd", "endpoint": etcd.endpoint, "raw_prefix": raw_prefix}
            else:
                spec |= {"kind": "ca", "url": f"https://127.0.0.1:{port}",
                         "chain": me["chain_pem"].encode(), "key": me["key_pem"].encode(),
                         "bundle": me["bundle_pem"].encode()}  # fmt: skip
            with _Verifiers(spec) as verifiers:
                batch = minted[index * n : (index + 1) * n]
                results[f"{spec['kind']}/{count}"] = await _propagation(verifiers, revoke, batch)
                if etcd is not None and count == counts[0]:
                    results["raw"] = await _raw_baseline(verifiers, etcd.endpoint, raw_prefix, n)
    finally:
        _stop(process)
    return results


# -- memory -----------------------------------------------------------------------------------


def _retained(build: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    value = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / 2**20, value


def _memory(n: int) -> list[Figure]:
    now = datetime.now(UTC)
    later = now + timedelta(minutes=10)
    serials = [int.from_bytes(os.urandom(16), "big") | 1 for _ in range(n)]
    plain, _ = _retained(lambda: set(serials))
    records = [RevocationRecord.for_serial(s, revoked_at=now, expires_at=later) for s in serials]
    as_set, _ = _retained(lambda: RevocationSet.of(records))
    keys = [f"/s2s/{TD}/revoked/serial/{s:x}".encode() for s in serials]

    def feed_state() -> object:  # what EtcdRevocationFeed keeps: records by key, and the set
        parsed = [RevocationRecord.from_json(r.to_json()) for r in records]
        by_key = dict(zip(keys, parsed, strict=True))
        return by_key, RevocationSet.of(by_key.values())

    feed, _ = _retained(feed_state)
    label = f"{n:,} revoked serials"
    return [
        Figure(f"verifier RevocationSet, {label}", as_set, "MiB", "plain set of ints", plain,
               higher_is_better=False),
        Figure(f"etcd feed state (records + set), {label}", feed, "MiB", "plain set of ints",
               plain, higher_is_better=False, note="records parsed from JSON as the feed does"),
    ]  # fmt: skip


# -- run --------------------------------------------------------------------------------------


def _latency_figures(results: dict[str, Samples], n: int) -> list[Figure]:
    figures = []
    for name, (from_return, from_start) in results.items():
        if name == "raw":
            continue
        path, count = name.split("/")
        label = f"{'etcd' if path == 'etcd' else 'CA long-poll'}, {count} verifier(s)"
        early = sum(1 for s in from_return if s < 0)
        note = f"{n} revocations x {count}; {early} arrived before the call returned"
        for which, samples, raw in (
            ("return", from_return, results["raw"][0]),
            ("start", from_start, results["raw"][1]),
        ):
            for point, value, base in zip(
                ("p50", "p99"), percentiles(samples, 50, 99), percentiles(raw, 50, 99), strict=True
            ):
                figures.append(
                    Figure(f"revoke {which} -> rejection {point}, {label}", value, "ms",
                           f"raw etcd put {which} -> watch event {point}", base,
                           higher_is_better=False, note=note)
                )  # fmt: skip
    return figures


async def _large_set(etcd: EtcdServer, size: int, n: int) -> tuple[list[float], list[float]]:
    """An etcd put of one more record -> the feed's new set, with ``size`` records already
    revoked (one verifier); beside the raw watch on the same etcd. Both from the put's start."""
    td = f"big{uuid.uuid4().hex[:8]}.example"
    prefix = f"/s2s/{td}/revoked/serial/"
    now = datetime.now(UTC)

    def doc(serial: int) -> bytes:
        record = RevocationRecord.for_serial(serial, revoked_at=now, expires_at=now + HOUR)
        return json.dumps(record.to_json()).encode()

    client = await EtcdClient.connect(etcd.endpoint)
    try:
        for start in range(1, size + 1, 100):
            ops = [put_op(f"{prefix}{s:x}".encode(), doc(s)) for s in range(start, start + 100)]
            await client.txn([], ops)
        raw_prefix = f"/bench-raw/{uuid.uuid4().hex}/"
        spec = {"kind": "etcd", "n": 1, "td": td, "endpoint": etcd.endpoint,
                "raw_prefix": raw_prefix}  # fmt: skip
        feed_ms: list[float] = []
        with _Verifiers(spec) as verifiers:
            for i in range(n):
                serial = 1 << 40 | i
                await verifiers.arm(serial)
                started = time.monotonic()
                await client.put(f"{prefix}{serial:x}".encode(), doc(serial))
                (at,) = await verifiers.arrivals("feed", serial, 1)
                feed_ms.append((at - started) * 1000)
            raw = await _raw_baseline(verifiers, etcd.endpoint, raw_prefix, n)
    finally:
        await client.close()
    return feed_ms, raw[1]


async def _propagation_all(
    n: int, counts: tuple[int, ...], size: int
) -> tuple[dict[str, Samples], tuple[list[float], list[float]]]:
    with tempfile.TemporaryDirectory(prefix="s2s-bench-rev-") as tmp:
        with EtcdServer(Path(tmp) / "etcd") as etcd:
            results = await _path(Path(tmp), etcd, counts, n)
            large = await _large_set(etcd, size, max(10, n // 4))
        results |= await _path(Path(tmp), None, counts, n)
    return results, large


def _large_figures(large: tuple[list[float], list[float]], size: int) -> list[Figure]:
    feed, raw = large
    out = []
    for point, value, base in zip(
        ("p50", "p99"), percentiles(feed, 50, 99), percentiles(raw, 50, 99), strict=True
    ):
        out.append(
            Figure(f"etcd put start -> rejection {point}, {size:,} already revoked", value, "ms",
                   f"raw etcd put start -> watch event {point}", base, higher_is_better=False,
                   note=f"{len(feed)} revocations, 1 verifier (set built in a thread)")
        )  # fmt: skip
    return out


def run(quick: bool) -> list[Figure]:
    n = 20 if quick else 200
    size = 10_000 if quick else 100_000
    results, large = asyncio.run(_propagation_all(n, (1, 10), size))
    return _latency_figures(results, n) + _large_figures(large, size) + _memory(size)


# -- deltas: the cost of one revocation and the bytes a subscriber receives -----------------------

DELTA_SIZES = (1_000, 10_000, 100_000)
DELTA_KEYS = (
    "set_old", "set_new", "ca_old", "ca_list", "ca_new", "ca_read", "sub_old", "sub_new",
)  # fmt: skip


def _serial_at(serial: int, at: datetime) -> RevocationRecord:
    return RevocationRecord.for_serial(serial, revoked_at=at, expires_at=at + HOUR, reason="bench")


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1e3


async def _bulk_add(store: SqliteStore, records: list[RevocationRecord]) -> None:
    """Write ``records`` in one transaction (the bench's setup: one fsync, not one per record;
    not in the change log, so the CA's first refresh is a full listing, as at a start)."""

    def run(tx: Tx) -> None:
        rows = [(str(r.kind), r.value, micros(r.expires_at), encode_doc(r)) for r in records]
        tx.conn.executemany("INSERT OR REPLACE INTO revocations VALUES (?, ?, ?, ?)", rows)
        tx.bump(Topic.REVOCATIONS)

    await store._write(run)


async def _deltas_at(size: int, samples: int, path: Path, run: int) -> dict[str, float]:
    """One registry size: p50/p99 (ms) of each path over ``samples`` revocations, and the median
    bytes a subscriber one revision behind receives (whole set / delta).

    The O(change) paths are measured back to back, then the whole-set paths, in the same run.

    * ``set``: the set alone: ``RevocationSet.of`` of every record plus the new one (a whole
      rebuild) against ``with_records`` on the newest set of its own line (derived, O(change));
    * ``ca``: the CA after a store write: the store's whole-list read plus a whole rebuild
      (``ca_old``, the first path), the whole-list read plus a diff and a derived set
      (``ca_list``, the refresh before the store's change feed), against
      ``LiveRevocations.refresh`` reading the change feed (``ca_new``); ``ca_read`` is the
      whole-list read alone;
    * ``sub``: a subscriber: parse the whole answer and build the set, against parse the delta
      and derive its set from the one it holds.
    """
    now = datetime.now(UTC)
    store = await SqliteStore.open(path)
    try:
        if run == 0:  # the store is kept for the next runs of this size
            await _bulk_add(store, [_serial_at(0x100000 + i, now) for i in range(size)])
        live = LiveRevocations(store=store)
        held = await live.refresh()
        subscriber = RevocationSet.of(
            parse_revocation_page(json.loads(live.feed_json())).records, version=held.version
        )
        own = RevocationSet.of(held.records(), version=held.version)  # the set alone: its line
        before = RevocationSet.of(held.records(), version=held.version)  # the refresh before
        times: dict[str, list[float]] = {k: [] for k in DELTA_KEYS}
        sizes: dict[str, list[int]] = {"full": [], "delta": []}
        serials = iter(range(0x900000 + run * 100_000, 0xA00000))
        # The O(change) paths back to back: no whole-set work of the bench between them (it
        # would leave the caches cold and the collector busy, and measure the bench itself).
        # The setup's garbage is collected first; two untimed rounds warm the paths up.
        gc.collect()
        for n in range(samples + 2):
            new = _serial_at(next(serials), now)
            held = live.current()
            t0 = time.perf_counter()
            own = own.with_records([new], version=own.version + 1)
            t1 = time.perf_counter()
            await store.add_revocation(new)
            t2 = time.perf_counter()
            await live.refresh()
            t3 = time.perf_counter()
            delta_body = live.delta_json(held.version)
            assert delta_body is not None, "the CA has the delta from the previous revision"
            t4 = time.perf_counter()
            page = parse_revocation_page(json.loads(delta_body))
            subscriber = subscriber.with_changes(page.records, page.removed, version=page.revision)
            t5 = time.perf_counter()
            if n < 2:
                continue
            times["set_new"].append(_ms(t0, t1))
            times["ca_new"].append(_ms(t2, t3))
            times["sub_new"].append(_ms(t4, t5))
            sizes["delta"].append(len(delta_body))
        # The whole-set paths, in the same run: the rebuild, the CA's whole-list read with a
        # rebuild or with a diff (the refresh before the change feed), a subscriber's whole set.
        for _ in range(samples):
            new = _serial_at(next(serials), now)
            held = live.current()
            t0 = time.perf_counter()
            RevocationSet.of([*own.records(), new], version=own.version + 1)
            t1 = time.perf_counter()
            own = own.with_records([new], version=own.version + 1)
            await store.add_revocation(new)
            t2 = time.perf_counter()
            listed = await store.list_revocations()
            t3 = time.perf_counter()
            RevocationSet.of(listed, version=held.version + 1)
            t4 = time.perf_counter()
            before = _listed_refresh(before, {r.key: r for r in listed})
            t5 = time.perf_counter()
            times["set_old"].append(_ms(t0, t1))
            times["ca_read"].append(_ms(t2, t3))
            times["ca_old"].append(_ms(t2, t4))
            times["ca_list"].append(_ms(t2, t3) + _ms(t4, t5))
            await live.refresh()
            full_body = live.feed_json()
            sizes["full"].append(len(full_body))
            t0 = time.perf_counter()
            page = parse_revocation_page(json.loads(full_body))
            RevocationSet.of(page.records, version=page.revision)
            t1 = time.perf_counter()
            times["sub_old"].append(_ms(t0, t1))
            delta_body = live.delta_json(held.version)
            assert delta_body is not None, "the CA has the delta from the previous revision"
            page = parse_revocation_page(json.loads(delta_body))
            subscriber = subscriber.with_changes(page.records, page.removed, version=page.revision)
        assert subscriber == live.current(), "the subscriber's derived set equals the CA's"
        assert live.full_loads == 1, "the CA applied every change from the store's feed"
        out: dict[str, float] = {}
        for key, values in times.items():
            out[f"{key}_p50"], out[f"{key}_p99"] = percentiles(values, 50, 99)
        out["bytes_full"] = statistics.median(sizes["full"])
        out["bytes_delta"] = statistics.median(sizes["delta"])
        return out
    finally:
        await store.close()


def _listed_refresh(
    held: RevocationSet, listing: dict[tuple[Any, str, str], RevocationRecord]
) -> RevocationSet:
    """The refresh before the store's change feed, after its whole-list read: the records that
    differ from ``held`` (O(records)), then the set derived from it by them (``held`` is a copy
    on its own line, so the CA's line is left alone)."""
    changes: dict[tuple[Any, str, str], RevocationRecord | None] = {
        k: r for k, r in listing.items() if held.get(k) != r
    }
    if len(listing) - len(changes) < len(held):
        changes.update(dict.fromkeys(k for k in held.record_keys() if k not in listing))
    return held.with_changes(
        [r for r in changes.values() if r is not None],
        [k for k, r in changes.items() if r is None],
        version=held.version + 1,
    )


def deltas(samples: int = 30, runs: int = 3, sizes: tuple[int, ...] = DELTA_SIZES) -> None:
    """Print the "Revocation deltas" table: medians of ``runs`` runs, each over ``samples``
    revocations per size (``python -m bench.revocation --deltas``)."""
    results: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            for size in sizes:
                n = samples if size < 100_000 else max(samples // 2, 3)
                path = Path(tmp) / f"store-{size}.db"
                results[size].append(asyncio.run(_deltas_at(size, n, path, run)))
    rows = [
        ("one revocation, the set alone (p50 / p99 ms)", "set_old", "set_new"),
        ("the CA after a store write: whole read + rebuild -> change feed", "ca_old", "ca_new"),
        ("the CA: whole read + diff (the refresh before) -> change feed", "ca_list", "ca_new"),
        ("a subscriber applies one change (p50 / p99 ms)", "sub_old", "sub_new"),
    ]
    head = " | ".join(f"{size:,} records: before -> after" for size in sizes)
    print(f"| medians of {runs} runs, {samples} revocations each | {head} |")
    print("|---|" + "---|" * len(sizes))

    def med(size: int, key: str) -> float:
        return statistics.median(r[key] for r in results[size])

    for label, old, new in rows:
        cells = [
            f"{med(s, old + '_p50'):.2f} / {med(s, old + '_p99'):.2f} -> "
            f"{med(s, new + '_p50'):.3f} / {med(s, new + '_p99'):.3f}"
            for s in sizes
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    reads = [f"{med(s, 'ca_read_p50'):.2f} / {med(s, 'ca_read_p99'):.2f}" for s in sizes]
    print("| of which the store's whole-list read (p50 / p99 ms) | " + " | ".join(reads) + " |")
    sent = [f"{med(s, 'bytes_full'):,.0f} -> {med(s, 'bytes_delta'):,.0f}" for s in sizes]
    print("| bytes to a subscriber one revision behind | " + " | ".join(sent) + " |")


def deltas_isolated(
    samples: int = 300, runs: int = 3, sizes: tuple[int, ...] = DELTA_SIZES
) -> None:
    """Print a subscriber's cost of one delta (parse, then derive its set) measured alone: no
    whole-set work in the same process between samples (medians of ``runs`` runs)."""
    now = datetime.now(UTC)
    cells = []
    for size in sizes:
        runs_p50: list[float] = []
        runs_p99: list[float] = []
        for _ in range(runs):
            held = RevocationSet.of([_serial_at(0x100000 + i, now) for i in range(size)], version=1)
            took = []
            for n in range(samples):
                new = _serial_at(0x900000 + n, now)
                body = encode_delta(held.version, held.version + 1, [new], [])
                t0 = time.perf_counter()
                page = parse_revocation_page(json.loads(body))
                held = held.with_changes(page.records, page.removed, version=page.revision)
                took.append(_ms(t0, time.perf_counter()))
            p50, p99 = percentiles(took, 50, 99)
            runs_p50.append(p50)
            runs_p99.append(p99)
        cells.append(f"{statistics.median(runs_p50):.3f} / {statistics.median(runs_p99):.3f}")
    print("| a subscriber applies one delta, measured alone (p50 / p99 ms) | " + " | ".join(cells))


async def _etcd_refresh_at(endpoint: str, size: int, samples: int) -> dict[str, float]:
    """One revocation on the etcd store with ``size`` records: the CA's whole-list read plus a
    rebuild (the old path) against ``LiveRevocations.refresh`` on the watch (process CPU, the
    write included; and wall time from the write to the refreshed set)."""
    now = datetime.now(UTC)
    store = await EtcdStore.open(endpoint, trust_domain=f"b{uuid.uuid4().hex[:10]}.example")
    try:
        records = [_serial_at(0x100000 + i, now) for i in range(size)]
        for at in range(0, size, 100):
            ops = [
                put_op(store.key("revoked", "serial", r.value), encode_doc(r).encode())
                for r in records[at : at + 100]
            ]
            await store.c.txn([], ops)
        live = LiveRevocations(store=store)
        await live.refresh()
        gc.collect()
        before: list[float] = []
        cpu: list[float] = []
        wall: list[float] = []
        serials = iter(range(0x900000, 0xA00000))
        for n in range(samples + 2):
            new = _serial_at(next(serials), now)
            start, began = time.process_time(), time.perf_counter()
            await store.add_revocation(new)
            current = await live.refresh()
            cpu_took, wall_took = time.process_time() - start, time.perf_counter() - began
            assert current.is_serial_revoked_by_any_issuer(int(new.value, 16))
            if n >= 2:
                cpu.append(cpu_took * 1e3)
                wall.append(wall_took * 1e3)
        for _ in range(max(3, samples // 4)):
            start = time.process_time()
            RevocationSet.of(await store.list_revocations())
            before.append((time.process_time() - start) * 1e3)
        assert live.full_loads == 1, "the CA applied every change from the watch"
        return {
            "before": statistics.median(before),
            "cpu": statistics.median(cpu),
            "wall": statistics.median(wall),
        }
    finally:
        await store.close()


def etcd_refresh(samples: int = 20, runs: int = 3, sizes: tuple[int, ...] = DELTA_SIZES) -> None:
    """Print the CA's cost of one revocation on etcd, whole read against the watch (medians of
    ``runs`` runs; ``python -m bench.revocation --deltas-etcd``)."""

    async def all_sizes(endpoint: str) -> None:  # one event loop: grpc's stays with it
        for size in sizes:
            results = [await _etcd_refresh_at(endpoint, size, samples) for _ in range(runs)]
            med = {k: statistics.median(r[k] for r in results) for k in results[0]}
            print(
                f"| etcd, {size:,} records | whole read + rebuild {med['before']:.1f} ms CPU"
                f" | write + refresh on the watch {med['cpu']:.2f} ms CPU,"
                f" {med['wall']:.2f} ms wall |",
                flush=True,
            )

    with tempfile.TemporaryDirectory() as tmp, EtcdServer(Path(tmp) / "etcd") as etcd:
        asyncio.run(all_sizes(etcd.endpoint))


if __name__ == "__main__":
    import sys

    if "--deltas" in sys.argv:
        quick = "--quick" in sys.argv
        deltas(samples=5 if quick else 20, runs=1 if quick else 3)
        deltas_isolated(samples=30 if quick else 300, runs=1 if quick else 3)
    elif "--deltas-alone" in sys.argv:
        deltas_isolated()
    elif "--deltas-etcd" in sys.argv:
        etcd_refresh(samples=5 if "--quick" in sys.argv else 20)
