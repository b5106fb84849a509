"""The CA long-poll revocation feed against a real CA (``CaServer``, embedded store).

Revocations written through the CA's revocation service reach the feed within a second; the feed
goes stale while the CA is down and recovers after its restart; it refuses anything that is not the
CA (a workload ID, a foreign root, a malformed answer); a multi-megabyte answer is read whole.
"""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from feed_support import eventually, serial_record

from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import Unavailable
from s2s.core.revocation import issuer_key_id
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any
from s2s.verifier.feeds import RevocationsStale
from s2s.verifier.feeds_ca import CaRevocationFeed
from s2s.verifier.feeds_sync import open_ca_revocations
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import server_context
from s2s.verifier.x509context import X509Context

pytestmark = pytest.mark.timeout(60)
CaHandle = Any  # tests/integration/conftest.py (the live_ca fixture)


def verifier_source(ca: CaHandle, svid: X509Svid) -> StaticX509Source:
    assert ca.server is not None
    return StaticX509Source(X509Context((svid,), BundleSet.of(ca.server.authority.bundle)))


async def mint(ca: CaHandle, path: str) -> X509Svid:
    assert ca.server is not None
    return await ca.server.issuer.mint_x509_svid(ca.td.id(path))


async def test_ca_feed_sees_revocations_within_a_second(live_ca: CaHandle) -> None:
    assert live_ca.server is not None
    service = live_ca.server.revocations
    before = await mint(live_ca, "/before")
    await service.revoke_serial(before.serial)
    me = await mint(live_ca, "/verifier")
    feed = CaRevocationFeed.over_https(live_ca.url, verifier_source(live_ca, me), wait=5.0)
    await feed.start()
    try:
        assert feed.current().is_serial_revoked_by_any_issuer(before.serial)
        target = await mint(live_ca, "/target")
        await service.revoke_serial(target.serial)
        took = await eventually(
            lambda: feed.current().is_serial_revoked_by_any_issuer(target.serial), "serial"
        )
        assert took < 1.0
        web = await mint(live_ca, "/web")
        await service.revoke_spiffe_id(web.spiffe_id)
        took = await eventually(
            lambda: feed.current().is_serial_revoked_by_any_issuer(web.serial),
            "SPIFFE ID expanded to serials",
        )
        assert took < 1.0
        assert feed.current().revoked_at(web.spiffe_id) is not None
        assert not feed.current().is_serial_revoked_by_any_issuer(me.serial)  # twin: not revoked
        assert feed.revision == feed.current().version > 0
    finally:
        await feed.stop()


async def test_ca_feed_goes_stale_while_the_ca_is_down_and_recovers(live_ca: CaHandle) -> None:
    clock = FakeClock(datetime.now(UTC))
    me = await mint(live_ca, "/verifier")
    feed = CaRevocationFeed.over_https(
        live_ca.url, verifier_source(live_ca, me), wait=1.0, max_staleness=3.0, clock=clock
    )
    await feed.start()
    try:
        feed.current()
        await live_ca.stop()
        clock.advance(seconds=4)
        with pytest.raises(RevocationsStale):
            feed.current()
        await live_ca.start()
        assert live_ca.server is not None
        target = await mint(live_ca, "/target")
        await live_ca.server.revocations.revoke_serial(target.serial)
        await eventually(lambda: not feed.is_stale(), "fresh after the CA restarted", timeout=15)
        await eventually(
            lambda: feed.current().is_serial_revoked_by_any_issuer(target.serial), "after restart"
        )
    finally:
        await feed.stop()


