"""CaRevocationFeed bookkeeping with an in-memory poller and a fake clock: what is published,
when the set counts as current, failing closed, and the metrics. (Real CA and etcd:
tests/integration/verifier/test_feeds*.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidConfig, InvalidRequest, Unavailable
from s2s.core.revocation import RevocationRecord
from s2s.verifier.feeds import (
    DEFAULT_MAX_STALENESS,
    STRICT_MAX_STALENESS,
    FeedMetrics,
    RevocationsStale,
)
from s2s.verifier.feeds_ca import CaRevocationFeed, RevocationPage, parse_revocation_page

NOW = datetime(2031, 1, 1, tzinfo=UTC)


def record(serial: int) -> RevocationRecord:
    return RevocationRecord.for_serial(serial, revoked_at=NOW, expires_at=NOW + timedelta(hours=1))


class MemoryPoller:
    """A CA in memory: ``put`` a new page; ``fail`` makes polls raise; long-polls wait."""

    def __init__(self) -> None:
        self.page = RevocationPage(1, ())
        self.error: Exception | None = None
        self.changed = asyncio.Event()
        self.calls: list[tuple[int, float]] = []

    def put(self, revision: int, *serials: int) -> None:
        self.page = RevocationPage(revision, tuple(record(s) for s in serials))
        self.changed.set()

    async def fetch_revocations(self, *, since: int, wait: float) -> RevocationPage:
        self.calls.append((since, wait))
        if self.error is not None:
            raise self.error
        if since == self.page.revision and wait > 0:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), wait)
            if self.error is not None:
                raise self.error
        return self.page


async def until(check: object, what: str) -> None:
    for _ in range(500):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"never: {what}")


async def test_publishes_changes_and_confirms_every_answer() -> None:
    clock, poller = FakeClock(NOW), MemoryPoller()
    poller.put(3, 0xA)
    metrics = FeedMetrics(CollectorRegistry())
    feed = CaRevocationFeed(poller, wait=0.01, max_staleness=10, clock=clock)
    metrics.track(feed, "ca")
    await feed.start(timeout=2)
    try:
        assert feed.current().is_serial_revoked_by_any_issuer(0xA)
        assert (feed.revision, feed.current().version) == (3, 3)
        assert poller.calls[0] == (-1, 0.0)  # the first poll does not wait
        published = feed.updates
        clock.advance(seconds=8)
        await until(lambda: feed.age() == 0.0, "an unchanged answer confirms the set")
        assert feed.updates == published  # ... without publishing a new one
        assert all(wait == 0.01 for since, wait in poller.calls[1:])  # long-polls after that
        poller.put(4, 0xA, 0xB)
        await until(lambda: feed.current().is_serial_revoked_by_any_issuer(0xB), "the change")
        poller.put(2, 0xC)  # the CA moved to another store: a lower revision is a new set too
        await until(lambda: feed.revision == 2, "the lower revision")
        assert not feed.current().is_serial_revoked_by_any_issuer(0xA)
        reg = metrics.registry
        assert reg.get_sample_value("s2s_verifier_revocation_records", {"feed": "ca"}) == 1
        assert reg.get_sample_value("s2s_verifier_revocations_stale", {"feed": "ca"}) == 0
        assert reg.get_sample_value("s2s_verifier_revocation_sets_total", {"feed": "ca"}) == 3
    finally:
        await feed.stop()


async def test_errors_keep_the_set_until_it_is_too_old() -> None:
    clock, poller = FakeClock(NOW), MemoryPoller()
    poller.put(5, 0xA)
    metrics = FeedMetrics(CollectorRegistry())
    feed = CaRevocationFeed(poller, wait=0.01, max_staleness=10, clock=clock, backoff_cap=0.01)
    metrics.track(feed)
    await feed.start(timeout=2)
    try:
        poller.error = Unavailable("the CA is down")
        poller.changed.set()
        await until(lambda: feed.last_error == "the CA is down", "the error is reported")
        clock.advance(seconds=9)
        assert feed.current().is_serial_revoked_by_any_issuer(
            0xA
        )  # kept while younger than the limit
        clock.advance(seconds=2)
        with pytest.raises(RevocationsStale) as stale:
            feed.current()
        assert stale.value.age is not None
        assert stale.value.age >= 11
        reg, label = metrics.registry, {"feed": feed.name}
        assert reg.get_sample_value("s2s_verifier_revocations_stale", label) == 1
        assert reg.get_sample_value("s2s_verifier_revocations_age_seconds", label) >= 11
        assert feed.snapshot().is_serial_revoked_by_any_issuer(0xA)  # diagnostics still see it
        poller.error = None
        await until(lambda: not feed.is_stale(), "fresh again once the CA answers")
        assert feed.last_error is None
    finally:
        await feed.stop()


async def test_never_synced_and_bad_settings() -> None:
    poller = MemoryPoller()
    poller.error = Unavailable("no CA")
    feed = CaRevocationFeed(poller, backoff_cap=0.01)
    metrics = FeedMetrics(CollectorRegistry())
    metrics.track(feed, "x")
    with pytest.raises(Unavailable, match=r"did not sync within 0\.2s: no CA"):
        await feed.start(timeout=0.2)
    with pytest.raises(RevocationsStale, match="not synced"):
        feed.current()
    assert metrics.registry.get_sample_value(
        "s2s_verifier_revocations_age_seconds", {"feed": "x"}
    ) == -1  # fmt: skip
    await feed.stop()
    await feed.stop()  # idempotent
    with pytest.raises(InvalidConfig):
        CaRevocationFeed(poller, max_staleness=0)
    assert CaRevocationFeed(poller, wait=600, max_staleness=30).wait == 15  # half the limit


@pytest.mark.parametrize(
    "doc",
    [[], {"records": []}, {"revision": -1, "records": []}, {"revision": True, "records": []},
     {"revision": 1, "records": {}}, {"revision": 1, "records": [{"kind": "serial"}]}],
)  # fmt: skip
def test_bad_pages_are_refused(doc: object) -> None:
    with pytest.raises(InvalidRequest, match=r"revocation|revision|records"):
        parse_revocation_page(doc)
    # Twin: a good page.
    good = parse_revocation_page({"revision": 2, "records": [record(7).to_json()]})
    assert good.revision == 2
    assert good.records == (record(7),)


# --- the staleness policy ----------------------------------------------------------------------


async def test_default_policy_lags_at_the_first_missed_update_and_fails_closed_after_an_svid_life(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A CA outage: the feed says it is lagging at once (log, status, gauge) but keeps answering
    with its last set until the longest SVID lifetime in force (5 min cap + 30 s skew) passed."""
    clock, poller = FakeClock(NOW), MemoryPoller()
    poller.put(3, 0xA)
    metrics = FeedMetrics(CollectorRegistry())
    feed = CaRevocationFeed(poller, wait=0.01, clock=clock)
    metrics.track(feed, "ca")
    assert feed.max_staleness == DEFAULT_MAX_STALENESS == 330.0
    await feed.start(timeout=2)
    try:
        assert feed.status() == "ok"
        poller.error = Unavailable("the CA is down")
        await until(lambda: feed.last_error is not None, "the poll failed")
        clock.advance(seconds=feed.lag_after + 1)
        assert feed.status() == "lagging"
        assert (
            metrics.registry.get_sample_value("s2s_verifier_revocations_lagging", {"feed": "ca"})
            == 1.0
        )
        assert feed.current().is_serial_revoked_by_any_issuer(0xA)  # still answering
        assert "revocations.feed_lagging" in caplog.text
        clock.advance(seconds=DEFAULT_MAX_STALENESS - feed.lag_after - 2)  # just under the limit
        assert feed.current().is_serial_revoked_by_any_issuer(0xA)
        clock.advance(seconds=2)
        assert feed.status() == "stale"
        with pytest.raises(RevocationsStale):
            feed.current()
        poller.error = None  # the CA is back: fresh again
        await until(lambda: feed.status() == "ok", "the feed recovered")
        assert "revocations.feed_fresh" in caplog.text
    finally:
        await feed.stop()


