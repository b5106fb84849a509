"""ClientRegistry.follow on a real SQLite store: the client set held in memory follows writes
through this registry at once, writes through another registry when the store's revision moves,
and a writer that does not move the revision (an older replica) within the follow timeout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from s2s.ca.oauth_clients import CLIENTS_STATE, MAX_CLIENTS_BYTES, ClientRegistry
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidRequest, NotFound
from s2s.core.spiffe_id import TrustDomain
from s2s.store.sqlite import SqliteStore

TD = TrustDomain.parse("example.org")
API = "https://api.example.org"


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def test_the_client_set_follows_the_store(store: SqliteStore, clock: FakeClock) -> None:
    mine = ClientRegistry(store=store, clock=clock, trust_domain=TD)
    other = ClientRegistry(store=store, clock=clock, trust_domain=TD)  # another replica
    following = asyncio.create_task(mine.follow(timeout=0.2))
    try:
        await _until(lambda: _following(mine), "the first load")
        await other.create(client_id="reports", scopes=["a", "b"], audiences=[API])
        await _until(lambda: _holds(mine, "reports"), "the client created by the other one")
        # a writer that does not move the revision (an older replica): seen within the timeout
        raw = await store.get_state(CLIENTS_STATE)
        assert raw is not None
        await store.cas_state(CLIENTS_STATE, raw, json.dumps({"clients": []}))

        async def gone() -> bool:
            return not await _holds(mine, "reports")

        await _until(gone, "a change that did not bump the revision")
        with pytest.raises(NotFound):
            await mine.get("reports")
        await other.create(client_id="reports", scopes=["a", "b"], audiences=[API])
        assert (await mine.get("reports")).scopes == {"a", "b"}  # read through: at once
        await other.update("reports", scopes=["a"])

        async def narrowed() -> bool:
            return (await mine.get("reports")).scopes == {"a"}

        await _until(narrowed, "the update through the other registry")
        await mine.update("reports", scopes=["b"])
        assert (await mine.get("reports")).scopes == {"b"}  # write-through: at once
    finally:
        following.cancel()
        with pytest.raises(asyncio.CancelledError):
            await following


async def _holds(registry: ClientRegistry, client_id: str) -> bool:
    return client_id in registry._doc.snapshot[1]


async def _following(registry: ClientRegistry) -> bool:
    return registry._following


async def test_the_client_document_is_capped_to_fit_one_etcd_request(
    store: SqliteStore, clock: FakeClock
) -> None:
    assert MAX_CLIENTS_BYTES <= 3 << 19  # etcd's default request limit is 1.5 MiB
    registry = ClientRegistry(store=store, clock=clock, trust_domain=TD, max_bytes=2_000)
    created = 0
    refused: InvalidRequest | None = None
    for n in range(100):
        try:
            await registry.create(client_id=f"client-{n}", scopes=["a"], audiences=[API])
        except InvalidRequest as exc:
            refused = exc
            break
        created += 1
    assert refused is not None
    assert "more than 2000 bytes" in str(refused)
    assert 0 < created < 100
    raw = await store.get_state(CLIENTS_STATE)
    assert raw is not None
    assert len(raw) <= 2_000
    assert len(json.loads(raw)["clients"]) == created  # the refused one was not written
