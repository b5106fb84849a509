"""Revocation long-polls that send only what changed (``/v1/revocations?since=R&delta=1``).

Against a real CA (embedded store): a subscriber at R gets only the records changed since R
(added and pruned), which applied to its set give the full set; a client too far behind, at an
unknown revision or after a CA restart gets the full set, as does a client that does not ask for
deltas. The feed follows by deltas; a malformed or misplaced delta (from a test server) is refused
and the feed keeps its last good set, then asks for the whole set.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from feed_support import eventually, serial_record

from s2s.core.bundle import BundleSet
from s2s.core.revocation import RevocationRecord, RevocationSet
from s2s.core.x509svid import X509Svid
from s2s.verifier.authorize import authorize_any
from s2s.verifier.feeds_ca import CaRevocationFeed, HttpsRevocationPoller, RevocationPage
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import server_context
from s2s.verifier.x509context import X509Context

pytestmark = pytest.mark.timeout(60)
CaHandle = Any  # tests/integration/conftest.py (the live_ca fixture)


def verifier_source(ca: CaHandle, svid: X509Svid) -> StaticX509Source:
    return StaticX509Source(X509Context((svid,), BundleSet.of(ca.server.authority.bundle)))


async def poller_for(ca: CaHandle) -> HttpsRevocationPoller:
    me = await ca.server.issuer.mint_x509_svid(ca.td.id("/verifier"))
    return HttpsRevocationPoller(ca.url, verifier_source(ca, me))


def as_set(page: RevocationPage) -> RevocationSet:
    assert not page.delta
    return RevocationSet.of(page.records, version=page.revision)


async def revoke_new(ca: CaHandle, path: str) -> int:
    svid = await ca.server.issuer.mint_x509_svid(ca.td.id(path))
    await ca.server.revocations.revoke_serial(svid.serial)
    return svid.serial


async def test_a_subscriber_at_r_gets_only_the_delta(live_ca: CaHandle) -> None:
    poller = await poller_for(live_ca)
    try:
        for n in range(5):
            await revoke_new(live_ca, f"/old{n}")
        held = await poller.fetch_revocations(since=-1, wait=0)
        assert not held.delta
        assert len(held.records) == 5
        fresh = await revoke_new(live_ca, "/fresh")
        page = await poller.fetch_revocations(since=held.revision, wait=5)
        assert page.delta
        assert page.base == held.revision
        assert page.revision > held.revision
        assert [r.value for r in page.records] == [format(fresh, "x")]
        assert page.removed == ()
        full = as_set(await poller.fetch_revocations(since=-1, wait=0))
        applied = as_set(held).with_changes(page.records, page.removed, version=page.revision)
        assert applied == full
        assert applied.records() == full.records()
        # pruned records reach the subscriber as removals
        store = live_ca.server.revocations._store
        soon = datetime.now(UTC) + timedelta(seconds=1)
        short = RevocationRecord.for_serial(0xDEAD, revoked_at=soon, expires_at=soon)
        await store.add_revocation(short)
        await live_ca.server.revocations.live.refresh()
        before = as_set(await poller.fetch_revocations(since=-1, wait=0))
        assert before.is_serial_revoked_by_any_issuer(0xDEAD)
        await store.prune(soon + timedelta(seconds=1))
        page = await poller.fetch_revocations(since=before.version, wait=5)
        assert page.delta
        assert page.records == ()
        assert page.removed == (short.key,)
        applied = before.with_changes(page.records, page.removed, version=page.revision)
        assert applied == as_set(await poller.fetch_revocations(since=-1, wait=0))
        # nothing new: the long-poll times out with an empty delta at the same revision
        idle = await poller.fetch_revocations(since=page.revision, wait=0.2)
        assert (idle.delta, idle.revision, idle.records, idle.removed) == (
            True, page.revision, (), ()
        )  # fmt: skip
    finally:
        await poller.close()


async def test_a_client_that_does_not_ask_for_deltas_gets_the_full_set(
    live_ca: CaHandle,
) -> None:
    poller = await poller_for(live_ca)
    try:
        await revoke_new(live_ca, "/a")
        held = await poller.fetch_revocations(since=-1, wait=0)
        await revoke_new(live_ca, "/b")
        query = {"since": str(held.revision), "wait": "5"}  # no delta=1: an older client
        data = await poller._get(live_ca.url, "/v1/revocations", query, 5)
        assert isinstance(data, dict)
        assert "delta" not in data
        assert len(data["records"]) == 2
    finally:
        await poller.close()


async def test_too_far_behind_or_unknown_or_restarted_gets_the_full_set(
    live_ca: CaHandle,
) -> None:
    live_ca.server.revocations.live.log_changes = 2  # the log keeps the last 2 changed records
    poller = await poller_for(live_ca)
    try:
        await revoke_new(live_ca, "/first")
        held = await poller.fetch_revocations(since=-1, wait=0)
        await revoke_new(live_ca, "/second")
        near = await poller.fetch_revocations(since=held.revision, wait=5)
        assert near.delta  # twin: one change behind is within the log
        for n in range(3):
            await revoke_new(live_ca, f"/more{n}")
        far = await poller.fetch_revocations(since=held.revision, wait=5)
        assert not far.delta
        assert len(far.records) == 5
        unknown = await poller.fetch_revocations(since=far.revision + 1000, wait=0)
        assert not unknown.delta
        assert unknown.revision == far.revision
        await live_ca.stop()
        await live_ca.start()
        live_ca.server.revocations.live.log_changes = 2
        after = await poller.fetch_revocations(since=far.revision - 1, wait=5)
        assert not after.delta  # a restarted CA has no log yet
        assert as_set(after) == as_set(far)
    finally:
        await poller.close()


class Recording:
    """A poller that records the kind of every answer."""

    def __init__(self, inner: HttpsRevocationPoller) -> None:
        self.inner = inner
        self.kinds: list[str] = []

    async def fetch_revocations(self, *, since: int, wait: float) -> RevocationPage:
        page = await self.inner.fetch_revocations(since=since, wait=wait)
        self.kinds.append("delta" if page.delta else "full")
        return page


async def test_the_feed_follows_by_deltas_and_equals_the_full_set(live_ca: CaHandle) -> None:
    poller = Recording(await poller_for(live_ca))
    feed = CaRevocationFeed(poller, wait=5.0, on_close=poller.inner.close)
    await revoke_new(live_ca, "/before")
    await feed.start()
    try:
        serials = [await revoke_new(live_ca, f"/w{n}") for n in range(4)]
        await eventually(
            lambda: all(feed.current().is_serial_revoked_by_any_issuer(s) for s in serials),
            "every serial by deltas",
        )
        assert poller.kinds[0] == "full"
        assert "delta" in poller.kinds[1:]
        assert "full" not in poller.kinds[1:]
        full = as_set(await poller.inner.fetch_revocations(since=-1, wait=0))
        await eventually(lambda: feed.current().version == full.version, "the last revision")
        assert feed.current() == full
    finally:
        await feed.stop()


async def scripted_ca(
    svid: X509Svid, bundles: BundleSet, bodies: list[Any]
) -> tuple[web.AppRunner, list[dict[str, str]]]:
    """An HTTPS server presenting ``svid`` that answers each /v1/revocations with the next of
    ``bodies`` (the last one repeats) and records the queries."""
    queries: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        queries.append(dict(request.query))
        body = bodies[min(len(queries), len(bodies)) - 1]
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")

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
    return runner, queries


def delta(base: int, revision: int, added: Any = (), removed: Any = ()) -> dict[str, Any]:
    return {"delta": True, "base": base, "revision": revision, "added": list(added),
            "removed": list(removed)}  # fmt: skip


GOOD = serial_record(0xAA)
FULL = {"revision": 5, "records": [GOOD.to_json()]}
MALFORMED = {
    "added-not-a-list": {**delta(5, 6), "added": {"kind": "serial"}},
    "bad-removed-kind": delta(5, 6, removed=[{"kind": "cookie", "value": "aa"}]),
    "bad-added-record": delta(5, 6, added=[{"kind": "serial", "value": "0xZZ"}]),
    "delta-not-true": {**delta(5, 6), "delta": 1},
    "no-base": {k: v for k, v in delta(5, 6).items() if k != "base"},
}


@pytest.mark.parametrize("bad", sorted(MALFORMED))
async def test_a_malformed_delta_is_refused_and_the_set_kept(live_ca: CaHandle, bad: str) -> None:
    me = await live_ca.server.issuer.mint_x509_svid(live_ca.td.id("/verifier"))
    source = verifier_source(live_ca, me)
    good_next = delta(5, 7, added=[serial_record(0xBB).to_json()])
    runner, queries = await scripted_ca(
        live_ca.server.server_svid, source.current().bundles, [FULL, MALFORMED[bad], good_next]
    )
    feed = CaRevocationFeed.over_https(
        f"https://127.0.0.1:{runner.addresses[0][1]}", source, wait=1.0, backoff_initial=0.01
    )
    try:
        await feed.start(timeout=5)
        await eventually(lambda: feed.revision == 7, "the good delta after the bad one")
        assert len(queries) >= 3
        assert queries[1].get("delta") == "1"
        assert feed.current().is_serial_revoked_by_any_issuer(0xAA)
        assert feed.current().is_serial_revoked_by_any_issuer(0xBB)
    finally:
        await feed.stop()
        await runner.cleanup()


async def test_a_delta_from_another_base_is_refused_then_the_whole_set_asked(
    live_ca: CaHandle,
) -> None:
    me = await live_ca.server.issuer.mint_x509_svid(live_ca.td.id("/verifier"))
    source = verifier_source(live_ca, me)
    misplaced = delta(4, 6, added=[serial_record(0xCC).to_json()])  # the feed holds 5, not 4
    refetched = {"revision": 8, "records": [GOOD.to_json(), serial_record(0xDD).to_json()]}
    runner, queries = await scripted_ca(
        live_ca.server.server_svid, source.current().bundles, [FULL, misplaced, refetched]
    )
    feed = CaRevocationFeed.over_https(
        f"https://127.0.0.1:{runner.addresses[0][1]}", source, wait=1.0, backoff_initial=0.01
    )
    try:
        await feed.start(timeout=5)
        await eventually(lambda: feed.last_error is not None or feed.revision == 8, "refusal")
        snap = feed.current()
        assert not snap.is_serial_revoked_by_any_issuer(0xCC)  # never applied
        await eventually(lambda: feed.revision == 8, "the whole set after the refusal")
        assert "since" not in queries[2]  # the whole set was asked for
        assert feed.current().is_serial_revoked_by_any_issuer(0xDD)
        assert not feed.current().is_serial_revoked_by_any_issuer(0xCC)
    finally:
        await feed.stop()
        await runner.cleanup()


async def test_a_malformed_delta_leaves_the_last_good_set(live_ca: CaHandle) -> None:
    """Only malformed deltas after the first set: the feed keeps serving the first set."""
    me = await live_ca.server.issuer.mint_x509_svid(live_ca.td.id("/verifier"))
    source = verifier_source(live_ca, me)
    bad = MALFORMED["bad-removed-kind"]
    runner, queries = await scripted_ca(
        live_ca.server.server_svid, source.current().bundles, [FULL, bad]
    )
    feed = CaRevocationFeed.over_https(
        f"https://127.0.0.1:{runner.addresses[0][1]}", source, wait=1.0, backoff_initial=0.01
    )
    try:
        await feed.start(timeout=5)
        await eventually(lambda: len(queries) >= 4, "several refused deltas")
        assert feed.last_error is not None
        assert "cookie" in feed.last_error
        assert feed.revision == 5
        assert feed.current().is_serial_revoked_by_any_issuer(0xAA)
        assert len(feed.current()) == 1
    finally:
        await feed.stop()
        await runner.cleanup()
        await asyncio.sleep(0)