async def test_strict_policy_fails_closed_after_thirty_seconds() -> None:
    clock, poller = FakeClock(NOW), MemoryPoller()
    feed = CaRevocationFeed(poller, wait=0.01, clock=clock, max_staleness=STRICT_MAX_STALENESS)
    await feed.start(timeout=2)
    try:
        poller.error = Unavailable("the CA is down")
        await until(lambda: feed.last_error is not None, "the poll failed")
        clock.advance(seconds=STRICT_MAX_STALENESS + 1)
        with pytest.raises(RevocationsStale):
            feed.current()
    finally:
        await feed.stop()


class SheddingPoller(MemoryPoller):
    """A CA over its long-poll cap: it answers every poll at once, held or not."""

    async def fetch_revocations(self, *, since: int, wait: float) -> RevocationPage:
        self.calls.append((since, wait))
        return self.page


async def test_a_ca_shedding_long_polls_is_not_asked_again_in_a_busy_loop() -> None:
    poller = SheddingPoller()
    poller.put(3, 0xA)
    feed = CaRevocationFeed(poller, wait=5.0, clock=FakeClock(NOW), rand=lambda: 0.0)
    await feed.start(timeout=2)
    try:
        await asyncio.sleep(0.3)
        assert len(poller.calls) <= 3, len(poller.calls)  # a pause of 0.5 s between polls
        assert feed.status() == "ok"  # every answer still confirms the set
        poller.put(4, 0xA, 0xB)  # a change arrives with the next poll
        await until(lambda: feed.current().is_serial_revoked_by_any_issuer(0xB), "the change")
    finally:
        await feed.stop()
