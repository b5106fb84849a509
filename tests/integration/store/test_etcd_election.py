"""The etcd election behind once-per-cluster work, against a real etcd: one holder among several
candidates, an immediate handover on resign, a holder whose lease is gone campaigns again, and a
holder cut off from etcd stops holding by its deadline while another candidate takes over."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from tcp_cut import TcpCut

from s2s.core.errors import InvalidConfig
from s2s.etcd.client import EtcdClient
from s2s.store.etcd import EtcdStore
from s2s.store.etcd_election import EtcdElection, etcd_election
from s2s.store.sqlite import SqliteStore
from s2s.testing_etcd import EtcdServer

pytest_plugins = ("etcd_fixtures",)

TTL = 2


async def until(predicate: Callable[[], bool], what: str, deadline: float = 10.0) -> float:
    """Seconds until ``predicate`` held (polled), or a failure naming ``what``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > deadline:
            pytest.fail(f"not within {deadline} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


class Candidates:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.clients: list[EtcdClient] = []
        self.changes: dict[str, list[tuple[bool, str | None]]] = {}

    async def add(self, endpoint: str, key: bytes, name: str) -> EtcdElection:
        client = await EtcdClient.connect(endpoint, timeout=2.0)
        self.clients.append(client)
        election = EtcdElection(client, key, holder=name, ttl=TTL, poll=0.1)
        seen = self.changes.setdefault(name, [])
        self.tasks.append(asyncio.create_task(election.run(lambda h, w: seen.append((h, w)))))
        return election

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for client in self.clients:
            await client.close()


@pytest.fixture
async def candidates() -> AsyncIterator[Candidates]:
    running = Candidates()
    yield running
    await running.close()


def _key() -> bytes:
    return f"/test-elections/{uuid.uuid4().hex}".encode()


async def test_one_of_three_holds_and_resign_hands_over(
    etcd: EtcdServer, candidates: Candidates
) -> None:
    key = _key()
    elections = [await candidates.add(etcd.endpoint, key, f"ca-{i}") for i in range(3)]
    await until(lambda: sum(e.holds() for e in elections) == 1, "one holder")
    await until(lambda: len({e.leader for e in elections}) == 1, "all candidates see the holder")
    holder = next(e for e in elections if e.holds())
    assert elections[0].leader == f"ca-{elections.index(holder)}"
    for _ in range(3 * TTL * 5):  # over several lease lifetimes: still exactly one, the same
        assert [e.holds() for e in elections].count(True) == 1
        assert holder.holds()
        await asyncio.sleep(0.2)
    candidates.tasks[elections.index(holder)].cancel()
    await holder.resign()
    waited = await until(lambda: any(e.holds() for e in elections if e is not holder), "handover")
    assert waited < 1.0  # the next poll, not the lease's expiry
    assert not holder.holds()
    assert sum(e.holds() for e in elections) == 1


async def test_a_holder_whose_lease_is_gone_stops_and_campaigns_again(
    etcd: EtcdServer, candidates: Candidates
) -> None:
    key = _key()
    first = await candidates.add(etcd.endpoint, key, "ca-0")
    await until(first.holds, "the only candidate holds")
    lease = first._lease
    assert lease is not None
    async with _client(etcd) as other:
        await other.revoke_lease(lease)  # as etcd does when the lease runs out
    await until(lambda: first._lease != lease and first.holds(), "a new lease, held again")
    assert ("ca-0" if first.holds() else None) == first.leader


async def test_a_holder_cut_off_from_etcd_stops_before_another_wins(
    etcd: EtcdServer, candidates: Candidates
) -> None:
    key = _key()
    cut = await TcpCut(("127.0.0.1", int(etcd.endpoint.rsplit(":", 1)[1]))).start()
    try:
        isolated = await candidates.add(cut.address, key, "ca-cut")
        await until(isolated.holds, "the first candidate holds")
        other = await candidates.add(etcd.endpoint, key, "ca-other")
        await until(lambda: other.leader == "ca-cut", "the other sees the holder")
        assert not other.holds()
        cut.cut()
        started = time.monotonic()
        stopped = await until(lambda: not isolated.holds(), "the cut-off holder stops")
        assert stopped <= TTL + 0.1  # its local deadline: at most one lease TTL
        await until(other.holds, "the other takes over", deadline=TTL + 3)
        took_over = time.monotonic() - started
        assert not isolated.holds()  # never both: the isolated one stopped first
        assert took_over >= stopped
        cut.heal()  # back in touch: it sees the new holder and stays a follower
        await until(lambda: isolated.leader == "ca-other", "the healed candidate sees the holder")
        assert not isolated.holds()
        assert other.holds()
        assert (False, "ca-other") in candidates.changes["ca-cut"]
    finally:
        await cut.close()


def _client(etcd: EtcdServer) -> _ClientContext:
    return _ClientContext(etcd.endpoint)


class _ClientContext:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.client: EtcdClient | None = None

    async def __aenter__(self) -> EtcdClient:
        self.client = await EtcdClient.connect(self.endpoint, timeout=2.0)
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None
        await self.client.close()


async def test_election_needs_an_etcd_store_and_a_lease_of_two_seconds(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    sqlite = await SqliteStore.open(tmp_path / "s.db")
    try:
        assert etcd_election(sqlite, "housekeeping", holder="ca-0", ttl=10) is None
    finally:
        await sqlite.close()
    store = await EtcdStore.open(etcd.endpoint, trust_domain=f"t{uuid.uuid4().hex[:8]}.org")
    try:
        election = etcd_election(store, "housekeeping", holder="ca-0", ttl=10)
        assert election is not None
        assert not election.holds()
        with pytest.raises(InvalidConfig, match="at least 2 s"):
            etcd_election(store, "housekeeping", holder="ca-0", ttl=1)
    finally:
        await store.close()
