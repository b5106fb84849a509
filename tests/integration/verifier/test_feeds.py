"""The etcd revocation feed against a real etcd (``s2s.testing_etcd``); the CA long-poll feed is
in test_feeds_ca.py.

Records are written through the CA's store (``EtcdStore.add_revocation``, ``prune``); the feed
must show them within a second, miss nothing across an etcd restart or a partition, re-list after
a compaction, fail closed once stale (peer check and JwtValidator: ``revocations-stale``), build
big sets off the loop, and serve blocking code (``feeds_sync``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from feed_support import TcpGate, eventually, id_record, serial_record

from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidConfig, InvalidToken, StoreError, Unavailable
from s2s.core.revocation import RevocationSet
from s2s.core.spiffe_id import TrustDomain
from s2s.etcd.client import EtcdClient
from s2s.etcd.values import put_op
from s2s.store.etcd import EtcdStore
from s2s.testing import TestAuthority
from s2s.testing_etcd import EtcdCluster, EtcdServer
from s2s.verifier.authorize import authorize_any
from s2s.verifier.feeds import RevocationsStale
from s2s.verifier.feeds_etcd import EtcdRevocationFeed, revocation_prefix
from s2s.verifier.feeds_sync import open_etcd_revocations
from s2s.verifier.jwt import JwtValidator
from s2s.verifier.peer import PeerRejected, verify_chain
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.x509context import X509Context

pytestmark = pytest.mark.timeout(60)
pytest_plugins = ("etcd_fixtures",)


@pytest.fixture
def td() -> TrustDomain:
    return TrustDomain(f"t{uuid.uuid4().hex[:12]}.example")


@pytest.fixture
async def store(etcd: EtcdServer, td: TrustDomain) -> AsyncIterator[EtcdStore]:
    async with await EtcdStore.open(etcd.endpoint, trust_domain=td.name, timeout=3.0) as s:
        yield s


@pytest.fixture
async def gate(etcd: EtcdServer) -> AsyncIterator[TcpGate]:
    g = TcpGate("127.0.0.1", etcd.client_port)
    await g.open()
    yield g
    await g.shut()


async def open_feed(endpoint: str, td: TrustDomain, **kwargs: object) -> EtcdRevocationFeed:
    feed = await EtcdRevocationFeed.connect(endpoint, td, timeout=2.0, **kwargs)
    await feed.start(timeout=10)
    return feed


def chain_der(authority: TestAuthority, svid_serial_holder: list[int]) -> list[bytes]:
    svid = authority.issue_x509_svid("spiffe://example.org/web")
    svid_serial_holder.append(svid.serial)
    return [c.public_bytes(Encoding.DER) for c in (*svid.cert_chain, authority.root)]


# -- propagation ----------------------------------------------------------------------------


async def test_existing_and_new_revocations_reach_the_feed_within_a_second(
    etcd: EtcdServer, store: EtcdStore, td: TrustDomain
) -> None:
    await store.add_revocation(serial_record(0xAA))
    other_td = TrustDomain(f"o{uuid.uuid4().hex[:12]}.example")
    async with await EtcdStore.open(etcd.endpoint, trust_domain=other_td.name) as other:
        feed = await open_feed(etcd.endpoint, td)
        try:
            snap = feed.current()
            assert snap.is_serial_revoked_by_any_issuer(0xAA)
            assert len(snap) == 1
            await store.add_revocation(serial_record(0xBB))
            took = await eventually(
                lambda: feed.current().is_serial_revoked_by_any_issuer(0xBB), "serial"
            )
            assert took < 1.0
            sid = f"spiffe://{td.name}/web"
            await store.add_revocation(id_record(sid))
            took = await eventually(lambda: feed.current().revoked_at(sid) is not None, "SPIFFE ID")
            assert took < 1.0
            # rejecting twins: another trust domain's record, a serial never revoked
            await other.add_revocation(serial_record(0xCC))
            await store.add_revocation(serial_record(0xDD))  # a marker written after it
            await eventually(lambda: feed.current().is_serial_revoked_by_any_issuer(0xDD), "marker")
            assert not feed.current().is_serial_revoked_by_any_issuer(0xCC)
            assert not feed.current().is_serial_revoked_by_any_issuer(0xAB)
            assert feed.current().version == feed.revision > 0
            age = feed.age()
            assert age is not None
            assert age < 2.0
        finally:
            await feed.stop()


async def test_pruned_and_merged_records_follow_the_store(
    etcd: EtcdServer, store: EtcdStore, td: TrustDomain
) -> None:
    feed = await open_feed(etcd.endpoint, td)
    try:
        await store.add_revocation(serial_record(0x10, hours=0.001))  # expires in ~4 s
        await store.add_revocation(serial_record(0x11))
        await eventually(lambda: len(feed.current()) == 2, "two records")
        longer = serial_record(0x10, hours=2)
        await store.add_revocation(longer)  # merged: the later expiry wins
        await eventually(
            lambda: feed.current().records()[0].expires_at == longer.expires_at, "merge"
        )
        await store.prune(datetime.now(UTC) + timedelta(hours=1.5))  # 0x11 expires before then
        await eventually(lambda: not feed.current().is_serial_revoked_by_any_issuer(0x11), "pruned")
        assert feed.current().is_serial_revoked_by_any_issuer(0x10)
        derived = feed.current()  # from the last set by the changed records: equals a rebuild
        assert derived == RevocationSet.of(await store.list_revocations(), version=derived.version)
    finally:
        await feed.stop()


# -- faults ---------------------------------------------------------------------------------


async def test_etcd_restart_while_watching_misses_nothing(
    etcd: EtcdServer, store: EtcdStore, gate: TcpGate, td: TrustDomain
) -> None:
    feed = await open_feed(gate.endpoint, td)
    try:
        await store.add_revocation(serial_record(0x1))
        await eventually(
            lambda: feed.current().is_serial_revoked_by_any_issuer(0x1), "before the restart"
        )
        # The feed is cut off; revocations land meanwhile, etcd restarts, and the feed returns.
        await gate.shut()
        await store.add_revocation(serial_record(0x2))
        etcd.stop()
        etcd.start()
        await store.add_revocation(id_record(f"spiffe://{td.name}/db"))
        assert not feed.snapshot().is_serial_revoked_by_any_issuer(0x2)
        await gate.open()
        await eventually(
            lambda: feed.current().is_serial_revoked_by_any_issuer(0x2), "written while cut off"
        )
        await eventually(
            lambda: feed.current().revoked_at(f"spiffe://{td.name}/db") is not None, "after"
        )
        assert feed.relists == 0, "an uncompacted gap is replayed from revision + 1"
        # A plain kill and restart while the feed holds a direct connection: still nothing lost.
        etcd.kill()
        etcd.start()
        await store.add_revocation(serial_record(0x3))
        await eventually(
            lambda: feed.current().is_serial_revoked_by_any_issuer(0x3), "after a kill"
        )
    finally:
        await feed.stop()


async def test_compacted_revision_gives_a_full_relist(
    etcd: EtcdServer, store: EtcdStore, gate: TcpGate, td: TrustDomain
) -> None:
    feed = await open_feed(gate.endpoint, td)
    raw = await EtcdClient.connect(etcd.endpoint)
    try:
        await store.add_revocation(serial_record(0x20, hours=0.5))
        await store.add_revocation(serial_record(0x21))
        await eventually(lambda: len(feed.current()) == 2, "two records")
        await gate.shut()
        await store.prune(datetime.now(UTC) + timedelta(hours=0.75))  # drops 0x20
        await store.add_revocation(serial_record(0x22))
        latest = await raw.put(b"/compaction-marker", b"x")
        await raw.compact(latest)
        await gate.open()
        await eventually(lambda: feed.relists >= 1, "a re-list after the compaction")
        await eventually(
            lambda: feed.current().is_serial_revoked_by_any_issuer(0x22), "the new record"
        )
        assert not feed.current().is_serial_revoked_by_any_issuer(0x20), "the pruned record left"
        assert feed.current().is_serial_revoked_by_any_issuer(0x21)
        await store.add_revocation(serial_record(0x23))  # and the watch goes on
        await eventually(
            lambda: feed.current().is_serial_revoked_by_any_issuer(0x23), "after the re-list"
        )
    finally:
        await raw.close()
        await feed.stop()


async def test_stale_feed_fails_closed_and_recovers(
    store: EtcdStore,
    gate: TcpGate,
    td: TrustDomain,
    ca: TestAuthority,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(datetime.now(UTC))
    feed = await open_feed(gate.endpoint, td, max_staleness=5.0, probe_interval=0.05, clock=clock)
    serials: list[int] = []
    chain = chain_der(ca, serials)
    bundles = BundleSet.of(ca.bundle())
    token = ca.issue_jwt_svid("spiffe://example.org/web", "api")
    validator = JwtValidator(bundles, "api", revocations=feed)

    def peer() -> object:
        return verify_chain(
            chain, bundles=bundles, authorize=authorize_any(), revocations=feed, now=clock.now()
        )

    try:
        assert str(peer()) == "spiffe://example.org/web"
        assert validator.validate(token).spiffe_id.path == "/web"  # now cached
        await gate.shut()
        clock.advance(seconds=6)
        with caplog.at_level(logging.ERROR, logger="s2s.verifier.feeds"):
            for _ in range(3):
                with pytest.raises(RevocationsStale) as stale:
                    feed.current()
        said = [r for r in caplog.records if r.getMessage() == "revocations.feed_stale"]
        assert len(said) == 1  # once per stale spell, not once per handshake
        assert stale.value.age is not None
        assert stale.value.age > 5
        assert isinstance(stale.value, Unavailable)
        with pytest.raises(PeerRejected) as rejected:
            peer()
        assert rejected.value.reason == "revocations-stale"
        with pytest.raises(InvalidToken) as refused:
            validator.validate(token)  # even a cached token
        assert refused.value.reason == "revocations-stale"
        # Revocations written while stale are there when the feed recovers.
        await store.add_revocation(serial_record(serials[0]))
        await gate.open()
        await eventually(lambda: not feed.is_stale(), "fresh again")
        with pytest.raises(PeerRejected) as revoked:
            peer()
        assert revoked.value.reason == "revoked"
    finally:
        await feed.stop()


async def test_feed_before_its_first_sync_fails_closed(gate: TcpGate, td: TrustDomain) -> None:
    await gate.shut()
    feed = await EtcdRevocationFeed.connect(gate.endpoint, td, timeout=0.5)
    try:
        with pytest.raises(RevocationsStale, match="not synced"):
            feed.current()
        with pytest.raises(Unavailable, match="did not sync"):
            await feed.start(timeout=0.5)
        assert feed.age() is None
        assert feed.is_stale()
    finally:
        await feed.stop()
    with pytest.raises(InvalidConfig):
        EtcdRevocationFeed(feed.client, td, max_staleness=0)


def record_json(serial: int) -> bytes:
    return json.dumps(serial_record(serial).to_json()).encode()


async def test_a_large_set_is_built_off_the_loop_and_bursts_are_not_lost(
    etcd: EtcdServer, store: EtcdStore, td: TrustDomain
) -> None:
    raw = await EtcdClient.connect(etcd.endpoint)
    prefix = revocation_prefix(td)
    try:
        serials = list(range(0x10000, 0x10000 + 20_000))  # above the inline limit (5,000)
        for start in range(0, len(serials), 100):
            ops = [put_op(prefix + f"serial/{s:x}".encode(), record_json(s))
                   for s in serials[start : start + 100]]  # fmt: skip
            await raw.txn([], ops)
        feed = await open_feed(etcd.endpoint, td)
        try:
            assert len(feed.current()) == len(serials)
            assert feed.current().is_serial_revoked_by_any_issuer(serials[-1])
            await store.add_revocation(serial_record(0xABC))
            took = await eventually(
                lambda: feed.current().is_serial_revoked_by_any_issuer(0xABC), "one more"
            )
            assert took < 1.0
            burst = [0xB0000 + i for i in range(200)]
            for start in range(0, len(burst), 10):  # 10 writers at a time
                chunk = burst[start : start + 10]
                await asyncio.gather(*(store.add_revocation(serial_record(s)) for s in chunk))
            await eventually(
                lambda: all(feed.current().is_serial_revoked_by_any_issuer(s) for s in burst),
                "the burst",
            )
            assert len(feed.current()) == len(serials) + 1 + len(burst)
            assert feed.bad_records == 0
        finally:
            await feed.stop()
    finally:
        await raw.close()


# -- blocking code --------------------------------------------------------------------------


def blocking_exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str:
    """One blocking mTLS connection; the server's verdict ("ok" or its rejection reason)."""
    verdict: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
                    verdict.append("ok")
            except PeerRejected as exc:
                verdict.append(exc.reason)
            except (OSError, ssl.SSLError) as exc:
                verdict.append(f"error: {exc}")

        server = threading.Thread(target=serve)
        server.start()
        with socket.create_connection(listener.getsockname()) as raw:
            try:
                with client_ctx.wrap_socket(raw) as tls:
                    tls.recv(16)
            except (OSError, ssl.SSLError):
                pass  # the server refused us: its verdict says why
        server.join(10)
    return verdict[0]


