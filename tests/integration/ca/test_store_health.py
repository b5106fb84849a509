"""StoreHealth against a real etcd: up while etcd answers; down (with the reason, the gauge at 0,
waiters woken, ``check`` refusing with a 503-class StoreError) when etcd is stopped or answers
slower than the probe's timeout; up again once it answers. A SQLite store is always up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from tcp_cut import TcpCut

from s2s.ca.http_json import status_for
from s2s.ca.store_health import StoreHealth
from s2s.core.clock import SystemClock
from s2s.core.errors import StoreError
from s2s.store.etcd import EtcdStore
from s2s.store.sqlite import SqliteStore
from s2s.testing_etcd import EtcdServer

pytest_plugins = ("etcd_fixtures",)


def gauge(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("s2s_ca_store_up")


async def test_down_while_etcd_is_stopped_and_up_again(etcd: EtcdServer) -> None:
    store = await EtcdStore.open(etcd.endpoint, trust_domain="health.example.org", timeout=1.0)
    registry = CollectorRegistry()
    health = StoreHealth(store=store, clock=SystemClock(), timeout=3.0, registry=registry)
    try:
        assert await health.probe()
        assert health.up
        assert health.problem() == ""
        assert gauge(registry) == 1
        health.check()  # up: nothing raised
        woken = asyncio.create_task(health.went_down())
        await asyncio.sleep(0)
        assert not woken.done()

        etcd.stop()
        assert not await health.probe()
        assert not health.up
        assert gauge(registry) == 0
        assert "cannot reach its store" in health.problem()
        with pytest.raises(StoreError, match="use another CA replica") as refused:
            health.check()
        assert status_for(refused.value.code) == 503
        await asyncio.wait_for(woken, 1)  # a held long-poll is woken
        await asyncio.wait_for(health.went_down(), 1)  # already down: returns at once

        etcd.start()
        deadline = asyncio.get_running_loop().time() + 15
        while not await health.probe():  # the channel reconnects with its own backoff
            assert asyncio.get_running_loop().time() < deadline, health.problem()
            await asyncio.sleep(0.1)
        assert health.up
        assert gauge(registry) == 1
        health.check()
    finally:
        await store.close()


async def test_a_probe_slower_than_the_timeout_is_down(etcd: EtcdServer) -> None:
    # etcd reached through a link that accepts connections but passes nothing: no answer
    cut = await TcpCut(("127.0.0.1", etcd.client_port)).start()
    store = await EtcdStore.open(cut.address, trust_domain="slow.example.org", timeout=5.0)
    health = StoreHealth(store=store, clock=SystemClock(), timeout=0.3)
    try:
        # Twin: the store answers through the link (under the default timeout: on a loaded
        # machine etcd may take longer than 0.3 s, which is not what this test is about).
        assert await StoreHealth(store=store, clock=SystemClock()).probe()
        stalled = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        cut.target = ("127.0.0.1", stalled.sockets[0].getsockname()[1])
        cut.cut()  # drop the open connection; the next one goes to the silent server
        cut.heal()
        assert not await health.probe()
        assert "no answer within 0.3 s" in health.problem()
        stalled.close()
    finally:
        await store.close()
        await cut.close()


async def test_sqlite_is_up(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db", create=True)
    health = StoreHealth(store=store, clock=SystemClock())
    try:
        assert await health.probe()
        assert health.up
    finally:
        await store.close()
