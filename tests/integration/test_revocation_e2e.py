"""Revocation end to end: a real CA, a real agent, two verifiers and a stream of mTLS connections,
with the CA on its embedded store (feeds long-poll the CA) and on etcd (feeds watch etcd).

The client workload takes its SVID from the agent (``X509Source``). Two servers verify it:
``feed`` follows the revocations with a :class:`CaRevocationFeed` (long-poll over mTLS) or an
:class:`EtcdRevocationFeed` (the agent follows the same source), ``crl`` takes them from the
CRLs the agent serves in the Workload API (``X509Source.revocations``). A serial and then a
SPIFFE ID are revoked through the CA's revocation service while connections flow: both verifiers
must reject the old SVID (replayed by a holder of its key) within a deadline, the agent must push
the workload a fresh SVID, and connections with it must keep succeeding. The agent also follows
etcd over TLS (and reports, never syncs, with a wrong CA or no client certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from s2s.ca.app import CaServer, ServeOptions
from s2s.ca.bootstrap import init_trust_domain
from s2s.ca.store_config import StoreSettings
from s2s.core.bundle import BundleSet
from s2s.core.revocation import RevocationLookup
from s2s.core.x509svid import X509Svid
from s2s.testing_etcd import EtcdServer
from s2s.testing_etcd_tls import EtcdTlsFiles
from s2s.verifier.authorize import authorize_any
from s2s.verifier.feeds import RevocationFeed
from s2s.verifier.feeds_ca import CaRevocationFeed
from s2s.verifier.feeds_etcd import EtcdRevocationFeed
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source import X509Source
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.x509context import X509Context, X509SourceLike

pytestmark = pytest.mark.timeout(120)

MY_UID = f"unix:uid:{os.getuid()}"
TRUST_DOMAIN = "example.org"  # tests/integration/conftest.py's
DEADLINE = 3.0  # seconds from the revoke call's return to rejection by both verifiers


@dataclass
class Verifier:
    name: str
    port: int
    metrics: PeerMetrics


@contextlib.asynccontextmanager
async def verifying_server(
    name: str, source: X509SourceLike, revocations: RevocationLookup
) -> AsyncIterator[Verifier]:
    metrics = PeerMetrics(CollectorRegistry())
    ctx = server_context(
        source, authorize=authorize_any(), revocations=revocations, metrics=metrics
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            sid = writer.get_extra_info("ssl_object").peer_spiffe_id
            writer.write(f"{sid}".encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield Verifier(name, server.sockets[0].getsockname()[1], metrics)
    finally:
        server.close()
        await server.wait_closed()


async def accepted(verifier: Verifier, ctx: ssl.SSLContext) -> bool:
    """One mTLS connection and a read: True when the server verified us and answered."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", verifier.port, ssl=ctx)
    except (OSError, ssl.SSLError):
        return False
    try:
        return bool(await asyncio.wait_for(reader.read(), 5))
    except (OSError, ssl.SSLError, TimeoutError):
        return False
    finally:
        writer.close()


@dataclass
class Stream:
    """Connections from the workload's current SVID to every verifier, back to back."""

    ctx: ssl.SSLContext
    verifiers: list[Verifier]
    source: X509Source
    results: list[tuple[int, str, bool]] = field(default_factory=list)  # (serial, verifier, ok)

    async def run(self) -> None:
        while True:
            for verifier in self.verifiers:
                serial = self.source.current().default_svid.serial
                self.results.append((serial, verifier.name, await accepted(verifier, self.ctx)))


def replay_ctx(svid: X509Svid, bundles: BundleSet) -> ssl.SSLContext:
    """A client context presenting ``svid`` (as a holder of the revoked SVID's key would)."""
    return client_context(
        StaticX509Source(X509Context((svid,), bundles)),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )


async def until(check: Callable[[], Any], what: str, timeout: float) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd") / "data") as server:
        yield server


@pytest.fixture(params=["sqlite", "etcd"])
async def deployment(
    request: pytest.FixtureRequest, harness: Any, tmp_path: Path
) -> AsyncIterator[str]:
    """``sqlite``: the CA on its embedded store, verifier and agent long-poll the CA.
    ``etcd``: the CA on etcd (``s2s-ca serve --store etcd://``), verifier and agent watch etcd."""
    if request.param == "sqlite":
        yield ""
        return
    etcd: EtcdServer = request.getfixturevalue("etcd_server")
    store = StoreSettings(url=f"{etcd.url}/{TRUST_DOMAIN}")
    data_dir = tmp_path / "ca-etcd"
    await init_trust_domain(data_dir, TRUST_DOMAIN, store_settings=store)
    options = ServeOptions(data_dir=data_dir, listen="127.0.0.1:0", tick=0.2, json_logs=False,
                           store=store)  # fmt: skip
    server = await CaServer.open(options)
    assert not (data_dir / "s2s.db").exists()  # the CA's store is etcd
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    sqlite_ca = harness.ca
    harness.ca = dataclasses.replace(sqlite_ca, data_dir=data_dir, server=server, port=server.port)
    try:
        yield etcd.endpoint
    finally:
        for running in harness.agents:
            await running.shutdown()
        harness.agents.clear()
        harness.ca = sqlite_ca
        stop.set()
        await asyncio.wait_for(task, 10)
        await server.close()