async def test_sync_feed_serves_blocking_servers(
    etcd: EtcdServer, store: EtcdStore, td: TrustDomain, ca: TestAuthority
) -> None:
    feed = await asyncio.to_thread(open_etcd_revocations, etcd.endpoint, td, max_staleness=5.0)
    try:
        bundles = BundleSet.of(ca.bundle())
        client = ca.issue_x509_svid("spiffe://example.org/client")
        server = ca.issue_x509_svid("spiffe://example.org/server")
        server_ctx = server_context(
            StaticX509Source(X509Context((server,), bundles)), authorize=authorize_any(),
            revocations=feed,
        )  # fmt: skip
        client_ctx = client_context(
            StaticX509Source(X509Context((client,), bundles)),
            authorize=authorize_any(),
            revocations=no_revocation_check(),
        )
        assert await asyncio.to_thread(blocking_exchange, server_ctx, client_ctx) == "ok"
        await store.add_revocation(serial_record(client.serial))
        await eventually(
            lambda: feed.current().is_serial_revoked_by_any_issuer(client.serial), "revoked"
        )
        verdict = await asyncio.to_thread(blocking_exchange, server_ctx, client_ctx)
        assert verdict == "revoked"
        age = feed.age()
        assert age is not None
        assert age < 5
    finally:
        await asyncio.to_thread(feed.close)
    with pytest.raises(Unavailable, match="did not sync"):  # twin: nothing to follow
        await asyncio.to_thread(open_etcd_revocations, "127.0.0.1:1", td, timeout=0.5)


