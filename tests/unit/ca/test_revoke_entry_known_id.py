"""Revoking a SPIFFE ID that only a registration entry names (no unexpired certificate): the CA
checks that some entry names the ID from its entries snapshot, not by listing every entry from
the store (on etcd, a listing of the whole registry per revocation: seconds at 100k entries).
A miss, or a CA without a snapshot, still asks the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_revocations import Rig, build_rig

from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.keys import KeyEncryptionKey
from s2s.core.clock import FakeClock
from s2s.core.errors import NotFound
from s2s.core.registration import RegistrationEntry
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.store.records import Topic
from s2s.store.sqlite import SqliteStore

PARENT = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/nobody")
DORMANT = SpiffeId.parse("spiffe://example.org/dormant/1")
OTHER = SpiffeId.parse("spiffe://example.org/dormant/2")


def count_id_listings(store: SqliteStore) -> list[SpiffeId]:
    """The SPIFFE IDs the store was asked to list entries for, from now on."""
    asked: list[SpiffeId] = []
    real = store.list_entries

    async def counted(**kwargs: Any) -> tuple[RegistrationEntry, ...]:
        if kwargs.get("spiffe_id") is not None:
            asked.append(kwargs["spiffe_id"])
        return await real(**kwargs)

    store.list_entries = counted  # type: ignore[method-assign]
    return asked


async def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + 5.0
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def caught_up(rig: Rig) -> None:
    async def installed() -> bool:
        cache = rig.registry._cache
        entries = cache._entries
        return (
            entries is not None
            and not cache._entries_dirty
            and entries.revision == await rig.store.revision(Topic.ENTRIES)
        )

    await _until(installed, "the registry snapshot to catch up")


async def _rig(
    config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock
) -> Rig:
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    return await build_rig(config, store, kek, clock)


@pytest.fixture
async def following(
    config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock
) -> AsyncIterator[Rig]:
    rig = await _rig(config, store, kek, clock)
    task = asyncio.create_task(rig.registry.follow(timeout=1.0))

    async def loaded() -> bool:
        return rig.registry.following

    await _until(loaded, "the registry snapshots to load")
    yield rig
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def entry_for(rig: Rig, spiffe_id: SpiffeId, uid: int = 1) -> RegistrationEntry:
    return await rig.registry.create_entry(
        spiffe_id=spiffe_id, parent_id=PARENT, selectors=parse_selectors([f"unix:uid:{uid}"])
    )


async def test_an_id_only_an_entry_names_is_revoked_without_an_entry_listing(
    following: Rig,
) -> None:
    rig = following
    await entry_for(rig, DORMANT)
    await caught_up(rig)
    asked = count_id_listings(rig.store)
    result = await rig.service.revoke_spiffe_id(DORMANT, reason="test")
    assert result.value == str(DORMANT)
    assert rig.live.current().revoked_at(DORMANT) is not None
    assert asked == []


async def test_an_id_no_entry_names_is_refused_after_asking_the_store(following: Rig) -> None:
    rig = following
    await entry_for(rig, DORMANT)
    await caught_up(rig)
    asked = count_id_listings(rig.store)
    with pytest.raises(NotFound, match="knows nothing of"):
        await rig.service.revoke_spiffe_id(OTHER)
    assert asked == [OTHER]
    assert rig.live.current().revoked_at(OTHER) is None


async def test_an_entry_the_snapshot_has_not_seen_yet_is_found_in_the_store(
    following: Rig,
) -> None:
    """Another replica's entry, written to the store and not yet in this CA's snapshot."""
    rig = following
    await rig.store.create_entry(
        RegistrationEntry(id="elsewhere", spiffe_id=OTHER, parent_id=PARENT,
                          selectors=parse_selectors(["unix:uid:7"]))
    )  # fmt: skip
    assert await rig.registry.has_entry_for(OTHER)
    await rig.service.revoke_spiffe_id(OTHER)
    assert rig.live.current().revoked_at(OTHER) is not None


async def test_without_a_snapshot_the_store_answers(
    config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    rig = await _rig(config, store, kek, clock)  # not following
    await entry_for(rig, DORMANT)
    asked = count_id_listings(rig.store)
    assert await rig.registry.has_entry_for(DORMANT)
    assert not await rig.registry.has_entry_for(OTHER)
    assert asked == [DORMANT, OTHER]


async def test_the_snapshot_counts_entries_per_id_through_updates_and_deletes(
    following: Rig,
) -> None:
    rig = following
    one = await entry_for(rig, DORMANT, uid=1)
    two = await entry_for(rig, DORMANT, uid=2)
    await caught_up(rig)
    entries = rig.registry._cache._entries
    assert entries is not None
    assert entries.per_spiffe_id[DORMANT] == 2
    await rig.registry.update_entry(one.id, spiffe_id=OTHER)
    await caught_up(rig)
    assert (entries.per_spiffe_id[DORMANT], entries.per_spiffe_id[OTHER]) == (1, 1)
    await rig.registry.delete_entry(two.id)
    await rig.registry.delete_entry(one.id)
    await caught_up(rig)
    assert DORMANT not in entries.per_spiffe_id
    assert OTHER not in entries.per_spiffe_id
    asked = count_id_listings(rig.store)
    assert not await rig.registry.has_entry_for(DORMANT)  # a miss asks the store: none left
    assert asked == [DORMANT]