async def test_revoked_serial_and_id_are_rejected_and_the_workload_gets_a_fresh_svid(
    harness: Any, deployment: str
) -> None:
    ca = harness.ca
    token, agent_id = await ca.join_token()
    await ca.entry(agent_id, "/client", [MY_UID])
    config = harness.config(token=token, revocations_etcd=deployment or None)
    running = await harness.start_agent(config)
    assert running.agent.revocations is not None
    expected = EtcdRevocationFeed if deployment else CaRevocationFeed
    assert isinstance(running.agent.revocations.feed, expected)
    server = ca.server
    server_svid = await server.issuer.mint_x509_svid(ca.td.id("/server"))
    async with contextlib.AsyncExitStack() as stack:
        workload = X509Source(socket=str(running.agent.config.socket))
        await workload.start()
        stack.push_async_callback(workload.close)
        bundles = workload.current().bundles
        server_source = StaticX509Source(X509Context((server_svid,), bundles))
        feed: RevocationFeed
        if deployment:
            feed = await EtcdRevocationFeed.connect(deployment, ca.td)
        else:
            feed = CaRevocationFeed.over_https(ca.url, server_source, wait=5.0)
        await feed.start()
        stack.push_async_callback(feed.stop)
        await until(lambda: _true(workload.crls()), "the agent serves CRLs", 10)
        by_feed = await stack.enter_async_context(verifying_server("feed", server_source, feed))
        by_crl = await stack.enter_async_context(
            verifying_server("crl", server_source, workload.revocations)
        )
        verifiers = [by_feed, by_crl]
        stream = Stream(client_context(workload, authorize=authorize_any()), verifiers, workload)
        task = asyncio.create_task(stream.run())
        stack.callback(task.cancel)
        await until(lambda: _true(len(stream.results) >= 4), "connections flow", 10)
        assert all(ok for _, _, ok in stream.results), stream.results

        async def revoke_serial(svid: X509Svid) -> None:
            await server.revocations.revoke_serial(svid.serial, reason="key compromise")

        async def revoke_id(svid: X509Svid) -> None:
            await server.revocations.revoke_spiffe_id(svid.spiffe_id)

        for revoke in (revoke_serial, revoke_id):
            old = workload.current().default_svid
            old_ctx = replay_ctx(old, bundles)
            for verifier in verifiers:  # twin: accepted until revoked
                assert await accepted(verifier, old_ctx)
            await revoke(old)
            for verifier in verifiers:
                took = await until(
                    lambda v=verifier, c=old_ctx: _not(accepted(v, c)),  # type: ignore[misc]
                    f"{verifier.name} rejects revoked serial {old.serial:x}",
                    DEADLINE,
                )
                assert took < DEADLINE
                assert verifier.metrics.rejection_count("revoked") >= 1
            await until(
                lambda o=old: _true(workload.current().default_svid.serial != o.serial),  # type: ignore[misc]
                "the workload receives a fresh SVID",
                DEADLINE,
            )
            fresh = workload.current().default_svid
            assert fresh.spiffe_id == old.spiffe_id
            assert not feed.current().is_serial_revoked_by_any_issuer(fresh.serial)
            mark = len(stream.results)
            await until(
                lambda m=mark, f=fresh: _true(  # type: ignore[misc]
                    sum(1 for s, _, ok in stream.results[m:] if s == f.serial and ok) >= 4
                ),
                "connections with the fresh SVID succeed on both verifiers",
                10,
            )
        registry = running.agent.metrics.registry  # the agent exports its feed
        label = {"feed": "agent"}
        assert registry.get_sample_value("s2s_verifier_revocation_records", label) >= 2
        assert registry.get_sample_value("s2s_verifier_revocations_stale", label) == 0
        # The stream never saw a fresh SVID refused; only the revoked ones were.
        revoked = {
            s
            for s in (r[0] for r in stream.results)
            if feed.current().is_serial_revoked_by_any_issuer(s)
        }
        failures = [(s, v) for s, v, ok in stream.results if not ok and s not in revoked]
        assert failures == []


async def _true(value: object) -> bool:
    return bool(value)


async def _not(awaitable: Any) -> bool:
    return not await awaitable


@pytest.mark.parametrize("trust", ["good", "other-ca", "no-client-cert"])
async def test_agent_follows_revocations_in_etcd_over_tls(
    harness: Any, tmp_path: Path, trust: str
) -> None:
    files = EtcdTlsFiles.create(tmp_path / "etcd-tls")
    with EtcdServer(tmp_path / "etcd-tls-data", tls=files) as etcd:
        token, agent_id = await harness.ca.join_token()
        await harness.ca.entry(agent_id, "/client", [MY_UID])
        tls = {
            "good": (files.ca, files.client_cert, files.client_key),
            "other-ca": (files.other_ca, files.client_cert, files.client_key),
            "no-client-cert": (files.ca, None, None),  # etcd requires client certificates
        }[trust]
        config = harness.config(
            token=token, revocations_etcd=etcd.endpoint, revocations_etcd_ca=tls[0],
            revocations_etcd_cert=tls[1], revocations_etcd_key=tls[2],
        )  # fmt: skip
        running = await harness.start_agent(config)
        follower = running.agent.revocations
        assert follower is not None
        feed = follower.feed
        if trust == "good":
            await asyncio.wait_for(feed.synced.wait(), 10)
            assert feed.last_error is None
        else:
            await until(lambda: _true(feed.last_error), "the feed reports the TLS failure", 10)
            assert not feed.synced.is_set()
        await running.shutdown()