async def test_feed_on_a_cluster_survives_losing_the_member_it_uses(
    tmp_path: Path, td: TrustDomain
) -> None:
    with EtcdCluster(tmp_path / "cluster") as cluster:
        feed = await open_feed(cluster.endpoints, td)
        store = await EtcdStore.open(cluster.endpoints, trust_domain=td.name, timeout=3.0)
        try:
            await store.add_revocation(serial_record(0x31))
            await eventually(lambda: feed.current().is_serial_revoked_by_any_issuer(0x31), "before")
            cluster.members[0].kill()  # the first endpoint: where the feed is connected
            deadline = time.monotonic() + 10
            while True:  # loudly refused while the writer moves to another member
                try:
                    await store.add_revocation(serial_record(0x32))  # idempotent: retry is safe
                    break
                except StoreError:
                    assert time.monotonic() < deadline, "no member took the write within 10 s"
                    await asyncio.sleep(0.1)
            await eventually(
                lambda: feed.current().is_serial_revoked_by_any_issuer(0x32), "after the loss"
            )
            assert not feed.is_stale()
        finally:
            await store.close()
            await feed.stop()


async def test_feed_rides_out_a_lost_quorum_lagging_not_stale(
    tmp_path: Path, td: TrustDomain
) -> None:
    """Two of three members stop: the cluster has no quorum, probes fail, the feed says it is
    lagging at once but keeps answering with its set (an outage shorter than an SVID lifetime
    is not a fleet outage). The quorum back, a revocation made then arrives and it is fresh."""
    with EtcdCluster(tmp_path / "cluster") as cluster:
        feed = await open_feed(cluster.endpoints, td)
        store = await EtcdStore.open(cluster.endpoints, trust_domain=td.name, timeout=3.0)
        try:
            await store.add_revocation(serial_record(0x41))
            await eventually(lambda: feed.current().is_serial_revoked_by_any_issuer(0x41), "before")
            for member in cluster.members[1:]:
                member.stop()
            deadline = time.monotonic() + 20
            while feed.status() != "lagging":
                assert time.monotonic() < deadline, f"never lagging: {feed.status()}"
                await asyncio.sleep(0.1)
            assert feed.current().is_serial_revoked_by_any_issuer(0x41)  # still answering
            for member in cluster.members[1:]:
                member.start()
            deadline = time.monotonic() + 20
            while True:  # writes are refused until the quorum is back
                try:
                    await store.add_revocation(serial_record(0x42))
                    break
                except StoreError:
                    assert time.monotonic() < deadline, "the quorum never came back"
                    await asyncio.sleep(0.2)
            await eventually(
                lambda: feed.current().is_serial_revoked_by_any_issuer(0x42), "after the quorum"
            )
            deadline = time.monotonic() + 10
            while feed.status() != "ok":
                assert time.monotonic() < deadline, f"never fresh again: {feed.status()}"
                await asyncio.sleep(0.1)
        finally:
            await store.close()
            await feed.stop()
