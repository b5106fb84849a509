"""Held waits on an etcd store share their slow re-reads of a topic's revision.

Every held long-poll (entries, revocations) waits in ``wait_for_change``, woken by the store's
watch and also re-reading its topic's revision each poll interval, in case the watch missed a
change. One read per waiter per interval was most of a replica's etcd calls with 200 agents; the
waiters now share one read per half interval. Twins: a change made through another handle still
wakes every waiter at once with the new revision, even when the shared read is young (a notified
topic is read afresh), and one waiter alone still sees a change the watch never reported.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from contract import entry

from s2s.store.etcd import EtcdStore
from s2s.store.records import Topic
from s2s.testing_etcd import EtcdServer

pytest_plugins = ("etcd_fixtures",)

WAITERS = 40


async def opened(server: EtcdServer, trust_domain: str, poll_interval: float) -> EtcdStore:
    return await EtcdStore.open(
        server.endpoint, trust_domain=trust_domain, poll_interval=poll_interval
    )


def count_topic_reads(store: EtcdStore, topic: Topic) -> list[int]:
    """Count the store's reads of ``topic``'s key (the real client, wrapped)."""
    client = store.c
    key = store._keys.topic(topic)
    real_get = client.get
    count = [0]

    async def get(k: bytes, *args: Any, **kwargs: Any) -> Any:
        if k == key:
            count[0] += 1
        return await real_get(k, *args, **kwargs)

    client.get = get  # type: ignore[method-assign]
    return count


async def test_held_waiters_share_their_re_reads(
    etcd_server: EtcdServer, trust_domain: str
) -> None:
    store = await opened(etcd_server, trust_domain, 0.2)
    try:
        after = await store.revision(Topic.ENTRIES)
        reads = count_topic_reads(store, Topic.ENTRIES)
        waits = [store.wait_for_change(Topic.ENTRIES, after, 1.0) for _ in range(WAITERS)]
        assert await asyncio.gather(*waits) == [after] * WAITERS
        # One read each per 0.2 s would be about 5 x 40 = 200 (plus the first of each).
        assert reads[0] <= 30, reads[0]
    finally:
        await store.close()


async def test_a_change_through_another_handle_wakes_every_waiter_at_once(
    etcd_server: EtcdServer, trust_domain: str
) -> None:
    # A long poll interval: a waiter that took a shared read from before the change (it is
    # young for 5 s) would wait up to 10 s more; the watch's notification forces a fresh read.
    store = await EtcdStore.open(
        etcd_server.endpoint, trust_domain=trust_domain, poll_interval=10.0
    )
    other = await EtcdStore.open(
        etcd_server.endpoint, trust_domain=trust_domain, poll_interval=10.0
    )
    try:
        after = await store.revision(Topic.ENTRIES)
        waits = [
            asyncio.ensure_future(store.wait_for_change(Topic.ENTRIES, after, 30.0))
            for _ in range(WAITERS)
        ]
        await asyncio.sleep(0.3)  # every waiter holds, on one shared read
        assert not any(w.done() for w in waits)
        started = time.monotonic()
        await other.create_entry(entry("changed", "/changed"))
        changed = await other.revision(Topic.ENTRIES)
        got = await asyncio.wait_for(asyncio.gather(*waits), 5.0)
        assert got == [changed] * WAITERS
        assert time.monotonic() - started < 5.0
    finally:
        await other.close()
        await store.close()


async def test_a_change_the_watch_never_reported_is_seen_by_the_re_read(
    etcd_server: EtcdServer, trust_domain: str
) -> None:
    store = await opened(etcd_server, trust_domain, 0.2)
    other = await opened(etcd_server, trust_domain, 0.2)
    try:
        after = await store.revision(Topic.ENTRIES)
        store._notifier.notify = lambda topics: None  # type: ignore[method-assign]
        waits = [
            asyncio.ensure_future(store.wait_for_change(Topic.ENTRIES, after, 30.0))
            for _ in range(3)
        ]
        await asyncio.sleep(0.3)
        await other.create_entry(entry("unreported", "/unreported"))
        changed = await other.revision(Topic.ENTRIES)
        assert await asyncio.wait_for(asyncio.gather(*waits), 5.0) == [changed] * 3
    finally:
        await other.close()
        await store.close()
