"""The registration-entries gauge counts the CA's entries snapshot: refreshing the gauges lists no
entries from the store (on etcd, a listing of the whole registry every metrics interval)."""

from __future__ import annotations

import asyncio
import time

from ca_harness import RunningCa
from test_ca_metrics import scrape, value


async def following(ca: RunningCa) -> None:
    deadline = time.monotonic() + 10.0
    while not ca.server.registry.following:
        assert time.monotonic() < deadline, "the registry snapshot never loaded"
        await asyncio.sleep(0.01)


def entry_listings(m: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> float:
    counts = m.get("s2s_ca_store_operation_seconds_count", {})
    return sum(v for k, v in counts.items() if dict(k).get("operation") == "list_entries")


async def test_the_entries_gauge_counts_the_snapshot_without_a_store_listing(
    ca: RunningCa,
) -> None:
    await following(ca)
    agent = await ca.attest()
    await ca.entry(agent, "/billing")
    await ca.entry(agent, "/api")
    before = entry_listings(await scrape(ca))
    await ca.server.refresh_gauges()
    m = await scrape(ca)
    assert value(m, "s2s_ca_registration_entries") == 2
    assert entry_listings(m) == before


async def test_a_deleted_entry_leaves_the_gauge(ca: RunningCa) -> None:
    await following(ca)
    agent = await ca.attest()
    one = await ca.entry(agent, "/billing")
    await ca.entry(agent, "/api")
    await ca.admin_call("DELETE", f"/v1/entries/{one['id']}")
    await ca.server.refresh_gauges()
    assert value(await scrape(ca), "s2s_ca_registration_entries") == 1