async def fake_ca(svid: X509Svid, bundles: BundleSet, body: bytes) -> web.AppRunner:
    """An HTTPS server presenting ``svid`` that answers /v1/revocations with ``body``."""

    async def answer(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/revocations", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = server_context(
        StaticX509Source(X509Context((svid,), bundles)),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    return runner


WHY = {
    "workload-id": "s2s-ca-lookalike is not authorized",
    "foreign-root": "unable to get local issuer certificate",
    "garbage-answer": "has no valid revision",
}


@pytest.mark.parametrize("impostor", ["workload-id", "foreign-root", "garbage-answer"])
async def test_ca_feed_refuses_what_is_not_the_ca(live_ca: CaHandle, impostor: str) -> None:
    me = await mint(live_ca, "/verifier")
    source = verifier_source(live_ca, me)
    ours = source.current().bundles
    body = b'{"revision": 7, "records": []}'
    if impostor == "workload-id":  # our trust domain and root, but not a CA ID (/s2s/ca/...)
        svid = await mint(live_ca, "/s2s-ca-lookalike")
    elif impostor == "foreign-root":  # a CA ID, from a root that is not in our bundle
        svid = TestAuthority("example.org").issue_x509_svid("spiffe://example.org/s2s/ca/ca-0")
    else:  # the CA's own identity, but an answer that is not a revocation page
        svid, body = live_ca.server.server_svid, b'{"revision": -1}'
    runner = await fake_ca(svid, ours, body)
    feed = CaRevocationFeed.over_https(
        f"https://127.0.0.1:{runner.addresses[0][1]}", source, wait=1.0
    )
    try:
        with pytest.raises(Unavailable, match="did not sync"):
            await feed.start(timeout=1.0)
        assert feed.updates == 0
        assert feed.last_error is not None
        assert WHY[impostor] in feed.last_error
        with pytest.raises(RevocationsStale):
            feed.current()
    finally:
        await feed.stop()
        await runner.cleanup()


async def test_ca_feed_reads_a_large_answer_whole(live_ca: CaHandle) -> None:
    serials = range(0x20000, 0x20000 + 20_000)
    records = [serial_record(s).to_json() for s in serials]
    body = json.dumps({"revision": 9, "records": records}).encode()
    assert len(body) > 3_000_000  # many TLS records and reads; decoded and built in threads
    me = await mint(live_ca, "/verifier")
    source = verifier_source(live_ca, me)
    runner = await fake_ca(live_ca.server.server_svid, source.current().bundles, body)
    feed = CaRevocationFeed.over_https(
        f"https://127.0.0.1:{runner.addresses[0][1]}", source, wait=1.0
    )
    try:
        await feed.start(timeout=10)
        assert len(feed.current()) == len(records)
        assert feed.current().is_serial_revoked_by_any_issuer(serials[-1])
        assert feed.revision == 9
    finally:
        await feed.stop()
        await runner.cleanup()


async def test_sync_ca_feed(live_ca: CaHandle) -> None:
    me = await mint(live_ca, "/verifier")
    source = verifier_source(live_ca, me)
    feed = await asyncio.to_thread(open_ca_revocations, live_ca.url, source, wait=2.0)
    try:
        target = await mint(live_ca, "/target")
        await live_ca.server.revocations.revoke_serial(target.serial)
        await eventually(
            lambda: feed.current().is_serial_revoked_by_any_issuer(target.serial), "revoked"
        )
        assert not feed.current().is_serial_revoked_by_any_issuer(me.serial)
    finally:
        await asyncio.to_thread(feed.close)


async def test_ca_feed_fails_over_to_a_live_replica_before_it_lags(live_ca: CaHandle) -> None:
    """The first URL is a dead replica: the feed answers from the next one and never lags; the
    serial record names its issuer, and the twin under another issuer is not revoked."""
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        dead_url = f"https://127.0.0.1:{dead.getsockname()[1]}"  # bound, never listening
        me = await mint(live_ca, "/verifier")
        feed = CaRevocationFeed.over_https(
            [dead_url, live_ca.url], verifier_source(live_ca, me), wait=1.0
        )
        await feed.start()
        try:
            target = await mint(live_ca, "/target")
            assert live_ca.server is not None
            await live_ca.server.revocations.revoke_serial(target.serial)
            await eventually(
                lambda: feed.current().is_serial_revoked(
                    target.serial, issuer_key_id(target.cert_chain[1])
                ),
                "the revocation through the live replica",
            )
            assert not feed.current().is_serial_revoked(target.serial, "0" * 64)
            assert feed.status() == "ok"
        finally:
            await feed.stop()
