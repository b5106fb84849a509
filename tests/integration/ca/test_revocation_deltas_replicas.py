"""Revocation deltas with two CA replicas on one etcd: the revision is etcd's, shared by both, so a
subscriber that switches replicas between long-polls asks the other replica from the revision the
first one gave; it gets a delta when that replica's change log has the revision and the full set
when not, and converges to the set every replica serves."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path

import pytest
from ca_harness import start_ca, stop_ca

from s2s.ca.app import CaServer
from s2s.ca.store_config import StoreSettings
from s2s.cli.ca import main
from s2s.core.bundle import BundleSet
from s2s.core.revocation import RevocationSet
from s2s.core.spiffe_id import SpiffeId
from s2s.testing_etcd import EtcdServer
from s2s.verifier.feeds_ca import CaRevocationFeed, HttpsRevocationPoller, RevocationPage
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.x509context import X509Context

pytest_plugins = ("etcd_fixtures",)
pytestmark = pytest.mark.timeout(90)


class Alternating:
    """A poller that asks replica a, then b, then a... and records who answered what."""

    def __init__(self, pollers: list[HttpsRevocationPoller]) -> None:
        self.pollers = pollers
        self.calls = 0
        self.answers: list[tuple[int, str, int]] = []  # (replica, kind, base)

    async def fetch_revocations(self, *, since: int, wait: float) -> RevocationPage:
        index = self.calls % len(self.pollers)
        self.calls += 1
        page = await self.pollers[index].fetch_revocations(since=since, wait=min(wait, 0.3))
        self.answers.append((index, "delta" if page.delta else "full", page.base))
        return page

    async def close(self) -> None:
        for poller in self.pollers:
            await poller.close()


async def poller_to(server: CaServer, source: StaticX509Source) -> HttpsRevocationPoller:
    return HttpsRevocationPoller(f"https://127.0.0.1:{server.port}", source)


async def test_a_subscriber_switching_replicas_converges(
    etcd: EtcdServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    td = f"t{hashlib.sha256(request.node.name.encode()).hexdigest()[:12]}.example.org"
    argv = ["--data-dir", str(tmp_path / "a"), "init", "--trust-domain", td,
            "--store", f"{etcd.url}/{td}"]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy2(tmp_path / "a" / "kek.bin", tmp_path / "b" / "kek.bin")
    settings = StoreSettings(url=etcd.url, trust_domain=td)
    a = await start_ca(tmp_path / "a", store=settings, replica_name="ca-a")
    b = await start_ca(tmp_path / "b", store=settings, replica_name="ca-b")
    replicas = (a[0], b[0])
    feed: CaRevocationFeed | None = None
    try:
        me = await a[0].issuer.mint_x509_svid(SpiffeId.parse(f"spiffe://{td}/verifier"))
        source = StaticX509Source(X509Context((me,), BundleSet.of(a[0].authority.bundle)))
        poller = Alternating([await poller_to(a[0], source), await poller_to(b[0], source)])
        feed = CaRevocationFeed(poller, wait=1.0, on_close=poller.close)
        await feed.start(timeout=10)
        revoked = []
        for n in range(8):  # revocations through either replica, one at a time
            server = replicas[n % 2]
            svid = await server.issuer.mint_x509_svid(SpiffeId.parse(f"spiffe://{td}/w{n}"))
            await server.revocations.revoke_serial(svid.serial)
            revoked.append(svid.serial)
            deadline = asyncio.get_running_loop().time() + 10
            while not feed.current().is_serial_revoked_by_any_issuer(svid.serial):
                assert asyncio.get_running_loop().time() < deadline, f"serial {n} not seen"
                await asyncio.sleep(0.01)
        for server in replicas:  # every replica serves the set the feed converged to
            full = await server.revocations.live.refresh()
            deadline = asyncio.get_running_loop().time() + 10
            while feed.current().version != full.version:
                assert asyncio.get_running_loop().time() < deadline, "the last revision"
                await asyncio.sleep(0.01)
            assert feed.current() == RevocationSet.of(full.records(), version=full.version)
        assert all(feed.current().is_serial_revoked_by_any_issuer(s) for s in revoked)
        assert not feed.current().is_serial_revoked_by_any_issuer(me.serial)  # twin
        kinds = {(replica, kind) for replica, kind, _ in poller.answers[1:]}
        assert (1, "delta") in kinds or (0, "delta") in kinds  # deltas were served across
        assert feed.last_error is None
    finally:
        if feed is not None:
            await feed.stop()
        await stop_ca(*b)
        await stop_ca(*a)
